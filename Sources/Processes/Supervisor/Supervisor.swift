import ACPI
import Boot
import CLinux
import Channel
import Config
import Glibc
import IRQChipLink
import Machine
import Memory
import Sandbox
import System
import X86

/// The supervisor: validates and prepares everything (guest RAM with the kernel loaded, channels, doorbells,
/// control pipes), spawns the vcpu and device processes with exactly the fds each needs, watches them through
/// pidfds, and turns how the VM ended into vmm's exit status. It never reads guest-controlled data: it writes
/// guest RAM only before the guest runs; from the channels it reads only ring positions (to see a device hang or
/// settle) and the console's bytes, which it copies to the console without interpreting them.
public final class Supervisor {
    let config: VMConfig
    let executable: String
    let signals: FileDescriptor
    /// When vmm started (CLOCK_MONOTONIC), for the boot timer.
    let startedAt = monotonicNanoseconds()
    let quirks: HostQuirks?
    /// This VM's own helper id (vmm run as root, no shared id in the config), held until the supervisor ends.
    private var idLease: HelperIDLease?
    /// The cgroup every helper is put in, where the host lets vmm make one (known once `cgroupSetup` finished).
    private var cgroup: VMCgroup?
    /// The cgroup's making and the start's helpers' move into it, under way (see CgroupSetup); nil once finished.
    var cgroupSetup: CgroupSetup?
    /// Helpers of the VM's start, spawned but not yet handed to `cgroupSetup`; nil once handed over.
    private var unplaced: [(pid: pid_t, role: Role)]? = []
    /// The API's requests and the metrics (see Supervisor+API).
    let api: SupervisorAPI
    /// Forks the helpers (see HelperLauncher); nil: they are exec'd (`vmm.sandbox.helper_start` "exec", or the
    /// launcher could not start or has gone).
    private var launcher: HelperLauncher?

    /// `signals` is a signalfd for SIGINT/SIGTERM/SIGHUP, opened before any thread existed. `control`: the API
    /// server's requests (`vmm run --api-sock`).
    public init(config: VMConfig, executable: String = "/proc/self/exe", signals: consuming FileDescriptor, control: VMControl? = nil,
                launcher: HelperLauncher? = nil) {
        self.config = config
        self.launcher = config.vmm.sandbox.forkHelpers ? launcher : nil
        api = SupervisorAPI(control: control)
        self.executable = executable
        self.signals = signals
        quirks = HostQuirks.detect(enabled: config.vmm.hostQuirks)
    }

    /// One watched helper.
    final class Helper {
        let role: Role
        /// What messages call it: its role, with the instance for a per-device role ("virtio-blk1").
        let name: String
        let process: ChildProcess
        let control: FileDescriptor
        /// The channels this helper serves (none for the vcpu process, which only posts to them).
        let channels: [ChannelRegion]
        var ended: ChildProcess.Outcome?
        /// Its control pipe reached end-of-file.
        var controlClosed = false
        /// Another process is started in its place when it dies.
        var restartable = false
        /// For a standby process: rung when it is to take over.
        var takeover: EventFD.Box?
        init(role: Role, name: String, process: consuming ChildProcess, control: consuming FileDescriptor, channels: [ChannelRegion]) {
            self.role = role
            self.name = name
            self.process = process
            self.control = control
            self.channels = channels
        }
    }

    /// A helper's place in the VM: the process playing it now, how to start another one in its place (device roles
    /// whose state survives their process), and its restart history.
    final class Slot {
        var helper: Helper
        /// Starts another process for this role; `standby`: one that waits to be told to take over.
        let launch: ((_ standby: Bool) throws -> Helper)?
        /// A process started and sandboxed ahead of need, so a restart costs a wake-up, not a process start.
        var standby: Helper?
        /// Keep a standby (off once the device is broken or its standbys keep dying).
        var wantsStandby = true
        /// When the next standby may start (after a takeover).
        var standbyDue: UInt64?
        var standbyDeaths = 0
        var name: String { helper.name }
        var role: Role { helper.role }
        var channels: [ChannelRegion] { helper.channels }
        /// When it failed, within the restart window (CLOCK_MONOTONIC ns).
        var failures: [UInt64] = []
        var restarts = 0
        /// Given up on: its channels say broken, nothing is started in its place.
        var broken = false
        /// Rings every response doorbell of its channels: vCPUs waiting on it look at its status again.
        var wakeClients: () -> Void = {}
        /// What the device's interrupt line does once it is given up on (see `Supervisor.lineWhenBroken`).
        var lineWhenBroken: () -> Void = {}
        /// A replacement is due at this time (back-off).
        var restartDue: UInt64?
        /// Progress watch for hang detection: the requests handled when last looked at, and since when none were.
        var lastHandled: UInt64 = 0
        var stalledSince: UInt64?
        /// Eventfds its process reads (queue notifications): one left readable is work waiting, as a request on
        /// its rings is. Polled, never read: the supervisor must not take a notification from the device.
        var notifications: [Int32] = []
        init(_ helper: Helper, launch: ((_ standby: Bool) throws -> Helper)?) {
            self.helper = helper
            self.launch = launch
        }
        /// Whether its process can be replaced (its device's state is committed to its channel).
        var restartable: Bool { launch != nil }
    }

