import Glibc

/// A microVM description in Firecracker's config-file format, plus this VMM's own settings under "vmm".
public struct VMConfig: Equatable, Sendable {
    public struct BootSource: Equatable, Sendable {
        public var kernelImagePath: String
        public var initrdPath: String?
        public var bootArgs: String
    }

    public struct Machine: Equatable, Sendable {
        public var vcpuCount: Int = 1
        public var memSizeMiB: Int = 128
        public var smt = false
        public var trackDirtyPages = false
    }

    /// One CPUID register change from a Firecracker custom CPU template: bits in `clear` are forced to 0,
    /// bits in `set` to 1, all others keep the value KVM reports.
    public struct CPUIDRule: Equatable, Sendable {
        public var leaf: UInt32
        public var subleaf: UInt32
        public var register: String  // eax, ebx, ecx or edx
        public var clear: UInt32
        public var set: UInt32
    }

    public struct Logger: Equatable, Sendable {
        public enum Level: String, CaseIterable, Sendable { case error = "Error", warning = "Warning", info = "Info", debug = "Debug", trace = "Trace", off = "Off" }
        public var logPath: String?
        public var level: Level = .warning
        /// Firecracker's `show_level` and `show_log_origin`; nil (not in the config): vmm's own line format, which
        /// names the level. Set: Firecracker's bracketed prefix, `[vmm:ROLE:LEVEL:FILE:LINE]` with what is asked.
        public var showLevel: Bool?
        public var showLogOrigin: Bool?
    }

    /// This project's own settings (the "vmm" key).
    public struct VMM: Equatable, Sendable {
        public enum SerialOutput: Equatable, Sendable { case stdout, file(String), none }
        public var serialOutput: SerialOutput = .stdout
        public var serialInputFromStdin = true
        /// The longest a side spins on a ring before it blocks on the doorbell (each side learns its own window).
        public var spinBudgetMicroseconds = 200
        /// Let KVM queue the posted writes the machine layout marks (the UART's, the IOAPIC's register select) for the
        /// vCPU to post at its next exit, instead of exiting for each (see CoalescedZone); with one vCPU only.
        public var coalescedWrites = true
        /// How long the vcpu process waits for a device to answer a read.
        public var deviceTimeoutMs = 1000
        /// CPUs the vcpu process and the device processes may run on (empty: anywhere).
        public var vcpuCPUs: [Int] = []
        public var deviceCPUs: [Int] = []
        public var sandbox = Sandbox()
        /// The debug-exit port (0xf4): a guest's write of V ends the VM with status (V << 1) | 1. false: the port
        /// is not there (writes are ignored), for guests that must not end their own VM that way.
        public var debugExit = true
        /// End the VM with status 16 when the console shows "Kernel panic - not syncing". false: for guests whose
        /// programs may print that text (any process can write to the console).
        public var panicWatch = true
        /// Detect a PVM-style host KVM and apply what it needs (CPUID masks, kernel options, the SYSCALL fix-up);
        /// false: apply nothing, whatever the host.
        public var hostQuirks = true
        /// What the supervisor does when a device process dies or hangs.
        public var deviceRestart = DeviceRestart()
        /// Faults to inject into device processes (crash-isolation testing).
        public var faults: [Fault] = []
        /// Where the fault-injection report goes as JSON (besides the summary in vmm's log).
        public var faultReportPath: String?
    }

    /// The restart policy for device processes ("vmm.device_restart"). A device process that dies or hangs is
    /// replaced and resumes from the state its predecessor committed; one that keeps failing is marked broken
    /// instead of looping, and the VM goes on without it unless it is listed as critical.
    public struct DeviceRestart: Equatable, Sendable {
        /// Restarts allowed per device within `windowMs`; the next failure marks the device broken.
        public var maxRestarts = 10
        public var windowMs = 60_000
        /// The first restart in a window is immediate; each later one waits twice as long as the one before,
        /// starting at `backoffMs` and at most `maxBackoffMs`.
        public var backoffMs = 10
        public var maxBackoffMs = 1_000
        /// A device with requests waiting whose rings have not moved for this long is hung: it is killed and
        /// restarted like a dead one.
        public var hangTimeoutMs = 300
        /// Keep a standby process per restartable device, started and sandboxed ahead of need: a restart then costs
        /// a wake-up (about a millisecond) instead of a process start (tens of milliseconds), for one idle process.
        public var standby = true
        /// Devices ("pio", "irqchip", "virtio-blk0", ...) whose failure beyond the budget ends the VM.
        public var critical: [String] = []
        public init() {}
    }

