import Foundation
import XCTest

/// Helpers forked by the launcher (the default) and helpers exec'd (`vmm.sandbox.helper_start: "exec"`): the same
/// roles, command lines and parent; the launcher and its blanks hold nothing of the VM, and no forked device process
/// maps what only the vcpu process may (guest RAM).
final class HelperLauncherTests: GuestTestCase {
    private func children(of pid: pid_t) -> [pid_t] {
        let text = (try? Harness.procFile("/proc/\(pid)/task/\(pid)/children")) ?? ""
        return text.split(separator: " ").compactMap { pid_t($0) }
    }

    private func comm(_ pid: pid_t) -> String {
        ((try? Harness.procFile("/proc/\(pid)/comm")) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func maps(_ pid: pid_t) throws -> String { try Harness.procFile("/proc/\(pid)/maps") }

    func testForkedHelpersLookExecdAndHoldNothingOfEachOther() throws {
        let run = try startEndlessGuest()
        defer { kill(run.process.processIdentifier, SIGTERM); _ = run.wait() }
        let supervisor = run.process.processIdentifier
        // The standbys too (pio, irqchip): they are forked from blanks after the VM runs, and a blank turning into
        // one, or a new blank still named as its launcher right after the fork, is neither a blank nor the launcher.
        let helpers = Harness.settledHelpers(of: supervisor, count: 5)
        XCTAssertEqual(Set(helpers.compactMap(Harness.role)), ["vcpu", "pio", "irqchip"], "each by its `_role` command line")
        for pid in helpers where Harness.role(of: pid) != "vcpu" {
            XCTAssertTrue(Harness.waitUntilSandboxed(pid))
            XCTAssertFalse(try maps(pid).contains("guest-ram"), "the \(Harness.role(of: pid) ?? "?") process maps guest RAM")
        }
        // The control: the maps read whole show the vcpu process's guest RAM.
        for pid in helpers where Harness.role(of: pid) == "vcpu" {
            XCTAssertTrue(Harness.waitUntilSandboxed(pid))
            XCTAssertTrue(try maps(pid).contains("guest-ram"), "the vcpu process's maps, read whole, show guest RAM")
        }
        // A blank forked a moment ago carries the launcher's name until it runs (the pool refills while the VM
        // runs, and a loaded host may not run the child for a while): two launchers must come down to one.
        var launchers = children(of: supervisor).filter { comm($0) == "vmm-launcher" }
        for _ in 0..<300 where launchers.count > 1 {
            usleep(10_000)
            launchers = children(of: supervisor).filter { comm($0) == "vmm-launcher" }
        }
        XCTAssertEqual(launchers.count, 1, "one launcher, a child of the supervisor")
        for pid in launchers + children(of: supervisor).filter({ comm($0) == "vmm-blank" }) {
            XCTAssertFalse(try maps(pid).contains("guest-ram"), "the launcher (or a blank) maps guest RAM")
            let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap(Int.init).sorted()
            let targets = fds.map { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "?" }
            // Its stdio, its sockets (to the supervisor, to each blank) and pidfds (the supervisor's, the blanks'): no
            // memory, no KVM, no doorbell, no file of the VM's.
            let other = targets.dropFirst(3).filter { !$0.hasPrefix("socket:") && $0 != "anon_inode:[pidfd]" }
            XCTAssertEqual(other, [], "\(comm(pid)) holds \(targets)")
        }
    }

    /// Every helper, forked or exec'd, loads its role's program as it was compiled into vmm; a helper whose policy is
    /// another text (here `--unsafe-policy-dir`, each file with one more comment) compiles its own.
    func testHelpersLoadTheProgramCompiledIntoVMMOnlyForTheBuiltInPolicy() throws {
        let portloop = try Harness.guest("portloop.elf")
        func loads(options: [String] = [], extra: String = "") throws -> [String: String] {
            // A guest that runs until stopped, stopped once every helper is sandboxed: a VM that ends at once can
            // stop a helper that compiles its own policy before it loaded it.
            let run = try Harness.run(config: Harness.config(kernel: portloop, args: "iters=100000000000", extra: extra),
                                      options: ["--log-level", "debug"] + options)
            XCTAssertTrue(run.waitForOutput("portloop: ready"), run.stderr)
            for pid in Harness.settledHelpers(of: run.process.processIdentifier, count: 3) {
                XCTAssertTrue(Harness.waitUntilSandboxed(pid), "pid \(pid)")
            }
            kill(run.process.processIdentifier, SIGINT)
            XCTAssertEqual(run.wait(timeout: 30), 130, run.stderr)
            var found: [String: String] = [:]
            for line in run.stderr.split(separator: "\n") where line.contains("debug: seccomp policy ") {
                let role = String(line.dropFirst().prefix { $0 != "]" })
                found[role] = line.contains("loaded, compiled into vmm") ? "built" : line.contains("compiled and loaded") ? "itself" : String(line)
            }
            return found
        }
        XCTAssertEqual(try loads(), ["vcpu": "built", "pio": "built", "irqchip": "built"])
        XCTAssertEqual(try loads(extra: #", "sandbox": {"helper_start": "exec"}"#), ["vcpu": "built", "pio": "built", "irqchip": "built"])
        let directory = NSTemporaryDirectory() + "vmm-policies-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.copyItem(atPath: Harness.sourceRoot + "/Policies", toPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for file in try FileManager.default.contentsOfDirectory(atPath: directory) {
            let path = directory + "/" + file
            try (try String(contentsOfFile: path, encoding: .utf8) + "# a local copy\n").write(toFile: path, atomically: true, encoding: .utf8)
        }
        XCTAssertEqual(try loads(options: ["--unsafe-policy-dir", directory]), ["vcpu": "itself", "pio": "itself", "irqchip": "itself"])
    }

    func testHelperStartExecExecsEveryHelperAndKeepsNoLauncher() throws {
        let run = try startEndlessGuest(extra: #", "sandbox": {"helper_start": "exec"}"#)
        defer { kill(run.process.processIdentifier, SIGTERM); _ = run.wait() }
        let supervisor = run.process.processIdentifier
        let helpers = Harness.settledHelpers(of: supervisor, count: 3)
        XCTAssertEqual(Set(helpers.compactMap(Harness.role)), ["vcpu", "pio", "irqchip"])
        for _ in 0..<100 where children(of: supervisor).contains(where: { ["vmm-launcher", "vmm-blank"].contains(comm($0)) }) {
            usleep(10_000)
        }
        let leftovers = children(of: supervisor).filter { ["vmm-launcher", "vmm-blank"].contains(comm($0)) }
        XCTAssertEqual(leftovers, [], "the launcher and its blanks are gone (and reaped) when helpers are exec'd")
    }

    /// The launcher killed while the VM runs: the next helper (here the pio process's successor) is exec'd, with a
    /// warning, and the guest loses nothing.
    func testALauncherKilledMidRunMeansTheNextHelperIsExecd() throws {
        let lines = 3000
        let run = try Harness.run(
            config: Harness.config(kernel: try Harness.guest("uartstress.elf"), args: "lines=\(lines)",
                                   extra: #", "device_restart": {"standby": false}"#),
            options: ["--inject-fault", "pio:kill,after_ms=400,count=1"])
        let supervisor = run.process.processIdentifier
        var launcher: pid_t?
        for _ in 0..<200 where launcher == nil {
            launcher = children(of: supervisor).first { comm($0) == "vmm-launcher" }
            if launcher == nil { usleep(2_000) }
        }
        kill(try XCTUnwrap(launcher, "no launcher came up"), SIGKILL)
        XCTAssertEqual(run.wait(timeout: 120), 1, run.stderr)
        XCTAssertTrue(run.stderr.contains("exec'ing helpers from now on"), run.stderr)
        XCTAssertTrue(run.stderr.contains("1 faults, 1 restarts"), "the kill landed while the guest ran: \(run.stderr)")
        let numbers = run.stdout.split(separator: "\n").compactMap { $0.hasPrefix("line ") ? Int($0.dropFirst(5)) : nil }
        XCTAssertEqual(numbers, Array(0..<lines))
    }
}
