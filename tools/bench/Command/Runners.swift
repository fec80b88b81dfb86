import Foundation
import Glibc
import func System.monotonicNanoseconds
import struct System.FileDescriptor
import func System.setCPUAffinity

/// Starts a VMM (ours or QEMU) on a test guest and collects what the guest printed.
struct GuestRun {
    var output = ""
    var status: Int32 = -1
    /// Seconds from spawn to the first console byte, and to exit.
    var firstByte: Double?
    var total: Double = 0
    /// CLOCK_MONOTONIC just before the spawn (nanoseconds).
    var spawnedAt: UInt64 = 0
    /// What the VMM logged, when the run captured it.
    var log = ""
    /// Why the run's vCPU thread could not be pinned, when it was asked to be.
    var pinFailure: String?
}

protocol VMMUnderTest {
    var name: String { get }
    func command(kernel: String, args: String, memMiB: Int) throws -> (String, [String])
}

/// This project's vmm, from a config file written for the run.
struct OurVMM: VMMUnderTest {
    let binary: String
    var name = "vmm"
    /// A disk image given to the guest as its only drive (virtio-blk at 0xd0000000), read-only unless `driveWritable`.
    var drive: String?
    /// An initramfs (a Linux guest's).
    var initrd: String?
    var driveWritable = false
    /// More "vmm" settings (starting with a comma) and `vmm run` options.
    var vmmSettings = ""
    var options: [String] = []
    /// More top-level config sections (each ending with a comma): network interfaces, vsock, entropy.
    var devices = ""
    func command(kernel: String, args: String, memMiB: Int) throws -> (String, [String]) {
        let drives = drive.map {
            #""drives": [{"drive_id": "d0", "path_on_host": "\#($0)", "is_root_device": true, "is_read_only": \#(!driveWritable), "cache_type": "Unsafe"}],"#
        } ?? ""
        let initrdPath = initrd.map { #", "initrd_path": "\#($0)""# } ?? ""
        let config = """
        {"boot-source": {"kernel_image_path": "\(kernel)", "boot_args": "\(args)"\(initrdPath)},
         "machine-config": {"vcpu_count": 1, "mem_size_mib": \(memMiB)},
         \(drives)\(devices)
         "vmm": {"serial": {"output": "stdout", "input": "none"}\(vmmSettings)}}
        """
        let path = NSTemporaryDirectory() + "vmm-bench-\(getpid()).json"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        return (binary, ["run", "--config-file", path] + options)
    }
}

/// QEMU with KVM, the same multiboot guest, its UART on stdio and isa-debug-exit at 0xf4.
struct QEMU: VMMUnderTest {
    let binary: String
    let irqchip: Bool
    var name: String { irqchip ? "qemu" : "qemu (kernel-irqchip=off)" }
    func command(kernel: String, args: String, memMiB: Int) throws -> (String, [String]) {
        (binary, ["-accel", irqchip ? "kvm" : "kvm,kernel-irqchip=off", "-m", "\(memMiB)", "-kernel", kernel,
                  "-append", args, "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none",
                  "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"])
    }

    /// The binary, installing Debian's qemu-system-x86 first when asked to and it is missing.
    static func locate(install: Bool) -> String? {
        let path = "/usr/bin/qemu-system-x86_64"
        if access(path, X_OK) == 0 { return path }
        guard install else { return nil }
        FileHandle.standardError.write(Data("installing qemu-system-x86 for the comparison...\n".utf8))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null"]
        try? p.run()
        p.waitUntilExit()
        return access(path, X_OK) == 0 ? path : nil
    }
}

/// QEMU's `-M microvm` with the image as a virtio-blk-device (virtio-mmio version 2, not QEMU's legacy default),
/// read-only through the host page cache (QEMU's default cache mode), for the block rows.
struct QEMUMicroVM: VMMUnderTest {
    let binary: String
    let image: String
    var name: String { "qemu microvm" }
    func command(kernel: String, args: String, memMiB: Int) throws -> (String, [String]) {
        // QEMU 7.2's microvm creates 24 transports from 0xfeb00000 (512 bytes each, GSIs from 24 on its second
        // IOAPIC) and plugs the first -device into the last. It names them on the command line only for Linux
        // kernels (it patches the command line after a multiboot image has been loaded), so the guest is told here.
        (binary, ["-M", "microvm", "-accel", "kvm", "-m", "\(memMiB)", "-kernel", kernel,
                  "-append", args + " virtio_mmio.device=512@0xfeb02e00:47", "-nodefaults", "-display", "none",
                  "-serial", "stdio", "-monitor", "none", "-no-reboot", "-global", "virtio-mmio.force-legacy=false",
                  "-drive", "id=d0,file=\(image),format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=d0",
                  "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"])
    }
}

enum Runner {
    /// Runs to completion (or `timeout`), timing the first output byte.
    /// A VMM process with its console on a pipe; not started yet.
    static func process(_ vmm: VMMUnderTest, kernel: String, args: String, memMiB: Int, log: FileHandle? = nil) throws -> (Process, Pipe) {
        let (exe, argv) = try vmm.command(kernel: kernel, args: args, memMiB: memMiB)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = argv
        let out = Pipe()
        p.standardOutput = out
        p.standardError = log ?? FileHandle.standardError
        p.standardInput = FileHandle.nullDevice
        return (p, out)
    }

