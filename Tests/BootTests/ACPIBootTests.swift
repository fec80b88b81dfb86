import ACPI
@testable import Boot
import Memory
import System
import XCTest

/// The ACPI tables in guest memory: where Linux looks for them, inside the reserved part of the memory map.
final class ACPIBootTests: XCTestCase {
    func makeMemory() throws -> GuestMemory {
        let fd = try MemFD.create(name: "acpi-test", size: 16 << 20)
        let memory = try GuestMemory(fd: fd.raw, size: 16 << 20)
        _ = consume fd
        return memory
    }

    /// Linux's search when the zero page does not say (acpi_tb_find_root_pointer): 16-byte steps through
    /// 0xE0000-0xFFFFF for "RSD PTR " whose first 20 bytes (and, revision 2, all 36) sum to 0.
    func scanForRSDP(_ memory: GuestMemory) throws -> UInt64? {
        for at in stride(from: UInt64(0xe_0000), to: 0x10_0000, by: 16) {
            let b = try memory.read(at, count: 36)
            if b[0..<8].elementsEqual("RSD PTR ".utf8), b[0..<20].reduce(0, &+) == 0, b.reduce(0, &+) == 0 { return at }
        }
        return nil
    }

    func testTablesAreWhereLinuxFindsThemAndReserved() throws {
        let memory = try makeMemory()
        try memory.fill(0xe_0000, count: 0x2_0000, with: 0xaa)  // what was there before is cleared
        let tables = try ACPIBoot.write(cpus: 4, virtioDevices: [VirtioMMIODevice(base: 0xd000_0000, gsi: 5)], into: memory)
        XCTAssertEqual(try scanForRSDP(memory), ACPIBoot.rsdpAddress)
        for t in tables.tables {
            XCTAssertEqual(try memory.read(t.address, count: t.bytes.count), t.bytes, t.signature)
        }
        XCTAssertEqual(try memory.load(UInt8.self, at: tables.extent.upperBound), 0, "the rest of the region is zero")
        // The memory map reserves all of it, RSDP to the last table, and the BIOS area up to 1 MiB.
        let map = X86Layout.memoryMap(ramSize: 16 << 20)
        let reserved = try XCTUnwrap(map.first { $0.type == 2 && $0.start <= tables.extent.lowerBound && tables.extent.upperBound <= $0.start + $0.size })
        XCTAssertEqual(reserved.start, 0xe_0000)
        XCTAssertEqual(reserved.start + reserved.size, 0x10_0000)
        for (a, b) in zip(map, map.dropFirst()) { XCTAssertLessThanOrEqual(a.start + a.size, b.start, "ranges ascend without overlap") }
    }

    func testMachinesACPICannotDescribeAreBootErrors() throws {
        let memory = try makeMemory()
        XCTAssertThrowsError(try ACPIBoot.write(cpus: 255, into: memory)) { XCTAssertTrue($0 is BootError, "\($0)") }
        XCTAssertThrowsError(try ACPIBoot.write(cpus: 0, into: memory)) { XCTAssertTrue($0 is BootError, "\($0)") }
        XCTAssertThrowsError(try ACPIBoot.write(cpus: 1, virtioDevices: [VirtioMMIODevice(base: 1 << 32, gsi: 5)], into: memory)) {
            XCTAssertTrue("\($0)".contains("below 4 GiB"), "\($0)")
        }
    }

    func testLegacyDevicesGetTheGSIsTheLayoutGives() throws {
        let tables = try ACPIBoot.write(cpus: 1, com1GSI: 3, keyboardGSI: 9, into: try makeMemory())
        let dsdt = try XCTUnwrap(tables.table("DSDT")).bytes
        func interrupts(gsi: UInt8) -> Int {
            // An Extended Interrupt descriptor: edge, active high, exclusive, one GSI.
            let needle: [UInt8] = [0x89, 0x06, 0x00, 0x03, 0x01, gsi, 0, 0, 0]
            return (0...(dsdt.count - needle.count)).filter { Array(dsdt[$0..<$0 + needle.count]) == needle }.count
        }
        XCTAssertEqual(interrupts(gsi: 3), 1, "COM1 on GSI 3")
        XCTAssertEqual(interrupts(gsi: 9), 1, "the keyboard on GSI 9")
        XCTAssertThrowsError(try ACPIBoot.write(cpus: 1, com1GSI: 1, keyboardGSI: 1, into: try makeMemory()), "one pin for both")
    }

    func testThe32VCPUMachineWithEveryFreePinFits() throws {
        // vcpu_count's limit, and a virtio device on every pin the keyboard and COM1 do not use.
        let pins = (0..<24).filter { $0 != 1 && $0 != 4 }
        let devices = pins.enumerated().map { VirtioMMIODevice(base: 0xd000_0000 + UInt64($0) * 0x1000, gsi: UInt32($1)) }
        let tables = try ACPIBoot.write(cpus: 32, virtioDevices: devices, into: try makeMemory())
        XCTAssertLessThanOrEqual(tables.extent.upperBound, X86Layout.acpiTablesEnd)
    }
}
