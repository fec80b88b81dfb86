import Machine
import X86

/// What the supervisor hands a helper process: its descriptors (by number, after spawn they are 3, 4, ...)
/// and its settings, as one JSON argument. Both sides use these types, so the two ends cannot drift apart.
protocol RoleSpec: Codable {
    var logLevel: Int { get }
}

extension RoleSpec {
    /// The spec as JSON (see SpecCoding).
    func encoded() throws -> String { try SpecCoding.encode(self) }

    static func decode(_ text: String) throws -> Self { try SpecCoding.decode(Self.self, from: text) }
}

/// A device channel as one side sees it.
struct ChannelSpec: Codable {
    var memoryFD: Int32
    var lanes: Int
    var capacity: Int
    var stateSize: Int
    /// Rung by the vcpu side when the device sleeps; the device waits on it.
    var deviceDoorbellFD: Int32
    /// One per lane, rung by the device when the vcpu thread of that lane sleeps.
    var responseDoorbellFDs: [Int32]
}

/// How a helper's waiters spin (see WaitPolicy): the upper bound of their windows, and the VM's spin census with
/// this process's seat in it (a device process has one; the vcpu process's vCPU i sits in seat `seat + i`).
struct WaitingSpec: Codable {
    var maxSpinMicroseconds: Int
    var censusFD: Int32
    var seat: Int
}

struct VCPUSpec: RoleSpec {
    var kvmFD: Int32
    var ramFD: Int32
    var memSizeMiB: Int
    var controlFD: Int32
    var vcpuCount: Int
    var entry: EntryState
    var cpuid: [CPUIDRuleSpec]
    var trackDirtyPages: Bool
    /// One channel per device role, in the order of `servers`; `routes` number them the same way.
    var channels: [ChannelSpec]
    var servers: [Server]
    var routes: AccessRoutes
    /// The interrupt mailboxes the irqchip fills, and per vCPU the eventfd it rings then.
    var mailboxFD: Int32
    var kickFDs: [Int32]
    /// Per vCPU its LAPIC timer (the irqchip arms it): a vCPU in HLT wakes on its expiry together with the irqchip,
    /// instead of after it.
    var timerFDs: [Int32]
    /// The run statistics the vCPU threads write and the supervisor reads (VCPUStatistics).
    var statisticsFD: Int32
    /// Registered with KVM_IOEVENTFD before the sandbox: a guest write of `queue` to `address` (a virtio device's
    /// QueueNotify) signals `fd`, which the device process waits on; the vcpu process never sees it.
    var queueNotifications: [QueueNotificationSpec] = []
    /// PVM-style host: rewind broken user-mode SYSCALLs (see SyscallFixup).
    var syscallFixup = false
    /// A host whose KVM honours request_interrupt_window late or not at all: step for windows (see WindowStepper).
    var windowStepping = false
    /// The read end of the supervisor's pause pipe (`P` pause, `R` resume; see PauseGate).
    var pauseFD: Int32?
    var waiting: WaitingSpec
    var deviceTimeoutMs: Int
    var logLevel: Int
    var sandbox: SandboxSpec
}

struct CPUIDRuleSpec: Codable {
    var leaf: UInt32, subleaf: UInt32, register: String, clear: UInt32, set: UInt32
}

struct IRQChipSpec: RestartableRoleSpec {
    /// The vCPUs' channel (lane = vCPU).
    var channel: ChannelSpec
    /// The devices' interrupt lines (lane = device): kept apart so no device maps the vCPUs' lanes or mailboxes.
    var lines: ChannelSpec
    /// The IOAPIC pin each lane of `lines` drives: a device can drive only its own.
    var linePins: [Int]
    /// The vCPUs' interrupt mailboxes, and per vCPU the eventfd rung when its mailbox gets something.
    var mailboxFD: Int32
    var kickFDs: [Int32]
    /// Per vCPU its LAPIC timer: an absolute CLOCK_MONOTONIC timerfd (non-blocking) the supervisor made.
    var timerFDs: [Int32]
    var controlFD: Int32
    /// Set for a standby process: it waits for this eventfd before it serves.
    var takeoverFD: Int32?
    var vcpuCount: Int
    var waiting: WaitingSpec
    var logLevel: Int
    var sandbox: SandboxSpec
}

