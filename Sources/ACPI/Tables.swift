/// A virtio-mmio device as the DSDT describes it to the guest (`_HID "LNRO0005"`, the name Linux's virtio_mmio
/// driver matches when its kernel has no `virtio_mmio.device=` command-line support).
public struct VirtioMMIODevice: Hashable, Sendable {
    public var base: UInt64
    public var size: UInt64
    /// The IOAPIC input (GSI base 0, so GSI n is pin n).
    public var gsi: UInt32
    /// Level by default, as QEMU's microvm describes virtio-mmio: the device holds its line while its
    /// InterruptStatus is non-zero, and the IOAPIC's remote IRR keeps a level line from firing again before the EOI.
    public var trigger: InterruptTrigger

    public init(base: UInt64, size: UInt64 = 0x1000, gsi: UInt32, trigger: InterruptTrigger = .level) {
        self.base = base
        self.size = size
        self.gsi = gsi
        self.trigger = trigger
    }
}

/// The machine the tables describe.
public struct ACPIMachine: Hashable, Sendable {
    /// vCPU i has APIC ID i (and ACPI processor UID i); vCPU 0 boots.
    public var vcpuCount: Int
    /// Not a processor's APIC ID (the MP table uses `vcpuCount`).
    public var ioapicID: UInt8
    public var ioapicAddress: UInt32 = 0xfec0_0000
    /// GSIs 0..<ioapicPins exist; every device's GSI must be one of them.
    public var ioapicPins: Int = 24
    public var localAPICAddress: UInt32 = 0xfee0_0000
    /// The 16550 UART the DSDT lists as COM1 (`PNP0501`), nil for none.
    public var com1: LegacySerialPort? = LegacySerialPort(port: 0x3f8, gsi: 4)
    /// The i8042 keyboard controller (`PNP0303`), nil for none.
    public var keyboardController: LegacyKeyboardController? = LegacyKeyboardController(dataPort: 0x60, commandPort: 0x64, gsi: 1)
    /// The CMOS RTC's index port (`PNP0B00`, two ports), nil for none.
    public var cmosRTCPort: UInt16? = 0x70
    public var virtioDevices: [VirtioMMIODevice]

    public init(vcpuCount: Int, ioapicID: UInt8, virtioDevices: [VirtioMMIODevice] = []) {
        self.vcpuCount = vcpuCount
        self.ioapicID = ioapicID
        self.virtioDevices = virtioDevices
    }
}

/// An i8042 keyboard controller: a data and a command port, and the keyboard's edge-triggered, active-high
/// interrupt on `gsi` (ISA IRQ 1).
public struct LegacyKeyboardController: Hashable, Sendable {
    public var dataPort: UInt16
    public var commandPort: UInt16
    public var gsi: UInt32
    public init(dataPort: UInt16, commandPort: UInt16, gsi: UInt32) {
        self.dataPort = dataPort
        self.commandPort = commandPort
        self.gsi = gsi
    }
}

/// An ISA serial port: eight ports from `port`, an edge-triggered, active-high interrupt on `gsi`.
public struct LegacySerialPort: Hashable, Sendable {
    public var port: UInt16
    public var gsi: UInt32
    public init(port: UInt16, gsi: UInt32) {
        self.port = port
        self.gsi = gsi
    }
}

/// Why the tables could not be built.
public enum ACPIError: Error, Equatable, CustomStringConvertible {
    case invalidMachine(String)
    case doesNotFit(String)

    public var description: String {
        switch self {
        case .invalidMachine(let why): return "ACPI tables: \(why)"
        case .doesNotFit(let why): return "ACPI tables do not fit: \(why)"
        }
    }
}

