import BareLoop
import Foundation
import KVM
import Memory
import TestSupport
import XCTest

/// Our walker's page-fault error codes against the ones the guest's own #PF handler receives.
final class GuestPageFaultTests: XCTestCase {
    static let guestDirectory: Result<String, Error> = Result {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try TestGuests.build(sourceRoot: root.path, into: ScratchDirectory.forThisProcess("mmu-test-guests"))
    }

    func testWalkerMatchesTheGuestsOwnPageFaultHandler() throws {
        if access("/dev/kvm", R_OK | W_OK) != 0 {
            FileHandle.standardError.write(Data("SKIPPED: /dev/kvm is not usable here; this test needs real KVM\n".utf8))
            throw XCTSkip("SKIPPED: /dev/kvm is not usable here")
        }
        let kernel = Array(try Data(contentsOf: URL(fileURLWithPath: try Self.guestDirectory.get() + "/pagefaults.elf")))
        let vm = try BareVM(kernel: kernel, cmdline: "")
        let result = try vm.run()
        let output = String(decoding: result.output, as: UTF8.self)
        XCTAssertEqual(result.exitStatus, 1, output)
        XCTAssertTrue(output.contains("pagefaults: done 9\n"), output)

        // The guest's paging registers at the end are those the probes ran under.
        let context = try vm.vcpu.pagingContext()
        XCTAssertEqual(context.mode, .level4)
        let walker = PageWalker(memory: vm.memory)
        var checked = 0
        for line in output.split(separator: "\n") where line.hasPrefix("pf ") {
            var fields: [String: String] = [:]
            for f in line.split(separator: " ").dropFirst() {
                let kv = f.split(separator: "=", maxSplits: 1)
                fields[String(kv[0])] = String(kv[1])
            }
            let va = try XCTUnwrap(UInt64(fields["va"]!.dropFirst(2), radix: 16))
            let code = try XCTUnwrap(UInt32(fields["code"]!.dropFirst(2), radix: 16))
            var access: AccessKind = fields["cpl"] == "3" ? .user : []
            switch fields["kind"] {
            case "w": access.insert(.write)
            case "x": access.insert(.fetch)
            default: break
            }
            XCTAssertThrowsError(try walker.translate(va, access, context: context), "\(line)") {
                guard case .pageFault(let f)? = $0 as? WalkError else { return XCTFail("\(line): \($0)") }
                XCTAssertEqual(f.errorCode, code, "\(line)")
                XCTAssertEqual(f.address, va, "\(line)")
            }
            checked += 1
        }
        XCTAssertEqual(checked, 9)
        // And the accesses the guest made without a fault translate.
        XCTAssertNoThrow(try walker.translate(0x4000_1000, [], context: context))
        XCTAssertNoThrow(try walker.translate(0x4000_2000, [.user], context: context))
    }
}
