import Foundation
import XCTest

/// Boots Debian's distro kernel (tools/linux-image): slow here (guest kernel code is emulated on these hosts: minutes
/// per boot), so these run in this one test process, one boot per test, each boot shared by as many checks as fit.
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
    func config(vcpus: Int, initArguments: String?, input: String, devices: String = "", vmm: String = "") throws -> String {
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
         "machine-config": {"vcpu_count": \(vcpus), "mem_size_mib": 128},\(devices)
         "logger": {"level": "Info"},
         "vmm": {"serial": {"output": "stdout", "input": "\(input)"}\(vmm)}}
        """
    }

    func report(_ what: String, _ run: Harness.Run, started: Date) {
        let seconds = Int(Date().timeIntervalSince(started))
        let boot = run.stderr.split(separator: "\n").first { $0.contains("guest boot completed") } ?? "no boot-timer line"
        let exits = run.stderr.split(separator: "\n").filter { $0.contains("exits:") }.joined(separator: "\n  ")
        print("Linux \(what): \(seconds) s in all; \(boot)\n  \(exits)")
    }

    /// One boot shared by every virtio check (a boot is minutes here): an ext4 root on virtio-blk (written, synced,
    /// trimmed), a second, read-only drive, virtio-rng, a typed command, the i8042's IRQ 1, and the end through the
    /// API's SendCtrlAltDel (a guest reboot); then the host reads the image.
    func testOneVCPUBootsAnExt4RootOnVirtioBlkAndUsesEveryDevice() throws {
        for image in ["rootfs.ext4", "data.ext4"] where !FileManager.default.fileExists(atPath: Self.image + "/" + image) {
            throw XCTSkip("SKIPPED: no \(image) in \(Self.image); tools/linux-image builds it")
        }
        // Copies: a boot writes to its root image.
        let dir = NSTemporaryDirectory() + "vmm-linux-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for image in ["rootfs.ext4", "data.ext4"] { try FileManager.default.copyItem(atPath: Self.image + "/" + image, toPath: dir + "/" + image) }
        let dataBefore = try Data(contentsOf: URL(fileURLWithPath: dir + "/data.ext4"))
        let devices = """

         "drives": [{"drive_id": "rootfs", "path_on_host": "\(dir)/rootfs.ext4", "is_root_device": true, "cache_type": "Writeback"},
                    {"drive_id": "data", "path_on_host": "\(dir)/data.ext4", "is_read_only": true}],
         "entropy": {},
        """
        let started = Date()
        let socket = APITests.socketPath()
        let run = try Harness.run(config: try config(vcpus: 1, initArguments: nil, input: "stdin", devices: devices,
                                                     vmm: #", "device_restart": {"max_restarts": 1000, "backoff_ms": 0, "max_backoff_ms": 0}"#),
                                  interactive: true, options: ["--api-sock", socket])
        XCTAssertTrue(run.waitForOutput("vmm-guest: init ready (root /dev/vda rw)", timeout: Self.bootTimeout), run.stdout + run.stderr)
        let booted = Date()
        let shell = GuestShell(run)
        func command(_ line: String, expect: String, timeout: TimeInterval = 300) { shell.command(line, expect: expect, timeout: timeout) }
        // Every process of the guest gets glibc's tunables without AVX (a host quirk: README, "Host quirks").
        command("echo tunables=$GLIBC_TUNABLES", expect: "tunables=glibc.cpu.hwcaps=-AVX,")
        command("echo typed-$((6 * 7))", expect: "typed-42")
        command("echo rng=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n') rng-source=$(cat /sys/class/misc/hw_random/rng_current)",
                expect: "rng-source=virtio_rng")
        command("echo written-by-guest > /root/hello.txt && sync && echo wrote=$?", expect: "wrote=0")
        // Crash isolation: the root drive's virtio-blk process is killed every 0.3 s (20 times at most) while the
        // guest writes files and syncs; then, with the page cache dropped, it reads them back against their
        // checksums. No I/O error.
        let vmmPID = run.process.processIdentifier
        let kills = VirtioBlkKiller(vmm: vmmPID, driveID: "rootfs", every: 0.3, atMost: 20)
        kills.start()
        command("for i in $(seq 1 12); do head -c 32768 /dev/urandom > /root/f$i; sync; done; "
                + "sha256sum /root/f* > /root/sums; sync; echo files-written=$?", expect: "files-written=", timeout: 1200)
        let killed = kills.stop()
        command("echo 3 > /proc/sys/vm/drop_caches; echo verified=$(sha256sum -c /root/sums 2>&1 | grep -c ': OK') "
                + "ioerrors=$(dmesg | grep -ci 'i/o error')", expect: "ioerrors=", timeout: 600)
        command("dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; echo ro-write=$?", expect: "ro-write=")
        command("mount -o ro /dev/vdb /mnt && echo data-mounted=$(cat /sys/block/vdb/ro) && umount /mnt", expect: "data-mounted=")
        command("fstrim -v / ; echo trim=$?", expect: "trim=")
        command("echo id=$(cat /sys/block/vda/serial) size=$(cat /sys/block/vda/size)", expect: "size=")
        // The i8042 found its keyboard and IRQ 1 (the DSDT's PS2K maps it on this hardware-reduced machine).
        command("echo i8042-irq=$(grep -c i8042 /proc/interrupts) probe-failed=$(dmesg | grep -c 'probe of i8042 failed')",
                expect: "probe-failed=")
        // Ended as an orchestrator ends a Firecracker VM: Ctrl-Alt-Delete on the keyboard. The root is made
        // read-only first (what the init does before a power-off), so the host can read the image afterwards; the
        // kernel's Ctrl-Alt-Del restarts the machine (reboot=k: the i8042's reset line), the guest-reboot status.
        command("sync; mount -o remount,ro / ; echo root-ro=$?", expect: "root-ro=")
        XCTAssertEqual(try APITests.curl(socket, "PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#).status, 204)
        XCTAssertEqual(run.wait(timeout: 300), 14, "the guest rebooted: " + run.stdout + run.stderr)
        let console = run.stdout.replacingOccurrences(of: "\r\n", with: "\n")
        XCTAssertNotNil(console.range(of: #"rng=[0-9a-f]{32} "#, options: .regularExpression), "16 bytes from /dev/hwrng: \(console)")
        XCTAssertTrue(console.contains("ro-write=1"), "writing the read-only drive fails: \(console)")
        XCTAssertTrue(console.contains("data-mounted=1"), "the kernel sees vdb read-only: \(console)")
        XCTAssertTrue(console.contains("trimmed"), "fstrim's DISCARDs reached the device: \(console)")
        XCTAssertTrue(console.contains("trim=0"), console)
        XCTAssertTrue(console.contains("id=rootfs size=131072"), "GET_ID and the capacity in 512-byte sectors: \(console)")
        XCTAssertTrue(console.contains("files-written=0"), console)
        XCTAssertTrue(console.contains("verified=12 ioerrors=0"), "every file read back intact, no I/O error: \(console)")
        XCTAssertTrue(console.contains("i8042-irq=1 probe-failed=0"), "the i8042 driver got IRQ 1: \(console)")
        XCTAssertTrue(console.contains("root-ro=0"), console)
        XCTAssertGreaterThan(killed, 0, "the virtio-blk process was killed while the guest wrote")
        XCTAssertGreaterThanOrEqual(run.stderr.components(separatedBy: "virtio-blk0 process restarted").count - 1, killed, run.stderr)
        XCTAssertTrue(run.stderr.contains("i8042 reset line"), run.stderr)
        XCTAssertTrue(run.stderr.contains("guest boot completed"), run.stderr)
        XCTAssertFalse(run.stdout.contains("segfault"), "no guest process crashed: \(run.stdout)")
        // The host reads what the guest wrote and synced, from the image, after the VM ended.
        let debugfs = Process()
        debugfs.executableURL = URL(fileURLWithPath: "/sbin/debugfs")
        debugfs.arguments = ["-R", "cat /root/hello.txt", dir + "/rootfs.ext4"]
        let pipe = Pipe()
        debugfs.standardOutput = pipe
        debugfs.standardError = FileHandle.nullDevice
        try debugfs.run()
        debugfs.waitUntilExit()
        XCTAssertEqual(String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self), "written-by-guest\n")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/data.ext4")), dataBefore, "the read-only image is unchanged")
        report("1 vCPU, ext4 root on virtio-blk (its process killed \(killed) times), read-only drive, virtio-rng, commands \(Int(Date().timeIntervalSince(booted))) s, SendCtrlAltDel",
               run, started: started)
    }

    /// Two vCPUs, and the network on the same boot: virtio-net on a tap the test creates (an address, ping, 8 MiB
    /// each way over TCP with checksums compared on both ends), and vsock both ways (Firecracker's CONNECT protocol
    /// to a guest listener, the guest to host listeners at `<uds_path>_<port>`, several connections at once, a
    /// refused port).
    func testTwoVCPUsAreBothBroughtUpAndTheNetworkWorks() throws {
        let tap = try TestTap()
        var generator = SystemRandomNumberGenerator()
        let payload = Data((0..<(8 << 20) / 8).flatMap { _ in withUnsafeBytes(of: generator.next() as UInt64) { Array($0) } })
        let toGuest = try TCPBulkPeer(address: tap.hostAddress, role: .send(payload))
        let fromGuest = try TCPBulkPeer(address: tap.hostAddress, role: .receive(expecting: payload.count))
        let loopback = try Self.loopbackSeconds(payload)
        let host = tap.hostAddress
        let udsPath = NSTemporaryDirectory() + "vmm-linux-vsock-\(getpid()).sock"
        unlink(udsPath)
        let guestToHost = try VsockHostListener(path: udsPath + "_6000", connections: 3)
        let devices = """

         "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "\(tap.name)", "guest_mac": "\(tap.guestMAC)"}],
         "vsock": {"guest_cid": 3, "uds_path": "\(udsPath)"},
        """
        let started = Date()
        let run = try Harness.run(config: try config(vcpus: 2, initArguments: nil, input: "stdin", devices: devices), interactive: true)
        XCTAssertTrue(run.waitForOutput("vmm-guest: init ready", timeout: Self.bootTimeout), run.stdout + run.stderr)
        let shell = GuestShell(run)
        // Twenty new processes after nproc: each one once crashed here about one time in five (README, "Host quirks").
        shell.command("echo cpus=$(nproc); i=0; while [ $i -lt 20 ]; do /bin/busybox true; i=$((i+1)); done", expect: "cpus=2")
        shell.command("ip addr add \(tap.guestAddress)/24 dev eth0 && ip link set eth0 up && echo net-up mac=$(cat /sys/class/net/eth0/address)",
                      expect: "net-up mac=\(tap.guestMAC)")
        shell.command("ping -c 5 \(host)", expect: "round-trip")
        // streamtest moves 64 KiB per system call (busybox's nc: 1 KiB, each call costly here).
        shell.command("streamtest tcp-get \(host) \(toGuest.port) /tmp/in; echo received=$(sha256sum /tmp/in)", expect: "received=", timeout: 1200)
        shell.command("streamtest tcp-put \(host) \(fromGuest.port) /tmp/in; echo sent=$?", expect: "sent=", timeout: 1200)

        // vsock, host to guest: three connections at once to a guest listener, 256 KiB each.
        shell.command("streamtest vsock-listen 5000 3 > /tmp/listen.log 2>&1 & sleep 2; cat /tmp/listen.log", expect: "listening on 5000")
        let payloads = (0..<3).map { i in Data((0..<(256 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ i) }) }
        let collected = Locked<[Int: (ok: String, answer: String, setup: Double, transfer: Double)]>([:])
        DispatchQueue.concurrentPerform(iterations: 3) { i in
            let result = HostSockets.hostToGuest(udsPath: udsPath, port: 5000, payload: payloads[i])
            collected.update { $0[i] = result }
        }
        let results = (0..<3).map { collected.value[$0] ?? ("no result", "", 0, 0) }
        for i in 0..<3 {
            XCTAssertTrue(results[i].ok.hasPrefix("OK "), "connection \(i): \(results[i].ok)")
            XCTAssertEqual(results[i].answer, "sum=\(HostSockets.fnv64(payloads[i])) bytes=\(256 << 10)", "connection \(i)")
        }
        // Guest to host: three at once, 1, 2 and 3 MiB; and a port nobody listens on.
        shell.command("for i in 1 2 3; do streamtest vsock-connect 2 6000 $((i * 1048576)) > /tmp/c$i.log 2>&1 & done; wait; cat /tmp/c1.log /tmp/c2.log /tmp/c3.log",
                      expect: "reply:", timeout: 1200)
        shell.command("streamtest vsock-connect 2 6001 10", expect: "connect: ")
        run.type("poweroff\n")
        XCTAssertEqual(run.wait(timeout: 300), 0, run.stdout + run.stderr)
        XCTAssertFalse(run.stdout.contains("segfault"), "no guest process crashed: \(run.stdout)")
        XCTAssertTrue(run.stdout.contains("smp: Brought up 1 node, 2 CPUs"), run.stdout)
        // The guest's tty turns "\n" into "\r\n".
        let console = run.stdout.replacingOccurrences(of: "\r\n", with: "\n")
        XCTAssertTrue(console.contains("net-up mac=\(tap.guestMAC)"), "the driver took the configured MAC: \(console)")
        XCTAssertTrue(console.contains("5 packets transmitted, 5 packets received"), console)
        let sha = SHA256Hex.of(payload)
        XCTAssertTrue(console.contains("received=\(sha) /tmp/in"), "the guest got the 8 MiB intact (the unquoted $(...) joins the words with one space): \(console)")
        let back = toGuest.wait(timeout: 1).map(\.seconds)
        let returned = fromGuest.wait(timeout: 1)
        XCTAssertEqual(returned.map { SHA256Hex.of($0.received) }, sha, "the host got the 8 MiB back intact")
        XCTAssertTrue(console.contains("sent=0"), console)
        for i in 1...3 {
            let n = i << 20
            XCTAssertTrue(console.contains("reply: sum=\(HostSockets.fnv64(HostSockets.pattern(n))) bytes=\(n)"), "guest connection of \(n) bytes: \(console)")
        }
        XCTAssertEqual(guestToHost.received.map(\.count).sorted(), [1 << 20, 2 << 20, 3 << 20])
        XCTAssertTrue(console.contains("connect: Connection reset by peer") || console.contains("connect: Connection refused"),
                      "nobody listens on <uds_path>_6001: \(console)")
        let setup = (0..<3).map { results[$0].setup }.max() ?? 0
        let vsockIn = Double(3 * (256 << 10)) / max((0..<3).map { results[$0].transfer }.max() ?? 1, 1e-6) / Double(1 << 20)
        let vsockOut = Double(6 << 20) / max(guestToHost.seconds.max() ?? 1, 1e-6) / Double(1 << 20)
        let rtt = console.split(separator: "\n").first { $0.contains("round-trip") }.map(String.init) ?? "no ping summary"
        func mbps(_ seconds: Double?) -> String { seconds.map { String(format: "%.2f MiB/s", 8 / $0) } ?? "-" }
        report("2 vCPUs, nproc, virtio-net: ping \(rtt); TCP host->guest \(mbps(back)), guest->host \(mbps(returned?.seconds)); "
               + "host loopback \(mbps(loopback)); vsock: connection set-up \(String(format: "%.1f", setup * 1000)) ms (3 at once), "
               + String(format: "host->guest %.2f MiB/s, guest->host %.2f MiB/s", vsockIn, vsockOut), run, started: started)
    }

    /// 8 MiB over the host's own loopback, for comparison.
    static func loopbackSeconds(_ payload: Data) throws -> Double? {
        let sink = try TCPBulkPeer(address: "127.0.0.1", role: .receive(expecting: payload.count))
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var sin = HostSockets.inetAddress("127.0.0.1", port: sink.port)
        let connected = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { return nil }
        _ = HostSockets.writeAll(fd, payload)
        return sink.wait(timeout: 30)?.seconds
    }
}

/// Types commands into a Linux guest's shell on the console and waits for each. The console echoes what is typed,
/// so an expected text that the command line itself contains would be found at once: each command ends by
/// printing a marker its echo cannot show (the shell computes it).
final class GuestShell {
    private let run: Harness.Run
    private var typed = 0
    init(_ run: Harness.Run) { self.run = run }

    func command(_ line: String, expect: String, timeout: TimeInterval = 300, file: StaticString = #filePath, line number: UInt = #line) {
        typed += 1
        let marker = 1000 + typed
        run.type(line + "; echo command-done-$((\(marker) + 0))\n")
        XCTAssertTrue(run.waitForOutput("command-done-\(marker)", timeout: timeout), "\(line): \(run.stdout)\(run.stderr)", file: file, line: number)
        XCTAssertTrue(run.stdout.contains(expect), "\(line): \(run.stdout)", file: file, line: number)
    }
}

/// Kills a virtio-blk process of a running vmm (the serving one, never its standby) every `every` seconds, at most
/// `atMost` times, until stopped: crash isolation under a real guest, from outside, at moments the test chooses.
final class VirtioBlkKiller: @unchecked Sendable {
    private let vmm: pid_t
    private let driveID: String
    private let every: TimeInterval
    private let atMost: Int
    private let lock = NSLock()
    private var stopped = false
    private var kills = 0
    private let done = DispatchSemaphore(value: 0)

    init(vmm: pid_t, driveID: String, every: TimeInterval, atMost: Int) {
        self.vmm = vmm
        self.driveID = driveID
        self.every = every
        self.atMost = atMost
    }

    /// The serving virtio-blk process of the drive (its spec, the last argument, names the drive): the older of
    /// the drive's two, since a standby is started only after the process it would replace took over.
    private func target() -> pid_t? {
        let drive = Harness.helperPIDs(of: vmm, standbys: true).filter { pid in
            guard Harness.role(of: pid) == "virtio-blk",
                  let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            return String(decoding: raw, as: UTF8.self).contains(#""driveID":"\#(driveID)""#)
        }
        func started(_ pid: pid_t) -> UInt64 {
            // /proc/PID/stat: the start time is the 22nd field, the 20th after the parenthesised command name.
            guard let stat = try? Harness.procFile("/proc/\(pid)/stat"),
                  let close = stat.lastIndex(of: ")") else { return .max }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 19 ? UInt64(fields[19]) ?? .max : .max
        }
        return drive.min { started($0) < started($1) }
    }

    func start() {
        Thread.detachNewThread { [self] in
            while true {
                lock.lock()
                let go = !stopped && kills < atMost
                lock.unlock()
                guard go else { break }
                if let pid = target(), kill(pid, SIGKILL) == 0 {
                    lock.lock()
                    kills += 1
                    lock.unlock()
                }
                Thread.sleep(forTimeInterval: every)
            }
            done.signal()
        }
    }

    /// Stops killing; returns how many kills there were.
    func stop() -> Int {
        lock.lock()
        stopped = true
        lock.unlock()
        done.wait()
        lock.lock()
        defer { lock.unlock() }
        return kills
    }
}
