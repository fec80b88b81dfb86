import XCTest
@testable import Sandbox
@testable import SeccompPolicy

/// The filter as the kernel runs it: libseccomp's program, interpreted instruction by instruction.
final class FilterTraceTests: XCTestCase {
    let constants: [String: UInt64] = ["KVM_RUN": 0xae80, "KVM_NMI": 0xae9a, "KVM_GET_REGS": 0x8090_ae81, "ENOSYS": 38]
    let (ioctl, read, openat, clone3): (Int32, Int32, Int32, Int32) = (16, 0, 257, 435)

    func program(_ text: String) throws -> SeccompFilter.Program {
        try SeccompFilter.program(try Policy.parse(text, file: "t.policy", constants: constants, requireComments: false))
    }

    func testTheVerdictsAreThePolicys() throws {
        let p = try program("""
        read: 1
        ioctl: arg1 == KVM_RUN || arg1 == KVM_NMI || arg1 == KVM_GET_REGS
        clone3: return ENOSYS
        """)
        XCTAssertEqual(p.evaluate(syscall: read)?.allows, true)
        for request: UInt64 in [0xae80, 0xae9a, 0x8090_ae81] {
            XCTAssertEqual(p.evaluate(syscall: ioctl, arguments: [3, request])?.allows, true, "ioctl 0x\(String(request, radix: 16))")
        }
        // Not in the list, and KVM_RUN with bits above the 32 the kernel reads: the default action, SIGSYS.
        for request: UInt64 in [0xae01, 0x1_0000_ae80, 0xffff_ffff_0000_ae80] {
            XCTAssertEqual(p.evaluate(syscall: ioctl, arguments: [3, request])?.action, 0x0003_0000, "ioctl 0x\(String(request, radix: 16))")
        }
        XCTAssertEqual(p.evaluate(syscall: openat)?.action, 0x0003_0000)
        XCTAssertEqual(p.evaluate(syscall: clone3)?.action, 0x0005_0000 | 38, "SECCOMP_RET_ERRNO | ENOSYS")
        // Another architecture's calls (i386's ABI here) never reach the rules.
        XCTAssertEqual(p.evaluate(syscall: read, architecture: 0x4000_0003)?.action, 0, "SECCOMP_RET_KILL_THREAD")
    }

    func testRulesAreTestedInTheFilesOrderAndARulesFirstComparisonFirst() throws {
        let fillers = (0..<20).map { "\(["write", "close", "futex", "ppoll", "poll", "brk", "munmap", "madvise", "mremap", "getpid", "gettid", "exit", "exit_group", "nanosleep", "sched_yield", "dup", "pipe", "fcntl", "lseek", "pread64"][$0]): 1" }
        let hotFirst = try program((["ioctl: arg1 == KVM_RUN || arg1 == KVM_GET_REGS || arg1 == KVM_NMI"] + fillers).joined(separator: "\n"))
        let hotLast = try program((fillers + ["ioctl: arg1 == KVM_NMI || arg1 == KVM_GET_REGS || arg1 == KVM_RUN"]).joined(separator: "\n"))
        let first = try XCTUnwrap(hotFirst.evaluate(syscall: ioctl, arguments: [3, 0xae80]))
        let last = try XCTUnwrap(hotLast.evaluate(syscall: ioctl, arguments: [3, 0xae80]))
        XCTAssertTrue(first.allows && last.allows)
        XCTAssertLessThanOrEqual(first.instructions, 10, "the first rule's first value")
        XCTAssertGreaterThan(last.instructions, first.instructions + 20, "behind 20 rules and two values")
        // A rule's later values keep libseccomp's order, and still pass.
        XCTAssertEqual(hotFirst.evaluate(syscall: ioctl, arguments: [3, 0x8090_ae81])?.allows, true)
    }

    func testAProgramThatReadsOutsideTheCallsDataIsRefused() {
        // ld [64]: past struct seccomp_data.
        let outside = SeccompFilter.Program(instructions: [0x20, 0, 0, 0, 64, 0, 0, 0, 0x06, 0, 0, 0, 0, 0, 0xff, 0x7f], ruleCount: 0)
        XCTAssertNil(outside.evaluate(syscall: read))
        // A jump past the end.
        let away = SeccompFilter.Program(instructions: [0x05, 0, 0, 0, 9, 0, 0, 0], ruleCount: 0)
        XCTAssertNil(away.evaluate(syscall: read))
    }
}
