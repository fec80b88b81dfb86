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
        var ended: ChildProcess.Outcome?
        init(role: String, process: consuming ChildProcess, control: consuming FileDescriptor) {
            self.role = role
            self.process = process
            self.control = control
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
            do { consoleOut = try FileDescriptor.openOutput(path, .truncate) } catch {
                throw HostSetupError(description: "vmm.serial.output: cannot open \(error)")
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
            cpuid: config.cpuid.map { CPUIDRuleSpec(leaf: $0.leaf, subleaf: $0.subleaf, register: $0.register, clear: $0.clear, set: $0.set) }
                + (quirks?.cpuidMasks ?? []),  // the host's masks after the template: it cannot undo them
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
                                       fds: pioFDs.fds, control: pioControl.readEnd, cpus: config.vmm.deviceCPUs))
        helpers.append(try spawnHelper("irqchip", spec: irqchipSpec.encoded(), stdio: (devNull.raw, devNull.raw, logFD),
                                       fds: irqchipFDs.fds, control: irqchipControl.readEnd, cpus: config.vmm.deviceCPUs))
        Log.debug("helpers spawned")
        return try watch(helpers)
    }

    /// Starts one helper role in its namespaces, with exactly `fds`, on `cpus` (all when empty).
    private func spawnHelper(_ role: String, spec: String, stdio: (Int32, Int32, Int32), fds: [Int32],
                             control: borrowing FileDescriptor, cpus: [Int]) throws -> Helper {
        let process = try ChildProcess.spawn(executable: executable, arguments: ["_role", role, spec], stdio: stdio, fds: fds,
                                             environment: Self.helperEnvironment, namespaces: Self.helperNamespaces)
        if !cpus.isEmpty { try setCPUAffinity(pid: process.pid, cpus: cpus) }
        let readEnd = try control.duplicate()
        try readEnd.setNonBlocking(true)
        return Helper(role: role, process: process, control: readEnd)
    }

    /// Every helper starts in its own mount, pid, ipc, uts and network namespaces. Run by a user other than
    /// root, vmm adds a user namespace, which gives the helper just enough (inside it) to build its jail.
    static var helperNamespaces: ChildProcess.Namespaces { geteuid() == 0 ? .all : ChildProcess.Namespaces.all.union(.user) }

    /// A role's confinement: its policy (read here, since the helper can open no files), mode and ids.
    private func sandboxSpec(role: String) throws -> SandboxSpec {
        let text: String
        do {
            text = try BuiltinPolicies.load(role: role, directory: config.vmm.sandbox.unsafePolicyDirectory, reader: FileDescriptor.readText)
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
        do { kernel = try FileDescriptor.open(config.bootSource.kernelImagePath, O_RDONLY).readAll(atMost: size) } catch {
            throw HostSetupError(description: "boot-source.kernel_image_path: \(error)")
        }
        var modules: [Multiboot.Module] = []
        if let initrd = config.bootSource.initrdPath {
            do { modules.append(.init(bytes: try FileDescriptor.open(initrd, O_RDONLY).readAll(atMost: size), string: "initrd")) } catch {
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

    /// Waits for the first decisive event and returns vmm's exit status.
    private func watch(_ helpers: [Helper]) throws -> Int32 {
        // Devices' messages are read before the vCPU's: the vCPU reports a halt only after a sync with every
        // device, so a debug-exit that came first is already in its device's pipe and must win over the halt.
        let readingOrder = helpers.filter { $0.role != "vcpu" } + helpers.filter { $0.role == "vcpu" }
        while true {
            let fds = [signals.raw] + helpers.map { $0.control.raw } + helpers.map { $0.process.pidfd.raw }
            let ready = try Poll.wait(fds, timeoutMs: -1)
            if !ready[0].isEmpty {
                let sig = try Signals.read(from: signals)
                Log.report("\(signalName(sig)) received; stopping the VM")
                return sig == SIGINT ? ExitStatus.interrupted : ExitStatus.terminated
            }
            // Control messages first: a helper that reported and then exited is not a crash.
            for h in readingOrder {
                if let status = try readControl(h) { return status }
            }
            for (i, h) in helpers.enumerated() where !ready[1 + helpers.count + i].isEmpty {
                h.ended = try h.process.reap(block: true)
                for other in readingOrder { if let status = try readControl(other) { return status } }
                Log.report("\(h.role) process (pid \(h.process.pid)) \(h.ended.map(\.description) ?? "ended") while the guest was running")
                return ExitStatus.helperDied
            }
        }
    }

    /// Reads one control message from a helper, if one is waiting; returns the exit status it decides.
    private func readControl(_ h: Helper) throws -> Int32? {
        var record = [UInt8](repeating: 0, count: ControlMessage.recordSize)
        let n = Glibc.read(h.control.raw, &record, record.count)
        if n < 0 { return errno == EAGAIN || errno == EINTR ? nil : ExitStatus.hostError }
        if n == 0 { return nil }
        guard n == record.count, let message = ControlMessage(record: record) else {
            Log.report("\(h.role) process sent a malformed control message; stopping the VM")
            return ExitStatus.helperDied
        }
        switch message {
        case .seccompLogged(let nr):
            Log.report("\(h.role) process made a call its policy denies: syscall \(SeccompFilter.name(of: nr)) (log mode: it failed with ENOSYS)")
            return try readControl(h)
        case .seccompKilled(let nr):
            h.ended = try h.process.reap(block: true)
            Log.report("\(h.role) process killed by seccomp: syscall \(SeccompFilter.name(of: nr))")
            return ExitStatus.helperDied
        case .guest(.booted):
            let ms = Double(monotonicNanoseconds() - startedAt) / 1e6
            Log.report("guest boot completed (boot-timer port 0x3f0) \(Int(ms)) ms after vmm started")
            return try readControl(h)
        default:
            return outcome(of: message, from: h)
        }
    }

    private func outcome(of message: ControlMessage, from h: Helper) -> Int32 {
        switch message {
        case .guestExit(let status):
            Log.info("guest requested exit through the debug-exit port: status \(status)")
            return status
        case .seccompKilled, .seccompLogged, .guest(.booted):
            return ExitStatus.helperDied  // handled in readControl
        case .guest(.reset):
            Log.report("guest reset the CPU (i8042 reset line): it asked for a reboot; stopping the VM")
            return ExitStatus.guestReboot
        case .guest(.panic):
            Log.report("guest kernel panic (seen on its console); stopping the VM")
            return ExitStatus.guestPanic
        case .vcpuStopped(let stop):
            switch stop {
            case .halted:
                Log.report("guest powered off: every vCPU halted with interrupts off")
                return ExitStatus.poweredOff
            case .tripleFault:
                Log.report("guest triple fault; register dump above")
                return ExitStatus.tripleFault
            case .internalError, .failedEntry, .unhandledExit:
                Log.report("the vCPU stopped on an exit it cannot handle; register dump above")
                return ExitStatus.vcpuError
            case .systemEvent(let type):
                Log.report("guest requested a system event (type \(type))")
                return type == 1 ? 0 : ExitStatus.vcpuError
            case .setupFailed:
                return ExitStatus.hostError
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
    let deviceDoorbell: EventFD
    private let responseDoorbellBoxes: [EventFD.Box]
    var responseDoorbells: [Int32] { responseDoorbellBoxes.map(\.raw) }

    init(name: String, lanes: Int) throws {
        layout = ChannelLayout(lanes: lanes)
        memory = try ChannelRegion.create(layout: layout, name: name)
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