/// The ACPI tables a hardware-reduced x86 microVM needs, placed in one region of guest memory: the RSDP first
/// (16-byte aligned; at 0xE0000 it is where Linux's scan of 0xE0000-0xFFFFF finds it even without the zero
/// page's `acpi_rsdp_addr`), then the XSDT, the FADT, the MADT and the DSDT, each 16-byte aligned.
///
/// Choices (the README's "ACPI tables" has them all):
/// - HW_REDUCED_ACPI: no PM1/GPE blocks, no SCI, no FACS, no PM timer. The VMM has none of that hardware.
///   Linux then uses a "null legacy PIC" with no ISA IRQs 0-15 pre-mapped, so an ISA device's interrupt only
///   reaches Linux through a DSDT device's `_CRS`: that is why COM1 and the i8042 are in the DSDT. MADT interrupt source
///   overrides would not help (Linux gives the GSIs dynamic IRQ numbers then), and ISA IRQ n on GSI n is
///   ACPI's default anyway, so there are none; and no IRQ0->2 override, there is no PIT.
/// - No `\_S5`: Linux then has no ACPI power-off and halts every CPU, which the VMM reports as a power-off.
public struct ACPITables: Sendable {
    /// One table and where it goes.
    public struct Table: Sendable, Equatable {
        /// "RSD PTR " for the RSDP, else the table's 4-character signature ("FACP" for the FADT).
        public let signature: String
        public let address: UInt64
        public let bytes: [UInt8]
    }

    /// Where the RSDP was placed: the zero page's `acpi_rsdp_addr`.
    public let rsdpAddress: UInt64
    /// Every table in address order, the RSDP first.
    public let tables: [Table]

    /// The bytes of the table with `signature`.
    public func table(_ signature: String) -> Table? { tables.first { $0.signature == signature } }

    /// From the RSDP to the end of the last table.
    public var extent: Range<UInt64> {
        rsdpAddress..<(tables.last.map { $0.address + UInt64($0.bytes.count) } ?? rsdpAddress)
    }

    /// The identity every table carries. OEM ID 6 characters, table IDs 8, creator ID 4.
    public enum Identity {
        public static let oemID = "VMMSWF"
        public static let oemTableIDPrefix = "VMMS"  // + the signature: "VMMSFACP"
        public static let oemRevision: UInt32 = 1
        public static let creatorID = "VMMS"
        public static let creatorRevision: UInt32 = 1
        /// The FADT's Hypervisor Vendor Identity (ACPI 6.0+), so a guest can tell which VMM it runs on.
        public static let hypervisorVendor = "VMMSWIFT"
    }

    /// The RSDP where Linux's BIOS-area scan looks (0xE0000-0xFFFFF, 16-byte aligned).
    public static let defaultAddress: UInt64 = 0xe_0000

    /// Convenience for the usual machine: COM1 and the RTC at their ISA places, the APICs at their defaults.
    public static func build(vcpuCount: Int, ioapicID: UInt8, virtioDevices: [VirtioMMIODevice],
                             at base: UInt64 = defaultAddress) throws(ACPIError) -> ACPITables {
        try build(ACPIMachine(vcpuCount: vcpuCount, ioapicID: ioapicID, virtioDevices: virtioDevices), at: base)
    }

    /// The tables for `machine`, the RSDP at `base` (16-byte aligned) and the rest after it, all below 4 GiB.
    public static func build(_ machine: ACPIMachine, at base: UInt64 = defaultAddress) throws(ACPIError) -> ACPITables {
        try validate(machine)
        guard base % 16 == 0 else { throw .invalidMachine("the RSDP at 0x\(hex(base)) is not 16-byte aligned") }
        let dsdt = self.dsdt(machine)
        let madt = self.madt(machine)
        // Addresses first (lengths do not depend on them), then the tables that point at others.
        let xsdtLength = headerLength + 8 * 2
        let xsdtAddress = align(base + UInt64(rsdpLength))
        let fadtAddress = align(xsdtAddress + UInt64(xsdtLength))
        let madtAddress = align(fadtAddress + UInt64(fadtLength))
        let dsdtAddress = align(madtAddress + UInt64(madt.count))
        let end = dsdtAddress + UInt64(dsdt.count)
        guard end <= 1 << 32 else { throw .doesNotFit("they would end at 0x\(hex(end)), above 4 GiB") }
        let fadt = self.fadt(dsdtAddress: dsdtAddress)
        let xsdt = self.xsdt(entries: [fadtAddress, madtAddress])
        let rsdp = self.rsdp(xsdtAddress: xsdtAddress)
        return ACPITables(rsdpAddress: base, tables: [
            Table(signature: "RSD PTR ", address: base, bytes: rsdp),
            Table(signature: "XSDT", address: xsdtAddress, bytes: xsdt),
            Table(signature: "FACP", address: fadtAddress, bytes: fadt),
            Table(signature: "APIC", address: madtAddress, bytes: madt),
            Table(signature: "DSDT", address: dsdtAddress, bytes: dsdt),
        ])
    }

