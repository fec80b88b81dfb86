import Foundation
import XCTest

/// The virtio-mmio devices end to end, driven by a small test guest (Tests/Guests/virtio.c) at CPL0: it finds the
/// devices on its command line (`virtio_mmio.device=4K@0xd0000000:5 ...`), negotiates, sets up split virtqueues in
/// its RAM and prints what each scenario got. No Linux: each run takes well under a second.
final class VirtioGuestTests: GuestTestCase {
    /// Per test: a directory with the disk images, removed afterwards.
    private var directory = ""
    /// The read-write root drive (4 MiB = 8192 sectors) with a known string in sector 0.
    private var rootImage: String { directory + "/root.img" }
    /// The read-only drive (1 MiB), full of a known pattern.
    private var readOnlyImage: String { directory + "/ro.img" }

    static let rootSector0 = "vmm-test-image-0"
    static let readOnlyContents = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) })

    override func setUpWithError() throws {
        try super.setUpWithError()
        directory = NSTemporaryDirectory() + "vmm-virtio-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var root = Data(count: 4 << 20)
        root.replaceSubrange(0..<16, with: Data(Self.rootSector0.utf8))
        try root.write(to: URL(fileURLWithPath: rootImage))
        try Self.readOnlyContents.write(to: URL(fileURLWithPath: readOnlyImage))
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
        super.tearDown()
    }

    /// A config with the read-only drive listed first and the root drive second (the VMM places the root drive
    /// first: virtio-blk0 at 0xd0000000, pin 5), and the entropy device last (0xd0002000, pin 7).
    private func config(kernel: String = "virtio.elf", args: String, entropy: Bool = true, rootCache: String = "Writeback",
                        rootPath: String? = nil, rootReadOnly: Bool = false, readOnlyDrive: Bool = true) throws -> String {
        var drives = [#"{"drive_id": "d0", "path_on_host": "\#(rootPath ?? rootImage)", "is_root_device": true, "is_read_only": \#(rootReadOnly), "cache_type": "\#(rootCache)"}"#]
        if readOnlyDrive {
            drives.insert(#"{"drive_id": "ro1", "path_on_host": "\#(readOnlyImage)", "is_root_device": false, "is_read_only": true, "cache_type": "Unsafe"}"#, at: 0)
        }
        return """
        {"boot-source": {"kernel_image_path": "\(try Harness.guest(kernel))", "boot_args": "\(args)"},
         "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
         "drives": [\(drives.joined(separator: ", "))],
         \(entropy ? #""entropy": {},"# : "")
         "vmm": {"serial": {"output": "stdout", "input": "none"}}}
        """
    }

    /// What the guest prints first in every scenario: the devices its command line names, with their IDs.
    static let devices = """
        virtio: device 0 at 0x00000000d0000000 irq 5 id 2
        virtio: device 1 at 0x00000000d0001000 irq 6 id 2
        virtio: device 2 at 0x00000000d0002000 irq 7 id 4

        """

    /// What each scenario prints with `config(args:)`'s devices.
    static let expected: [String: String] = {
        // blk: Writeback, so FLUSH (bit 9) is offered; SEG_MAX, BLK_SIZE, DISCARD, WRITE_ZEROES and the
        // transport's INDIRECT_DESC, EVENT_IDX and VERSION_1. Every request completes with exactly one interrupt on
        // pin 5: the handler's InterruptACK lowers the level-triggered line before its EOI.
        let blk = """
            virtio-blk: magic=virt version=2 device=2
            virtio-blk: features=0x0000000130006244 status=0x0f queue_num_max=256
            virtio-blk: capacity=8192 id=d0 write=ok read=match flush=0
            virtio-blk: sector0=\(rootSector0) interrupts=5 isr_bits=0x01 isr_now=0x00

            """
        // hostile: one line per case, in the guest's order (see testHostileQueuesGetNeedsResetOrTheRightStatus).
        let needsReset = "NEEDS_RESET (status=0x4f isr=0x02)"
        let cases: [(String, String)] = [
            ("descriptor index out of range", needsReset),
            ("next index out of range", needsReset),
            ("descriptor loop", needsReset),
            ("chain longer than the queue", needsReset),
            ("indirect table (valid)", "OK (status=0x0f isr=0x01)"),
            ("indirect inside indirect", needsReset),
            ("buffer outside guest RAM", needsReset),
            ("buffer wrapping 2^64", needsReset),
            ("readable after writable", needsReset),
            ("no status byte", needsReset),
            ("zero-length status buffer", needsReset),
            ("short header", "IOERR (status=0x0f isr=0x01)"),
            ("unsupported request type", "UNSUPP (status=0x0f isr=0x01)"),
            ("sector beyond capacity", "IOERR (status=0x0f isr=0x01)"),
            ("sector * 512 overflows", "IOERR (status=0x0f isr=0x01)"),
            ("avail index jump", needsReset),
            ("write to a read-only drive", "IOERR (status=0x0f isr=0x01)"),
            ("a read after all cases", "OK (status=0x0f isr=0x01)"),
        ]
        let hostile = cases.map { "virtio-hostile: \($0.0) -> \($0.1)\n" }.joined()
        let rng = """
            virtio-rng: features=0x0000000130000000 status=0x0f
            virtio-rng: lengths=64,64 differ=1 nonzero=1

            """
        return ["blk": devices + blk, "hostile": devices + hostile, "rng": devices + rng]
    }()

    /// Runs one scenario of the virtio guest to its debug-exit (0: status 1) with nothing on stderr.
    private func runScenario(_ test: String, options: [String] = []) throws -> String {
        let run = try Harness.run(config: try config(args: "test=\(test)"), options: options)
        XCTAssertEqual(run.wait(timeout: 60), 1, "test=\(test): \(run.stdout)\n\(run.stderr)")
        XCTAssertEqual(run.stderr, "", "test=\(test)")
        return run.stdout
    }

    /// The sector the blk scenario writes (5: byte offset 2560) and its pattern.
    static let writtenSector = 5
    static let pattern = Data((0..<512).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 0x5a) })

    func testBlockWriteReadGetIDFlushAndCapacityByInterrupt() throws {
        XCTAssertEqual(try runScenario("blk"), Self.expected["blk"])
        let image = try Data(contentsOf: URL(fileURLWithPath: rootImage))
        XCTAssertEqual(image.count, 4 << 20, "the image keeps its size")
        let offset = Self.writtenSector * 512
        XCTAssertEqual(image.subdata(in: offset..<offset + 512), Self.pattern, "the written sector is in the file at 5 * 512")
        var expected = Data(count: 4 << 20)
        expected.replaceSubrange(0..<16, with: Data(Self.rootSector0.utf8))
        expected.replaceSubrange(offset..<offset + 512, with: Self.pattern)
        XCTAssertTrue(image == expected, "nothing but that sector changed")
        XCTAssertTrue(try Data(contentsOf: URL(fileURLWithPath: readOnlyImage)) == Self.readOnlyContents)
    }

    func testUnsafeCacheDoesNotOfferFlush() throws {
        let run = try Harness.run(config: try config(args: "test=blk sector=8191", entropy: false, rootCache: "Unsafe", readOnlyDrive: false))
        XCTAssertEqual(run.wait(timeout: 60), 1, run.stderr)
        XCTAssertEqual(run.stdout, """
            virtio: device 0 at 0x00000000d0000000 irq 5 id 2
            virtio-blk: magic=virt version=2 device=2
            virtio-blk: features=0x0000000130006044 status=0x0f queue_num_max=256
            virtio-blk: capacity=8192 id=d0 write=ok read=match flush=0
            virtio-blk: sector0=\(Self.rootSector0) interrupts=5 isr_bits=0x01 isr_now=0x00

            """, "a FLUSH without the feature still completes OK (nothing to make durable)")
        let image = try Data(contentsOf: URL(fileURLWithPath: rootImage))
        XCTAssertEqual(image.subdata(in: (4 << 20) - 512..<(4 << 20)), Self.pattern, "the last sector")
    }

    func testResetAndFeatureNegotiation() throws {
        XCTAssertEqual(try runScenario("reset"), Self.devices + """
            virtio-reset: live status=0x0f queue_ready=1 isr=0x01 request=OK
            virtio-reset: after status 0: status=0x00 queue_ready=0 isr=0x00
            virtio-reset: unoffered feature bit 0: status=0x03
            virtio-reset: unoffered feature bit 63: status=0x03
            virtio-reset: without VERSION_1: status=0x03
            virtio-reset: DRIVER_OK without FEATURES_OK: status=0x03
            virtio-reset: VERSION_1 only: status=0x0b
            virtio-reset: renegotiated: status=0x0f request=OK

            """)
    }

    /// Every hostile request gets what the device must answer: DEVICE_NEEDS_RESET (status 0x40) with the
    /// configuration-change bit in InterruptStatus when the ring or chain is broken or there is no status byte to
    /// answer in; IOERR / UNSUPP (the device stays live, a used-buffer interrupt) for a bad request it can answer.
    /// The guest resets and renegotiates before each case; a valid indirect request and a final plain read work.
    func testHostileQueuesGetNeedsResetOrTheRightStatus() throws {
        XCTAssertEqual(try runScenario("hostile"), Self.expected["hostile"])
        XCTAssertTrue(try Data(contentsOf: URL(fileURLWithPath: readOnlyImage)) == Self.readOnlyContents,
                      "the read-only drive's file is unchanged")
        var untouched = Data(count: 4 << 20)
        untouched.replaceSubrange(0..<16, with: Data(Self.rootSector0.utf8))
        XCTAssertTrue(try Data(contentsOf: URL(fileURLWithPath: rootImage)) == untouched, "no hostile request wrote anything")
    }

    func testEntropyGivesDifferentNonZeroBytes() throws {
        XCTAssertEqual(try runScenario("rng"), Self.expected["rng"])
    }

    /// An interrupt handler's InterruptACK cannot swallow a completion the device publishes while the acknowledgement
    /// is on its way (MachineLayout: InterruptACK waits for the device): every completion that was not in the used
    /// ring when the guest looked after acknowledging sets InterruptStatus again. The device's queue work is slowed
    /// down (2 ms) so that acknowledgements often arrive during it: posted, most such rounds lost their completion.
    func testInterruptACKNeverSwallowsACompletion() throws {
        let run = try Harness.run(config: try config(args: "test=ackrace", entropy: false),
                                  environment: ["VMM_TEST_VIRTIO_QUEUE_DELAY_US": "2000"])
        XCTAssertEqual(run.wait(timeout: 60), 1, run.stdout + run.stderr)
        let line = run.stdout.split(separator: "\n").first { $0.hasPrefix("virtio-ackrace:") }.map(String.init) ?? "no result: \(run.stdout)"
        XCTAssertTrue(line.hasPrefix("virtio-ackrace: rounds=300 late="), line)
        XCTAssertFalse(line.contains(" late=0 "), "some acknowledgements met the queue work: \(line)")
        XCTAssertTrue(line.hasSuffix(" lost=0"), line)
        print("ackrace: \(line)")
    }

    /// The virtio-blk and virtio-rng policies hold on the paths these scenarios take (pread, pwrite, fdatasync,
    /// getrandom, the rings, the interrupt line): in seccomp log mode a denied call would be reported on stderr.
    func testSeccompLogModeReportsNoDenial() throws {
        for test in ["blk", "hostile", "rng"] {
            XCTAssertEqual(try runScenario(test, options: ["--seccomp-log"]), Self.expected[test], "test=\(test)")
        }
    }

    /// A drive image a running VM holds (exclusively, it is writable) cannot be used by a second VM: the second
    /// `vmm run` fails before starting anything, naming the config field; read-only use is refused too.
    func testImageLockedByAnotherVMIsRefused() throws {
        let first = try Harness.run(config: try config(kernel: "portloop.elf", args: "iters=100000000000", entropy: false, readOnlyDrive: false))
        XCTAssertTrue(first.waitForOutput("portloop: ready"), first.stderr)
        defer {
            kill(first.process.processIdentifier, SIGINT)
            XCTAssertEqual(first.wait(timeout: 20), 130, first.stderr)
        }
        for readOnly in [false, true] {
            let second = try Harness.run(config: try config(args: "test=blk", entropy: false, rootReadOnly: readOnly, readOnlyDrive: false))
            XCTAssertEqual(second.wait(timeout: 20), 4, "read-only \(readOnly): \(second.stdout) \(second.stderr)")
            XCTAssertEqual(second.stdout, "")
            XCTAssertTrue(second.stderr.contains("drives[0].path_on_host: \(rootImage): another VM (or program) holds a lock on it"),
                          "read-only \(readOnly): \(second.stderr)")
        }
    }

    /// Two VMs may share a read-only image (shared locks).
    func testTwoVMsShareAReadOnlyImage() throws {
        let first = try Harness.run(config: try config(kernel: "portloop.elf", args: "iters=100000000000", entropy: false, rootReadOnly: true, readOnlyDrive: false))
        XCTAssertTrue(first.waitForOutput("portloop: ready"), first.stderr)
        defer {
            kill(first.process.processIdentifier, SIGINT)
            XCTAssertEqual(first.wait(timeout: 20), 130, first.stderr)
        }
        let second = try Harness.run(config: try config(args: "test=rng", rootReadOnly: true, readOnlyDrive: false))
        XCTAssertEqual(second.wait(timeout: 20), 1, second.stderr)
        XCTAssertTrue(second.stdout.hasSuffix("virtio-rng: lengths=64,64 differ=1 nonzero=1\n"), second.stdout)
    }

    /// One process per virtio device, named by role for `ps`: two virtio-blk (one per drive) and one virtio-rng,
    /// each with its standby (restartable devices), as the pio has.
    func testVirtioHelpersAreSeparateProcessesNamedByRole() throws {
        let run = try Harness.run(config: try config(kernel: "portloop.elf", args: "iters=100000000000"))
        XCTAssertTrue(run.waitForOutput("portloop: ready"), run.stderr)
        defer {
            kill(run.process.processIdentifier, SIGINT)
            XCTAssertEqual(run.wait(timeout: 20), 130, run.stderr)
        }
        let helpers = Harness.settledHelpers(of: run.process.processIdentifier, count: 11)
        let roles = helpers.compactMap { Harness.role(of: $0) }.sorted()
        XCTAssertEqual(roles, ["irqchip", "irqchip", "pio", "pio", "vcpu", "virtio-blk", "virtio-blk", "virtio-blk", "virtio-blk",
                               "virtio-rng", "virtio-rng"], "every restartable device has a standby")
        let standbys = helpers.filter(Harness.isStandby).compactMap { Harness.role(of: $0) }.sorted()
        XCTAssertEqual(standbys, ["irqchip", "pio", "virtio-blk", "virtio-blk", "virtio-rng"])
        for pid in helpers {
            guard let role = Harness.role(of: pid), role.hasPrefix("virtio") else { continue }
            let comm = try Harness.procFile("/proc/\(pid)/comm")
            XCTAssertEqual(comm, "vmm-\(role)\n", "pid \(pid)")
        }
    }
}
