import XCTest
@testable import Emulator

/// The encodings the fallback relies on, in each mode: lengths, operations, operand sizes, text.
final class DecoderTests: XCTestCase {
    func check(_ bytes: [UInt8], _ mode: CPUMode, length: Int, _ op: DecodedInstruction.MessageKind, size: Int? = nil,
               text: String, file: StaticString = #filePath, line: UInt = #line) {
        guard let d = InstructionDecoder.decode(bytes + [0x90, 0x90], mode: mode) else {
            return XCTFail("\(bytes) did not decode in \(mode)", file: file, line: line)
        }
        XCTAssertEqual(d.length, length, "length of \(text)", file: file, line: line)
        XCTAssertEqual(d.operation, op, file: file, line: line)
        if let size { XCTAssertEqual(d.operandSize, size, "operand size of \(text)", file: file, line: line) }
        XCTAssertEqual(d.text, text, file: file, line: line)
    }

    func testSoftwareInterrupts() {
        for mode in [CPUMode.real16, .protected32, .long64] {
            check([0xcc], mode, length: 1, .int3, text: "int3")
            check([0xcd, 0x80], mode, length: 2, .int(0x80), text: "int 0x80")
        }
        check([0xce], .protected32, length: 1, .into, text: "into")
        check([0xce], .real16, length: 1, .into, text: "into")
        XCTAssertNil(InstructionDecoder.decode([0xce], mode: .long64), "INTO does not exist in 64-bit mode")
    }

    func testFWAIT() {
        check([0x9b], .real16, length: 1, .fwait, text: "fwait")
        check([0x9b], .long64, length: 1, .fwait, text: "fwait")
    }

    func testIRETOperandSizes() {
        check([0xcf], .real16, length: 1, .iret, size: 16, text: "iret")
        check([0x66, 0xcf], .real16, length: 2, .iret, size: 32, text: "iretd")
        check([0xcf], .protected32, length: 1, .iret, size: 32, text: "iretd")
        check([0x66, 0xcf], .protected32, length: 2, .iret, size: 16, text: "iret")
        check([0x48, 0xcf], .long64, length: 2, .iret, size: 64, text: "iretq")
        check([0xcf], .long64, length: 1, .iret, size: 32, text: "iretd")
    }

    func testOtherInstructionsForCrashReports() {
        check([0x0f, 0x0b], .long64, length: 2, .other, text: "ud2")
        check([0x48, 0x8b, 0x04, 0x25, 0x00, 0x10, 0x00, 0x00], .long64, length: 8, .other, text: "mov rax, [0x0000000000001000]")
        check([0xb8, 0x78, 0x56, 0x34, 0x12], .protected32, length: 5, .other, text: "mov eax, 0x12345678")
        check([0xb8, 0x34, 0x12], .real16, length: 3, .other, text: "mov ax, 0x1234")
        check([0xf0, 0x48, 0x0f, 0xc7, 0x0e], .long64, length: 5, .other, text: "lock cmpxchg16b [rsi]")
        XCTAssertNil(InstructionDecoder.decode([0x0f], mode: .long64), "a truncated instruction does not decode")
        XCTAssertNil(InstructionDecoder.decode([0x0f, 0xff], mode: .long64))
    }
}