    static let headerLength = 36
    static let rsdpLength = 36
    static let fadtLength = 276  // revision 6: up to the Hypervisor Vendor Identity

    static func validate(_ m: ACPIMachine) throws(ACPIError) {
        // xAPIC IDs are 8 bits and 0xFF is the broadcast ID; the IOAPIC's ID must not be a processor's (the MP
        // table makes the same choice: processors 0..<n, the IOAPIC n).
        guard (1...254).contains(m.vcpuCount) else { throw .invalidMachine("\(m.vcpuCount) vCPUs (1-254)") }
        guard Int(m.ioapicID) >= m.vcpuCount, m.ioapicID != 0xff else {
            throw .invalidMachine("IOAPIC ID \(m.ioapicID) clashes with a processor's APIC ID (0..<\(m.vcpuCount)) or broadcast")
        }
        guard (1...240).contains(m.ioapicPins) else { throw .invalidMachine("an IOAPIC with \(m.ioapicPins) pins") }
        guard m.virtioDevices.count <= 1000 else { throw .invalidMachine("\(m.virtioDevices.count) virtio devices (names V000-V999)") }
        // Every interrupt in the DSDT is exclusive, so no two devices may share a pin.
        var used: [UInt32: String] = [:]
        var claims: [(gsi: UInt32, who: String)] = []
        if let com1 = m.com1 {
            guard com1.port <= 0xffff - 7 else { throw .invalidMachine("COM1 at port 0x\(hex(UInt64(com1.port)))") }
            claims.append((com1.gsi, "COM1"))
        }
        if let kbc = m.keyboardController { claims.append((kbc.gsi, "the i8042")) }
        if let rtc = m.cmosRTCPort, rtc == 0xffff { throw .invalidMachine("the RTC at port 0xffff") }
        for (i, d) in m.virtioDevices.enumerated() {
            let name = "virtio-mmio device \(i)"
            // Memory32Fixed holds 32-bit addresses: a window above 4 GiB cannot be described this way.
            guard d.size > 0, d.size <= UInt64(UInt32.max), d.base <= (1 << 32) - d.size else {
                throw .invalidMachine("\(name): 0x\(hex(d.size)) bytes at 0x\(hex(d.base)) is not a window below 4 GiB")
            }
            claims.append((d.gsi, name))
        }
        for (gsi, who) in claims {
            guard gsi < UInt32(m.ioapicPins) else { throw .invalidMachine("\(who): GSI \(gsi) is not an IOAPIC pin (0-\(m.ioapicPins - 1))") }
            if let other = used[gsi] { throw .invalidMachine("\(who) and \(other) both use GSI \(gsi)") }
            used[gsi] = who
        }
    }

    // MARK: The tables

    /// RSDP, ACPI 2.0+ (revision 2): no RSDT (0), the XSDT's address; the first checksum covers the ACPI 1.0 part
    /// (20 bytes), the extended one all 36.
    static func rsdp(xsdtAddress: UInt64) -> [UInt8] {
        var b = Array("RSD PTR ".utf8) + [0] + ascii(Identity.oemID, 6) + [2] + AML.le(UInt32(0))
        b += AML.le(UInt32(rsdpLength)) + AML.le(xsdtAddress) + [0, 0, 0, 0]
        b[8] = checksum(b[0..<20])
        b[32] = checksum(b[0..<36])
        return b
    }

