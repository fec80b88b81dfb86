@testable import ACPI
import XCTest

/// Little-endian reads from a table, for the tests.
extension Array where Element == UInt8 {
    func le(_ at: Int, _ n: Int) -> UInt64 { (0..<n).reduce(0) { $0 | UInt64(self[at + $1]) << (8 * UInt64($1)) } }
    func ascii(_ at: Int, _ n: Int) -> String { String(decoding: self[at..<at + n], as: UTF8.self) }
}

final class TableTests: XCTestCase {
    let virtio = [
        VirtioMMIODevice(base: 0xd000_0000, size: 0x1000, gsi: 5),
        VirtioMMIODevice(base: 0xd000_1000, size: 0x1000, gsi: 6),
        VirtioMMIODevice(base: 0xd000_2000, size: 0x200, gsi: 23, trigger: .edge),
    ]

    func build(cpus: Int = 2, virtio: [VirtioMMIODevice] = []) throws -> ACPITables {
        try ACPITables.build(vcpuCount: cpus, ioapicID: UInt8(cpus), virtioDevices: virtio)
    }

    /// Every table: its signature, its length field equal to its size, its bytes summing to 0, the identity.
    func testEveryTableHasItsLengthChecksumAndIdentity() throws {
        for devices in [[], virtio] {
            let t = try build(cpus: 4, virtio: devices)
            XCTAssertEqual(t.tables.map(\.signature), ["RSD PTR ", "XSDT", "FACP", "APIC", "DSDT"])
            for table in t.tables.dropFirst() {
                let b = table.bytes
                XCTAssertEqual(b.ascii(0, 4), table.signature)
                XCTAssertEqual(Int(b.le(4, 4)), b.count, "\(table.signature) length")
                XCTAssertEqual(b.reduce(0, &+), 0, "\(table.signature) checksum")
                XCTAssertEqual(b.ascii(10, 6), "VMMSWF")
                XCTAssertEqual(b.ascii(16, 8), "VMMS" + table.signature)
                XCTAssertEqual(b.le(24, 4), 1, "OEM revision")
                XCTAssertEqual(b.ascii(28, 4), "VMMS")
                XCTAssertEqual(table.address % 16, 0)
            }
            XCTAssertEqual(t.table("XSDT")?.bytes[8], 1)
            XCTAssertEqual(t.table("FACP")?.bytes[8], 6)
            XCTAssertEqual(t.table("APIC")?.bytes[8], 5)
            XCTAssertEqual(t.table("DSDT")?.bytes[8], 2, "revision 2: 64-bit integers")
            // Ascending and not overlapping.
            for (a, b) in zip(t.tables, t.tables.dropFirst()) { XCTAssertLessThanOrEqual(a.address + UInt64(a.bytes.count), b.address) }
        }
    }

    func testRSDPPointsAtTheXSDTWhichPointsAtFADTAndMADT() throws {
        let t = try build()
        XCTAssertEqual(t.rsdpAddress, 0xe_0000)
        let rsdp = try XCTUnwrap(t.table("RSD PTR "))
        XCTAssertEqual(rsdp.address, 0xe_0000)
        let r = rsdp.bytes
        XCTAssertEqual(r.count, 36)
        XCTAssertEqual(r.ascii(0, 8), "RSD PTR ")
        XCTAssertEqual(r[0..<20].reduce(0, &+), 0, "ACPI 1.0 checksum")
        XCTAssertEqual(r.reduce(0, &+), 0, "extended checksum")
        XCTAssertEqual(r.ascii(9, 6), "VMMSWF")
        XCTAssertEqual(r[15], 2, "revision 2: ACPI 2.0+, the XSDT")
        XCTAssertEqual(r.le(16, 4), 0, "no RSDT")
        XCTAssertEqual(r.le(20, 4), 36)
        let xsdt = try XCTUnwrap(t.table("XSDT"))
        XCTAssertEqual(r.le(24, 8), xsdt.address)
        XCTAssertEqual(xsdt.bytes.count, 36 + 16)
        XCTAssertEqual(xsdt.bytes.le(36, 8), t.table("FACP")?.address)
        XCTAssertEqual(xsdt.bytes.le(44, 8), t.table("APIC")?.address)
        XCTAssertEqual(t.extent.lowerBound, 0xe_0000)
        XCTAssertEqual(t.extent.upperBound, try XCTUnwrap(t.table("DSDT")).address + UInt64(try XCTUnwrap(t.table("DSDT")).bytes.count))
    }

