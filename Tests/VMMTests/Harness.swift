import BareLoop
import Foundation
import struct System.FileDescriptor
import TestSupport
import XCTest

/// Runs the real vmm binary on test guests built from Tests/Guests with the system compiler.
enum Harness {
    static let productsDirectory: String = {
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") {
            return (b.bundlePath as NSString).deletingLastPathComponent
        }
        return (CommandLine.arguments[0] as NSString).deletingLastPathComponent
    }()
    /// The binary under test: this build's, or $VMM_BINARY (tools/test also runs these tests on a release build,
    /// whose optimiser shortens object lifetimes where a debug build does not).
    static var vmm: String {
        if let override = ProcessInfo.processInfo.environment["VMM_BINARY"], !override.isEmpty {
            return URL(fileURLWithPath: override).resolvingSymlinksInPath().path
        }
        return productsDirectory + "/vmm"
    }
    static let sourceRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// Guests are built once per test process.
    static let guests: Result<String, Error> = Result {
        try TestGuests.build(sourceRoot: sourceRoot, into: ScratchDirectory.forThisProcess("vmm-test-guests"))
    }

    static func guest(_ name: String) throws -> String { try guests.get() + "/" + name }

    /// A /proc (or /sys) file, whole (`FileDescriptor.readText`): `String(contentsOfFile:)` stops after the first
    /// read of a file whose size reads 0, which for maps and smaps is about 4 KiB of many.
    static func procFile(_ path: String) throws -> String {
        guard let text = FileDescriptor.readText(path) else { throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path]) }
        return text
    }

    /// A guest's own TSC measurement, in milliseconds (the TSC rate from /proc/cpuinfo).
    static func guestMilliseconds(_ cycles: Double) throws -> Double {
        let cpuinfo = try Harness.procFile("/proc/cpuinfo")
        let mhzLine = try XCTUnwrap(cpuinfo.split(separator: "\n").first { $0.hasPrefix("cpu MHz") })
        let mhz = try XCTUnwrap(Double(mhzLine.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)))
        return cycles / (mhz * 1000)
    }

    /// Tests that need /dev/kvm skip loudly where it is missing.
    static func requireKVM() throws {
        if access("/dev/kvm", R_OK | W_OK) != 0 {
            let message = "SKIPPED: /dev/kvm is not usable here; this test needs real KVM"
            FileHandle.standardError.write(Data((message + "\n").utf8))
            throw XCTSkip(message)
        }
    }

    static func config(kernel: String, args: String, memMiB: Int = 32, vcpus: Int = 1,
                       serial: String = #"{"output": "stdout", "input": "none"}"#, extra: String = "") -> String {
        """
        {"boot-source": {"kernel_image_path": "\(kernel)", "boot_args": "\(args)"},
         "machine-config": {"vcpu_count": \(vcpus), "mem_size_mib": \(memMiB)},
         "vmm": {"serial": \(serial)\(extra)}}
        """
    }

    static func writeConfig(_ text: String) throws -> String {
        let path = try ScratchDirectory.forThisProcess("vmm-test-configs") + "/\(UUID().uuidString).json"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// A vmm run in progress with its output going to files.
    final class Run {
        let process = Process()
        let stdoutPath = NSTemporaryDirectory() + "vmm-out-\(UUID().uuidString)"
        let stderrPath = NSTemporaryDirectory() + "vmm-err-\(UUID().uuidString)"

        /// The write end of stdin while it stays open (`interactive`), for `type`.
        private var input: FileHandle?
        /// A helper's denied call fails the test once the run has ended (see `Harness.seccompLogPass`).
        var failsOnDeniedCalls = false

        init(arguments: [String], stdin: Data? = nil, interactive: Bool = false, environment: [String: String] = [:]) throws {
            FileManager.default.createFile(atPath: stdoutPath, contents: nil)
            FileManager.default.createFile(atPath: stderrPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: Harness.vmm)
            process.arguments = arguments
            if !environment.isEmpty {
                process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            }
            process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
            process.standardError = FileHandle(forWritingAtPath: stderrPath)
            if stdin != nil || interactive {
                let pipe = Pipe()
                process.standardInput = pipe
                try process.run()
                if let stdin { pipe.fileHandleForWriting.write(stdin) }
                if interactive { input = pipe.fileHandleForWriting } else { try pipe.fileHandleForWriting.close() }
            } else {
                process.standardInput = FileHandle.nullDevice
                try process.run()
            }
        }

        /// Types `text` on vmm's stdin (an `interactive` run).
        func type(_ text: String) { input?.write(Data(text.utf8)) }

        var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
        var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

        /// Waits for exit; kills the whole run and fails after `timeout` seconds, so no test can hang.
        func wait(timeout: TimeInterval = 60) -> Int32? {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning {
                if Date() > deadline {
                    for pid in Harness.helperPIDs(of: process.processIdentifier) { kill(pid, SIGKILL) }
                    kill(process.processIdentifier, SIGKILL)
                    process.waitUntilExit()
                    return nil
                }
                usleep(10_000)
            }
            if failsOnDeniedCalls {
                for line in stderr.split(separator: "\n") where line.contains("made a call its policy denies") {
                    XCTFail("seccomp log pass: \(line)")
                }
            }
            return process.terminationStatus
        }

        func waitForOutput(_ text: String, timeout: TimeInterval = 30) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if stdout.contains(text) { return true }
                if !process.isRunning { return stdout.contains(text) }
                usleep(10_000)
            }
            return false
        }

        deinit {
            try? FileManager.default.removeItem(atPath: stdoutPath)
            try? FileManager.default.removeItem(atPath: stderrPath)
        }
    }

    static func run(config: String, stdin: Data? = nil, interactive: Bool = false, options: [String] = [],
                    environment: [String: String] = [:]) throws -> Run {
        // Runs that provoke a forbidden call on purpose, or choose the mode themselves, keep their own.
        let logPass = seccompLogPass && environment["VMM_FAULT_INJECT"] == nil && !options.contains("--seccomp-log")
        let run = try Run(arguments: ["run", "--config-file", try writeConfig(config)] + options + (logPass ? ["--seccomp-log"] : []),
                          stdin: stdin, interactive: interactive, environment: environment)
        run.failsOnDeniedCalls = logPass
        return run
    }

    /// VMM_TEST_SECCOMP_LOG set (tools/test's pass over the release build): every run's helpers apply their policies
    /// in log mode and any call a policy denies fails the test. In kill mode such a call can hide: a device process
    /// killed for it is restarted, and some calls are answered with ENOSYS.
    static let seccompLogPass = ProcessInfo.processInfo.environment["VMM_TEST_SECCOMP_LOG"] != nil

    /// Runs `body` while `count` busy-looping processes compete for the CPUs, so that helpers run late.
    static func withCPUHogs(_ count: Int, _ body: () throws -> Void) throws {
        let hogs = try (0..<count).map { _ in
            let hog = Process()
            hog.executableURL = URL(fileURLWithPath: "/bin/sh")
            hog.arguments = ["-c", "while :; do :; done"]
            try hog.run()
            return hog
        }
        defer {
            for hog in hogs { hog.terminate(); hog.waitUntilExit() }
        }
        try body()
    }

    /// Every process running this build's vmm binary as a helper role.
    static func allHelperPIDs() -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid_t($0) }.filter { pid in
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return args.count > 1 && args[1] == "_role" && (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) == vmm
        }
    }

    /// The helpers serving the VM (standby processes, which wait to replace a device process, are left out unless
    /// `standbys`).
    static func helperPIDs(of parent: pid_t, standbys: Bool = false) -> [pid_t] {
        allHelperPIDs().filter { pid in
            if !standbys && isStandby(pid) { return false }
            guard let stat = try? Harness.procFile("/proc/\(pid)/stat"),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && pid_t(fields[1]) == parent
        }
    }

    /// The helpers of a run once `count` of them exist and each has named itself: they start in the background and a
    /// guest can print before the last one is up.
    static func settledHelpers(of parent: pid_t, count: Int, timeout: TimeInterval = 10) -> [pid_t] {
        let deadline = Date().addingTimeInterval(timeout)
        var helpers = helperPIDs(of: parent, standbys: true)
        func named(_ pid: pid_t) -> Bool {
            ((try? Harness.procFile("/proc/\(pid)/comm")) ?? "").hasPrefix("vmm-")
        }
        while Date() < deadline && !(helpers.count >= count && helpers.allSatisfy(named)) {
            usleep(20_000)
            helpers = helperPIDs(of: parent, standbys: true)
        }
        return helpers
    }

    /// Waits until the helper runs under its seccomp policy (its set-up is done then); false after `timeout`.
    static func waitUntilSandboxed(_ pid: pid_t, timeout: TimeInterval = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let status = (try? Harness.procFile("/proc/\(pid)/status")) ?? ""
            if status.split(separator: "\n").contains("Seccomp:\t2") { return true }
            usleep(10_000)
        }
        return false
    }

    /// A standby process: started with a takeover eventfd in its spec.
    static func isStandby(_ pid: pid_t) -> Bool {
        guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: raw, as: UTF8.self).contains("\"takeoverFD\"")
    }

    static func role(of pid: pid_t) -> String? {
        guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return args.count > 2 ? args[2] : nil
    }
}

/// A test case that runs real guests: skips loudly without KVM, builds the guests once, and checks after each
/// test that no helper process outlived it.
class GuestTestCase: XCTestCase {
    override func setUpWithError() throws {
        try Harness.requireKVM()
        _ = try Harness.guests.get()
    }

    override func tearDown() {
        var left = Harness.allHelperPIDs()
        for _ in 0..<100 where !left.isEmpty { usleep(20_000); left = Harness.allHelperPIDs() }
        XCTAssertEqual(left, [], "helper processes outlived the test")
    }

    /// A guest that runs until stopped: the CPL3 port loop with a huge count. `extra`: more "vmm" settings.
    func startEndlessGuest(options: [String] = [], extra: String = "") throws -> Harness.Run {
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("portloop.elf"), args: "iters=100000000000", extra: extra),
                                  options: options)
        XCTAssertTrue(run.waitForOutput("portloop: ready"), run.stderr)
        return run
    }
}
