import Memory

/// The Intel MultiProcessor Specification 1.4 tables that tell a guest without ACPI its CPUs, its IOAPIC and how
/// the ISA interrupts reach it: a floating pointer and a configuration table in the last KiB of base memory
/// (639 KiB, one of the places Linux scans), reserved in the memory map.
public enum MPTable {
    public static let address: GuestAddress = X86Layout.ebda
    static let localAPICVersion: UInt8 = 0x14
    static let ioapicVersion: UInt8 = 0x20
    static let isaBus: UInt8 = 0

    /// The table bytes for `cpus` processors (APIC IDs 0..<cpus, the first the bootstrap processor) and one
    /// IOAPIC at `ioapicBase` with `ioapicPins` pins, ISA IRQ n wired to pin n.
    public static func build(cpus: Int, ioapicBase: UInt32 = 0xfec0_0000, ioapicPins: Int = 24,
                             localAPICBase: UInt32 = 0xfee0_0000) -> [UInt8] {
        let ioapicID = UInt8(cpus)  // after the processors' APIC IDs
        var entries: [UInt8] = []
        var count: UInt16 = 0
        for cpu in 0..<cpus {
            // Processor: APIC ID, version, enabled (+ bootstrap), signature family 6, FPU and APIC feature flags.
            entries += [0, UInt8(cpu), localAPICVersion, cpu == 0 ? 3 : 1]
            entries += le(UInt32(0x600)) + le(UInt32(0x201)) + [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [1, isaBus] + Array("ISA   ".utf8)
        entries += [2, ioapicID, ioapicVersion, 1] + le(ioapicBase)
        count += 2
        for irq in 0..<min(16, ioapicPins) {
            // I/O interrupt: INT, polarity and trigger as the bus says (ISA: active high, edge).
            entries += [3, 0] + le(UInt16(0)) + [isaBus, UInt8(irq), ioapicID, UInt8(irq)]
            count += 1
        }
        // Local interrupts: LINT0 ExtINT and LINT1 NMI on every local APIC.
        entries += [4, 3] + le(UInt16(0)) + [isaBus, 0, 0xff, 0]
        entries += [4, 1] + le(UInt16(0)) + [isaBus, 0, 0xff, 1]
        count += 2

        let tableAddress = UInt32(address) + 16
        var header = Array("PCMP".utf8) + le(UInt16(44 + entries.count)) + [4, 0]
        header += Array("VMM     ".utf8) + Array("MICROVM     ".utf8)
        header += le(UInt32(0)) + le(UInt16(0)) + le(count) + le(localAPICBase) + le(UInt16(0)) + [0, 0]
        var table = header + entries
        table[7] = checksum(table)

        var pointer = Array("_MP_".utf8) + le(tableAddress) + [1, 4, 0, 0, 0, 0, 0, 0]
        pointer[10] = checksum(pointer)
        return pointer + table
    }

    /// Writes the tables at `address`; they must end below 640 KiB.
    public static func write(cpus: Int, into memory: GuestMemory) throws(BootError) {
        let bytes = build(cpus: cpus)
        guard address + UInt64(bytes.count) <= 0xa0000 else { throw .doesNotFit("an MP table for \(cpus) CPUs") }
        do { try memory.write(bytes, at: address) } catch { throw BootError.from(error) }
    }

    static func checksum(_ bytes: [UInt8]) -> UInt8 { 0 &- bytes.reduce(0, &+) }

    private static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) }
    }
}