    func testFADTIsHardwareReducedAndPointsAtTheDSDT() throws {
        let t = try build()
        let f = try XCTUnwrap(t.table("FACP")).bytes
        let dsdt = try XCTUnwrap(t.table("DSDT")).address
        XCTAssertEqual(f.count, 276)
        XCTAssertEqual(f.le(36, 4), 0, "no FACS")
        XCTAssertEqual(f.le(40, 4), dsdt, "DSDT")
        XCTAssertEqual(f.le(140, 8), dsdt, "X_DSDT")
        XCTAssertEqual(f.le(46, 2), 0, "no SCI")
        XCTAssertEqual(f.le(48, 4), 0, "no SMI command port")
        XCTAssertEqual(f.le(112, 4), 1 << 20 | 1 << 5 | 1 << 4, "HW_REDUCED_ACPI, no fixed power/sleep button")
        let bootArch = f.le(109, 2)
        XCTAssertEqual(bootArch & 1 << 2, 1 << 2, "VGA not present")
        XCTAssertEqual(bootArch & 1 << 3, 1 << 3, "MSI not supported")
        XCTAssertEqual(bootArch & 1 << 5, 0, "the CMOS RTC is present")
        XCTAssertEqual(bootArch & 1 << 1, 1 << 1, "an 8042 (the DSDT's PS2K maps its IRQ 1)")
        XCTAssertEqual(f[131], 5, "FADT minor version")
        XCTAssertEqual(f.ascii(268, 8), "VMMSWIFT", "hypervisor vendor identity")
        // No PM1/GPE/PM timer blocks, no reset register, no sleep control/status registers.
        XCTAssertEqual(f[56..<109].reduce(0) { $0 | $1 }, 0, "no fixed-hardware blocks")
        XCTAssertEqual(f[116..<131].reduce(0) { $0 | $1 }, 0, "no reset register")
        XCTAssertEqual(f[148..<268].reduce(0) { $0 | $1 }, 0, "no extended blocks or sleep registers")
    }

    /// The MADT entries, parsed: type 0 (processor), 1 (IOAPIC), 2 (override), 4 (LAPIC NMI).
    func madtEntries(_ m: [UInt8]) -> [(type: UInt8, bytes: [UInt8])] {
        var out: [(UInt8, [UInt8])] = []
        var at = 44
        while at < m.count {
            let length = Int(m[at + 1])
            out.append((m[at], Array(m[at..<at + length])))
            at += length
        }
        XCTAssertEqual(at, m.count, "entries fill the table exactly")
        return out
    }

    func testMADTForOneAndFourVCPUs() throws {
        for cpus in [1, 4] {
            let m = try XCTUnwrap(try build(cpus: cpus).table("APIC")).bytes
            XCTAssertEqual(m.le(36, 4), 0xfee0_0000, "local APIC address")
            XCTAssertEqual(m.le(40, 4), 0, "no PC-AT 8259s")
            let entries = madtEntries(m)
            XCTAssertEqual(entries.map(\.type), [UInt8](repeating: 0, count: cpus) + [1, 4])
            for (i, e) in entries.prefix(cpus).enumerated() {
                XCTAssertEqual(e.bytes, [0, 8, UInt8(i), UInt8(i), 1, 0, 0, 0], "UID = APIC ID = \(i), enabled")
            }
            XCTAssertEqual(entries[cpus].bytes, [1, 12, UInt8(cpus), 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0],
                           "IOAPIC ID \(cpus) at 0xFEC00000, GSI base 0")
            XCTAssertEqual(entries[cpus + 1].bytes, [4, 6, 0xff, 0, 0, 1], "NMI on LINT1 of every processor")
            XCTAssertEqual(m.count, 44 + 8 * cpus + 12 + 6)
        }
    }