    /// Runs the VM to its end; returns how it ended.
    public func run() -> ExitStatus {
        defer { api.control?.end() }
        do {
            return try launchAndWatch()
        } catch let e as HostSetupError {
            api.control?.startFinished(failure: e.description)
            Log.report(e.description)
            return .hostSetupFailed
        } catch {
            api.control?.startFinished(failure: "\(error)")
            Log.report("\(error)")
            return .hostSetupFailed
        }
    }

    struct HostSetupError: Error, CustomStringConvertible { let description: String }

    private func launchAndWatch() throws -> ExitStatus {
        Log.debug("supervisor starting")
        var pendingLease: HelperIDLease.Pending?
        if geteuid() == 0 && !config.vmm.sandbox.sharedIDs {
            // The launcher looks the ids up in a child of its own, so that this process does not load NSS modules;
            // meanwhile this thread prepares the VM (see `waitForIDLease`).
            let launcher = self.launcher
            pendingLease = try HelperIDLease.Pending(from: config.vmm.sandbox.idRange) { range, limit in
                (try? launcher?.unusedIDs(in: range, limit: limit)) ?? HelperIDLease.unusedIDsHere(range, limit: limit)
            }
        }
        /// Before the first spawn: the helpers' specs name the id.
        func waitForIDLease() throws(HostSetupError) {
            guard let pending = pendingLease else { return }
            pendingLease = nil
            do { idLease = try pending.wait() } catch { throw HostSetupError(description: "\(error)") }
            Log.info("helpers run as uid and gid \(idLease?.id ?? 0)")
        }
        cgroupSetup = try CgroupSetup(name: "vmm-\(getpid())", limits: cgroupLimits())
        // Removed once every helper is gone (this runs after stopAll below).
        defer {
            finishCgroupSetup(vmEnding: true)  // a move under way would keep a directory busy
            cgroup?.remove()
        }
        // Captured by the spec builders, which are kept for restarts.
        let config = self.config, quirks = self.quirks
        // Descriptors are boxed so that the spec builders below can capture them and FDList can keep them open.
        let kvm: FileDescriptor.Box
        do { kvm = FileDescriptor.Box(try FileDescriptor.open("/dev/kvm", O_RDWR)) } catch {
            throw HostSetupError(description: "cannot open /dev/kvm: \(error) (is KVM available, and may this user use it?)")
        }

        // The machine: the standard devices, then one virtio-mmio device per drive, one per network interface and
        // one for entropy.
        let virtioRoles = config.drives.map { _ in Role.virtioBlock } + config.networkInterfaces.map { _ in Role.virtioNet }
            + (config.vsock != nil ? [.virtioVsock] : []) + (config.entropy != nil ? [.virtioRNG] : [])
        let layout: MachineLayout
        do { layout = try MachineLayout.with(virtio: virtioRoles) } catch {
            throw HostSetupError(description: "machine layout: \(error)")
        }

        // Guest RAM, with the kernel and boot structures written before any helper exists.
        let memSize = config.machine.memSizeMiB << 20
        let ram = FileDescriptor.Box(try MemFD.create(name: "guest-ram", size: memSize))
        let entry = try loadGuest(ramFD: ram.raw, size: memSize, layout: layout)
        // Disk images: opened and locked here (the device processes can open nothing), before anything runs.
        let images = try openDriveImages()
        api.drives = images
        try openMetrics()
        let pauseRead = try makePausePipe()
        // Taps likewise: a virtio-net process can neither open nor create one.
        let taps = try config.networkInterfaces.map { interface throws(HostSetupError) in try TapDevice(interface) }
        // The vsock device's listening socket and connect broker.
        let vsockSide = try config.vsock.map { v throws(HostSetupError) in try VsockHostSide(v) }
        defer { vsockSide?.removeSocket() }

        // One channel per device process, one lane per vCPU, in the layout's order of servers.
        let vcpus = config.machine.vcpuCount
        let channels = try layout.servers.map { try ChannelPlan(name: "\($0)-channel", lanes: vcpus) }
        func channel(_ server: Server) -> ChannelPlan { channels[layout.servers.firstIndex(of: server) ?? 0] }
        // Devices drive their IOAPIC pins on a channel of their own, a lane each: no device maps the vCPUs' lanes
        // of the irqchip channel, nor the interrupt mailboxes. The irqchip knows each lane's pin.
        let lines = layout.interruptLines
        let linesChannel = try ChannelPlan(name: "irq-lines", lanes: max(1, lines.count))
        func line(_ device: String, _ fds: inout FDList) -> InterruptLineSpec {
            InterruptLineSpec(channel: linesChannel.spec(&fds), lane: layout.interruptLane(of: device) ?? 0)
        }
        /// The lanes a process drives: given up on, the supervisor lowers them all.
        func lanes(_ server: Server) -> [Int] { lines.indices.filter { lines[$0].server == server } }
        let mailboxes = FileDescriptor.Box(try InterruptMailbox.create(vcpus: vcpus))
        // Written by the vCPU threads, read here (read-only) for the metrics and the summary at the end.
        let statistics = FileDescriptor.Box(try VCPUStatistics.create(vcpus: vcpus))
        api.vcpuStatistics = try VCPUStatistics(attaching: statistics.raw, vcpus: vcpus, writable: false)
        let kicks = try (0..<vcpus).map { _ in EventFD.Box(try EventFD()) }
        let timers = try (0..<vcpus).map { _ in
            FileDescriptor.Box(FileDescriptor(owning: try syscallRetrying("timerfd_create") { vmm_timerfd_create() }))
        }
        // Per virtio device, per queue: the eventfd KVM signals on QueueNotify (`queueCount` queues by device type).
        let virtio = layout.virtioDevices
        let queueNotifications = try virtio.map { device in
            try (0..<Self.queueCount(device.server.role)).map { _ in EventFD.Box(try EventFD()) }
        }
        let devNull = try FileDescriptor.open("/dev/null", O_RDWR)
        let consoleOut: FileDescriptor.Box?
        switch config.vmm.serialOutput {
        case .stdout: consoleOut = FileDescriptor.Box(try FileDescriptor.duplicate(1))
        case .none: consoleOut = nil
        case .file(let path):
            do { consoleOut = FileDescriptor.Box(try FileDescriptor.openOutput(path, .truncate)) } catch {
                throw HostSetupError(description: "vmm.serial.output: cannot open \(error)")
            }
        }
        let console = try ConsolePump(sink: consoleOut?.raw, source: config.vmm.serialInputFromStdin ? 0 : nil)
        let stdio = (devNull.raw, devNull.raw, Log.fd)
        // Seats: the vCPUs first, then pio, irqchip and the virtio devices in that order.
        let census = FileDescriptor.Box(try SpinCensus.create(cpus: SpinCensus.availableCPUs(), seats: vcpus + 2 + virtio.count))
        func waiting(seat: Int, _ fds: inout FDList) -> WaitingSpec {
            WaitingSpec(maxSpinMicroseconds: config.vmm.spinBudgetMicroseconds, censusFD: fds.add(census.raw, owner: census), seat: seat)
        }
        Log.debug("memory, channels and console ready")
        try waitForIDLease()

        // The vCPU first: its path to the first guest instruction (VM set-up) is the longer one. It cannot get
        // ahead of the devices: requests wait on the channels, which exist already, until a device serves them.
        var helpers: [Slot] = []
        defer { stopAll(helpers) }

        // KVM's ring of coalesced writes is the VM's, shared by its vCPUs, and does not say which one wrote: with more
        // than one, a vCPU could post another's writes after that one's later accesses. One vCPU only.
        var routes = layout.routes
        if !config.vmm.coalescedWrites || vcpus > 1 { routes.coalesced = [] }
        helpers.append(try spawn(.vcpu, cpus: config.vmm.vcpuCPUs, stdio: stdio) { fds, control in
            VCPUSpec(
                kvmFD: fds.add(kvm.raw, owner: kvm), ramFD: fds.add(ram.raw, owner: ram), memSizeMiB: config.machine.memSizeMiB,
                controlFD: control, vcpuCount: vcpus, entry: entry,
                cpuid: config.cpuid.map { CPUIDRuleSpec(leaf: $0.leaf, subleaf: $0.subleaf, register: $0.register, clear: $0.clear, set: $0.set) }
                    + (quirks?.cpuidMasks ?? []),  // the host's masks after the template: it cannot undo them
                trackDirtyPages: config.machine.trackDirtyPages,
                channels: channels.map { $0.spec(&fds) }, servers: layout.servers, routes: routes,
                mailboxFD: fds.add(mailboxes.raw), kickFDs: kicks.map { fds.add($0.raw, owner: $0) },
                timerFDs: timers.map { fds.add($0.raw, owner: $0) },
                statisticsFD: fds.add(statistics.raw, owner: statistics),
                queueNotifications: zip(virtio, queueNotifications).flatMap { device, queues in
                    queues.enumerated().map { q, fd in
                        QueueNotificationSpec(fd: fds.add(fd.raw, owner: fd), address: device.queueNotifyAddress ?? 0, queue: UInt32(q))
                    }
                },
                syscallFixup: quirks?.syscallFixup ?? false, windowStepping: quirks?.windowStepping ?? false, pauseFD: pauseRead.map { fds.add($0.raw, owner: $0) },
                waiting: waiting(seat: 0, &fds), deviceTimeoutMs: config.vmm.deviceTimeoutMs,
                logLevel: Log.level.rawValue, sandbox: try self.sandboxSpec(.vcpu))
        })
        // The pio process commits its devices' state to its channel: a dead or hung one is replaced.
        helpers.append(try spawn(restartable: .pio, cpus: config.vmm.deviceCPUs, stdio: stdio, serves: [channel(Server(.pio))]) { fds, control in
            PIOSpec(
                channel: channel(Server(.pio)).spec(&fds), uartLine: line("com1", &fds), keyboardLane: layout.interruptLane(of: "i8042-data") ?? 0,
                controlFD: control,
                console: console.spec(&fds),
                debugExit: config.vmm.debugExit, panicWatch: config.vmm.panicWatch,
                waiting: waiting(seat: vcpus, &fds), logLevel: Log.level.rawValue,
                sandbox: try self.sandboxSpec(.pio))
        })
        helpers.last?.lineWhenBroken = Self.lineWhenBroken(linesChannel, lanes: lanes(Server(.pio)), pulse: false)
        // So does the irqchip, before any mailbox write its state leads to.
        helpers.append(try spawn(restartable: .irqchip, cpus: config.vmm.deviceCPUs, stdio: stdio,
                                 serves: [channel(Server(.irqchip)), linesChannel]) { fds, control in
            IRQChipSpec(
                channel: channel(Server(.irqchip)).spec(&fds), lines: linesChannel.spec(&fds), linePins: lines.map(\.pin),
                mailboxFD: fds.add(mailboxes.raw, owner: mailboxes), kickFDs: kicks.map { fds.add($0.raw, owner: $0) },
                timerFDs: timers.map { fds.add($0.raw, owner: $0) }, controlFD: control, vcpuCount: vcpus, waiting: waiting(seat: vcpus + 1, &fds),
                logLevel: Log.level.rawValue, sandbox: try self.sandboxSpec(.irqchip))
        })
        for (i, device) in virtio.enumerated() {
            let server = device.server
            // Restartable: the transport's state is committed to its channel, and a successor adopts what its
            // predecessor published in the virtqueues after the last commit (RestartableVirtio). A notification
            // the process leaves unread shows it hung even when the guest touches no register.
            helpers.append(try spawn(restartable: server.role, name: server.description, cpus: config.vmm.deviceCPUs, stdio: stdio,
                                     serves: [channel(server)], notifications: queueNotifications[i].map(\.raw)) { fds, control in
                VirtioSpec(
                    channel: channel(server).spec(&fds), windowBase: device.mmio?.base ?? 0, line: line(device.name, &fds),
                    ramFD: fds.add(ram.raw, owner: ram), memSizeMiB: config.machine.memSizeMiB,
                    queueNotifyFDs: queueNotifications[i].map { fds.add($0.raw, owner: $0) }, controlFD: control,
                    block: server.role == .virtioBlock ? images[server.instance].spec(&fds) : nil,
                    network: server.role == .virtioNet ? taps[server.instance].spec(&fds) : nil,
                    vsock: server.role == .virtioVsock ? vsockSide?.spec(&fds) : nil,
                    testCommitDelayMicroseconds: getenv("VMM_TEST_VIRTIO_COMMIT_DELAY_US").flatMap { Int(String(cString: $0)) },
                    testQueueDelayMicroseconds: getenv("VMM_TEST_VIRTIO_QUEUE_DELAY_US").flatMap { Int(String(cString: $0)) },
                    waiting: waiting(seat: vcpus + 2 + i, &fds), logLevel: Log.level.rawValue,
                    sandbox: try self.sandboxSpec(server.role, device: server.description))
            })
            helpers.last?.lineWhenBroken = Self.lineWhenBroken(linesChannel, lanes: lanes(server), pulse: true)
        }
        Log.debug("helpers spawned")
        placeStartingHelpers()
        api.helpersStartedMs = Int((monotonicNanoseconds() - startedAt) / 1_000_000)
        api.control?.startFinished(failure: nil)
        return try watch(helpers, console: console)
    }

