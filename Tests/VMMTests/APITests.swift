import Foundation
import XCTest

/// Firecracker's REST API (`vmm run --api-sock`), driven with curl over the Unix socket as Firecracker's
/// getting-started guide does, on the small test guests and real KVM.
final class APITests: GuestTestCase {
    struct Reply {
        let status: Int
        let body: String
        var json: [String: Any] { ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]) ?? [:] }
        var fault: String { json["fault_message"] as? String ?? "" }
    }

    /// One request with curl; the status is the last line curl prints (`-w`).
    static func curl(_ socket: String, _ method: String, _ path: String, _ body: String? = nil, bodyFile: String? = nil) throws -> Reply {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        var args = ["-s", "--unix-socket", socket, "-X", method, "-w", "\n%{http_code}", "http://localhost" + path]
        if let body { args += ["-H", "Content-Type: application/json", "-d", body] }
        if let bodyFile { args += ["-H", "Content-Type: application/json", "--data-binary", "@" + bodyFile] }
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        return Reply(status: Int(lines.last ?? "") ?? -1, body: lines.dropLast().joined(separator: "\n"))
    }

    static func socketPath() -> String { NSTemporaryDirectory() + "vmm-api-\(UUID().uuidString.prefix(8)).sock" }

    /// Starts `vmm run --api-sock` (and `--config-file` when given) and waits for the socket.
    static func start(socket: String, config: String? = nil) throws -> Harness.Run {
        var args = ["run", "--api-sock", socket]
        if let config { args += ["--config-file", try Harness.writeConfig(config)] }
        let run = try Harness.Run(arguments: args)
        let deadline = Date().addingTimeInterval(10)
        while access(socket, F_OK) != 0 && Date() < deadline && run.process.isRunning { usleep(10_000) }
        XCTAssertEqual(access(socket, F_OK), 0, "the API socket appears; stderr: \(run.stderr)")
        return run
    }

    func put(_ s: String, _ path: String, _ body: String) throws -> Reply { try Self.curl(s, "PUT", path, body) }

    func testGettingStartedSequenceWithCurl() throws {
        let s = Self.socketPath()
        let run = try Self.start(socket: s)
        let info = try Self.curl(s, "GET", "/")
        XCTAssertEqual(info.status, 200)
        XCTAssertEqual(info.json["state"] as? String, "Not started")
        XCTAssertEqual(info.json["app_name"] as? String, "vmm")
        XCTAssertNotNil(info.json["vmm_version"] as? String)
        XCTAssertNotNil(info.json["id"] as? String)
        XCTAssertEqual(try put(s, "/boot-source", #"{"kernel_image_path": "\#(try Harness.guest("hello.elf"))", "boot_args": "say=api exit=0"}"#).status, 204)
        XCTAssertEqual(try put(s, "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 32}"#).status, 204)
        XCTAssertEqual(try put(s, "/logger", #"{"level": "Warning", "show_level": true, "show_log_origin": false}"#).status, 204)
        let machine = try Self.curl(s, "GET", "/machine-config")
        XCTAssertEqual(machine.json["mem_size_mib"] as? Int, 32)
        XCTAssertEqual(machine.json["smt"] as? Bool, false)
        let started = Date()
        XCTAssertEqual(try put(s, "/actions", #"{"action_type": "InstanceStart"}"#).status, 204)
        XCTAssertTrue(run.waitForOutput("Hello from the guest: api"), "stdout: \(run.stdout) stderr: \(run.stderr)")
        let firstOutput = Date().timeIntervalSince(started)
        XCTAssertEqual(run.wait(), 1, "debug-exit 0 gives status 1; stderr: \(run.stderr)")
        XCTAssertEqual(run.stdout, "Hello from the guest: api\n")
        XCTAssertNotEqual(access(s, F_OK), 0, "vmm removes the socket it made")
        print("API: InstanceStart to the guest's first output: \(Int(firstOutput * 1000)) ms")
    }

    /// For the report: `--config-file` start-up to the guest's first output, against the API's InstanceStart.
    func testStartUpTimeFileAgainstAPI() throws {
        let kernel = try Harness.guest("hello.elf")
        var file: [Double] = [], api: [Double] = []
        for _ in 0..<3 {
            let t0 = Date()
            let run = try Harness.Run(arguments: ["run", "--config-file", try Harness.writeConfig(Harness.config(kernel: kernel, args: "say=f exit=0"))])
            XCTAssertTrue(run.waitForOutput("Hello from the guest: f"))
            file.append(Date().timeIntervalSince(t0) * 1000)
            XCTAssertEqual(run.wait(), 1)

            let s = Self.socketPath()
            let r = try Self.start(socket: s)
            XCTAssertEqual(try put(s, "/boot-source", #"{"kernel_image_path": "\#(kernel)", "boot_args": "say=a exit=0"}"#).status, 204)
            XCTAssertEqual(try put(s, "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 32}"#).status, 204)
            let t1 = Date()
            XCTAssertEqual(try put(s, "/actions", #"{"action_type": "InstanceStart"}"#).status, 204)
            XCTAssertTrue(r.waitForOutput("Hello from the guest: a"))
            api.append(Date().timeIntervalSince(t1) * 1000)
            XCTAssertEqual(r.wait(), 1)
        }
        print("start-up to first guest output, ms: --config-file \(file.map { Int($0) }), API InstanceStart \(api.map { Int($0) })")
    }

    func testBadRequestsGetFirecrackersErrors() throws {
        let s = Self.socketPath()
        let run = try Self.start(socket: s)
        defer { run.process.terminate(); _ = run.wait() }
        let mem = try put(s, "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": "lots"}"#)
        XCTAssertEqual(mem.status, 400)
        XCTAssertEqual(mem.fault, "machine-config.mem_size_mib: expected an integer, found a string")
        let unknown = try put(s, "/boot-source", #"{"kernel_image_path": "\#(try Harness.guest("hello.elf"))", "boot_arg": "x"}"#)
        XCTAssertEqual(unknown.status, 400)
        XCTAssertEqual(unknown.fault, "boot-source.boot_arg: unknown field")
        let drive = try put(s, "/drives/rootfs", #"{"drive_id": "other", "path_on_host": "\#(try Harness.guest("hello.elf"))", "is_root_device": true, "is_read_only": true}"#)
        XCTAssertEqual(drive.status, 400)
        XCTAssertTrue(drive.fault.hasPrefix("drives[rootfs].drive_id:"), drive.fault)
        XCTAssertEqual(try put(s, "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "/nonexistent", "is_root_device": true}"#).fault,
                       "drives[rootfs].path_on_host: /nonexistent: No such file or directory")
        XCTAssertEqual(try put(s, "/actions", #"{"action_type": "Reboot"}"#).status, 400)
        XCTAssertEqual(try put(s, "/actions", "{not json").status, 400)
        XCTAssertEqual(try Self.curl(s, "PATCH", "/vm", #"{"state": "Paused"}"#).status, 400, "nothing to pause before InstanceStart")
        let start = try put(s, "/actions", #"{"action_type": "InstanceStart"}"#)
        XCTAssertEqual(start.status, 400)
        XCTAssertEqual(start.fault, "boot-source: missing (the kernel to boot)")
        XCTAssertEqual(try Self.curl(s, "GET", "/no/such/thing").status, 404)
        XCTAssertEqual(try Self.curl(s, "DELETE", "/machine-config").status, 405)
        XCTAssertEqual(try Self.curl(s, "GET", "/boot-source").status, 405)
        // Bodies are bounded.
        let big = NSTemporaryDirectory() + "vmm-api-big-\(getpid()).json"
        try Data(#"{"boot_args": ""#.utf8 + Data(repeating: 0x61, count: 70_000) + Data(#""}"#.utf8)).write(to: URL(fileURLWithPath: big))
        defer { try? FileManager.default.removeItem(atPath: big) }
        XCTAssertEqual(try Self.curl(s, "PUT", "/boot-source", bodyFile: big).status, 413)
        XCTAssertEqual(try Self.curl(s, "GET", "/").json["state"] as? String, "Not started", "the server survives all of it")
        // A second vmm on the same path is refused: the path exists.
        let second = try Harness.Run(arguments: ["run", "--api-sock", s])
        XCTAssertNotEqual(second.wait(), 0)
        XCTAssertTrue(second.stderr.contains("the path exists"), second.stderr)
    }

    func testPauseStopsTheConsoleAndResumeRunsToANormalExit() throws {
        let s = Self.socketPath()
        let run = try Self.start(socket: s)
        XCTAssertEqual(try put(s, "/boot-source", #"{"kernel_image_path": "\#(try Harness.guest("uartstress.elf"))", "boot_args": "lines=4000"}"#).status, 204)
        XCTAssertEqual(try put(s, "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 32}"#).status, 204)
        XCTAssertEqual(try put(s, "/actions", #"{"action_type": "InstanceStart"}"#).status, 204)
        XCTAssertEqual(try Self.curl(s, "GET", "/").json["state"] as? String, "Running")
        XCTAssertTrue(run.waitForOutput("line 200\n"), run.stderr)
        XCTAssertEqual(try Self.curl(s, "PATCH", "/vm", #"{"state": "Paused"}"#).status, 204)
        XCTAssertEqual(try Self.curl(s, "GET", "/").json["state"] as? String, "Paused")
        // The console pump may still be copying bytes the guest wrote before the pause: settle, then watch.
        usleep(200_000)
        let before = run.stdout.count
        usleep(1_000_000)
        XCTAssertEqual(run.stdout.count, before, "no console output while paused")
        XCTAssertFalse(run.stdout.contains("uartstress: done"))
        let devices = try Self.curl(s, "GET", "/vmm/devices")
        let list = devices.json["devices"] as? [[String: Any]] ?? []
        XCTAssertEqual(list.compactMap { $0["name"] as? String }, ["vcpu", "pio", "irqchip"], devices.body)
        XCTAssertTrue(list.allSatisfy { ($0["pid"] as? Int ?? 0) > 0 && $0["state"] as? String == "running" }, devices.body)
        XCTAssertEqual(try Self.curl(s, "PATCH", "/vm", #"{"state": "Resumed"}"#).status, 204)
        XCTAssertEqual(try Self.curl(s, "GET", "/").json["state"] as? String, "Running")
        XCTAssertEqual(run.wait(), 1, "the guest finishes and leaves with debug-exit 0; stderr: \(run.stderr)")
        XCTAssertTrue(run.stdout.hasSuffix("uartstress: done 4000 lines, 0 scratch mismatches\n"))
        let lines = run.stdout.split(separator: "\n").filter { $0.hasPrefix("line ") }
        XCTAssertEqual(lines, (0..<4000).map { "line \($0)"[...] }, "every line once, in order, across the pause")
    }

    /// `SendCtrlAltDel` types Ctrl, Alt and Delete (pressed and released) on the i8042's keyboard: the `keyboard`
    /// guest takes IRQ 1 through the IOAPIC and its local APIC once per scancode and checks the codes.
    func testSendCtrlAltDelReachesTheGuestThroughIRQ1() throws {
        try sendCtrlAltDelToTheKeyboardGuest(killingThePIOFirst: false)
    }

    /// The same through a pio process that replaced a killed one: the successor has the keyboard's lane and the
    /// keys' stream, and the command byte the guest wrote to its predecessor.
    func testSendCtrlAltDelReachesTheGuestThroughARestartedPIO() throws {
        try sendCtrlAltDelToTheKeyboardGuest(killingThePIOFirst: true)
    }

    private func sendCtrlAltDelToTheKeyboardGuest(killingThePIOFirst: Bool) throws {
        let s = Self.socketPath()
        let run = try Self.start(socket: s, config: Harness.config(kernel: try Harness.guest("keyboard.elf"), args: ""))
        XCTAssertTrue(run.waitForOutput("keyboard: ready\n"), run.stderr)
        if killingThePIOFirst {
            let supervisor = run.process.processIdentifier
            let pio = try XCTUnwrap(Harness.helperPIDs(of: supervisor).first { Harness.role(of: $0) == "pio" })
            XCTAssertEqual(kill(pio, SIGKILL), 0)
            var restarts = 0
            for _ in 0..<250 where restarts == 0 {
                usleep(20_000)
                let devices = try Self.curl(s, "GET", "/vmm/devices").json["devices"] as? [[String: Any]] ?? []
                restarts = devices.first { $0["name"] as? String == "pio" }?["restarts"] as? Int ?? 0
            }
            XCTAssertEqual(restarts, 1, run.stderr)
        }
        XCTAssertEqual(try put(s, "/actions", #"{"action_type": "SendCtrlAltDel"}"#).status, 204)
        XCTAssertEqual(run.wait(), 3, "debug-exit 1: the expected scancodes, one interrupt each; stdout: \(run.stdout) stderr: \(run.stderr)")
        XCTAssertEqual(run.stdout, "keyboard: ready\nkeyboard: 14 11 e0 71 e0 f0 71 f0 11 f0 14 interrupts=11\n")
    }

    /// `PATCH /drives/{id}` on a running VM, as Firecracker has it: a new backing file, which the guest sees as a
    /// configuration change with the new capacity and the new file's sectors; the drive's process holds the new file
    /// and no longer the old one. What cannot change is refused with the field named.
    func testPatchingARunningDriveSwapsItsBackingFile() throws {
        let directory = NSTemporaryDirectory() + "vmm-api-drive-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func image(_ name: String, sectors: Int) throws -> String {
            var bytes = [UInt8](repeating: 0, count: sectors * 512)
            bytes.replaceSubrange(0..<name.utf8.count, with: Array(name.utf8))
            let path = directory + "/" + name
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return path
        }
        let first = try image("the-first-image", sectors: 8), second = try image("the-second-one", sectors: 128)
        let s = Self.socketPath()
        let drive = #""drives": [{"drive_id": "d0", "path_on_host": "\#(first)", "is_root_device": false, "is_read_only": true}]"#
        let config = Harness.config(kernel: try Harness.guest("virtio.elf"), args: "test=grow").replacingOccurrences(of: #" "vmm":"#, with: " \(drive), \"vmm\":")
        let run = try Self.start(socket: s, config: config)
        XCTAssertTrue(run.waitForOutput("virtio-grow: ready capacity=8 sector0=the-first-image\n", timeout: 60), run.stdout + run.stderr)

        XCTAssertEqual(try Self.curl(s, "PATCH", "/drives/d9", #"{"drive_id": "d9", "path_on_host": "\#(second)"}"#).fault,
                       #"drives[d9]: the running VM has no drive "d9""#)
        let missing = try Self.curl(s, "PATCH", "/drives/d0", #"{"drive_id": "d0", "path_on_host": "\#(directory)/nope"}"#)
        XCTAssertEqual(missing.status, 400)
        XCTAssertTrue(missing.fault.hasPrefix("drives[d0].path_on_host: "), missing.fault)
        XCTAssertTrue(try Self.curl(s, "PATCH", "/drives/d0", #"{"drive_id": "d0", "is_read_only": false}"#).fault
            .hasPrefix("drives[d0].is_read_only: cannot be changed on a running VM"))
        XCTAssertEqual(try Self.curl(s, "PATCH", "/drives/d0", #"{"drive_id": "d0", "path_on_host": "\#(second)"}"#).status, 204, run.stderr)

        XCTAssertEqual(run.wait(), 1, "stdout: \(run.stdout) stderr: \(run.stderr)")
        XCTAssertTrue(run.stdout.contains("virtio-grow: capacity=128 isr=0x02 sector0=the-second-one\n"), run.stdout)
    }

    /// The same VM from a config file and through the API: the same `GET /vm/config`, and the same guest output.
    func testConfigFileAndAPIGiveTheSameVM() throws {
        let kernel = try Harness.guest("uartstress.elf")
        let metrics = NSTemporaryDirectory() + "vmm-api-metrics-\(getpid())"
        FileManager.default.createFile(atPath: metrics, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: metrics) }
        let sections = [
            ("boot-source", #"{"kernel_image_path": "\#(kernel)", "boot_args": "lines=1500"}"#),
            ("machine-config", #"{"vcpu_count": 2, "mem_size_mib": 48}"#),
            ("cpu-config", #"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0x"}]}]}"#),
            ("metrics", #"{"metrics_path": "\#(metrics)"}"#),
            ("logger", #"{"level": "Warning"}"#),
        ]
        let s1 = Self.socketPath()
        let fileRun = try Self.start(socket: s1, config: "{" + sections.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}")
        // The socket is served from the start; the VM runs once its helpers do.
        var state = "", deadline = Date().addingTimeInterval(10)
        while state != "Running" && Date() < deadline {
            state = try Self.curl(s1, "GET", "/").json["state"] as? String ?? ""
            if state != "Running" { usleep(10_000) }
        }
        XCTAssertEqual(state, "Running")
        let fromFile = try Self.curl(s1, "GET", "/vm/config")
        XCTAssertEqual(try put(s1, "/boot-source", sections[0].1).fault, "The requested operation is not supported after starting the microVM.")
        XCTAssertEqual(try put(s1, "/actions", #"{"action_type": "FlushMetrics"}"#).status, 204)
        XCTAssertEqual(fileRun.wait(), 1, fileRun.stderr)

        let s2 = Self.socketPath()
        let apiRun = try Self.start(socket: s2)
        for (path, body) in sections { XCTAssertEqual(try put(s2, "/" + path, body).status, 204, path) }
        XCTAssertEqual(try put(s2, "/actions", #"{"action_type": "InstanceStart"}"#).status, 204)
        let fromAPI = try Self.curl(s2, "GET", "/vm/config")
        XCTAssertEqual(apiRun.wait(), 1, apiRun.stderr)

        XCTAssertEqual(fromFile.status, 200)
        XCTAssertEqual(fromFile.body, fromAPI.body)
        XCTAssertEqual((fromFile.json["machine-config"] as? [String: Any])?["vcpu_count"] as? Int, 2)
        XCTAssertEqual(fileRun.stdout, apiRun.stdout)
        XCTAssertTrue(apiRun.stdout.hasSuffix("uartstress: done 1500 lines, 0 scratch mismatches\n"))

        // FlushMetrics wrote a Firecracker-style JSON line with the device processes' counters.
        let line = try XCTUnwrap(try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").first)
        let m = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertNotNil(m["utc_timestamp_ms"] as? Int)
        let pio = try XCTUnwrap((m["devices"] as? [String: Any])?["pio"] as? [String: Any])
        XCTAssertEqual(pio["restarts"] as? Int, 0)
        XCTAssertGreaterThan(pio["handled_requests"] as? Int ?? 0, 0)
        // The vCPUs' statistics from their shared region: summed, and per vCPU.
        let vcpu = try XCTUnwrap(m["vcpu"] as? [String: Any], line.description)
        let entries = try XCTUnwrap(vcpu["kvm_run_entries"] as? Int)
        XCTAssertGreaterThan(entries, 0)
        XCTAssertGreaterThan(vcpu["kvm_run_ns"] as? Int ?? 0, 0)
        XCTAssertEqual(vcpu["coalesced_writes"] as? Int, 0, "two vCPUs: KVM coalesces nothing")
        let exits = try XCTUnwrap(vcpu["exits"] as? [String: [String: Int]], line.description)
        XCTAssertGreaterThan(exits["io"]?["count"] ?? 0, 0, "uartstress writes its lines through port I/O")
        XCTAssertGreaterThan(exits["io"]?["vmm_ns"] ?? 0, 0)
        let perVCPU = try XCTUnwrap(vcpu["vcpus"] as? [[String: Any]])
        XCTAssertEqual(perVCPU.count, 2)
        XCTAssertEqual(perVCPU.reduce(0) { $0 + ($1["kvm_run_entries"] as? Int ?? 0) }, entries)
        // The last line, written once the vcpu process is gone, has at least as much, and adds up: every KVM_RUN
        // returned with one exit, less at most one per vCPU (a vCPU counts the entry, then the exit, and the kill may
        // fall between). Not checked on the line above: the vCPUs count while it is read, word by word.
        let last = try XCTUnwrap(try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").last)
        let final = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        let finalVCPU = try XCTUnwrap(final["vcpu"] as? [String: Any], last.description)
        let finalEntries = try XCTUnwrap(finalVCPU["kvm_run_entries"] as? Int)
        XCTAssertGreaterThanOrEqual(finalEntries, entries)
        let finalExits = try XCTUnwrap(finalVCPU["exits"] as? [String: [String: Int]], last.description)
        let exitCount = finalExits.values.reduce(0) { $0 + ($1["count"] ?? 0) }
        XCTAssertTrue((finalEntries - perVCPU.count...finalEntries).contains(exitCount), "\(exitCount) exits for \(finalEntries) KVM_RUN entries")
    }
}
