import Boot
import Channel
import Config
import Devices
import Glibc
import Memory
import Sandbox
import System

/// The supervisor: validates and prepares everything (guest RAM with the kernel loaded, channels, doorbells,
/// control pipes), spawns the vcpu and device processes with exactly the fds each needs, watches them through
/// pidfds, and turns how the VM ended into vmm's exit status. It never reads guest-controlled data: it writes
/// guest RAM only before the guest runs, and reads nothing from the channels.
public final class Supervisor {
    let config: VMConfig
    let executable: String
    let signals: FileDescriptor
    /// When vmm started (CLOCK_MONOTONIC), for the boot timer.
    let startedAt = monotonicNanoseconds()
    let quirks: HostQuirks?

    /// `signals` is a signalfd for SIGINT/SIGTERM/SIGHUP, opened before any thread existed.
    public init(config: VMConfig, executable: String = "/proc/self/exe", signals: consuming FileDescriptor) {
        self.config = config
        self.executable = executable
        self.signals = signals
        quirks = HostQuirks.detect(enabled: config.vmm.hostQuirks)
    }

    /// One watched helper.
    final class Helper {
        let role: String
        let process: ChildProcess
        let control: FileDescriptor
        /// The channels this helper serves (none for the vcpu process, which only posts to them).
        let channels: [ChannelRegion]
        var ended: ChildProcess.Outcome?
        init(role: String, process: consuming ChildProcess, control: consuming FileDescriptor, channels: [ChannelRegion]) {
            self.role = role
            self.process = process
            self.control = control
            self.channels = channels
        }
    }

    public func run() -> Int32 {
        do {
            return try launchAndWatch()
        } catch let e as HostSetupError {
            Log.report(e.description)
            return ExitStatus.hostError
        } catch {
            Log.report("\(error)")
            return ExitStatus.hostError
        }
    }

    struct HostSetupError: Error, CustomStringConvertible { let description: String }

    private func launchAndWatch() throws -> Int32 {
        Log.debug("supervisor starting")
        let kvm: FileDescriptor
        do { kvm = try FileDescriptor.open("/dev/kvm", O_RDWR) } catch {
            throw HostSetupError(description: "cannot open /dev/kvm: \(error) (is KVM available, and may this user use it?)")
        }

        // Guest RAM, with the kernel and boot structures written before any helper exists.
        let memSize = config.machine.memSizeMiB << 20
        let ram = try MemFD.create(name: "guest-ram", size: memSize)
        let entry = try loadGuest(ramFD: ram.raw, size: memSize)

        // One channel per device process, one lane per vCPU.
        let pioChannel = try ChannelPlan(name: "pio-channel", lanes: config.machine.vcpuCount)
        // The irqchip serves the vCPUs on one channel and the devices' interrupt lines on another (lane = device).
        let irqchipChannel = try ChannelPlan(name: "irqchip-channel", lanes: config.machine.vcpuCount)
        let linesChannel = try ChannelPlan(name: "irq-lines", lanes: 1)
        let kicks = try (0..<config.machine.vcpuCount).map { _ in EventFD.Box(try EventFD()) }
        let pioControl = try Pipe()
        let irqchipControl = try Pipe()
        let vcpuControl = try Pipe()
        let devNull = try FileDescriptor.open("/dev/null", O_RDWR)
        let consoleOut: FileDescriptor  // -1 when the console goes nowhere
        switch config.vmm.serialOutput {
        case .stdout: consoleOut = try FileDescriptor.duplicate(1)
        case .none: consoleOut = FileDescriptor(owning: -1)
        case .file(let path):
            do { consoleOut = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_TRUNC) } catch {
                throw HostSetupError(description: "vmm.serial.output: cannot open \(path): \(error)")
            }
        }
        let logFD = Log.fd
        Log.debug("memory, channels and console ready")

        // pio: its channel, control pipe, [console out], [console in].
        var pioFDs = FDList()
        let pioSpec = PIOSpec(
            channel: pioChannel.spec(&pioFDs),
            uartLine: InterruptLineSpec(channel: linesChannel.spec(&pioFDs), lane: 0, pin: 4),
            controlFD: pioFDs.add(pioControl.writeEnd.raw),
            consoleOutFD: consoleOut.raw >= 0 ? pioFDs.add(consoleOut.raw) : nil,
            consoleInFD: config.vmm.serialInputFromStdin ? pioFDs.add(0) : nil,
            spinMicroseconds: config.vmm.spinBudgetMicroseconds, logLevel: Log.level.rawValue,
            sandbox: try sandboxSpec(role: "pio"))