    /// The DSDT's AML for 0, 1 and 3 virtio devices: `\_SB_` with COM1, the RTC and V000...
    func testDSDTForZeroOneAndThreeDevices() throws {
        for count in [0, 1, 3] {
            let d = try XCTUnwrap(try build(virtio: Array(virtio.prefix(count))).table("DSDT")).bytes
            let aml = Array(d[36...])
            XCTAssertEqual(aml[0], 0x10, "ScopeOp")
            let pkg = aml[1] >> 6 == 0 ? Int(aml[1]) : Int(aml[1] & 0xf) | Int(aml[2]) << 4
            XCTAssertEqual(1 + pkg, aml.count, "one scope holds everything")
            XCTAssertEqual(aml.count(of: Array("LNRO0005".utf8)), count)
            for i in 0..<count {
                let name = "V00\(i)"
                XCTAssertEqual(aml.count(of: Array(name.utf8)), 1, name)
            }
            XCTAssertEqual(aml.count(of: Array("COM1".utf8)), 1)
            XCTAssertEqual(aml.count(of: Array("RTC_".utf8)), 1)
            XCTAssertEqual(aml.count(of: Array("PS2K".utf8)), 1)
        }
        // The third device is edge-triggered on GSI 23 with a 512-byte window.
        let d = try XCTUnwrap(try build(virtio: virtio).table("DSDT")).bytes
        XCTAssertEqual(d.count(of: [0x86, 0x09, 0x00, 0x01, 0x00, 0x20, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00]), 1)
        XCTAssertEqual(d.count(of: [0x89, 0x06, 0x00, 0x03, 0x01, 23, 0, 0, 0]), 1)
        XCTAssertEqual(d.count(of: [0x89, 0x06, 0x00, 0x01, 0x01, 5, 0, 0, 0]), 1, "level-triggered by default")
    }

    /// The whole DSDT body for COM1, the i8042, the RTC and one virtio device, against iasl -oa's compilation of:
    ///
    ///     Scope (\_SB) {
    ///       Device (COM1) { Name (_HID, EisaId ("PNP0501")) Name (_UID, One)
    ///         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08, )
    ///           Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 4 } }) }
    ///       Device (PS2K) { Name (_HID, EisaId ("PNP0303"))
    ///         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x0060, 0x0060, 0x01, 0x01, )
    ///           IO (Decode16, 0x0064, 0x0064, 0x01, 0x01, )
    ///           Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 1 } }) }
    ///       Device (RTC_) { Name (_HID, EisaId ("PNP0B00"))
    ///         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x0070, 0x0070, 0x01, 0x02, ) }) }
    ///       Device (V000) { Name (_HID, "LNRO0005") Name (_UID, Zero) Name (_CCA, One)
    ///         Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000, )
    ///           Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, ) { 5 } }) } }
    func testDSDTBodyMatchesIasl() throws {
        let d = try XCTUnwrap(try build(virtio: [virtio[0]]).table("DSDT")).bytes
        XCTAssertEqual(Array(d[36...]), [
            0x10, 0x46, 0x0d, 0x5c, 0x5f, 0x53, 0x42, 0x5f, 0x5b, 0x82, 0x31, 0x43, 0x4f, 0x4d, 0x31, 0x08,
            0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x05, 0x01, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x01, 0x08,
            0x5f, 0x43, 0x52, 0x53, 0x11, 0x16, 0x0a, 0x13, 0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08,
            0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00, 0x79, 0x00, 0x5b, 0x82, 0x33, 0x50, 0x53,
            0x32, 0x4b, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x03, 0x03, 0x08, 0x5f, 0x43, 0x52,
            0x53, 0x11, 0x1e, 0x0a, 0x1b, 0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01, 0x47, 0x01, 0x64,
            0x00, 0x64, 0x00, 0x01, 0x01, 0x89, 0x06, 0x00, 0x03, 0x01, 0x01, 0x00, 0x00, 0x00, 0x79, 0x00,
            0x5b, 0x82, 0x22, 0x52, 0x54, 0x43, 0x5f, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x0b,
            0x00, 0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x0d, 0x0a, 0x0a, 0x47, 0x01, 0x70, 0x00, 0x70, 0x00,
            0x01, 0x02, 0x79, 0x00, 0x5b, 0x82, 0x41, 0x04, 0x56, 0x30, 0x30, 0x30, 0x08, 0x5f, 0x48, 0x49,
            0x44, 0x0d, 0x4c, 0x4e, 0x52, 0x4f, 0x30, 0x30, 0x30, 0x35, 0x00, 0x08, 0x5f, 0x55, 0x49, 0x44,
            0x00, 0x08, 0x5f, 0x43, 0x43, 0x41, 0x01, 0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x1a, 0x0a, 0x17,
            0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00, 0x89, 0x06, 0x00, 0x01,
            0x01, 0x05, 0x00, 0x00, 0x00, 0x79, 0x00,
        ])
    }