    /// `pinVCPU`: the CPU to pin vmm's vCPU thread to once it exists (see `pinVCPUThread`).
    static func run(_ vmm: VMMUnderTest, kernel: String, args: String, memMiB: Int = 64, timeout: Double = 300,
                    captureLog: Bool = false, pinVCPU: Int? = nil) throws -> GuestRun {
        let logPath = NSTemporaryDirectory() + "vmm-bench-log-\(getpid())"
        defer { if captureLog { try? FileManager.default.removeItem(atPath: logPath) } }
        var logFile: FileHandle?
        if captureLog {
            FileManager.default.createFile(atPath: logPath, contents: nil)
            logFile = FileHandle(forWritingAtPath: logPath)
        }
        let (p, out) = try process(vmm, kernel: kernel, args: args, memMiB: memMiB, log: logFile)
        var result = GuestRun()
        let start = Date()
        result.spawnedAt = monotonicNanoseconds()
        try p.run()
        let killer = DispatchWorkItem { p.terminate() }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        final class Pinning: @unchecked Sendable { var failure: String?; let done = DispatchSemaphore(value: 0) }
        let pinning = Pinning()
        if let cpu = pinVCPU {
            let pid = p.processIdentifier
            DispatchQueue.global().async {
                pinning.failure = pinVCPUThread(of: pid, to: cpu)
                pinning.done.signal()
            }
        }
        var data = Data()
        while true {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            if result.firstByte == nil { result.firstByte = Date().timeIntervalSince(start) }
            data.append(chunk)
        }
        // End of output: every process of the VMM has closed its stdout, i.e. exited. (waitUntilExit polls its
        // run loop in 50 ms steps on Linux, too coarse to time with.)
        result.total = Date().timeIntervalSince(start)
        p.waitUntilExit()
        killer.cancel()
        if pinVCPU != nil {
            pinning.done.wait()
            result.pinFailure = pinning.failure
        }
        result.status = p.terminationStatus
        result.output = String(decoding: data, as: UTF8.self)
        if captureLog { result.log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        return result
    }

    /// Pins the vCPU thread of the vmm started as `pid` (the thread vcpu0 of its vcpu process, a descendant) to `cpu`,
    /// waiting up to `timeout` seconds for it to exist; nil once pinned, else why not. The exit loops run the vCPU of
    /// every runner on the same CPU: this host's two CPUs differ in speed from one moment to the next (a traced exit
    /// took 20-35% longer on one than on the other at the same time), which moved single runs by as much.
    static func pinVCPUThread(of pid: pid_t, to cpu: Int, timeout: Double = 2) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            for process in ProcessTree.all(pid) {
                let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process)/task")) ?? []
                for task in tasks {
                    guard let tid = pid_t(task),
                          FileDescriptor.readText("/proc/\(process)/task/\(task)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines) == "vcpu0"
                    else { continue }
                    do { try setCPUAffinity(pid: tid, cpus: [cpu]) } catch { return "sched_setaffinity on its vCPU thread: \(error)" }
                    return nil
                }
            }
            usleep(1000)
        }
        return "no vcpu0 thread within \(timeout) s"
    }

    /// Starts a guest that runs until killed, waits for `ready`, returns the process.
    static func startResident(_ vmm: VMMUnderTest, kernel: String, args: String, memMiB: Int, ready: String) throws -> Process {
        let (p, out) = try process(vmm, kernel: kernel, args: args, memMiB: memMiB)
        try p.run()
        var seen = ""
        while !seen.contains(ready) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += String(decoding: chunk, as: UTF8.self)
        }
        return p
    }
}

enum ProcessTree {
    /// `pid` and all its descendants (the children of each of its threads), parents before their children.
    static func all(_ pid: pid_t) -> [pid_t] {
        var out = [pid]
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? ["\(pid)"]
        for task in tasks {
            let children = FileDescriptor.readText("/proc/\(pid)/task/\(task)/children") ?? ""
            for c in children.split(separator: " ").compactMap({ pid_t($0) }) { out += all(c) }
        }
        return out
    }
}

/// The VMM with one device of every kind: a read-only drive, a network interface on a tap made for it (root only:
/// without root the interface is left out and the row says so), vsock and entropy; their standbys are on.
struct EveryDevice {
    let vmm: OurVMM
    let processes: String
    private let directory: String
    private let tap: String?

    init(_ ours: OurVMM) throws {
        directory = NSTemporaryDirectory() + "vmm-bench-devices-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: directory + "/disk.img", contents: Data(count: 1 << 20))
        let name = "vmmb\(getpid() % 100_000)"
        tap = geteuid() == 0 && Self.ip(["tuntap", "add", "dev", name, "mode", "tap"]) && Self.ip(["link", "set", name, "up"]) ? name : nil
        var devices = #""vsock": {"guest_cid": 3, "uds_path": "\#(directory)/vsock.sock"}, "entropy": {},"#
        if let tap {
            devices += #""network-interfaces": [{"iface_id": "eth0", "host_dev_name": "\#(tap)", "guest_mac": "02:00:00:00:00:01"}],"#
        }
        processes = "virtio-blk, " + (tap != nil ? "virtio-net, " : "") + "virtio-vsock, virtio-rng, each with a standby"
            + (tap == nil ? " (no virtio-net: making a tap needs root)" : "")
        vmm = OurVMM(binary: ours.binary, name: "vmm, every virtio device", drive: directory + "/disk.img", devices: devices)
    }

    func remove() {
        if let tap { _ = Self.ip(["link", "del", tap]) }
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func ip(_ arguments: [String]) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: access("/usr/sbin/ip", X_OK) == 0 ? "/usr/sbin/ip" : "/sbin/ip")
        p.arguments = arguments
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }
}