        var irqchipFDs = FDList()
        let irqchipSpec = IRQChipSpec(
            channel: irqchipChannel.spec(&irqchipFDs), lines: linesChannel.spec(&irqchipFDs),
            kickFDs: kicks.map { irqchipFDs.add($0.raw, owner: $0) },
            controlFD: irqchipFDs.add(irqchipControl.writeEnd.raw),
            vcpuCount: config.machine.vcpuCount, spinMicroseconds: config.vmm.spinBudgetMicroseconds,
            logLevel: Log.level.rawValue, sandbox: try sandboxSpec(role: "irqchip"))

        var vcpuFDs = FDList()
        let vcpuChannels = [pioChannel.spec(&vcpuFDs), irqchipChannel.spec(&vcpuFDs)]
        let vcpuSpec = VCPUSpec(
            kvmFD: vcpuFDs.add(kvm.raw), ramFD: vcpuFDs.add(ram.raw), memSizeMiB: config.machine.memSizeMiB,
            controlFD: vcpuFDs.add(vcpuControl.writeEnd.raw), vcpuCount: config.machine.vcpuCount, entry: entry,
            cpuid: (quirks?.cpuidMasks ?? [])
                + config.cpuid.map { CPUIDRuleSpec(leaf: $0.leaf, subleaf: $0.subleaf, register: $0.register, clear: $0.clear, set: $0.set) },
            trackDirtyPages: config.machine.trackDirtyPages, channels: vcpuChannels, deviceNames: ["pio", "irqchip"],
            routes: [PortRouteSpec(first: Serial8250.com1, last: Serial8250.com1 + 7, device: 0),
                     PortRouteSpec(first: DebugExit.defaultPort, last: DebugExit.defaultPort, device: 0),
                     PortRouteSpec(first: I8042.dataPort, last: I8042.dataPort, device: 0),
                     PortRouteSpec(first: I8042.commandPort, last: I8042.commandPort, device: 0),
                     PortRouteSpec(first: CMOSRTC.defaultPort, last: CMOSRTC.defaultPort + 1, device: 0),
                     PortRouteSpec(first: BootTimer.defaultPort, last: BootTimer.defaultPort, device: 0)],
            mmioRoutes: [MMIORouteSpec(base: LocalAPIC.defaultBase, size: 0x1000, device: 1,
                                       synchronousOffsets: [LocalAPIC.Register.icrLow]),
                         MMIORouteSpec(base: IOAPIC.defaultBase, size: 0x1000, device: 1, synchronousWrites: true)],
            irqchipChannel: 1, kickFDs: kicks.map { vcpuFDs.add($0.raw, owner: $0) }, syscallFixup: quirks?.syscallFixup ?? false,
            spinMicroseconds: config.vmm.spinBudgetMicroseconds, deviceTimeoutMs: config.vmm.deviceTimeoutMs,
            logLevel: Log.level.rawValue, sandbox: try sandboxSpec(role: "vcpu"))