/// A device's interrupt line: its lane of the irqchip's lines channel (the irqchip knows the lane's pin).
struct InterruptLineSpec: Codable {
    var channel: ChannelSpec
    var lane: Int
}

/// A device role whose process can be replaced: a standby process of it is started ahead of need, enters its
/// sandbox, and waits on `takeoverFD` until the supervisor needs it; only then does it look at its channels.
protocol RestartableRoleSpec: RoleSpec {
    var takeoverFD: Int32? { get set }
}

struct PIOSpec: RestartableRoleSpec {
    var channel: ChannelSpec
    /// COM1's interrupt line (ISA IRQ 4), and the i8042 keyboard's lane of the same lines channel (ISA IRQ 1).
    var uartLine: InterruptLineSpec
    var keyboardLane: Int
    var controlFD: Int32
    /// The console's byte streams to and from the supervisor (which owns the console's descriptors).
    var console: ConsoleSpec
    /// Set for a standby process: it waits for this eventfd before it serves.
    var takeoverFD: Int32?
    /// `vmm.debug_exit` and `vmm.panic_watch`.
    var debugExit: Bool
    var panicWatch: Bool
    var waiting: WaitingSpec
    var logLevel: Int
    var sandbox: SandboxSpec
}

/// One virtio queue's notification: the eventfd KVM signals when the guest writes `queue` to `address`.
struct QueueNotificationSpec: Codable {
    var fd: Int32
    var address: UInt64
    var queue: UInt32
}

/// A virtio device process: its register window's channel, its interrupt line, guest RAM, one notification eventfd
/// per queue, and what its device needs. Restartable: its transport's state is committed to its channel.
struct VirtioSpec: RestartableRoleSpec {
    /// The register window's channel and where the window starts (requests carry guest-physical addresses).
    var channel: ChannelSpec
    var windowBase: UInt64
    var line: InterruptLineSpec
    var ramFD: Int32
    var memSizeMiB: Int
    /// Per queue, in queue order: signalled by KVM when the guest notifies that queue.
    var queueNotifyFDs: [Int32]
    var controlFD: Int32
    var block: BlockDeviceSpec?
    var network: NetworkDeviceSpec?
    var vsock: VsockDeviceSpec?
    /// Set for a standby process: it waits for this eventfd before it serves.
    var takeoverFD: Int32?
    /// Test hook (VMM_TEST_VIRTIO_COMMIT_DELAY_US): sleep this long between publishing completions and committing
    /// them, so that injected kills land in that window often and a test sees completions adopted, not repeated.
    var testCommitDelayMicroseconds: Int?
    /// Test hook (VMM_TEST_VIRTIO_QUEUE_DELAY_US): sleep this long between applying register writes and serving
    /// notified queues, so that a register write the guest posts meanwhile (InterruptACK) meets the queue work.
    var testQueueDelayMicroseconds: Int?
    var waiting: WaitingSpec
    var logLevel: Int
    var sandbox: SandboxSpec
}

/// What a virtio-blk process serves: the image the supervisor opened (and locked) for it.
struct BlockDeviceSpec: Codable {
    var imageFD: Int32
    var driveID: String
    var readOnly: Bool
    /// Offer the guest a flush, done with fdatasync (Firecracker's `Writeback`); `Unsafe` offers none.
    var writeback: Bool
    /// Where a new backing file comes from (`PATCH /drives/{id}`): one SCM_RIGHTS message per file.
    var updatesFD: Int32
    /// The drive's backing file was replaced before this process started: the guest is told its capacity may differ.
    var replaced: Bool
}

/// What a virtio-net process serves: the tap the supervisor opened for it (vnet header, non-blocking).
struct NetworkDeviceSpec: Codable {
    var tapFD: Int32
    var ifaceID: String
    var mac: [UInt8]?
    /// The receive offloads (TUN_F_*) the tap accepted when the supervisor probed it.
    var tapOffloads: UInt32
}

/// What a virtio-vsock process serves: the listening socket at `uds_path` and its end of the connect broker (both
/// made by the supervisor: the process can neither create nor connect a socket).
struct VsockDeviceSpec: Codable {
    var listenerFD: Int32
    var brokerFD: Int32
    var guestCID: UInt64
}