    func testMachinesTheTablesCannotDescribeAreRefused() {
        func refused(_ m: ACPIMachine, _ why: String, line: UInt = #line) {
            XCTAssertThrowsError(try ACPITables.build(m), why, line: line)
        }
        refused(ACPIMachine(vcpuCount: 0, ioapicID: 1), "no vCPUs")
        refused(ACPIMachine(vcpuCount: 255, ioapicID: 255), "255 vCPUs: no APIC ID left")
        refused(ACPIMachine(vcpuCount: 4, ioapicID: 2), "the IOAPIC's ID is a processor's")
        refused(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 0xffff_f000, size: 0x2000, gsi: 5)]), "crosses 4 GiB")
        refused(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 1 << 32, gsi: 5)]), "above 4 GiB")
        refused(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 0xd000_0000, size: 0, gsi: 5)]), "empty window")
        refused(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 0xd000_0000, gsi: 24)]), "no pin 24")
        refused(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 0xd000_0000, gsi: 4)]), "COM1's pin")
        refused(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 0xd000_0000, gsi: 1)]), "the keyboard's pin")
        refused(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 0xd000_0000, gsi: 5), .init(base: 0xd000_1000, gsi: 5)]), "a shared pin")
        XCTAssertThrowsError(try ACPITables.build(ACPIMachine(vcpuCount: 1, ioapicID: 1), at: 0xe_0008), "misaligned RSDP")
        XCTAssertNoThrow(try ACPITables.build(ACPIMachine(vcpuCount: 254, ioapicID: 254)))
        XCTAssertNoThrow(try ACPITables.build(ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [.init(base: 0xffff_f000, gsi: 5)])), "ends at 4 GiB exactly")
    }

    func testWithoutLegacyDevicesTheScopeHoldsOnlyVirtio() throws {
        var m = ACPIMachine(vcpuCount: 1, ioapicID: 1, virtioDevices: [virtio[0]])
        m.com1 = nil
        m.cmosRTCPort = nil
        m.keyboardController = nil
        let d = try XCTUnwrap(try ACPITables.build(m).table("DSDT")).bytes
        XCTAssertEqual(d.count(of: Array("COM1".utf8)), 0)
        XCTAssertEqual(d.count(of: Array("RTC_".utf8)), 0)
        XCTAssertEqual(d.count(of: Array("PS2K".utf8)), 0)
        XCTAssertEqual(d.count(of: Array("V000".utf8)), 1)
    }
}

extension Array where Element == UInt8 {
    /// How often `needle` occurs (overlapping occurrences counted).
    func count(of needle: [UInt8]) -> Int {
        guard !needle.isEmpty, needle.count <= count else { return 0 }
        return (0...(count - needle.count)).filter { Array(self[$0..<$0 + needle.count]) == needle }.count
    }
}
