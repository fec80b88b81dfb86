import CKVM
import Machine
import XCTest
@testable import Processes
@testable import Sandbox
@testable import SeccompPolicy

/// The built-in policies' filters, as helpers load them (compiled into vmm), run on the calls each role makes most.
final class RolePolicyTests: XCTestCase {
    func program(_ role: Role) throws -> SeccompFilter.Program {
        try XCTUnwrap(BuiltinPolicies.program(file: role.policyFile), "\(role)")
    }

    func testTheProgramsCompiledIntoVMMAreTheBuiltInTextsCompiledNow() throws {
        for role in Role.allCases {
            let text = try BuiltinPolicies.load(file: role.policyFile, directory: nil) { _ in nil }
            let policy = try Policy.parse(text, file: role.policyFile, constants: PolicyConstants.table)
            let built = try program(role)
            XCTAssertEqual(built, try SeccompFilter.program(policy), "\(role)")
            XCTAssertEqual(built.ruleCount, policy.rules.count, "\(role)")
        }
    }

    func testTheVCPUsKVMRunPassesTheFilterFirst() throws {
        // One KVM_RUN per exit: 56 BPF instructions in libseccomp's own order, 10 with the ioctl rule first.
        let run = try XCTUnwrap(try program(.vcpu).evaluate(syscall: 16, arguments: [4, UInt64(VMM_KVM_RUN)]))
        XCTAssertTrue(run.allows)
        XCTAssertLessThanOrEqual(run.instructions, 10)
    }

    func testOnlyTheVCPUProcessMayEnterTheGuest() throws {
        for role in Role.allCases {
            let verdict = try XCTUnwrap(try program(role).evaluate(syscall: 16, arguments: [4, UInt64(VMM_KVM_RUN)]), "\(role)")
            XCTAssertEqual(verdict.allows, role == .vcpu, "\(role)")
        }
    }

    func testEveryRolesDoorbellCallsAreCheap() throws {
        // read and write ring and answer doorbells: common.policy's first rules (after ioctl in vcpu.policy).
        for role in Role.allCases {
            let p = try program(role)
            for call: Int32 in [0, 1] {
                let v = try XCTUnwrap(p.evaluate(syscall: call, arguments: [5, 0, 8]))
                XCTAssertTrue(v.allows, "\(role) \(call)")
                XCTAssertLessThanOrEqual(v.instructions, 10, "\(role) \(call)")
            }
        }
    }
}