    /// XSDT: 64-bit pointers to the FADT and the MADT (the DSDT is the FADT's).
    static func xsdt(entries: [UInt64]) -> [UInt8] {
        table("XSDT", revision: 1, body: entries.flatMap { AML.le($0) })
    }

    /// FADT revision 6.5 (276 bytes). Hardware-reduced: every fixed-hardware block is 0.
    static func fadt(dsdtAddress: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: fadtLength - headerLength)
        func put(_ bytes: [UInt8], at offset: Int) {
            for (i, b) in bytes.enumerated() { body[offset - headerLength + i] = b }
        }
        // FIRMWARE_CTRL and X_FIRMWARE_CTRL stay 0: a hardware-reduced machine may have no FACS.
        put(AML.le(UInt32(truncatingIfNeeded: dsdtAddress)), at: 40)  // DSDT, equal to X_DSDT (below 4 GiB)
        // Preferred_PM_Profile 0 (unspecified), SCI_INT 0 (no SCI), SMI_CMD 0 (always in ACPI mode).
        put(AML.le(FADT.bootArchitecture), at: 109)
        put(AML.le(FADT.flags), at: 112)
        put([5], at: 131)  // FADT minor version: ACPI 6.5
        put(AML.le(dsdtAddress), at: 140)  // X_DSDT
        put(ascii(Identity.hypervisorVendor, 8), at: 268)
        return table("FACP", revision: 6, body: body)
    }

    /// The FADT's flag words.
    public enum FADT {
        /// IAPC_BOOT_ARCH (offset 109). Set: 8042 (bit 1: there is one, with a keyboard for `SendCtrlAltDel`),
        /// VGA not present (nothing to probe at 0xA0000 or 0x3C0), MSI not supported and PCIe ASPM controls
        /// (there is no PCI bus). Clear: CMOS RTC not present (bit 5: the RTC is at 0x70, and the DSDT lists it)
        /// and LEGACY_DEVICES (bit 0: only Linux's PnP BIOS probe reads it).
        public static let bootArchitecture: UInt16 = 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4
        /// Flags (offset 112): HW_REDUCED_ACPI (20), and power and sleep buttons (4, 5) as control-method
        /// devices, that is not fixed-feature ones (there are none). APIC physical destination mode (19) stays
        /// clear, so Linux picks its APIC driver as it does with the MP table.
        public static let flags: UInt32 = 1 << 20 | 1 << 4 | 1 << 5
    }

    /// MADT revision 5: the local APICs' address, no PC-AT 8259s (flags 0), a Processor Local APIC per vCPU
    /// (UID = APIC ID = index, enabled), the IOAPIC (GSI base 0), and NMI on LINT1 of every processor (as the MP
    /// table says; ACPI has no entry for LINT0's ExtINT, which only matters with an 8259).
    static func madt(_ m: ACPIMachine) -> [UInt8] {
        var body = AML.le(m.localAPICAddress) + AML.le(UInt32(0))
        for cpu in 0..<m.vcpuCount {
            body += [0, 8, UInt8(cpu), UInt8(cpu)] + AML.le(UInt32(1))
        }
        body += [1, 12, m.ioapicID, 0] + AML.le(m.ioapicAddress) + AML.le(UInt32(0))
        body += [4, 6, 0xff] + AML.le(UInt16(0)) + [1]  // all processors, flags "as the bus conforms", LINT1
        return table("APIC", revision: 5, body: body)
    }

    /// DSDT revision 2 (64-bit integers): `\_SB_` holding COM1, the i8042, the RTC and `Vnnn` per virtio-mmio device.
    static func dsdt(_ m: ACPIMachine) -> [UInt8] {
        table("DSDT", revision: 2, body: AMLTerm.scope("\\_SB_", dsdtDevices(m)).encoded)
    }

    static func dsdtDevices(_ m: ACPIMachine) -> [AMLTerm] {
        var devices: [AMLTerm] = []
        if let com1 = m.com1 {
            // Linux's 8250_pnp takes over ttyS0 from the built-in port table with the IRQ this maps.
            devices.append(.device("COM1", [
                .name("_HID", .eisaID("PNP0501")),
                .name("_UID", .integer(1)),
                .name("_CRS", .resourceTemplate([
                    .io(base: com1.port, alignment: 1, length: 8),
                    .interrupt(trigger: .edge, polarity: .activeHigh, shared: false, gsi: com1.gsi),
                ])),
            ]))
        }
        if let kbc = m.keyboardController {
            // Its `_CRS` is how Linux maps GSI 1 on a hardware-reduced machine, where ISA IRQs are not pre-mapped
            // and a GSI gets a dynamic IRQ number (COM1's GSI 4 becomes IRQ 27 or so): the i8042 driver must take
            // that number from PnP. With `i8042.nopnp` it requests IRQ 1 itself, which does not exist, and its
            // probe fails with EINVAL ("probe of i8042 failed with error -22"), so the shipped configs leave it out.
            devices.append(.device("PS2K", [
                .name("_HID", .eisaID("PNP0303")),
                .name("_CRS", .resourceTemplate([
                    .io(base: kbc.dataPort, alignment: 1, length: 1),
                    .io(base: kbc.commandPort, alignment: 1, length: 1),
                    .interrupt(trigger: .edge, polarity: .activeHigh, shared: false, gsi: kbc.gsi),
                ])),
            ]))
        }
        if let rtc = m.cmosRTCPort {
            // No interrupt: the RTC model raises none (no alarms, no update interrupts). Listing the device makes
            // Linux bind rtc_cmos through PnP instead of registering a platform device with IRQ 8, which a
            // hardware-reduced machine cannot map, so the driver's probe would fail.
            devices.append(.device("RTC_", [
                .name("_HID", .eisaID("PNP0B00")),
                .name("_CRS", .resourceTemplate([.io(base: rtc, alignment: 1, length: 2)])),
            ]))
        }
        for (i, d) in m.virtioDevices.enumerated() {
            devices.append(.device(virtioName(i), [
                .name("_HID", .string("LNRO0005")),
                .name("_UID", .integer(UInt64(i))),
                .name("_CCA", .integer(1)),  // cache-coherent DMA
                .name("_CRS", .resourceTemplate([
                    .memory32Fixed(writable: true, base: UInt32(d.base), length: UInt32(d.size)),
                    .interrupt(trigger: d.trigger, polarity: .activeHigh, shared: false, gsi: d.gsi),
                ])),
            ]))
        }
        return devices
    }

    /// "V000"... (decimal, so the names read like the _UIDs).
    static func virtioName(_ index: Int) -> NameSeg {
        let digits = Array(String(index).utf8)
        let name = [UInt8(ascii: "V")] + [UInt8](repeating: 0x30, count: max(0, 3 - digits.count)) + digits
        return NameSeg(validating: String(decoding: name, as: UTF8.self)) ?? "V___"
    }

    // MARK: Helpers

    /// A system description table: the 36-byte header (length, checksum, identity) and `body`.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var b = ascii(signature, 4) + AML.le(UInt32(headerLength + body.count)) + [revision, 0]
        b += ascii(Identity.oemID, 6) + ascii(Identity.oemTableIDPrefix + signature, 8) + AML.le(Identity.oemRevision)
        b += ascii(Identity.creatorID, 4) + AML.le(Identity.creatorRevision)
        b += body
        b[9] = checksum(b[...])
        return b
    }

    /// The byte that makes `bytes` sum to 0 (mod 256), the checksum byte itself counted as 0.
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt8 { 0 &- bytes.reduce(0, &+) }

    /// `s` as exactly `count` ASCII bytes, space-padded.
    static func ascii(_ s: String, _ count: Int) -> [UInt8] {
        Array((Array(s.utf8) + [UInt8](repeating: 0x20, count: count)).prefix(count))
    }

    static func align(_ a: UInt64) -> UInt64 { (a + 15) & ~15 }
    static func hex(_ v: UInt64) -> String { String(v, radix: 16) }
}