    /// A device given up on cannot lower its interrupt line any more: a level-triggered line left high would make
    /// the guest take the interrupt again after every EOI, a storm. The supervisor drives the dead device's lane of
    /// the lines channel in its place: low, and for a virtio device first a pulse, its configuration-change
    /// interrupt (its window, answered by the vcpu process now, says DEVICE_NEEDS_RESET with the config-change bit).
    static func lineWhenBroken(_ lines: ChannelPlan, lanes: [Int], pulse: Bool) -> () -> Void {
        {
            for lane in lanes { lowerLine(lines, lane: lane, pulse: pulse) }
        }
    }

    private static func lowerLine(_ lines: ChannelPlan, lane: Int, pulse: Bool) {
        var client = DeviceClient(region: lines.region, lane: lane, deviceDoorbell: lines.deviceDoorbell.raw,
                                  responseDoorbell: lines.responseDoorbells[lane], policy: WaitPolicy(maxSpinMicroseconds: 0),
                                  timeoutMs: 100)
        for level: UInt64 in pulse ? [0, 1, 0] : [0] {
            do { try client.post(.lineLevel, size: 1, address: 0, data: level) } catch {
                Log.warning("lowering a broken device's interrupt line: \(error)")
                return
            }
        }
    }

    /// A drive's image, opened and locked for one virtio-blk process.
    final class DriveImage {
        /// The backing file: a `PATCH /drives/{id}` of the running VM replaces it, and every process started for
        /// the drive from then on (a restart, a standby) gets the new one.
        var file: FileDescriptor.Box
        var drive: VMConfig.Drive
        /// How the supervisor hands the drive's process a new backing file (SCM_RIGHTS): its end, and the process's.
        let updates: (supervisor: FileDescriptor.Box, device: FileDescriptor.Box)
        /// The backing file was replaced: a process started from now on tells the guest its capacity may differ
        /// (its predecessor may have died before it did).
        var replaced = false

