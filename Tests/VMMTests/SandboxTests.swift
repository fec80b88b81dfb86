import Foundation
import XCTest

/// The sandbox, checked on the running helper processes (not on paper) and by provoking it.
final class SandboxTests: GuestTestCase {
    func status(_ pid: pid_t) throws -> [String: String] {
        let text = try Harness.procFile("/proc/\(pid)/status")
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            out[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return out
    }

    func testEveryHelperIsConfinedWhileTheGuestRuns() throws {
        let run = try startEndlessGuest()
        defer { kill(run.process.processIdentifier, SIGTERM); _ = run.wait() }
        let supervisor = run.process.processIdentifier
        // The standby pio and irqchip processes (waiting to replace theirs) are confined like the rest.
        let helpers = Harness.settledHelpers(of: supervisor, count: 5)
        XCTAssertEqual(helpers.compactMap(Harness.role).sorted(), ["irqchip", "irqchip", "pio", "pio", "vcpu"])
        for pid in helpers {
            let role = Harness.role(of: pid) ?? "?"
            // A helper the guest has not needed yet may still be setting up (the guest's output says only that the
            // vcpu and pio processes run): give it a moment to enter its sandbox, then check everything.
            var s = try status(pid)
            for _ in 0..<250 where s["Seccomp"] != "2" {
                usleep(20_000)
                s = try status(pid)
            }
            XCTAssertEqual(s["Seccomp"], "2", role)
            XCTAssertEqual(s["NoNewPrivs"], "1", role)
            for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
                XCTAssertEqual(s[set], "0000000000000000", "\(role) \(set)")
            }
            for ids in [s["Uid"], s["Gid"]] {
                let values = ids?.split(separator: "\t").map(String.init) ?? []
                XCTAssertEqual(values.count, 4, role)
                XCTAssertFalse(values.contains("0"), "\(role) runs with a root id: \(values)")
            }
            for ns in ["mnt", "pid", "net", "ipc", "uts"] {
                let mine = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(supervisor)/ns/\(ns)")
                let theirs = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(ns)")
                XCTAssertNotEqual(mine, theirs, "\(role) shares the supervisor's \(ns) namespace")
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/root"), [], "\(role)'s root is not empty")
            XCTAssertEqual(s["NSpid"]?.split(separator: "\t").last, "1", "\(role) is the first process of its own pid namespace")
            // Its address space is bounded: guest RAM where it maps it, plus room for its runtime.
            let limits = try Harness.procFile("/proc/\(pid)/limits")
            let addressSpace = limits.split(separator: "\n").first { $0.hasPrefix("Max address space") }
            let soft = addressSpace?.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).first.flatMap { UInt64($0) }
            XCTAssertNotNil(soft, "\(role): \(String(describing: addressSpace))")
            XCTAssertLessThanOrEqual(soft ?? .max, role == "vcpu" ? 1 << 30 : 512 << 20, "\(role): 32 MiB of guest RAM, 1 vCPU")
        }
    }

