import Foundation
import XCTest

/// Boots Debian's distro kernel (tools/linux-image) to the busybox /init: slow here (guest kernel code is
/// emulated on these hosts: minutes per boot), so these run in this one test process, one boot per test.
/// tools/test builds the image first; without it (a bare `swift test`) they skip loudly.
final class LinuxGuestTests: XCTestCase {
    static let image = ProcessInfo.processInfo.environment["VMM_LINUX_IMAGE"] ?? Harness.sourceRoot + "/out/linux"
    /// Generous: a boot to /init takes about 6 minutes on the nested test hosts, well under a second on hardware KVM.
    static let bootTimeout: TimeInterval = 1200

    override func setUpWithError() throws {
        try Harness.requireKVM()
        guard FileManager.default.fileExists(atPath: Self.image + "/vmlinux"),
              FileManager.default.fileExists(atPath: Self.image + "/initramfs.cpio") else {
            let message = "SKIPPED: no Linux guest image in \(Self.image); tools/linux-image builds it (tools/test does)"
            FileHandle.standardError.write(Data((message + "\n").utf8))
            throw XCTSkip(message)
        }
    }

    /// Configs/default.json's kernel options, with the image from this test's directory.
    func config(vcpus: Int, initArguments: String?, input: String) throws -> String {
        let shipped = try String(contentsOfFile: Harness.sourceRoot + "/Configs/default.json", encoding: .utf8)
        guard let range = shipped.range(of: #""boot_args": ""#), let end = shipped[range.upperBound...].firstIndex(of: "\"") else {
            struct NoBootArguments: Error {}
            throw NoBootArguments()
        }
        var args = String(shipped[range.upperBound..<end])
        if let initArguments { args += " -- " + initArguments }
        return """
        {"boot-source": {"kernel_image_path": "\(Self.image)/vmlinux", "initrd_path": "\(Self.image)/initramfs.cpio",
                         "boot_args": "\(args)"},
         "machine-config": {"vcpu_count": \(vcpus), "mem_size_mib": 128},
         "logger": {"level": "Info"},
         "vmm": {"serial": {"output": "stdout", "input": "\(input)"}}}
        """
    }

    func report(_ what: String, _ run: Harness.Run, started: Date) {
        let seconds = Int(Date().timeIntervalSince(started))
        let boot = run.stderr.split(separator: "\n").first { $0.contains("guest boot completed") } ?? "no boot-timer line"
        let exits = run.stderr.split(separator: "\n").filter { $0.contains("exits:") }.joined(separator: "\n  ")
        print("Linux \(what): \(seconds) s in all; \(boot)\n  \(exits)")
    }

    func testOneVCPUBootsToInitRunsATypedCommandAndPowersOff() throws {
        let started = Date()
        let run = try Harness.run(config: try config(vcpus: 1, initArguments: nil, input: "stdin"), interactive: true)
        XCTAssertTrue(run.waitForOutput("vmm-guest: init ready", timeout: Self.bootTimeout), run.stdout + run.stderr)
        run.type("echo typed-$((6 * 7))\n")
        XCTAssertTrue(run.waitForOutput("typed-42", timeout: 300), run.stdout + run.stderr)
        run.type("poweroff\n")
        XCTAssertEqual(run.wait(timeout: 300), 0, run.stdout + run.stderr)
        XCTAssertTrue(run.stderr.contains("guest powered off"), run.stderr)
        XCTAssertTrue(run.stderr.contains("guest boot completed"), run.stderr)
        report("1 vCPU, typed command, poweroff", run, started: started)
    }

    func testTwoVCPUsAreBothBroughtUp() throws {
        let started = Date()
        let run = try Harness.run(config: try config(vcpus: 2, initArguments: "nproc", input: "none"))
        XCTAssertEqual(run.wait(timeout: Self.bootTimeout), 0, run.stdout + run.stderr)
        XCTAssertTrue(run.stdout.contains("smp: Brought up 1 node, 2 CPUs"), run.stdout)
        // The guest's tty turns "\n" into "\r\n".
        let console = run.stdout.replacingOccurrences(of: "\r\n", with: "\n")
        XCTAssertTrue(console.contains("vmm-guest: init ready\n2\nvmm-guest: command exited with status 0"), run.stdout)
        report("2 vCPUs, nproc", run, started: started)
    }
}