        Log.debug("guest loaded, channels ready; spawning helpers")
        // The vCPU first: its path to the first guest instruction (VM set-up) is the longer one. It cannot get
        // ahead of the device: requests wait on the channel, which exists already, until the device serves them.
        var helpers: [Helper] = []
        defer { stopAll(helpers) }
        helpers.append(try spawnHelper("vcpu", spec: vcpuSpec.encoded(), stdio: (devNull.raw, devNull.raw, logFD),
                                       fds: vcpuFDs.fds, control: vcpuControl.readEnd, cpus: config.vmm.vcpuCPUs))
        helpers.append(try spawnHelper("pio", spec: pioSpec.encoded(), stdio: (devNull.raw, devNull.raw, logFD),
                                       fds: pioFDs.fds, control: pioControl.readEnd, cpus: config.vmm.deviceCPUs,
                                       serves: [pioChannel]))
        helpers.append(try spawnHelper("irqchip", spec: irqchipSpec.encoded(), stdio: (devNull.raw, devNull.raw, logFD),
                                       fds: irqchipFDs.fds, control: irqchipControl.readEnd, cpus: config.vmm.deviceCPUs,
                                       serves: [irqchipChannel, linesChannel]))
        Log.debug("helpers spawned")
        return try watch(helpers)
    }

    /// Starts one helper role in its namespaces, with exactly `fds`, on `cpus` (all when empty).
    private func spawnHelper(_ role: String, spec: String, stdio: (Int32, Int32, Int32), fds: [Int32],
                             control: borrowing FileDescriptor, cpus: [Int], serves: [ChannelPlan] = []) throws -> Helper {
        let process = try ChildProcess.spawn(executable: executable, arguments: ["_role", role, spec], stdio: stdio, fds: fds,
                                             environment: Self.helperEnvironment, namespaces: Self.helperNamespaces)
        if !cpus.isEmpty { try setCPUAffinity(pid: process.pid, cpus: cpus) }
        let readEnd = try control.duplicate()
        try readEnd.setNonBlocking(true)
        return Helper(role: role, process: process, control: readEnd, channels: serves.map(\.region))
    }

    /// Every helper starts in its own mount, pid, ipc, uts and network namespaces. Run by a user other than
    /// root, vmm adds a user namespace, which gives the helper just enough (inside it) to build its jail.
    static var helperNamespaces: ChildProcess.Namespaces { geteuid() == 0 ? .all : ChildProcess.Namespaces.all.union(.user) }

    /// A role's confinement: its policy (read here, since the helper can open no files), mode and ids.
    private func sandboxSpec(role: String) throws -> SandboxSpec {
        let dir = try PolicyDirectory.locate(configured: config.vmm.sandbox.policyDirectory)
        let text: String
        do {
            text = try PolicySource.load("\(role).policy", directory: dir, reader: FileDescriptor.readText)
        } catch { throw HostSetupError(description: "policy for \(role): \(error)") }
        let fault = faultInjection.flatMap { $0.role == role ? $0.syscall : nil }
        return SandboxSpec(policyName: "\(role).policy", policyText: text,
                           mode: config.vmm.sandbox.seccompLogOnly ? .log : .kill,
                           uid: geteuid() == 0 ? config.vmm.sandbox.uid : nil,
                           gid: geteuid() == 0 ? config.vmm.sandbox.gid : nil, faultSyscall: fault)
    }

    /// Test hook: VMM_FAULT_INJECT=ROLE:SYSCALL makes that helper call SYSCALL once it is sandboxed.
    private var faultInjection: (role: String, syscall: String)? {
        guard let raw = getenv("VMM_FAULT_INJECT") else { return nil }
        let parts = String(cString: raw).split(separator: ":")
        return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
    }

    /// Helpers get a minimal environment. The Swift runtime's crash backtracer is off there: a crashed helper
    /// must die at once so the supervisor can act, and it is reported by role and signal.
    static let helperEnvironment = ["SWIFT_BACKTRACE=enable=no", "PATH=/usr/bin:/bin"]

    private func loadGuest(ramFD: Int32, size: Int) throws -> EntryState {
        let memory = try GuestMemory(fd: ramFD, size: size)
        let kernel: [UInt8]
        do { kernel = try FileDescriptor.open(config.bootSource.kernelImagePath, O_RDONLY).readAll() } catch {
            throw HostSetupError(description: "boot-source.kernel_image_path: \(error)")
        }
        var modules: [Multiboot.Module] = []
        if let initrd = config.bootSource.initrdPath {
            do { modules.append(.init(bytes: try FileDescriptor.open(initrd, O_RDONLY).readAll(), string: "initrd")) } catch {
                throw HostSetupError(description: "boot-source.initrd_path: \(error)")
            }
        }
        do {
            var cmdline = config.bootSource.bootArgs
            if let quirks {
                // Said once: to everyone when it changes a Linux guest's command line, in the log otherwise.
                let linux = GuestLoader.isLinux(kernel)
                if linux { cmdline = quirks.addingLinuxOptions(to: cmdline) }
                if linux { Log.report(quirks.summary) } else { Log.info(quirks.summary) }
            }
            let entry = try GuestLoader.load(kernel: kernel, cmdline: cmdline, modules: modules, into: memory)
            try MPTable.write(cpus: config.machine.vcpuCount, into: memory)
            return entry
        } catch {
            throw HostSetupError(description: "boot-source.kernel_image_path: \(config.bootSource.kernelImagePath): \(error)")
        }
    }

    /// How a run ended: vmm's exit status and what to tell the user about it, said once the devices have settled.
    struct Ending {
        let status: Int32
        let message: String?
        /// Said at `Info` level only (a guest that chose its exit status is not news).
        var quiet = false
    }

    /// Waits for the first decisive event, lets every device finish what the guest already asked of it, reports
    /// the event and returns vmm's exit status.
    private func watch(_ helpers: [Helper]) throws -> Int32 {
        let ending = try firstDecisiveEvent(helpers)
        settleDevices(helpers)
        if let message = ending.message {
            if ending.quiet { Log.info(message) } else { Log.report(message) }
        }
        return ending.status
    }

    private func firstDecisiveEvent(_ helpers: [Helper]) throws -> Ending {
        // Devices' messages are read before the vCPU's: the vCPU reports a stop only after a sync with every
        // device, so a debug-exit that came first is already in its device's pipe and must win over the stop.
        let readingOrder = helpers.filter { $0.role != "vcpu" } + helpers.filter { $0.role == "vcpu" }
        while true {
            let fds = [signals.raw] + helpers.map { $0.control.raw } + helpers.map { $0.process.pidfd.raw }
            let ready = try Poll.wait(fds, timeoutMs: -1)
            if !ready[0].isEmpty {
                let sig = try Signals.read(from: signals)
                return Ending(status: sig == SIGINT ? ExitStatus.interrupted : ExitStatus.terminated,
                              message: "\(signalName(sig)) received; stopping the VM")
            }
            // Control messages first: a helper that reported and then exited is not a crash.
            for h in readingOrder {
                if let ending = try readControl(h) { return ending }
            }
            for (i, h) in helpers.enumerated() where !ready[1 + helpers.count + i].isEmpty {
                h.ended = try h.process.reap(block: true)
                for other in readingOrder { if let ending = try readControl(other) { return ending } }
                return Ending(status: ExitStatus.helperDied,
                              message: "\(h.role) process (pid \(h.process.pid)) \(h.ended.map(\.description) ?? "ended") while the guest was running")
            }
        }
    }

    /// Before vmm reports how the run ended, everything the guest did must have taken effect, whatever ended it:
    /// the vcpu process is stopped (nothing new can be posted), then each device has `device_timeout_ms` to
    /// handle what is still on its rings (a console byte, a register write). What a dead or hung device never
    /// handled is counted and said, never dropped in silence.
    private func settleDevices(_ helpers: [Helper]) {
        for h in helpers where h.role == "vcpu" && h.ended == nil {
            h.process.kill(SIGKILL)
            h.ended = try? h.process.reap(block: true)
        }
        let devices = helpers.filter { !$0.channels.isEmpty }
        func unhandled(_ h: Helper) -> (all: Int, postedWrites: Int) {
            h.channels.map { $0.unhandledRequests() }.reduce((0, 0)) { ($0.0 + $1.all, $0.1 + $1.postedWrites) }
        }
        let deadline = monotonicNanoseconds() + UInt64(config.vmm.deviceTimeoutMs) * 1_000_000
        while true {
            for h in devices where h.ended == nil { h.ended = try? h.process.reap(block: false) }
            let busy = devices.filter { $0.ended == nil && unhandled($0).all > 0 }
            if busy.isEmpty || monotonicNanoseconds() >= deadline { break }
            _ = try? Poll.wait(busy.map { $0.process.pidfd.raw }, timeoutMs: 1)
        }
        for h in devices {
            let lost = unhandled(h).postedWrites
            guard lost > 0 else { continue }
            let why = h.ended.map { "the process \($0.description)" } ?? "it did not handle them within \(config.vmm.deviceTimeoutMs) ms"
            Log.report("\(lost) posted write\(lost == 1 ? "" : "s") to the \(h.role) process never took effect: \(why)")
        }
    }

    /// Reads one control message from a helper, if one is waiting; returns the ending it decides.
    private func readControl(_ h: Helper) throws -> Ending? {
        var record = [UInt8](repeating: 0, count: ControlMessage.recordSize)
        let n = Glibc.read(h.control.raw, &record, record.count)
        if n < 0 {
            return errno == EAGAIN || errno == EINTR ? nil
                : Ending(status: ExitStatus.hostError, message: "reading the \(h.role) process's control pipe failed: errno \(errno)")
        }
        if n == 0 { return nil }
        guard n == record.count, let message = ControlMessage(record: record) else {
            return Ending(status: ExitStatus.helperDied, message: "\(h.role) process sent a malformed control message; stopping the VM")
        }
        switch message {
        case .seccompLogged(let nr):
            Log.report("\(h.role) process made a call its policy denies: syscall \(SeccompFilter.name(of: nr)) (log mode: it failed with ENOSYS)")
            return try readControl(h)
        case .seccompKilled(let nr):
            h.ended = try h.process.reap(block: true)
            return Ending(status: ExitStatus.helperDied, message: "\(h.role) process killed by seccomp: syscall \(SeccompFilter.name(of: nr))")
        case .guest(.booted):
            let ms = Double(monotonicNanoseconds() - startedAt) / 1e6
            Log.report("guest boot completed (boot-timer port 0x3f0) \(Int(ms)) ms after vmm started")
            return try readControl(h)
        default:
            return ending(for: message)
        }
    }

    private func ending(for message: ControlMessage) -> Ending {
        switch message {
        case .guestExit(let status):
            return Ending(status: status, message: "guest requested exit through the debug-exit port: status \(status)", quiet: true)
        case .seccompKilled, .seccompLogged, .guest(.booted):
            return Ending(status: ExitStatus.helperDied, message: nil)  // handled in readControl
        case .guest(.reset):
            return Ending(status: ExitStatus.guestReboot, message: "guest reset the CPU (i8042 reset line): it asked for a reboot; stopping the VM")
        case .guest(.panic):
            return Ending(status: ExitStatus.guestPanic, message: "guest kernel panic (seen on its console); stopping the VM")
        case .vcpuStopped(let stop):
            switch stop {
            case .halted:
                return Ending(status: ExitStatus.poweredOff, message: "guest powered off: every vCPU halted with interrupts off")
            case .tripleFault:
                return Ending(status: ExitStatus.tripleFault, message: "guest triple fault; register dump above")
            case .internalError, .failedEntry, .unhandledExit:
                return Ending(status: ExitStatus.vcpuError, message: "the vCPU stopped on an exit it cannot handle; register dump above")
            case .systemEvent(let type):
                return Ending(status: type == 1 ? 0 : ExitStatus.vcpuError, message: "guest requested a system event (type \(type))")
            case .setupFailed:
                return Ending(status: ExitStatus.hostError, message: nil)
            }
        }
    }

    private func stopAll(_ helpers: [Helper]) {
        for h in helpers.reversed() where h.ended == nil { h.process.kill(SIGKILL) }
        for h in helpers where h.ended == nil { h.ended = try? h.process.reap(block: true) }
    }
}

