import XCTest
@testable import Emulator

/// The double-fault rules of SDM table 6-5, every pair of classes.
final class DoubleFaultTests: XCTestCase {
    func testClasses() {
        for v: UInt8 in [0, 10, 11, 12, 13] { XCTAssertEqual(DoubleFault.classify(exception: v), .contributory, "vector \(v)") }
        for v: UInt8 in [14, 20] { XCTAssertEqual(DoubleFault.classify(exception: v), .pageFault, "vector \(v)") }
        XCTAssertEqual(DoubleFault.classify(exception: 8), .doubleFault)
        for v: UInt8 in [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 0x20, 0x80, 0xff] {
            XCTAssertEqual(DoubleFault.classify(exception: v), .benign, "vector \(v)")
        }
    }

    func testTheWholeTable() {
        let table: [(DoubleFault.EventClass, DoubleFault.EventClass, DoubleFault.Outcome)] = [
            (.benign, .benign, .deliverSecond), (.benign, .contributory, .deliverSecond), (.benign, .pageFault, .deliverSecond),
            (.contributory, .benign, .deliverSecond), (.contributory, .contributory, .doubleFault),
            (.contributory, .pageFault, .deliverSecond),
            (.pageFault, .benign, .deliverSecond), (.pageFault, .contributory, .doubleFault), (.pageFault, .pageFault, .doubleFault),
            (.doubleFault, .benign, .tripleFault), (.doubleFault, .contributory, .tripleFault),
            (.doubleFault, .pageFault, .tripleFault), (.doubleFault, .doubleFault, .tripleFault),
        ]
        for (first, second, outcome) in table {
            XCTAssertEqual(DoubleFault.combine(first: first, second: second), outcome, "\(first) then \(second)")
        }
    }

    func testNamedCases() {
        func combine(_ a: UInt8, _ b: UInt8) -> DoubleFault.Outcome {
            DoubleFault.combine(first: DoubleFault.classify(exception: a), second: DoubleFault.classify(exception: b))
        }
        XCTAssertEqual(combine(11, 14), .deliverSecond, "#PF while delivering #NP is a #PF")
        XCTAssertEqual(combine(13, 11), .doubleFault, "#NP while delivering #GP is #DF")
        XCTAssertEqual(combine(14, 14), .doubleFault)
        XCTAssertEqual(combine(14, 13), .doubleFault)
        XCTAssertEqual(combine(8, 11), .tripleFault)
        XCTAssertEqual(combine(3, 13), .deliverSecond, "INT3 is benign")
    }
}

/// Gate and segment checks of event delivery on hand-built tables (Intel SDM vol. 3, 6.12.1, 6.14.1).
final class InterruptGateTests: XCTestCase {
    /// Guest memory: bytes by linear address; pages in `unmapped` fault as the CPU's walk would (not present).
    final class Memory: InterruptGate.Memory {
        var bytes: [UInt64: UInt8] = [:]
        var unmapped: Set<UInt64> = []

        func put(_ v: UInt64, at a: UInt64, size: Int = 8) { for i in 0..<size { bytes[a + UInt64(i)] = UInt8((v >> (8 * UInt64(i))) & 0xff) } }
        func read(_ linear: UInt64, count: Int) throws -> [UInt8] {
            try (0..<UInt64(count)).map { i in
                let a = linear &+ i
                if unmapped.contains(a >> 12) { throw InterruptGate.Fault(vector: 14, errorCode: 0, address: a) }
                return bytes[a] ?? 0
            }
        }
        func checkWrite(_ linear: UInt64, count: Int, user: Bool) throws {
            for i in 0..<UInt64(count) where unmapped.contains((linear &+ i) >> 12) {
                throw InterruptGate.Fault(vector: 14, errorCode: 2 | (user ? 4 : 0), address: linear &+ i)
            }
        }
    }

    static let gdt: UInt64 = 0x1000, idt: UInt64 = 0x2000, tss: UInt64 = 0x3000
    let memory = Memory()

    /// Long-mode tables: 0x08 code, 0x10 data, 0x18 code not present, 0x20 user code (DPL3), 0x28 32-bit code.
    override func setUp() {
        for (i, d) in [0, 0x00af9a000000ffff, 0x00cf92000000ffff, 0x00af1a000000ffff, 0x00affa000000ffff, 0x00cf9a000000ffff].enumerated() {
            memory.put(UInt64(d), at: Self.gdt + UInt64(i) * 8)
        }
        memory.put(0x9000, at: Self.tss + 4)            // RSP0
        memory.put(0x4_0000_2000, at: Self.tss + 0x24)  // IST1: on an unmapped page
        memory.unmapped.insert(0x4_0000_1000 >> 12)
    }