    /// Run by root, each VM's helpers get an id of their own from `vmm.sandbox.id_range`, held while the VM runs; a VM
    /// that finds every id of its range taken does not start. The ids are looked up (getpwuid, getgrgid) by a child of
    /// the launcher: the NSS modules the lookups load (libnss_systemd on most hosts) are not mapped in the supervisor
    /// for the VM's life.
    func testEachVMGetsItsOwnHelperIDFromTheRange() throws {
        guard geteuid() == 0 else { throw XCTSkip("SKIPPED: helper ids are chosen only when vmm runs as root") }
        let config = Harness.config(kernel: try Harness.guest("portloop.elf"), args: "iters=100000000000",
                                    extra: #", "sandbox": {"id_range": {"first": 64700, "count": 2}}"#)
        var runs: [Harness.Run] = []
        defer { for run in runs { kill(run.process.processIdentifier, SIGTERM); _ = run.wait() } }
        var ids: [Set<String>] = []
        for _ in 0..<2 {
            let run = try Harness.run(config: config)
            runs.append(run)
            XCTAssertTrue(run.waitForOutput("portloop: ready"), run.stderr)
            let maps = try Harness.procFile("/proc/\(run.process.processIdentifier)/maps")
            XCTAssertFalse(maps.contains("libnss_"), "the supervisor maps no NSS module: \(maps.split(separator: "\n").filter { $0.contains("libnss_") })")
            let helpers = Harness.settledHelpers(of: run.process.processIdentifier, count: 5)
            ids.append(Set(try helpers.map { pid in
                XCTAssertTrue(Harness.waitUntilSandboxed(pid), "pid \(pid) entered its sandbox")  // ids change on the way in
                return try status(pid)["Uid"]?.split(separator: "\t").first.map(String.init) ?? "?"
            }))
        }
        XCTAssertEqual(ids.count, 2)
        XCTAssertEqual(ids[0].count, 1, "one id for all of a VM's helpers: \(ids)")
        XCTAssertEqual(ids[0].union(ids[1]), ["64700", "64701"], "one id per VM")
        let third = try Harness.run(config: config)
        XCTAssertEqual(third.wait(timeout: 20), 4, third.stderr)
        XCTAssertTrue(third.stderr.contains("vmm.sandbox.id_range: every id of 64700..<64702 is held by another VM or used by a host account"), third.stderr)
    }

    /// Where the host lets vmm make cgroups (v2 with the memory, pids and cpu controllers, or those v1 hierarchies),
    /// every helper of a VM, standbys included, runs in one cgroup of the VM's with memory and process limits, and
    /// the cgroup goes when the VM ends.
    func testTheVMsHelpersShareACgroupWithLimitsThatGoesWithTheVM() throws {
        let run = try startEndlessGuest(options: ["--log-level", "Info"])
        let supervisor = run.process.processIdentifier
        let helpers = Harness.settledHelpers(of: supervisor, count: 5)
        let stderr = run.stderr
        if let line = stderr.split(separator: "\n").first(where: { $0.contains("no cgroup for this VM's helpers") }) {
            kill(supervisor, SIGINT)
            _ = run.wait()
            throw XCTSkip("SKIPPED: this host lets vmm make no cgroup: \(line)")
        }
        let line = try XCTUnwrap(stderr.split(separator: "\n").first { $0.contains("helpers run in ") }, stderr)
        let directories = line.components(separatedBy: "helpers run in ")[1].components(separatedBy: ", ")
        XCTAssertTrue(directories.allSatisfy { $0.hasSuffix("/vmm-\(supervisor)") }, "\(directories)")
        for pid in helpers {
            // The supervisor places a process right after spawning it (a standby, 30 ms after the VM started, too),
            // and a cgroup v1 move can take an RCU grace period: one just spawned may not be in it yet.
            var cgroups = ""
            for _ in 0..<100 {
                cgroups = (try? Harness.procFile("/proc/\(pid)/cgroup")) ?? ""
                if cgroups.contains("/vmm-\(supervisor)\n") { break }
                usleep(10_000)
            }
            XCTAssertTrue(cgroups.contains("/vmm-\(supervisor)\n"), "\(Harness.role(of: pid) ?? "?"): \(cgroups)")
        }
        let limits = directories.flatMap { dir in ["pids.max", "memory.max", "memory.limit_in_bytes"].compactMap { file in
            (try? String(contentsOfFile: dir + "/" + file, encoding: .utf8)).map { (file, $0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        } }
        XCTAssertTrue(limits.contains { $0.0 == "pids.max" && $0.1 == "132" }, "128 + 4 per vCPU: \(limits)")
        XCTAssertTrue(limits.contains { $0.0.hasPrefix("memory.") && UInt64($0.1).map { $0 < 2 << 30 } == true }, "\(limits)")
        kill(supervisor, SIGINT)
        XCTAssertEqual(run.wait(timeout: 20), 130, run.stderr)
        for dir in directories { XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "\(dir) outlived the VM") }
    }

    /// (A pio process killed by seccomp is restarted like after any crash; here its successor would make the same
    /// call, so it gets no restart and is critical: its first death ends the VM.)
    func provoke(role: String, syscall: String) throws {
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("hello.elf"), args: "say=x exit=0",
                                                         extra: #", "device_restart": {"max_restarts": 0, "critical": ["pio"]}"#),
                                  environment: ["VMM_FAULT_INJECT": "\(role):\(syscall)"])
        XCTAssertEqual(run.wait(timeout: 20), 10, "\(role) \(syscall): \(run.stderr)")
        XCTAssertTrue(run.stderr.contains("vmm: \(role) process killed by seccomp: syscall \(syscall)"), run.stderr)
    }

    func testForbiddenCallsKillTheDeviceProcessAndAreNamed() throws {
        for call in ["openat", "socket", "execve", "ptrace"] { try provoke(role: "pio", syscall: call) }
    }

    func testForbiddenCallKillsTheVCPUProcessAndIsNamed() throws {
        try provoke(role: "vcpu", syscall: "openat")
    }

    func testLogModeReportsTheCallAndKeepsRunning() throws {
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("hello.elf"), args: "say=logged exit=4"),
                                  options: ["--seccomp-log"], environment: ["VMM_FAULT_INJECT": "pio:socket"])
        XCTAssertEqual(run.wait(timeout: 20), 9, run.stderr)
        XCTAssertEqual(run.stdout, "Hello from the guest: logged\n")
        XCTAssertTrue(run.stderr.contains("vmm: pio process made a call its policy denies: syscall socket (log mode: it failed with ENOSYS)"), run.stderr)
    }

    func testPolicyCheckCommand() throws {
        let run = try Harness.Run(arguments: ["policy-check", "--dir", Harness.sourceRoot + "/Policies"])
        XCTAssertEqual(run.wait(), 0, run.stdout + run.stderr)
        XCTAssertTrue(run.stdout.contains("vcpu.policy: "), run.stdout)
        XCTAssertTrue(run.stdout.contains("pio.policy: "), run.stdout)
        XCTAssertTrue(run.stdout.contains("ioctl"), run.stdout)
    }
}
