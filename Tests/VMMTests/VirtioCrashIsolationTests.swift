import Foundation
import XCTest

/// A virtio device process that dies or hangs is replaced and the guest loses nothing: real kills, a stop and
/// crashes of the real virtio-blk process while the virtio test guest writes numbered, checksummed sectors and
/// reads them back (Tests/Guests/virtio.c, `test=stress`), checked from what the guest counted, the disk image
/// afterwards, and what vmm reported.
final class VirtioCrashIsolationTests: XCTestCase {
    override func setUpWithError() throws { try Harness.requireKVM() }

    private var directory = ""
    private var image: String { directory + "/root.img" }

    override func setUp() {
        directory = NSTemporaryDirectory() + "vmm-virtio-crash-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20))
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    private func config(args: String, restart: String, logLevel: String = "Warning", entropy: Bool = false) throws -> String {
        """
        {"boot-source": {"kernel_image_path": "\(try Harness.guest("virtio.elf"))", "boot_args": "\(args)"},
         "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
         "logger": {"level": "\(logLevel)"},
         "drives": [{"drive_id": "d0", "path_on_host": "\(image)", "is_root_device": true, "is_read_only": false, "cache_type": "Unsafe"}],
         \(entropy ? #""entropy": {},"# : "")
         "vmm": {"serial": {"output": "stdout", "input": "none"}, "device_restart": \(restart)}}
        """
    }

    /// Each sector the guest wrote in its last pass, as the guest lays it out: {magic "VBLK", sector number, pass}.
    private func assertImageHoldsPass(_ pass: UInt32, sectors: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: image))
        var wrong = 0
        for sector in 0..<sectors {
            let words = (0..<3).map { k in
                (0..<4).reduce(UInt32(0)) { $0 | UInt32(data[sector * 512 + 4 * k + $1]) << (8 * $1) }
            }
            if words != [0x4b4c_4256, UInt32(sector), pass] { wrong += 1 }
        }
        XCTAssertEqual(wrong, 0, "sectors of the image without the last pass's header", file: file, line: line)
    }

    /// 50 kills and one stop of the virtio-blk process while the guest writes and reads back 64 sectors 30 times
    /// over, eight requests in flight: no I/O error, no lost, corrupt or doubled completion, every fault followed by
    /// a restart and by the device completing requests again. The guest touches no register while it runs (its
    /// completions are polled), so the stop is seen as a hang through the notification the process left unread.
    func testBlockGuestLosesNothingThroughFiftyKillsAndAStop() throws {
        let reportPath = directory + "/faults.json"
        let run = try Harness.run(
            config: config(args: "test=stress passes=30 blocks=64 depth=8",
                           restart: #"{"max_restarts": 1000, "backoff_ms": 0, "max_backoff_ms": 0, "hang_timeout_ms": 100}"#),
            options: ["--inject-fault", "virtio-blk0:kill,every_ms=30,count=50", "--inject-fault", "virtio-blk0:stop,after_ms=700",
                      "--fault-report", reportPath])
        XCTAssertEqual(run.wait(timeout: 180), 1, "exit code 0, as without faults: \(run.stderr)")
        XCTAssertTrue(run.stdout.contains("virtio-stress: passes=30 blocks=64 requests=3840 ioerrors=0 lost=0 corrupt=0 duplicates=0\n"),
                      run.stdout + run.stderr)
        XCTAssertTrue(run.stderr.contains("virtio-blk0 process (pid"), run.stderr)
        XCTAssertTrue(run.stderr.contains("is hung: its work has waited"), run.stderr)
        try assertImageHoldsPass(30, sectors: 64)
        try CrashIsolationTests.readReport(reportPath).assertEveryFaultRecovered(kills: 50, stops: 1, device: "virtio-blk", stderr: run.stderr)
    }

    /// Kills that land between the device publishing completions in the used ring and committing them (the test
    /// hook widens that window to 20 ms): successors adopt those completions instead of serving the requests again,
    /// which the guest would see as duplicate completions (and, had it reused the buffers, as corruption).
    func testCompletionsPublishedBeforeTheCommitAreNotRepeated() throws {
        let run = try Harness.run(
            config: config(args: "test=stress passes=12 blocks=64 depth=8",
                           restart: #"{"max_restarts": 1000, "backoff_ms": 0, "max_backoff_ms": 0}"#, logLevel: "Info"),
            options: ["--inject-fault", "virtio-blk0:kill,every_ms=20,count=40"],
            environment: ["VMM_TEST_VIRTIO_COMMIT_DELAY_US": "20000"])
        XCTAssertEqual(run.wait(timeout: 180), 1, run.stderr)
        XCTAssertTrue(run.stdout.contains("virtio-stress: passes=12 blocks=64 requests=1536 ioerrors=0 lost=0 corrupt=0 duplicates=0\n"),
                      run.stdout + run.stderr)
        XCTAssertTrue(run.stderr.contains("40 faults, 40 restarts"), run.stderr)
        // "resumed from the state the previous process committed (N completions it published after that)", N > 0.
        let adopted = run.stderr.split(separator: "\n").filter { $0.contains("resumed from the state") && !$0.contains("(0 completions") }
        XCTAssertGreaterThan(adopted.count, 0, "some kill landed in the window (else this test proves nothing): \(run.stderr)")
        try assertImageHoldsPass(12, sectors: 64)
        print("virtio-blk: \(adopted.count) of 40 successors adopted completions published after the last commit")
    }

    /// The interrupt-driven blk scenario (a level-triggered IOAPIC pin, the handler reads and acknowledges
    /// InterruptStatus: the register accesses a Linux driver makes) and the rng scenario, each with its device
    /// process killed every few requests from negotiation on: register writes the dead process had not committed
    /// are applied by its successor, the requests complete, the guest's results are as without faults.
    func testInterruptDrivenBlockAndEntropyGuestsGoOnThroughKills() throws {
        let restart = #"{"max_restarts": 1000, "backoff_ms": 0, "max_backoff_ms": 0}"#
        // The guest makes a handful of requests, and the supervisor kills from its watch loop: a guest that finishes
        // first saw no kill, which proves nothing either way, so the run is made again (at most five times). How
        // many kills land depends on the build and the host (two with the release build on a busy host, more in
        // debug); every run must end right.
        func runUntilAKillLands(_ test: String, device: String, after requests: Int, entropy: Bool, expect: String) throws -> Int {
            for _ in 0..<5 {
                let run = try Harness.run(config: config(args: "test=\(test) spurious=ok", restart: restart, logLevel: "Info", entropy: entropy),
                                          options: ["--inject-fault", "\(device):kill,after_requests=\(requests),count=8"])
                XCTAssertEqual(run.wait(timeout: 60), 1, run.stderr)
                XCTAssertTrue(run.stdout.contains(expect), run.stdout + run.stderr)
                let restarts = run.stderr.components(separatedBy: "\(device) process restarted").count - 1
                if restarts > 0 { return restarts }
            }
            XCTFail("\(device): in five runs no kill landed while the guest ran")
            return 0
        }
        let blkRestarts = try runUntilAKillLands("blk", device: "virtio-blk0", after: 3, entropy: false,
                                                 expect: "virtio-blk: capacity=2048 id=d0 write=ok read=match flush=0\n")
        // 64 rounds of the rng guest's two reads: two alone were over before the watch loop's first look (~2 ms)
        // in most runs of a release build.
        let rngRestarts = try runUntilAKillLands("rng rounds=64", device: "virtio-rng0", after: 2, entropy: true,
                                                 expect: "virtio-rng: lengths=64,64 differ=1 nonzero=1\n")
        print("virtio kills during negotiation and interrupt-driven requests: blk \(blkRestarts), rng \(rngRestarts) restarts")
    }

    /// Crashes (a real SIGSEGV inside the process) right after requests: the device comes back every time.
    func testBlockGuestLosesNothingThroughCrashesAfterRequests() throws {
        let run = try Harness.run(
            config: config(args: "test=stress passes=8 blocks=64 depth=8",
                           restart: #"{"max_restarts": 1000, "backoff_ms": 0, "max_backoff_ms": 0}"#),
            options: ["--inject-fault", "virtio-blk0:crash,after_requests=40,count=10"])
        XCTAssertEqual(run.wait(timeout: 120), 1, run.stderr)
        XCTAssertTrue(run.stdout.contains("requests=1024 ioerrors=0 lost=0 corrupt=0 duplicates=0\n"), run.stdout + run.stderr)
        XCTAssertTrue(run.stderr.contains("10 faults, 10 restarts"), run.stderr)
        try assertImageHoldsPass(8, sectors: 64)
    }

    /// A virtio device that crashes again and again is given up on within its budget, and the VM goes on: the
    /// guest, whose requests are no longer answered, reads Status, finds DEVICE_NEEDS_RESET (and the configuration
    /// change bit in InterruptStatus), says so and ends as it chooses. The dead device's interrupt line gets the
    /// configuration-change pulse and is left low (the irqchip sees it go up, then down).
    func testACrashLoopingVirtioDeviceIsMarkedBrokenAndTheVMGoesOn() throws {
        let run = try Harness.run(
            config: config(args: "test=stress passes=100000 blocks=64 depth=8",
                           restart: #"{"max_restarts": 3, "backoff_ms": 1, "max_backoff_ms": 4}"#, logLevel: "Debug"),
            options: ["--inject-fault", "virtio-blk0:crash,every_ms=20,count=10"])
        defer { if run.process.isRunning { kill(run.process.processIdentifier, SIGTERM) }; _ = run.wait() }
        XCTAssertTrue(waitFor(timeout: 30) { run.stderr.contains("given up on") }, run.stderr)
        XCTAssertTrue(run.stderr.contains("virtio-blk0 process (pid"), run.stderr)
        XCTAssertTrue(run.stderr.contains("killed by signal 11 (SIGSEGV); it failed 4 times within 60000 ms (vmm.device_restart.max_restarts 3): given up on; the VM goes on without it"), run.stderr)
        usleep(200_000)
        XCTAssertTrue(run.process.isRunning, "the VM keeps running: \(run.stderr)")
        let roles = Harness.helperPIDs(of: run.process.processIdentifier).compactMap(Harness.role)
        XCTAssertTrue(roles.contains("vcpu") && !roles.contains("virtio-blk"), "\(roles)")
        XCTAssertEqual(run.wait(timeout: 60), 5, "the guest's exit through debug-exit with 2: \(run.stdout) \(run.stderr)")
        XCTAssertTrue(run.stdout.contains("virtio-stress: the device needs a reset (status=0x4f isr=0x02)\n"), run.stdout)
        // The stress guest polls and never drives the line itself: every level change on it after the device was
        // given up on is the supervisor's pulse (the first virtio device's pin is 5).
        let afterBroken = run.stderr.components(separatedBy: "given up on").dropFirst().joined()
        let levels = afterBroken.split(separator: "\n").filter { $0.hasPrefix("[irqchip]") && $0.contains(": line 5 ") }
        XCTAssertEqual(levels.map { $0.hasSuffix(" up") ? "up" : "down" }.suffix(2), ["up", "down"], "\(levels)")
    }

    func waitFor(timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }
}
