import Foundation
import XCTest

/// Configs written by an attacker: the real vmm binary must refuse each one with status 2 and a message naming the
/// field, before it writes anything or starts a helper. None of these needs /dev/kvm.
final class HostileConfigTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "vmm-hostile-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// A file that passes the config's checks for a kernel (readable, regular) but is no image.
    func dummyKernel() -> String {
        let path = directory + "/kernel"
        FileManager.default.createFile(atPath: path, contents: Data([0x7f, 0x45, 0x4c, 0x46]))
        return path
    }

    func testALogPathThatIsASymbolicLinkIsRefusedAndItsTargetIsUntouched() throws {
        let victim = directory + "/victim", link = directory + "/vmm.log"
        try "precious\n".write(toFile: victim, atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: victim)
        let config = """
        {"boot-source": {"kernel_image_path": "\(dummyKernel())"}, "machine-config": {"mem_size_mib": 8},
         "logger": {"log_path": "\(link)", "level": "Debug"}}
        """
        let run = try Harness.run(config: config)
        XCTAssertEqual(run.wait(timeout: 20), 2, run.stderr)
        XCTAssertTrue(run.stderr.contains("logger.log_path") && run.stderr.contains("is a symbolic link"), run.stderr)
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "precious\n", "the link's target was written")
    }

    func testAConfigThatNamesAPolicyDirectoryIsRefused() throws {
        let permissive = directory + "/permissive"
        try FileManager.default.createDirectory(atPath: permissive, withIntermediateDirectories: false)
        let config = """
        {"boot-source": {"kernel_image_path": "\(dummyKernel())"}, "machine-config": {"mem_size_mib": 8},
         "vmm": {"sandbox": {"policy_dir": "\(permissive)"}}}
        """
        for command in ["validate", "run"] {
            let run = try Harness.Run(arguments: [command, "--config-file", try Harness.writeConfig(config)])
            XCTAssertEqual(run.wait(timeout: 20), 2, command + ": " + run.stderr)
            XCTAssertTrue(run.stderr.contains("vmm.sandbox.policy_dir: not allowed: the seccomp policies are built into vmm"), run.stderr)
        }
    }

    /// An empty policy directory: wherever vmm takes policies from it, the supervisor fails before any helper starts.
    func brokenPolicyDirectory() throws -> String {
        let broken = directory + "/broken"
        try FileManager.default.createDirectory(atPath: broken, withIntermediateDirectories: false)
        return broken
    }

    func testThePolicyDirectoryInTheEnvironmentIsIgnored() throws {
        try Harness.requireKVM()
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("hello.elf"), args: "say=builtin exit=4"),
                                  environment: ["VMM_POLICY_DIR": try brokenPolicyDirectory()])
        XCTAssertEqual(run.wait(timeout: 20), 9, run.stderr)
        XCTAssertEqual(run.stdout, "Hello from the guest: builtin\n")
    }

    func testTheUnsafePolicyDirectoryOptionIsUsedAndSaysSo() throws {
        try Harness.requireKVM()
        let broken = try brokenPolicyDirectory()
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("hello.elf"), args: "say=x exit=4"),
                                  options: ["--unsafe-policy-dir", broken])
        XCTAssertEqual(run.wait(timeout: 20), 4, run.stderr)
        XCTAssertTrue(run.stderr.contains("warning: --unsafe-policy-dir: the helpers get the policies in \(broken)"), run.stderr)
        XCTAssertTrue(run.stderr.contains(": \(broken)/") && run.stderr.contains(".policy: cannot read"), run.stderr)
    }

    func testHelpersMayNotRunAsAnExistingAccount() throws {
        guard let account = getpwnam("nobody") ?? getpwnam("daemon") else { throw XCTSkip("no nobody/daemon account here") }
        let uid = account.pointee.pw_uid
        let config = """
        {"boot-source": {"kernel_image_path": "\(dummyKernel())"}, "machine-config": {"mem_size_mib": 8},
         "vmm": {"sandbox": {"uid": \(uid)}}}
        """
        let run = try Harness.Run(arguments: ["validate", "--config-file", try Harness.writeConfig(config)])
        XCTAssertEqual(run.wait(timeout: 20), 2, run.stdout + run.stderr)
        XCTAssertTrue(run.stderr.contains("vmm.sandbox.uid: \(uid) is the uid of the host account"), run.stderr)
    }
}