        init(file: FileDescriptor.Box, drive: VMConfig.Drive) throws {
            self.file = file
            self.drive = drive
            var pair: [Int32] = [-1, -1]
            guard vmm_seqpacket_pair(&pair) == 0 else {
                throw HostSetupError(description: "drives[\(drive.configIndex)]: socketpair: \(String(cString: strerror(errno)))")
            }
            updates = (FileDescriptor.Box(FileDescriptor(owning: pair[0])), FileDescriptor.Box(FileDescriptor(owning: pair[1])))
        }
        func spec(_ fds: inout FDList) -> BlockDeviceSpec {
            BlockDeviceSpec(imageFD: fds.add(file.raw, owner: file), driveID: drive.driveID, readOnly: drive.isReadOnly,
                            writeback: drive.cacheType == .writeback, updatesFD: fds.add(updates.device.raw, owner: updates.device),
                            replaced: replaced)
        }
    }

    /// Opens every drive's image, read-only when the drive is, and takes a lock on it (shared for a read-only
    /// drive, exclusive otherwise) so that no two VMs write one image, nor one writes what another reads. The lock
    /// lives with the open file, which the device process holds for the VM's life.
    private func openDriveImages() throws -> [DriveImage] {
        try config.drives.map { drive in try DriveImage(file: try Self.openImage(drive), drive: drive) }
    }

