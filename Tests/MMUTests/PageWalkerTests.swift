import Memory
import System
import XCTest

/// The walker on hand-built tables, for every mode (including those this host's KVM cannot translate).
final class PageWalkerTests: XCTestCase {
    var memory: GuestMemory!
    var walker: PageWalker { PageWalker(memory: memory) }
    let P: UInt64 = 1, RW: UInt64 = 2, US: UInt64 = 4, A: UInt64 = 0x20, D: UInt64 = 0x40, PS: UInt64 = 0x80, XD: UInt64 = 1 << 63

    override func setUpWithError() throws {
        let fd = try MemFD.create(name: "walker-test", size: 16 << 20)
        memory = try GuestMemory(fd: fd.raw, size: 16 << 20)
    }

    func code(_ e: Error) -> UInt32? { if case .pageFault(let f)? = e as? WalkError { return f.errorCode } else { return nil } }

    func long(_ cr4: UInt64 = 0x20, wp: Bool = true, nxe: Bool = true) -> PagingContext {
        PagingContext(cr0: 0x8000_0011 | (wp ? 1 << 16 : 0), cr3: 0x1000, cr4: cr4, efer: 0x500 | (nxe ? 0x800 : 0), physicalAddressBits: 46)
    }

    /// 4-level: VA 0x40_0000_1000 -> PML4[0] -> PDPT[1] -> PD[0] -> PT[1] -> frame 0x9000, with leaf flags `leaf`.
    func map4(leaf: UInt64, upper: UInt64 = 7) throws {
        try memory.store(0x2000 | upper, at: 0x1000)
        try memory.store(0x3000 | upper, at: 0x2000 + 1 * 8)
        try memory.store(0x4000 | upper, at: 0x3000)
        try memory.store(0x9000 | leaf, at: 0x4000 + 1 * 8)
    }
    let va4: UInt64 = (1 << 30) | 0x1234

    func testFourLevelTranslationAndAccessedDirty() throws {
        try map4(leaf: P | RW | US)
        let t = try walker.translate(va4, [], context: long())
        XCTAssertEqual(t.physicalAddress, 0x9234)
        XCTAssertEqual(try memory.load(UInt64.self, at: 0x4008) & (A | D), A, "a read sets A, not D")
        _ = try walker.translate(va4, .write, context: long())
        XCTAssertEqual(try memory.load(UInt64.self, at: 0x4008) & (A | D), A | D)
        XCTAssertEqual(try memory.load(UInt64.self, at: 0x1000) & (A | D), A, "upper levels get A only")
    }

    func testFaultCodes() throws {
        try map4(leaf: P | US)  // read-only user page
        XCTAssertThrowsError(try walker.translate(va4, [.write, .user], context: long())) { XCTAssertEqual(code($0), 0x7) }
        XCTAssertNoThrow(try walker.translate(va4, .write, context: long(wp: false)), "CR0.WP=0 lets supervisor writes through")
        XCTAssertThrowsError(try walker.translate(va4, .write, context: long(wp: true))) { XCTAssertEqual(code($0), 0x3) }
        XCTAssertThrowsError(try walker.translate(va4 + 0x1000, [.user], context: long())) { XCTAssertEqual(code($0), 0x4, "not present") }
        try map4(leaf: P | RW)  // supervisor page
        XCTAssertThrowsError(try walker.translate(va4, [.user], context: long())) { XCTAssertEqual(code($0), 0x5) }
        try map4(leaf: P | RW | US | XD)
        XCTAssertThrowsError(try walker.translate(va4, [.fetch, .user], context: long())) { XCTAssertEqual(code($0), 0x15) }
        XCTAssertThrowsError(try walker.translate(va4, [.fetch], context: long(nxe: false))) { XCTAssertEqual(code($0), 0x9, "XD without NXE is reserved") }
    }

    func testSMEPAndSMAP() throws {
        try map4(leaf: P | RW | US)
        let smep = long(0x20 | 1 << 20), smap = long(0x20 | 1 << 21)
        XCTAssertThrowsError(try walker.translate(va4, .fetch, context: smep)) { XCTAssertEqual(code($0), 0x11) }
        XCTAssertNoThrow(try walker.translate(va4, [.fetch, .user], context: smep))
        XCTAssertThrowsError(try walker.translate(va4, [], context: smap)) { XCTAssertEqual(code($0), 0x1) }
        XCTAssertNoThrow(try walker.translate(va4, [], context: smap, alignmentCheck: true), "EFLAGS.AC lifts SMAP")
        XCTAssertThrowsError(try walker.translate(va4, .implicit, context: smap, alignmentCheck: true), "not for implicit accesses")
    }

    func testLargePagesReservedBitsAndCanonical() throws {
        try memory.store(0x2000 | 7, at: 0x1000)
        try memory.store(0x4000_0000 | 0x87, at: 0x2000 + 8)  // 1 GiB page at 1 GiB
        XCTAssertEqual(try walker.translate(va4, [], context: long()).physicalAddress, 0x4000_1234)
        var noGB = long()
        noGB.gigabytePages = false
        XCTAssertThrowsError(try walker.translate(va4, [], context: noGB)) { XCTAssertEqual(code($0), 0x9) }
        try memory.store(0x3000 | 7, at: 0x2000 + 8)
        try memory.store(0x20_0000 | 0x87, at: 0x3000)  // 2 MiB page
        XCTAssertEqual(try walker.translate(va4, [], context: long()).pageSize, 2 << 20)
        try memory.store(0x20_0000 | 0x87 | 0x2000, at: 0x3000)  // bit 13 inside a 2 MiB frame is reserved
        XCTAssertThrowsError(try walker.translate(va4, [], context: long())) { XCTAssertEqual(code($0), 0x9) }
        try memory.store(0x20_0000 | 0x87 | (1 << 50), at: 0x3000)  // above MAXPHYADDR 46
        XCTAssertThrowsError(try walker.translate(va4, [], context: long())) { XCTAssertEqual(code($0), 0x9) }
        XCTAssertThrowsError(try walker.translate(0x0000_8000_0000_0000, [], context: long())) {
            XCTAssertEqual($0 as? WalkError, .nonCanonical(0x0000_8000_0000_0000))
        }
    }

