import Foundation
import XCTest

/// Interrupt windows and priorities at instruction boundaries (issue 16, item 3), end to end with the `windows`
/// guest: this host's KVM honours request_interrupt_window late or not at all, so the vCPU single-steps while a
/// vector waits (WindowStepper) and injects at the first boundary that allows it.
final class InterruptWindowGuestTests: GuestTestCase {
    func testPendingVectorsAreTakenInPriorityOrderAtTheFirstBoundariesTheWindowAllows() throws {
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("windows.elf"), args: "rounds=100"))
        XCTAssertEqual(run.wait(timeout: 300), 1, run.stderr)
        let lines = run.stdout.split(separator: "\n").map(String.init)
        // 0x60 then 0x50, neither in the STI shadow, both before the `cli`; `int 0x41` in the shadow before 0x50.
        XCTAssertEqual(lines.first, "windows: pair=60,50 in_shadow=0 before_cli=2 intsti=41,50")
        let wait = try XCTUnwrap(lines.dropFirst().first)
        XCTAssertTrue(wait.hasSuffix(" lost=0"), wait)
        let fields = wait.split(separator: " ").compactMap { f -> String? in
            let kv = f.split(separator: "=")
            guard kv.count == 2, kv[0] != "lost", let v = Double(kv[1]) else { return nil }
            return (try? Harness.guestMilliseconds(v)).map { "\(kv[0]) \(Int($0 * 1000)) us" }
        }
        FileHandle.standardError.write(Data("STI to the pending interrupt's handler: \(wait) (\(fields.joined(separator: ", ")))\n".utf8))
    }
}