    /// One drive's image, opened and locked (see openDriveImages); errors name the drive's `path_on_host`.
    static func openImage(_ drive: VMConfig.Drive) throws(HostSetupError) -> FileDescriptor.Box {
        let path = "drives[\(drive.configIndex)].path_on_host"
        let file: FileDescriptor
        do { file = try FileDescriptor.open(drive.pathOnHost, drive.isReadOnly ? O_RDONLY : O_RDWR) } catch {
            throw HostSetupError(description: "\(path): \(drive.pathOnHost): \(error)")
        }
        if flock(file.raw, (drive.isReadOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
            let why = errno == EWOULDBLOCK ? "another VM (or program) holds a lock on it" : String(cString: strerror(errno))
            throw HostSetupError(description: "\(path): \(drive.pathOnHost): \(why)")
        }
        return FileDescriptor.Box(file)
    }

    /// Builds a helper's spec (its descriptors numbered as the helper will see them, its control pipe's write end
    /// among them) and starts it.
    private func spawn<Spec: RoleSpec>(_ role: Role, name: String? = nil, cpus: [Int], stdio: (Int32, Int32, Int32), serves: [ChannelPlan] = [],
                                       _ makeSpec: (inout FDList, Int32) throws -> Spec) throws -> Slot {
        Slot(try start(role, name: name, cpus: cpus, stdio: stdio, serves: serves, makeSpec), launch: nil)
    }

    /// A restartable helper keeps what it takes to start it again (the spec builder, which holds the descriptors),
    /// and gets a standby process shortly after.
    /// `notifications`: eventfds the device's process reads (a virtio device's queue notifications from KVM).
    private func spawn<Spec: RestartableRoleSpec>(restartable role: Role, name: String? = nil, cpus: [Int], stdio: (Int32, Int32, Int32),
                                                  serves: [ChannelPlan] = [], notifications: [Int32] = [],
                                                  _ makeSpec: @escaping (inout FDList, Int32) throws -> Spec) throws -> Slot {
        let launch = { (standby: Bool) throws -> Helper in
            let takeover = standby ? EventFD.Box(try EventFD()) : nil
            let helper = try self.start(role, name: name, cpus: cpus, stdio: stdio, serves: serves) { fds, control in
                var spec = try makeSpec(&fds, control)
                if let takeover { spec.takeoverFD = fds.add(takeover.raw, owner: takeover) }
                return spec
            }
            helper.takeover = takeover
            helper.restartable = true
            return helper
        }
        let slot = Slot(try launch(false), launch: launch)
        // The standby starts once the VM runs (the watch loop starts it when due): started now, it would take CPU
        // from the helpers on the way to the guest's first instruction.
        if config.vmm.deviceRestart.standby { slot.standbyDue = monotonicNanoseconds() + Self.standbyDelayNanoseconds }
        slot.notifications = notifications
        slot.wakeClients = { for plan in serves { for bell in plan.responseDoorbells { var one: UInt64 = 1; _ = Glibc.write(bell, &one, 8) } } }
        return slot
    }

    /// One process of a role: its control pipe, its spec (with the descriptors numbered for it), the spawn.
    private func start<Spec: RoleSpec>(_ role: Role, name: String?, cpus: [Int], stdio: (Int32, Int32, Int32), serves: [ChannelPlan],
                                       _ makeSpec: (inout FDList, Int32) throws -> Spec) throws -> Helper {
        let control = try Pipe()
        var fds = FDList()
        let controlFD = fds.add(control.writeEnd.raw)
        let spec = try makeSpec(&fds, controlFD)
        return try spawnHelper(role, name: name, spec: spec.encoded(), stdio: stdio, fds: fds.fds, control: control.readEnd,
                               cpus: cpus, serves: serves)
    }

    /// Starts one helper role in its namespaces, with exactly `fds`, on `cpus` (all when empty).
    private func spawnHelper(_ role: Role, name: String? = nil, spec: String, stdio: (Int32, Int32, Int32), fds: [Int32],
                             control: borrowing FileDescriptor, cpus: [Int], serves: [ChannelPlan] = []) throws -> Helper {
        let process = try startProcess(role, spec: spec, stdio: stdio, fds: fds)
        if unplaced != nil {
            unplaced?.append((process.pid, role))
        } else {
            try place(process.pid, role)
        }
        if !cpus.isEmpty { try setCPUAffinity(pid: process.pid, cpus: cpus) }
        let readEnd = try control.duplicate()
        try readEnd.setNonBlocking(true)
        return Helper(role: role, name: name ?? role.rawValue, process: process, control: readEnd, channels: serves.map(\.region))
    }

    /// The process itself: forked by the launcher, or exec'd when there is none (or it has gone).
    private func startProcess(_ role: Role, spec: String, stdio: (Int32, Int32, Int32), fds: [Int32]) throws -> ChildProcess {
        let environment = Self.helperEnvironment + Log.formatEnvironment
        if let launcher {
            do {
                return try launcher.launch(role: role, spec: spec, environment: environment, stdio: stdio, fds: fds, namespaces: .forHelpers)
            } catch .launcherGone(let error) {
                Log.warning("\(error); exec'ing helpers from now on")
                self.launcher = nil
            } catch .startFailed(let error) {
                throw error
            }
        }
        return try ChildProcess.spawn(executable: executable, arguments: ["_role", role.rawValue, spec], stdio: stdio, fds: fds,
                                      environment: environment, namespaces: .forHelpers)
    }

    /// Moves a helper started later (a restart, a standby) into the cgroup, once the cgroup's set-up is done.
    private func place(_ pid: pid_t, _ role: Role) throws(HostSetupError) {
        if let failure = finishCgroupSetup() { throw HostSetupError(description: failure) }
        guard let cgroup else { return }
        do { try cgroup.add(pid) } catch { throw HostSetupError(description: "placing the \(role.rawValue) process in its cgroup: \(error)") }
    }

    /// Hands the helpers of the VM's start, all spawned now, to the cgroup's set-up (see CgroupSetup), to be placed
    /// once the guest has run: the helpers meanwhile run their first milliseconds (their start, their sandbox, the
    /// guest's first instructions) under their own limits (address space, no new files), outside the VM's memory and
    /// process counts; a helper that cannot be placed fails the VM (the watch loop hears it).
    private func placeStartingHelpers() {
        let statistics = api.vcpuStatistics
        cgroupSetup?.place(unplaced ?? []) { (statistics?.read(vcpu: 0).firstExitAt ?? 1) != 0 }
        unplaced = nil
    }

    /// Waits for the cgroup's set-up, if under way, and takes its outcome: the cgroup, and why the start's helpers
    /// could not be placed, if they could not. `vmEnding`: only to remove it (see `CgroupSetup.finish`).
    @discardableResult
    func finishCgroupSetup(vmEnding: Bool = false) -> String? {
        guard let setup = cgroupSetup else { return nil }
        cgroupSetup = nil
        let (group, failure) = setup.finish(vmEnding: vmEnding)
        cgroup = group
        return failure
    }

    /// A role's confinement: its policy (read here from `--unsafe-policy-dir`, since the helper can open no files;
    /// the built-in one goes by name), mode and ids.
    private func sandboxSpec(_ role: Role, device: String? = nil) throws -> SandboxSpec {
        var text: String?
        if let directory = config.vmm.sandbox.unsafePolicyDirectory {
            do { text = try BuiltinPolicies.load(file: role.policyFile, directory: directory, reader: FileDescriptor.readText) } catch {
                throw HostSetupError(description: "policy for \(role.rawValue): \(error)")
            }
        }
        var fault = faultInjection.flatMap { $0.role == role ? $0.syscall : nil }
        if fault != nil, getenv("VMM_FAULT_INJECT_ONCE") != nil, !faultSyscallGiven.insert(role).inserted { fault = nil }
        return SandboxSpec(policyName: role.policyFile, policyText: text,
                           mode: config.vmm.sandbox.seccompLogOnly ? .log : .kill,
                           uid: geteuid() == 0 ? idLease?.id ?? config.vmm.sandbox.uid : nil,
                           gid: geteuid() == 0 ? idLease?.id ?? config.vmm.sandbox.gid : nil, faultSyscall: fault,
                           crashOnSignal: config.vmm.faults.contains { $0.action == .crash && $0.device == (device ?? role.rawValue) },
                           addressSpaceLimit: addressSpaceLimit(role))
    }

    /// What the VM's helpers may use together: guest RAM, and for every process (standbys included) room for its
    /// runtime; threads: two per vCPU and a few per process.
    private func cgroupLimits() -> VMCgroup.Limits {
        let mib: UInt64 = 1 << 20
        let devices = UInt64(2 + config.virtioDeviceCount)
        return VMCgroup.Limits(memoryBytes: UInt64(config.machine.memSizeMiB) * mib + 512 * mib + 2 * devices * 64 * mib,
                               processes: 128 + 4 * config.machine.vcpuCount, cpuQuotaMicroseconds: nil)
    }

    /// A helper's RLIMIT_AS: guest RAM where the role maps it, plus room for the Swift runtime, its heap and its
    /// threads (measured: a pio or irqchip process maps about 28 MiB; the vcpu process about 250 MiB besides guest
    /// RAM with 2 vCPUs, each vCPU adding two threads, their stacks and malloc arenas).
    private func addressSpaceLimit(_ role: Role) -> UInt64 {
        let mib: UInt64 = 1 << 20, ram = UInt64(config.machine.memSizeMiB) * mib
        switch role {
        case .vcpu: return ram + 512 * mib + 192 * mib * UInt64(config.machine.vcpuCount)
        case .pio, .irqchip: return 256 * mib
        case .virtioBlock, .virtioNet, .virtioVsock, .virtioRNG: return ram + 256 * mib
        }
    }

    /// The virtqueues of a virtio device's type (one eventfd each for their notifications).
    static func queueCount(_ role: Role) -> Int {
        switch role {
        case .virtioNet: 2      // receive, transmit
        case .virtioVsock: 3    // receive, transmit, event
        default: 1
        }
    }

    /// Roles that got the VMM_FAULT_INJECT call already (with VMM_FAULT_INJECT_ONCE: only their first process does).
    private var faultSyscallGiven: Set<Role> = []

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

    private func loadGuest(ramFD: Int32, size: Int, layout: MachineLayout) throws -> EntryState {
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
            var cmdline = KernelCommandLine.inserting(guestOptions(layout), into: config.bootSource.bootArgs)
            if let quirks {
                // Said once: to everyone when it changes a Linux guest's command line, in the log otherwise.
                let linux = GuestLoader.isLinux(kernel)
                if linux { cmdline = quirks.addingLinuxOptions(to: cmdline) }
                if linux { Log.report(quirks.summary) } else { Log.info(quirks.summary) }
            }
            // A Linux kernel also gets ACPI tables: the distro kernel finds virtio-mmio devices only there. Other
            // images (the test guests) read the devices from their command line and may load where the tables go.
            let linux = GuestLoader.isLinux(kernel)
            let entry = try GuestLoader.load(kernel: kernel, cmdline: cmdline, modules: modules,
                                             acpiRSDP: linux ? ACPIBoot.rsdpAddress : nil, into: memory)
            try MPTable.write(cpus: config.machine.vcpuCount, into: memory)
            if linux {
                _ = try ACPIBoot.write(cpus: config.machine.vcpuCount, virtioDevices: layout.virtioDevices.compactMap { d in
                    d.mmio.flatMap { w in d.irq.map { VirtioMMIODevice(base: w.base, size: w.size, gsi: UInt32($0)) } }
                }, com1GSI: UInt32(layout.irq(of: "com1") ?? 4), keyboardGSI: UInt32(layout.irq(of: "i8042-data") ?? 1), into: memory)
            }
            return entry
        } catch {
            throw HostSetupError(description: "boot-source.kernel_image_path: \(config.bootSource.kernelImagePath): \(error)")
        }
    }

    /// What the guest kernel is told about the machine on its command line: the virtio-mmio devices (for kernels
    /// built with VIRTIO_MMIO_CMDLINE_DEVICES and the test guests; a distro kernel finds them through ACPI) and,
    /// as Firecracker does, the root device.
    private func guestOptions(_ layout: MachineLayout) -> [String] {
        var options = layout.virtioCommandLine.split(separator: " ").map(String.init)
        if let root = config.drives.first(where: \.isRootDevice) {
            options.append(root.partUUID.map { "root=PARTUUID=\($0)" } ?? "root=/dev/vda")
            options.append(root.isReadOnly ? "ro" : "rw")
        }
        return options
    }

    func stopAll(_ slots: [Slot]) {
        cgroupSetup?.abandon()
        let all = slots.reversed().flatMap { [$0.helper] + ($0.standby.map { [$0] } ?? []) }
        for h in all where h.ended == nil { h.process.kill(SIGKILL) }
        for h in all where h.ended == nil { h.ended = try? h.process.reap(block: true) }
    }
}