    func testFiveLevel() throws {
        // PML5[1] -> PML4[0] -> PDPT[0] -> PD[0] 2 MiB page at 6 MiB.
        try memory.store(0x2000 | 7, at: 0x1000 + 8)
        try memory.store(0x3000 | 7, at: 0x2000)
        try memory.store(0x4000 | 7, at: 0x3000)
        try memory.store(0x60_0000 | 0x87, at: 0x4000)
        let va = (UInt64(1) << 48) | 0x1234
        XCTAssertEqual(try walker.translate(va, [], context: long(0x20 | 1 << 12)).physicalAddress, 0x60_1234)
        XCTAssertThrowsError(try walker.translate(va, [], context: long()), "without LA57 the address is not canonical")
    }

    func testThirtyTwoBitWithPSEAndPSE36() throws {
        let c = PagingContext(cr0: 0x8001_0011, cr3: 0x1000, cr4: 0x10, efer: 0, physicalAddressBits: 40)
        try memory.store(UInt32(0x2000 | 7), at: 0x1000 + 1 * 4)  // PDE[1] -> PT at 0x2000
        try memory.store(UInt32(0x5000 | 5), at: 0x2000 + 3 * 4)  // PTE[3] -> 0x5000 user read-only
        XCTAssertEqual(try walker.translate(0x40_3abc, [], context: c).physicalAddress, 0x5abc)
        XCTAssertThrowsError(try walker.translate(0x40_3abc, [.write, .user], context: c)) { XCTAssertEqual(code($0), 0x7) }
        try memory.store(UInt32(0x0080_0000 | (0x3 << 13) | 0x87), at: 0x1000 + 2 * 4)  // 4 MiB page, PSE-36 bits 33:32 = 3
        XCTAssertEqual(try walker.translate(0x80_0010, [], context: c).physicalAddress, 0x3_0080_0010)
        let noPSE = PagingContext(cr0: 0x8001_0011, cr3: 0x1000, cr4: 0, efer: 0)
        XCTAssertNotEqual(try? walker.translate(0x80_0010, [], context: noPSE).physicalAddress, 0x3_0080_0010)
        XCTAssertEqual(try memory.load(UInt32.self, at: 0x2000 + 12) & 0x20, 0x20, "A set in the 32-bit PTE")
    }

    func testPAE() throws {
        let c = PagingContext(cr0: 0x8001_0011, cr3: 0x1000, cr4: 0x20, efer: 0x800, physicalAddressBits: 40)
        try memory.store(UInt64(0x2000 | 1), at: 0x1000 + 1 * 8)  // PDPTE[1]
        try memory.store(UInt64(0x3000 | 7), at: 0x2000)  // PDE[0] -> PT
        try memory.store(UInt64(0x7000 | 7) | XD, at: 0x3000 + 2 * 8)
        let va: UInt64 = 0x4000_2010
        XCTAssertEqual(try walker.translate(va, [], context: c).physicalAddress, 0x7010)
        XCTAssertThrowsError(try walker.translate(va, .fetch, context: c)) { XCTAssertEqual(code($0), 0x11) }
        try memory.store(UInt64(0x2000 | 1 | 2), at: 0x1000 + 1 * 8)  // R/W is reserved in a PDPTE
        XCTAssertThrowsError(try walker.translate(va, [], context: c)) { XCTAssertEqual(code($0), 0x9) }
    }

    func testPagingOffAndTableOutsideRAM() throws {
        let off = PagingContext(cr0: 0x11, cr3: 0, cr4: 0, efer: 0)
        XCTAssertEqual(try walker.translate(0x1_2345_6789, [], context: off).physicalAddress, 0x2345_6789)
        var c = long()
        c.cr3 = 64 << 20
        XCTAssertThrowsError(try walker.translate(va4, [], context: c)) { XCTAssertEqual($0 as? WalkError, .tableOutsideRAM(64 << 20)) }
    }

    func testMMUReadsAcrossPagesAndTLB() throws {
        try map4(leaf: P | RW | US)
        try memory.store(0xa000 | 7, at: 0x4000 + 2 * 8)  // the next virtual page -> 0xa000
        try memory.write(Array(repeating: 0x11, count: 4096), at: 0x9000)
        try memory.write(Array(repeating: 0x22, count: 4096), at: 0xa000)
        let mmu = MMU(memory: memory, context: long())
        let bytes = try mmu.read(va4 - 0x234 + 0xffe, count: 4)
        XCTAssertEqual(bytes, [0x11, 0x11, 0x22, 0x22])
        _ = try mmu.translate(va4, [])
        let before = mmu.hits
        _ = try mmu.translate(va4 + 8, [])
        XCTAssertEqual(mmu.hits, before + 1)
        XCTAssertThrowsError(try mmu.write([1], at: va4 + 0x2000), "unmapped page: nothing written, fault reported")
        var c = long()
        c.cr3 = 0x1000
        c.cr4 |= 1 << 21
        mmu.update(c)  // SMAP on: the cached supervisor read must not be reused
        XCTAssertThrowsError(try mmu.translate(va4, []))
    }
}
