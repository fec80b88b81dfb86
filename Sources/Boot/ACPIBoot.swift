import ACPI
import Memory

/// Puts the ACPI tables (the `ACPI` module builds them) into guest memory at `X86Layout.acpiTables`, reserved in
/// the memory map. The supervisor calls `write` after loading the kernel, as it calls `MPTable.write`; both stay:
/// a kernel with ACPI uses the MADT and ignores the MP table, one booted with `acpi=off` uses the MP table.
public enum ACPIBoot {
    /// Where the RSDP goes: pass it to `GuestLoader.load(acpiRSDP:)` for the zero page's `acpi_rsdp_addr`.
    public static let rsdpAddress: GuestAddress = X86Layout.acpiTables

    /// Writes the tables for `cpus` vCPUs (APIC IDs 0..<cpus), the IOAPIC (ID `cpus`, as the MP table numbers it)
    /// and `virtioDevices`, with COM1 and the i8042 keyboard on the GSIs the machine's layout gives them, and
    /// returns them.
    @discardableResult
    public static func write(cpus: Int, virtioDevices: [VirtioMMIODevice] = [], com1GSI: UInt32 = 4, keyboardGSI: UInt32 = 1,
                             into memory: GuestMemory) throws(BootError) -> ACPITables {
        let tables: ACPITables
        do {
            var machine = ACPIMachine(vcpuCount: cpus, ioapicID: UInt8(clamping: cpus), virtioDevices: virtioDevices)
            machine.com1?.gsi = com1GSI
            machine.keyboardController?.gsi = keyboardGSI
            tables = try ACPITables.build(machine, at: rsdpAddress)
        } catch { throw .acpi(error.description) }
        guard tables.extent.upperBound <= X86Layout.acpiTablesEnd else {
            throw .acpi("ACPI tables for \(cpus) CPUs and \(virtioDevices.count) virtio devices end at 0x\(String(tables.extent.upperBound, radix: 16)), past 0x\(String(X86Layout.acpiTablesEnd, radix: 16))")
        }
        do {
            try memory.fill(rsdpAddress, count: Int(X86Layout.acpiTablesEnd - rsdpAddress))
            for t in tables.tables { try memory.write(t.bytes, at: t.address) }
        } catch { throw BootError.from(error) }
        return tables
    }
}
