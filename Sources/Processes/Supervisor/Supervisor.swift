import Boot
import X86
import Channel
import Config
import IRQChipLink
import Machine
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
        let role: Role
        let process: ChildProcess
        let control: FileDescriptor
        /// The channels this helper serves (none for the vcpu process, which only posts to them).
        let channels: [ChannelRegion]
        var ended: ChildProcess.Outcome?
        /// Its control pipe reached end-of-file.
        var controlClosed = false
        init(role: Role, process: consuming ChildProcess, control: consuming FileDescriptor, channels: [ChannelRegion]) {
            self.role = role
            self.process = process
            self.control = control
            self.channels = channels
        }
    }

    /// Runs the VM to its end; returns how it ended.
    public func run() -> ExitStatus {
        do {
            return try launchAndWatch()
        } catch let e as HostSetupError {
            Log.report(e.description)
            return .hostSetupFailed
        } catch {
            Log.report("\(error)")
            return .hostSetupFailed
        }
    }

    struct HostSetupError: Error, CustomStringConvertible { let description: String }

    private func launchAndWatch() throws -> ExitStatus {
        Log.debug("supervisor starting")
        let kvm: FileDescriptor
        do { kvm = try FileDescriptor.open("/dev/kvm", O_RDWR) } catch {
            throw HostSetupError(description: "cannot open /dev/kvm: \(error) (is KVM available, and may this user use it?)")
        }

        // Guest RAM, with the kernel and boot structures written before any helper exists.
        let memSize = config.machine.memSizeMiB << 20
        let ram = try MemFD.create(name: "guest-ram", size: memSize)
        let entry = try loadGuest(ramFD: ram.raw, size: memSize)

        // One channel per device role, one lane per vCPU, in the layout's order of servers.
        let layout = MachineLayout.standard
        let vcpus = config.machine.vcpuCount
        let channels = try layout.servers.map { try ChannelPlan(name: "\($0.rawValue)-channel", lanes: vcpus) }
        func channel(_ role: Role) -> ChannelPlan { channels[layout.servers.firstIndex(of: role) ?? 0] }
        // Devices drive their IOAPIC pins on a channel of their own (lane = device): no device maps the vCPUs'
        // lanes of the irqchip channel, nor the interrupt mailboxes.
        let linesChannel = try ChannelPlan(name: "irq-lines", lanes: 1)
        let mailboxes = try InterruptMailbox.create(vcpus: vcpus)
        let kicks = try (0..<vcpus).map { _ in EventFD.Box(try EventFD()) }
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

        // pio: its channel, its interrupt line, control pipe, [console out], [console in].
        var pioFDs = FDList()
        let pioSpec = PIOSpec(
            channel: channel(.pio).spec(&pioFDs),
            uartLine: InterruptLineSpec(channel: linesChannel.spec(&pioFDs), lane: 0, pin: layout.irq(of: "com1") ?? 4),
            controlFD: pioFDs.add(pioControl.writeEnd.raw),
            consoleOutFD: consoleOut.raw >= 0 ? pioFDs.add(consoleOut.raw) : nil,
            consoleInFD: config.vmm.serialInputFromStdin ? pioFDs.add(0) : nil,
            spinMicroseconds: config.vmm.spinBudgetMicroseconds, logLevel: Log.level.rawValue,
            sandbox: try sandboxSpec(.pio))

        var irqchipFDs = FDList()
        let irqchipSpec = IRQChipSpec(
            channel: channel(.irqchip).spec(&irqchipFDs), lines: linesChannel.spec(&irqchipFDs),
            mailboxFD: irqchipFDs.add(mailboxes.raw), kickFDs: kicks.map { irqchipFDs.add($0.raw, owner: $0) },
            controlFD: irqchipFDs.add(irqchipControl.writeEnd.raw),
            vcpuCount: vcpus, spinMicroseconds: config.vmm.spinBudgetMicroseconds,
            logLevel: Log.level.rawValue, sandbox: try sandboxSpec(.irqchip))

        var vcpuFDs = FDList()
        let vcpuSpec = VCPUSpec(
            kvmFD: vcpuFDs.add(kvm.raw), ramFD: vcpuFDs.add(ram.raw), memSizeMiB: config.machine.memSizeMiB,
            controlFD: vcpuFDs.add(vcpuControl.writeEnd.raw), vcpuCount: vcpus, entry: entry,
            cpuid: config.cpuid.map { CPUIDRuleSpec(leaf: $0.leaf, subleaf: $0.subleaf, register: $0.register, clear: $0.clear, set: $0.set) }
                + (quirks?.cpuidMasks ?? []),  // the host's masks after the template: it cannot undo them
            trackDirtyPages: config.machine.trackDirtyPages,
            channels: channels.map { $0.spec(&vcpuFDs) }, servers: layout.servers, routes: layout.routes,
            mailboxFD: vcpuFDs.add(mailboxes.raw), kickFDs: kicks.map { vcpuFDs.add($0.raw, owner: $0) },
            syscallFixup: quirks?.syscallFixup ?? false,
            spinMicroseconds: config.vmm.spinBudgetMicroseconds, deviceTimeoutMs: config.vmm.deviceTimeoutMs,
            logLevel: Log.level.rawValue, sandbox: try sandboxSpec(.vcpu))

        Log.debug("guest loaded, channels ready; spawning helpers")
        // The vCPU first: its path to the first guest instruction (VM set-up) is the longer one. It cannot get
        // ahead of the device: requests wait on the channel, which exists already, until the device serves them.
        var helpers: [Helper] = []
        defer { stopAll(helpers) }
        helpers.append(try spawnHelper(.vcpu, spec: vcpuSpec.encoded(), stdio: (devNull.raw, devNull.raw, logFD),
                                       fds: vcpuFDs.fds, control: vcpuControl.readEnd, cpus: config.vmm.vcpuCPUs))
        helpers.append(try spawnHelper(.pio, spec: pioSpec.encoded(), stdio: (devNull.raw, devNull.raw, logFD),
                                       fds: pioFDs.fds, control: pioControl.readEnd, cpus: config.vmm.deviceCPUs,
                                       serves: [channel(.pio)]))
        helpers.append(try spawnHelper(.irqchip, spec: irqchipSpec.encoded(), stdio: (devNull.raw, devNull.raw, logFD),
                                       fds: irqchipFDs.fds, control: irqchipControl.readEnd, cpus: config.vmm.deviceCPUs,
                                       serves: [channel(.irqchip), linesChannel]))
        Log.debug("helpers spawned")
        return try watch(helpers)
    }

    /// Starts one helper role in its namespaces, with exactly `fds`, on `cpus` (all when empty).
    private func spawnHelper(_ role: Role, spec: String, stdio: (Int32, Int32, Int32), fds: [Int32],
                             control: borrowing FileDescriptor, cpus: [Int], serves: [ChannelPlan] = []) throws -> Helper {
        let process = try ChildProcess.spawn(executable: executable, arguments: ["_role", role.rawValue, spec], stdio: stdio, fds: fds,
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
    private func sandboxSpec(_ role: Role) throws -> SandboxSpec {
        let text: String
        do {
            text = try BuiltinPolicies.load(file: role.policyFile, directory: config.vmm.sandbox.unsafePolicyDirectory,
                                            reader: FileDescriptor.readText)
        } catch { throw HostSetupError(description: "policy for \(role.rawValue): \(error)") }
        let fault = faultInjection.flatMap { $0.role == role ? $0.syscall : nil }
        return SandboxSpec(policyName: role.policyFile, policyText: text,
                           mode: config.vmm.sandbox.seccompLogOnly ? .log : .kill,
                           uid: geteuid() == 0 ? config.vmm.sandbox.uid : nil,
                           gid: geteuid() == 0 ? config.vmm.sandbox.gid : nil, faultSyscall: fault)
    }

    /// Test hook: VMM_FAULT_INJECT=ROLE:SYSCALL makes that helper call SYSCALL once it is sandboxed.
    private var faultInjection: (role: Role, syscall: String)? {
        guard let raw = getenv("VMM_FAULT_INJECT") else { return nil }
        let parts = String(cString: raw).split(separator: ":")
        guard parts.count == 2, let role = Role(rawValue: String(parts[0])) else { return nil }
        return (role, String(parts[1]))
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

    func stopAll(_ helpers: [Helper]) {
        for h in helpers.reversed() where h.ended == nil { h.process.kill(SIGKILL) }
        for h in helpers where h.ended == nil { h.ended = try? h.process.reap(block: true) }
    }
}