    func gate64(_ vector: UInt8, selector: UInt16 = 0x08, attr: UInt8 = 0x8e, ist: UInt8 = 0) {
        let offset: UInt64 = 0x4000
        memory.put((offset & 0xffff) | UInt64(selector) << 16 | UInt64(ist) << 32 | UInt64(attr) << 40 | (offset >> 16) << 48,
                   at: Self.idt + UInt64(vector) * 16)
        memory.put(offset >> 32, at: Self.idt + UInt64(vector) * 16 + 8)
    }

    func long(cpl: Int = 0, rsp: UInt64 = 0x8008) -> InterruptGate.Context {
        InterruptGate.Context(mode: .long64, cpl: cpl, idtBase: Self.idt, idtLimit: 0x50 * 16 - 1, gdtBase: Self.gdt,
                              gdtLimit: 6 * 8 - 1, trBase: Self.tss, trLimit: 0x67, rsp: rsp)
    }

    func check(_ vector: UInt8, _ context: InterruptGate.Context, _ source: InterruptGate.Source = .software,
               error: Bool = false) throws -> InterruptGate.Delivery {
        try InterruptGate.check(vector: vector, source: source, hasErrorCode: error, context: context, memory: memory)
    }

    func expectFault(_ vector: UInt8, _ context: InterruptGate.Context, source: InterruptGate.Source = .software,
                     _ expected: InterruptGate.Fault, _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try check(vector, context, source), message, file: file, line: line) { error in
            XCTAssertEqual(error as? InterruptGate.Fault, expected, message, file: file, line: line)
        }
    }

    func testLongModeDelivery() throws {
        gate64(0x40)
        XCTAssertEqual(try check(0x40, long()), .init(codeSelector: 8, newCPL: 0, stackTop: 0x8000, frameBytes: 40),
                       "same privilege: the current stack, aligned to 16")
        gate64(0x41, attr: 0xee)
        XCTAssertEqual(try check(0x41, long(cpl: 3)), .init(codeSelector: 8, newCPL: 0, stackTop: 0x9000, frameBytes: 40),
                       "from CPL3: RSP0 from the TSS")
        gate64(14)
        XCTAssertEqual(try check(14, long(), .hardware, error: true).frameBytes, 48)
    }

    func testIDTLimitGateTypeDPLAndPresence() {
        expectFault(0x60, long(), .init(vector: 13, errorCode: 0x60 * 8 + 2))
        expectFault(0x60, long(), source: .hardware, .init(vector: 13, errorCode: 0x60 * 8 + 3))
        gate64(0x42, attr: 0x85)
        expectFault(0x42, long(), .init(vector: 13, errorCode: 0x42 * 8 + 2), "a task gate does not exist in long mode")
        gate64(0x49, attr: 0x8c)
        expectFault(0x49, long(), .init(vector: 13, errorCode: 0x49 * 8 + 2), "a call gate is no interrupt gate")
        gate64(0x43, attr: 0x8e)
        expectFault(0x43, long(cpl: 3), .init(vector: 13, errorCode: 0x43 * 8 + 2), "INT n from CPL3 through a DPL0 gate")
        XCTAssertNoThrow(try check(0x43, long(cpl: 3), .hardware), "no DPL check for events from outside the instruction")
        gate64(0x44, attr: 0x0e)
        expectFault(0x44, long(), .init(vector: 11, errorCode: 0x44 * 8 + 2))
        expectFault(0x44, long(), source: .hardware, .init(vector: 11, errorCode: 0x44 * 8 + 3))
        gate64(0x45, attr: 0x0e)
        expectFault(0x45, long(cpl: 3), .init(vector: 13, errorCode: 0x45 * 8 + 2), "the DPL check comes before presence")
    }

    func testTargetCodeSegment() {
        gate64(0x40, selector: 0)
        expectFault(0x40, long(), .init(vector: 13, errorCode: 0))
        expectFault(0x40, long(), source: .hardware, .init(vector: 13, errorCode: 1))
        gate64(0x40, selector: 0x10)
        expectFault(0x40, long(), .init(vector: 13, errorCode: 0x10), "a data segment")
        gate64(0x40, selector: 0x18)
        expectFault(0x40, long(), .init(vector: 11, errorCode: 0x18), "not present: #NP(selector)")
        expectFault(0x40, long(), source: .hardware, .init(vector: 11, errorCode: 0x19))
        gate64(0x40, selector: 0x28)
        expectFault(0x40, long(), .init(vector: 13, errorCode: 0x28), "a 32-bit code segment in long mode")
        gate64(0x40, selector: 0x38)
        expectFault(0x40, long(), .init(vector: 13, errorCode: 0x38), "beyond the GDT limit")
        gate64(0x40, selector: 0x23)
        expectFault(0x40, long(), source: .hardware, .init(vector: 13, errorCode: 0x21), "a DPL3 target from CPL0")
    }

    func testStackFaults() {
        gate64(0x46, ist: 1)
        expectFault(0x46, long(), .init(vector: 14, errorCode: 2, address: 0x4_0000_1ff8), "the first push on the IST stack")
        // A frame that starts on a mapped page and runs into an unmapped one below it: the first push there.
        gate64(0x40)
        memory.unmapped.insert(0x7)
        expectFault(0x40, long(rsp: 0x8010), .init(vector: 14, errorCode: 2, address: 0x7ff8))
        memory.put(0x8000_0000_0000_0000, at: Self.tss + 0x2c)  // IST2: not canonical
        gate64(0x47, ist: 2)
        expectFault(0x47, long(), .init(vector: 12, errorCode: 0))
    }

    /// Protected mode: 8-byte gates, 0x08 32-bit code, 0x10 data, 0x18 DPL3 code, 0x20 DPL3 data, a 32-bit TSS.
    func testProtectedMode() throws {
        for (i, d) in [0, 0x00cf9a000000ffff, 0x00cf92000000ffff, 0x00cffa000000ffff, 0x00cff2000000ffff].enumerated() {
            memory.put(UInt64(d), at: Self.gdt + UInt64(i) * 8)
        }
        memory.put(0x9000, at: Self.tss + 4, size: 4)
        memory.put(0x10, at: Self.tss + 8, size: 2)
        func gate32(_ v: UInt8, attr: UInt8, selector: UInt16 = 8) {
            memory.put(0x4000 | UInt64(selector) << 16 | UInt64(attr) << 40, at: Self.idt + UInt64(v) * 8)
        }
        let pm = { (cpl: Int) in
            InterruptGate.Context(mode: .protected32, cpl: cpl, idtBase: Self.idt, idtLimit: 0x50 * 8 - 1, gdtBase: Self.gdt,
                                  gdtLimit: 5 * 8 - 1, trBase: Self.tss, trLimit: 0x67, rsp: 0x8006)
        }
        gate32(0x40, attr: 0xee)
        XCTAssertEqual(try check(0x40, pm(0)), .init(codeSelector: 8, newCPL: 0, stackTop: 0x8006, frameBytes: 12))
        XCTAssertEqual(try check(0x40, pm(3)), .init(codeSelector: 8, newCPL: 0, stackTop: 0x9000, frameBytes: 20))
        gate32(0x41, attr: 0x86)
        XCTAssertEqual(try check(0x41, pm(0), .hardware, error: true).frameBytes, 8, "a 16-bit gate pushes words")
        expectFault(0x50, pm(0), .init(vector: 13, errorCode: 0x50 * 8 + 2))
        gate32(0x42, attr: 0x8e)
        expectFault(0x42, pm(3), .init(vector: 13, errorCode: 0x42 * 8 + 2))
        gate32(0x43, attr: 0xe5)
        XCTAssertThrowsError(try check(0x43, pm(0))) { XCTAssertTrue($0 is InterruptGate.Unsupported, "a task gate: \($0)") }
        memory.put(0x13, at: Self.tss + 8, size: 2)
        gate32(0x44, attr: 0xee)
        expectFault(0x44, pm(3), .init(vector: 10, errorCode: 0x10), "SS0 with RPL 3: #TS(SS0)")
        memory.put(0x08, at: Self.tss + 8, size: 2)
        expectFault(0x44, pm(3), source: .hardware, .init(vector: 10, errorCode: 0x09), "a code segment as SS0")
    }

    func testRealModeIVTLimit() throws {
        let real = InterruptGate.Context(mode: .real16, cpl: 0, idtBase: 0, idtLimit: 0x3ff, gdtBase: 0, gdtLimit: 0, rsp: 0x7c00)
        XCTAssertEqual(try check(0xff, real).frameBytes, 6)
        var short = real
        short.idtLimit = 0x80 * 4 + 2
        expectFault(0x80, short, .init(vector: 13, errorCode: nil), "the entry's last byte beyond the limit")
    }
}
