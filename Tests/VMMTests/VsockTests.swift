import Foundation
import XCTest

/// The vsock device's host side without Linux (the data path runs in LinuxGuestTests, which has a driver): the
/// socket at uds_path is vmm's to make and remove, an existing path is refused, and the device process runs in its
/// sandbox with its policy (seccomp log mode reports no denial while it accepts and reads host connections).
final class VsockTests: GuestTestCase {
    private func config(udsPath: String) throws -> String {
        Harness.config(kernel: try Harness.guest("portloop.elf"), args: "iters=100000000000",
                       extra: "").replacingOccurrences(of: #""vmm": {"#, with: #""vsock": {"guest_cid": 3, "uds_path": "\#(udsPath)"}, "vmm": {"#)
    }

    func testTheSocketIsMadeServedAndRemovedAndAnExistingPathIsRefused() throws {
        let path = NSTemporaryDirectory() + "vmm-vsock-\(getpid()).sock"
        unlink(path)
        let run = try Harness.run(config: try config(udsPath: path), options: ["--seccomp-log"])
        XCTAssertTrue(run.waitForOutput("portloop: ready"), run.stderr)
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0, "vmm made the socket")
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
        // A host program connects; without a driver in the guest nothing answers, but the device accepts and reads.
        let fd = try XCTUnwrap(HostSockets.unixSocket(connectingTo: path))
        XCTAssertTrue(HostSockets.writeAll(fd, Data("CONNECT 5000\n".utf8)))
        // A second VM on the same path is refused before it starts anything.
        let second = try Harness.run(config: try config(udsPath: path))
        XCTAssertEqual(second.wait(timeout: 20), 4, second.stderr)
        XCTAssertTrue(second.stderr.contains("vsock.uds_path: \(path): exists already"), second.stderr)
        close(fd)
        kill(run.process.processIdentifier, SIGINT)
        XCTAssertEqual(run.wait(timeout: 20), 130, run.stderr)
        XCTAssertFalse(run.stderr.contains("policy denies"), run.stderr)
        XCTAssertNotEqual(stat(path, &st), 0, "vmm removed its socket")
    }
}
