import XCTest
@testable import Sandbox
@testable import SeccompPolicy

final class PolicyTests: XCTestCase {
    let constants: [String: UInt64] = ["KVM_RUN": 0xae80, "PROT_READ": 1, "PROT_WRITE": 2, "ENOSYS": 38]

    func testParsesRulesConditionsAndComments() throws {
        let p = try Policy.parse("""
        # reading doorbells
        read: 1
        ioctl: arg1 == KVM_RUN || arg0 == 3 && arg1 != 0x10   # entering the guest
        mmap: arg2 == PROT_READ|PROT_WRITE  # heap
        clone: arg0 & 0x10000 # threads only
        clone3: return ENOSYS # glibc falls back to clone
        """, file: "t.policy", constants: constants)
        XCTAssertEqual(p.rules.map(\.syscall), ["read", "ioctl", "mmap", "clone", "clone3"])
        XCTAssertEqual(p.rules[0].clauses, [])
        XCTAssertEqual(p.rules[0].comment, "reading doorbells")
        XCTAssertEqual(p.rules[1].clauses, [[.init(argument: 1, op: .eq, value: 0xae80)],
                                            [.init(argument: 0, op: .eq, value: 3), .init(argument: 1, op: .ne, value: 0x10)]])
        XCTAssertEqual(p.rules[2].clauses, [[.init(argument: 2, op: .eq, value: 3)]])
        XCTAssertEqual(p.rules[3].clauses, [[.init(argument: 0, op: .allBits, value: 0x10000)]])
        XCTAssertEqual(p.rules[4].errno, 38)
    }

    func testErrorsNameFileAndLine() {
        func error(_ text: String) -> String? {
            do { _ = try Policy.parse(text, file: "x.policy", constants: constants); return nil } catch { return error.description }
        }
        XCTAssertEqual(error("read: 1"), "x.policy:1: rule for read has no comment saying why the role needs it")
        XCTAssertEqual(error("# a\nread: 1\n# b\nread: 1"), "x.policy:4: second rule for read; join them with ||")
        XCTAssertEqual(error("# a\nioctl: arg7 == 1"), "x.policy:2: expected arg0..arg5 in 'arg7 == 1'")
        XCTAssertEqual(error("# a\nioctl: arg1 == KVM_WALK"), "x.policy:2: unknown value 'KVM_WALK'")
        XCTAssertEqual(error("# a\nioctl arg1"), "x.policy:2: expected 'syscall: expression'")
    }

    func testIncludesExpandWithTheirOwnLineNumbers() throws {
        let files = ["/p/role.policy": "# top\n@include common.policy\n# x\nbogus line", "/p/common.policy": "# c\nread: 1"]
        let text = try PolicySource.load("role.policy", directory: "/p") { files[$0] }
        XCTAssertThrowsError(try Policy.parse(text, file: "role.policy", constants: constants)) {
            XCTAssertEqual(($0 as? Policy.ParseError)?.description, "role.policy:4: expected 'syscall: expression'")
        }
        let cyclic = ["/p/a.policy": "@include b.policy", "/p/b.policy": "@include a.policy"]
        XCTAssertThrowsError(try PolicySource.load("a.policy", directory: "/p") { cyclic[$0] })
        XCTAssertThrowsError(try PolicySource.load("a.policy", directory: "/p") { _ in nil })
    }

    func testLibseccompAcceptsRulesAndRefusesUnknownCalls() throws {
        let good = try Policy.parse("# r\nread: 1\n# i\nioctl: arg1 == KVM_RUN\n# c\nclone3: return ENOSYS", file: "g", constants: constants)
        XCTAssertNoThrow(SeccompFilter.release(try SeccompFilter.compile(good)))
        let bad = try Policy.parse("# r\nnot_a_syscall: 1", file: "b", constants: constants)
        XCTAssertThrowsError(try SeccompFilter.compile(bad))
        XCTAssertEqual(SeccompFilter.name(of: 257), "openat")
    }

    /// The launcher compiles a filter and hands it to a forked helper as bytes: they come back as the same program,
    /// and bytes that are not a rule count and whole BPF instructions are refused.
    func testACompiledProgramSurvivesItsBytesAndBrokenBytesAreRefused() throws {
        let program = try SeccompFilter.program(Policy.parse("# r\nread: 1\n# w\nwrite: 1", file: "p", constants: constants))
        XCTAssertEqual(program.ruleCount, 2)
        XCTAssertGreaterThan(program.instructions.count, 0)
        XCTAssertEqual(program.instructions.count % 8, 0)
        let bytes = program.serialized
        XCTAssertEqual(SeccompFilter.Program(serialized: bytes), program)
        XCTAssertNil(SeccompFilter.Program(serialized: Array(bytes.dropLast())), "a torn instruction")
        XCTAssertNil(SeccompFilter.Program(serialized: Array(bytes.prefix(8))), "a count and no instruction")
        XCTAssertNil(SeccompFilter.Program(serialized: [UInt8]()))
    }
}
