@testable import Boot
import XCTest

final class MPTableTests: XCTestCase {
    func testFloatingPointerAndTableChecksumsAndEntries() {
        let bytes = MPTable.build(cpus: 3)
        XCTAssertEqual(Array(bytes[0..<4]), Array("_MP_".utf8))
        XCTAssertEqual(bytes[0..<16].reduce(0, &+), 0, "floating pointer checksum")
        let tableAt = Int(UInt32(bytes[4]) | UInt32(bytes[5]) << 8 | UInt32(bytes[6]) << 16 | UInt32(bytes[7]) << 24)
        XCTAssertEqual(UInt64(tableAt), MPTable.address + 16)
        let table = Array(bytes[16...])
        XCTAssertEqual(Array(table[0..<4]), Array("PCMP".utf8))
        let length = Int(table[4]) | Int(table[5]) << 8
        XCTAssertEqual(length, table.count)
        XCTAssertEqual(table.reduce(0, &+), 0, "table checksum")
        // Entries: 3 processors (the first the BSP), the ISA bus, the IOAPIC with ID 3, 16 ISA IRQs, LINT0 and LINT1.
        var at = 44, processors: [(id: UInt8, flags: UInt8)] = [], ioapic: UInt8?, irqs = 0, lints = 0
        while at < table.count {
            switch table[at] {
            case 0: processors.append((table[at + 1], table[at + 3])); at += 20
            case 2: ioapic = table[at + 1]; at += 8
            case 3: XCTAssertEqual(table[at + 5], table[at + 7], "ISA IRQ n on pin n"); irqs += 1; at += 8
            case 4: lints += 1; at += 8
            default: at += 8
            }
        }
        XCTAssertEqual(processors.map(\.id), [0, 1, 2])
        XCTAssertEqual(processors.map(\.flags), [3, 1, 1])
        XCTAssertEqual(ioapic, 3)
        XCTAssertEqual(irqs, 16)
        XCTAssertEqual(lints, 2)
    }
}