/// A device channel as the supervisor creates it: shared memory and doorbells, handed to both sides.
final class ChannelPlan {
    let layout: ChannelLayout
    let memory: FileDescriptor
    /// The supervisor's own view, for counting what a device has not handled yet when the VM stops.
    let region: ChannelRegion
    let deviceDoorbell: EventFD
    private let responseDoorbellBoxes: [EventFD.Box]
    var responseDoorbells: [Int32] { responseDoorbellBoxes.map(\.raw) }

    init(name: String, lanes: Int) throws {
        layout = ChannelLayout(lanes: lanes)
        memory = try ChannelRegion.create(layout: layout, name: name)
        region = try ChannelRegion(attaching: memory.raw, layout: layout)
        deviceDoorbell = try EventFD()
        responseDoorbellBoxes = try (0..<lanes).map { _ in EventFD.Box(try EventFD()) }
    }

    /// The channel's descriptors added to a child's list, as that child will number them.
    func spec(_ fds: inout FDList) -> ChannelSpec {
        ChannelSpec(memoryFD: fds.add(memory.raw, owner: self), lanes: layout.lanes, capacity: layout.ring.capacity,
                    stateSize: layout.stateSize, deviceDoorbellFD: fds.add(deviceDoorbell.raw, owner: self),
                    responseDoorbellFDs: responseDoorbells.map { fds.add($0, owner: self) })
    }
}

/// Descriptors for a child, in the order they will be numbered there (3, 4, ...). The list keeps the objects that
/// own them alive until the child has its copies: an optimised build may otherwise release an owner (and close its
/// descriptor) right after its number was taken, long before the spawn.
struct FDList {
    private(set) var fds: [Int32] = []
    private var owners: [AnyObject] = []
    mutating func add(_ fd: Int32, owner: AnyObject? = nil) -> Int32 {
        fds.append(fd)
        if let owner { owners.append(owner) }
        return Int32(2 + fds.count)
    }
}