    /// One fault to inject into a device process ("vmm.fault_injection", `vmm run --inject-fault`).
    public struct Fault: Equatable, Sendable {
        public enum Action: String, CaseIterable, Sendable {
            /// SIGKILL: the process vanishes at an arbitrary instruction.
            case kill
            /// SIGSTOP: the process hangs; the supervisor must notice and replace it.
            case stop
            /// SIGSEGV: the process crashes as from a bug.
            case crash
        }
        /// The device process, as vmm names it: "pio", "irqchip", "virtio-blk0", "virtio-rng0".
        public var device: String
        public var action: Action
        /// The first fault comes this long after the guest starts...
        public var afterMs = 0
        /// ...or once the device has handled this many requests (since the previous fault of this entry).
        public var afterRequests: Int?
        /// Repeat every this many milliseconds (nil: only `afterMs`/`afterRequests` decide).
        public var everyMs: Int?
        /// How many faults in all.
        public var count = 1
        public init(device: String, action: Action) {
            self.device = device
            self.action = action
        }
    }

    /// How helpers are confined. There is no switch to turn confinement off: every path runs sandboxed.
    public struct Sandbox: Equatable, Sendable {
        /// "kill": a denied call kills the helper; "log": it fails with ENOSYS and is reported by name.
        public var seccompLogOnly = false
        /// The unprivileged ids helpers run as when vmm runs as root, when the config names them (`uid`, `gid`): every
        /// VM of that config then shares them. Otherwise each VM gets an id of its own from `idRange` (as uid and gid).
        public var uid: UInt32 = 64999
        public var gid: UInt32 = 64999
        public var sharedIDs = false
        public var idRange: Range<UInt32> = 64000..<65000
        /// `helper_start`: "fork" (the default) forks helpers from vmm's launcher, "exec" execs each, which gives each a
        /// fresh address-space layout for a few milliseconds more per start (see HelperLauncher).
        public var forkHelpers = true
        /// Set only by `vmm run --unsafe-policy-dir` (for writing policies), never by a config file: read the role
        /// policies from this directory instead of the ones built into vmm. nil: the built-in ones.
        public var unsafePolicyDirectory: String?
    }

    /// A virtio-blk disk, from Firecracker's `drives`.
    public struct Drive: Equatable, Sendable {
        /// Firecracker's `cache_type`: `Unsafe` does not offer the guest a flush; `Writeback` offers it and a flush
        /// makes the device call fdatasync on the image.
        public enum CacheType: String, Equatable, Sendable { case unsafe = "Unsafe", writeback = "Writeback" }
        public var driveID: String
        public var pathOnHost: String
        /// Its index in the config's `drives`, for messages (the guest's order puts the root device first).
        public var configIndex = 0
        public var isRootDevice = false
        public var isReadOnly = false
        public var partUUID: String?
        public var cacheType: CacheType = .unsafe
    }

    /// A virtio-net device on a tap, from Firecracker's `network-interfaces`.
    public struct NetworkInterface: Equatable, Sendable {
        public var ifaceID: String
        /// An existing tap device; vmm opens it, it does not create one.
        public var hostDevName: String
        /// The MAC the guest's driver reads from the device; nil: the driver picks a random one.
        public var guestMAC: [UInt8]?
        /// Its index in the config's `network-interfaces`, for messages.
        public var configIndex = 0
        public init(ifaceID: String, hostDevName: String) {
            self.ifaceID = ifaceID
            self.hostDevName = hostDevName
        }
    }

    /// The virtio-vsock device, from Firecracker's `vsock`: the guest's CID and the host side's Unix socket path
    /// (vmm listens there for host-initiated connections and connects to `<udsPath>_<port>` for the guest's).
    public struct Vsock: Equatable, Sendable {
        public var guestCID: UInt32
        public var udsPath: String
        public init(guestCID: UInt32, udsPath: String) {
            self.guestCID = guestCID
            self.udsPath = udsPath
        }
    }

    /// Firecracker's `metrics`: JSON lines with vmm's counters, written to `metricsPath` (a file or a FIFO, which
    /// must exist) every 60 s and on the API's FlushMetrics.
    public struct Metrics: Equatable, Sendable {
        public var metricsPath: String
    }

    /// The virtio-rng device, from Firecracker's `entropy`.
    public struct Entropy: Equatable, Sendable {}

    public var bootSource: BootSource
    public var machine = Machine()
    /// In the order the guest sees them (vda, vdb, ...); a root device comes first, as Firecracker orders them.
    public var drives: [Drive] = []
    /// In the order the guest sees them (eth0, eth1, ...).
    public var networkInterfaces: [NetworkInterface] = []
    public var vsock: Vsock?
    public var entropy: Entropy?
    public var cpuid: [CPUIDRule] = []
    public var logger = Logger()
    public var metrics: Metrics?
    public var vmm = VMM()

    public static let maxMemoryMiB = 3072

    /// The virtio devices this config gives the guest (each a process of its own and an interrupt pin).
    public var virtioDeviceCount: Int {
        drives.count + networkInterfaces.count + (vsock != nil ? 1 : 0) + (entropy != nil ? 1 : 0)
    }
}
