import Devices

/// Register offsets of the virtio-mmio transport, version 2 (virtio 1.2 section 4.2.2).
public enum VirtioMMIORegister {
    public static let magicValue: UInt64 = 0x000
    public static let version: UInt64 = 0x004
    public static let deviceID: UInt64 = 0x008
    public static let vendorID: UInt64 = 0x00c
    public static let deviceFeatures: UInt64 = 0x010
    public static let deviceFeaturesSel: UInt64 = 0x014
    public static let driverFeatures: UInt64 = 0x020
    public static let driverFeaturesSel: UInt64 = 0x024
    public static let queueSel: UInt64 = 0x030
    public static let queueNumMax: UInt64 = 0x034
    public static let queueNum: UInt64 = 0x038
    public static let queueReady: UInt64 = 0x044
    public static let queueNotify: UInt64 = 0x050
    public static let interruptStatus: UInt64 = 0x060
    public static let interruptACK: UInt64 = 0x064
    public static let status: UInt64 = 0x070
    public static let queueDescLow: UInt64 = 0x080
    public static let queueDescHigh: UInt64 = 0x084
    public static let queueDriverLow: UInt64 = 0x090
    public static let queueDriverHigh: UInt64 = 0x094
    public static let queueDeviceLow: UInt64 = 0x0a0
    public static let queueDeviceHigh: UInt64 = 0x0a4
    public static let shmSel: UInt64 = 0x0ac
    public static let shmLenLow: UInt64 = 0x0b0
    public static let shmLenHigh: UInt64 = 0x0b4
    public static let shmBaseLow: UInt64 = 0x0b8
    public static let shmBaseHigh: UInt64 = 0x0bc
    public static let queueReset: UInt64 = 0x0c0
    public static let configGeneration: UInt64 = 0x0fc
    /// The device configuration space starts here.
    public static let config: UInt64 = 0x100

    /// "virt" in little-endian.
    public static let magic: UInt32 = 0x7472_6976
    /// The non-legacy virtio-mmio interface.
    public static let currentVersion: UInt32 = 2
}

/// Everything the transport remembers, as plain data.
///
/// Kept apart from the transport object, and `Codable`, so that it can be saved and a transport resumed with
/// `VirtioMMIOTransport(backend:memory:interrupt:restoring:)`. The device process commits it through the transport's
/// `Snapshotting` conformance instead, whose restore refuses every state the transport could not have been in.
public struct VirtioMMIOState: Codable, Equatable, Sendable {
    /// The Status register (driver bits plus the device's DEVICE_NEEDS_RESET).
    public var status: UInt32 = 0
    public var deviceFeaturesSel: UInt32 = 0
    public var driverFeaturesSel: UInt32 = 0
    /// What the driver accepted, both 32-bit halves.
    public var driverFeatures: UInt64 = 0
    public var queueSel: UInt32 = 0
    public var shmSel: UInt32 = 0
    public var interruptStatus: UInt32 = 0
    public var configGeneration: UInt32 = 0
    /// Registers and ring positions of each queue.
    public var queues: [Virtqueue]
    /// Why DEVICE_NEEDS_RESET was set, for the process's log (nil while it is not).
    public var failure: String?

    public init(queueMaxSizes: [UInt16]) {
        queues = queueMaxSizes.map { Virtqueue(maxSize: $0) }
    }
}

/// What `queueNotified` left behind.
public enum QueueProgress: Equatable, Sendable {
    /// Nothing more is available; sleep until the next notification.
    case idle
    /// The per-call budget ran out with requests still available: call `runPendingQueues` (or `queueNotified`)
    /// again soon, after serving other events. No notification will come for these.
    case morePending
}

/// The device side of a virtio-mmio (version 2) device: a pure state machine around a `VirtioDeviceBackend`.
///
/// How a device process drives it:
/// - an MMIO read of the device's window (from the vcpu process over the channel): `read(offset:size:)`, answer the
///   value; an MMIO write: `write(offset:size:value:)`. Offsets are relative to the window's base.
/// - the ioeventfd of queue `i` (registered on QueueNotify with datamatch `i`) fired: `queueNotified(i)`. A
///   QueueNotify MMIO write takes the same path, so the device also works without ioeventfds.
/// - `queueNotified` / `runPendingQueues` returned `.morePending` / true: call `runPendingQueues()` again before
///   sleeping.
/// - the backend's configuration changed on the host side (e.g. a resized disk): `configChanged()`.
/// - interrupts: the transport drives the `InterruptLine` it was given (a level line to the IOAPIC): asserted while
///   InterruptStatus != 0, lowered when the driver acknowledges every bit through InterruptACK or resets.
/// - after any call, `state` can be saved for crash recovery.
///
/// Not thread-safe: one thread per device process calls it.
public final class VirtioMMIOTransport {
    /// The registers and queues (see `VirtioMMIOState`).
    public private(set) var state: VirtioMMIOState
    public let backend: VirtioDeviceBackend
    public let memory: GuestRAM
    private let interrupt: InterruptLine
    /// The VendorID register.
    public let vendorID: UInt32
    /// Feature bits offered to the driver: the backend's plus the transport's.
    public let offeredFeatures: UInt64
    /// Queues whose budget ran out with work left (not saved: a restored transport re-polls every queue).
    private var pending: [Bool]
    /// Device-driven queues whose backend waits for the driver's buffers (not saved: a restored transport tries
    /// every queue again).
    private var waitingForBuffers: [Bool]

    /// A device after reset, or, with `restoring`, the device a previous process left in `restoring` (which must
    /// come from a transport with the same backend type and queue sizes; otherwise it starts from reset).
    ///
    /// `settingLine`: false leaves the interrupt line alone for a device after reset (a process that restores its
    /// predecessor's snapshot next, which says the level; lowering the line first would send a level-triggered
    /// line through a needless low).
    public init(backend: VirtioDeviceBackend, memory: GuestRAM, interrupt: InterruptLine, vendorID: UInt32 = 0,
                restoring: VirtioMMIOState? = nil, settingLine: Bool = true) {
        self.backend = backend
        self.memory = memory
        self.interrupt = interrupt
        self.vendorID = vendorID
        offeredFeatures = backend.deviceFeatures | VirtioFeature.transportOffered
        let maxSizes = backend.queueMaxSizes
        pending = Array(repeating: false, count: maxSizes.count)
        waitingForBuffers = pending
        if let saved = restoring, saved.queues.map(\.maxSize) == maxSizes {
            state = saved
            interrupt.set(state.interruptStatus != 0)
            // The saved state is trusted no more than the guest: every active queue's layout is checked again, so
            // no later address computation can overflow.
            for (i, q) in state.queues.enumerated() where q.isActive {
                do {
                    try q.validateLayout(memory: memory)
                } catch {
                    markNeedsReset(reason: "restored queue \(i): \(error)")
                }
            }
            if isLive {
                backend.activate(features: state.driverFeatures)
                // A notification may have arrived while nobody listened.
                pending = state.queues.map(\.isActive)
            }
        } else {
            state = VirtioMMIOState(queueMaxSizes: maxSizes)
            if settingLine { interrupt.set(false) }
        }
    }

    /// Sets the interrupt line to what InterruptStatus says (for a device created with `settingLine: false` that
    /// had nothing to restore after all).
    public func sayInterruptLevel() {
        interrupt.set(state.interruptStatus != 0)
    }

    // MARK: - MMIO

    /// An MMIO read at `offset` in the device's window. Registers need aligned 32-bit accesses (anything else reads
    /// 0); the configuration space (0x100 and up) takes any width of 1...8 bytes. Unknown and write-only registers
    /// read 0.
    public func read(offset: UInt64, size: Int) -> UInt64 {
        if offset >= VirtioMMIORegister.config {
            guard (1...8).contains(size) else { return 0 }
            return backend.readConfig(offset: offset - VirtioMMIORegister.config, size: size) & Self.mask(size)
        }
        guard size == 4, offset % 4 == 0 else { return 0 }
        return UInt64(readRegister(offset))
    }

    /// An MMIO write at `offset`. Same width rules as `read`; writes to unknown or read-only registers, and writes
    /// the current state forbids, are ignored (a device cannot fault an MMIO write).
    public func write(offset: UInt64, size: Int, value: UInt64) {
        if offset >= VirtioMMIORegister.config {
            guard (1...8).contains(size) else { return }
            if backend.writeConfig(offset: offset - VirtioMMIORegister.config, size: size, value: value & Self.mask(size)) {
                configChanged()
            }
            return
        }
        guard size == 4, offset % 4 == 0 else { return }
        writeRegister(offset, UInt32(truncatingIfNeeded: value))
    }

    private static func mask(_ size: Int) -> UInt64 { size >= 8 ? .max : (1 << (UInt64(size) * 8)) - 1 }

    private var selectedQueue: Int? {
        let sel = Int(state.queueSel)
        return sel < state.queues.count ? sel : nil
    }

    private func readRegister(_ offset: UInt64) -> UInt32 {
        typealias R = VirtioMMIORegister
        switch offset {
        case R.magicValue: return R.magic
        case R.version: return R.currentVersion
        case R.deviceID: return backend.deviceID
        case R.vendorID: return vendorID
        case R.deviceFeatures:
            switch state.deviceFeaturesSel {
            case 0: return UInt32(truncatingIfNeeded: offeredFeatures)
            case 1: return UInt32(truncatingIfNeeded: offeredFeatures >> 32)
            default: return 0
            }
        case R.queueNumMax:
            // 0 means "this queue does not exist".
            return selectedQueue.map { UInt32(state.queues[$0].maxSize) } ?? 0
        case R.queueReady:
            return selectedQueue.map { state.queues[$0].ready ? 1 : 0 } ?? 0
        case R.interruptStatus: return state.interruptStatus
        case R.status: return state.status
        case R.shmLenLow, R.shmLenHigh, R.shmBaseLow, R.shmBaseHigh:
            // No shared memory regions: the spec says a non-existent region reads as length and base -1.
            return .max
        case R.configGeneration: return state.configGeneration
        default:
            // Write-only registers (QueueNum, QueueDesc*, ...), QueueReset (VIRTIO_F_RING_RESET is not offered),
            // reserved offsets.
            return 0
        }
    }

    private func writeRegister(_ offset: UInt64, _ value: UInt32) {
        typealias R = VirtioMMIORegister
        switch offset {
        case R.deviceFeaturesSel: state.deviceFeaturesSel = value
        case R.driverFeaturesSel: state.driverFeaturesSel = value
        case R.driverFeatures:
            // Features are fixed once FEATURES_OK is set (3.1.1); only the two defined halves exist.
            guard state.status & VirtioStatus.featuresOK == 0 else { return }
            switch state.driverFeaturesSel {
            case 0: state.driverFeatures = (state.driverFeatures & 0xFFFF_FFFF_0000_0000) | UInt64(value)
            case 1: state.driverFeatures = (state.driverFeatures & 0xFFFF_FFFF) | (UInt64(value) << 32)
            default: return
            }
        case R.queueSel: state.queueSel = value
        case R.queueNum:
            // Values that do not fit a u16 are stored as 0 so activation rejects them instead of a truncation
            // making them look valid.
            updateSelectedQueue { $0.size = value <= UInt32(UInt16.max) ? UInt16(value) : 0 }
        case R.queueReady:
            // Before DRIVER_OK the driver may set and clear it; after, the queue is the device's.
            guard state.status & VirtioStatus.driverOK == 0, let q = selectedQueue else { return }
            state.queues[q].ready = value & 1 != 0
        case R.queueDescLow: updateSelectedQueue { $0.descriptorTable = Self.setLow($0.descriptorTable, value) }
        case R.queueDescHigh: updateSelectedQueue { $0.descriptorTable = Self.setHigh($0.descriptorTable, value) }
        case R.queueDriverLow: updateSelectedQueue { $0.availRing = Self.setLow($0.availRing, value) }
        case R.queueDriverHigh: updateSelectedQueue { $0.availRing = Self.setHigh($0.availRing, value) }
        case R.queueDeviceLow: updateSelectedQueue { $0.usedRing = Self.setLow($0.usedRing, value) }
        case R.queueDeviceHigh: updateSelectedQueue { $0.usedRing = Self.setHigh($0.usedRing, value) }
        case R.queueNotify:
            // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
            _ = queueNotified(Int(value))
        case R.interruptACK:
            setInterruptStatus(state.interruptStatus & ~value)
        case R.status: writeStatus(value)
        case R.shmSel: state.shmSel = value
        default:
            // Read-only registers, QueueReset, reserved offsets.
            return
        }
    }

    /// Queue registers other than QueueReady may change only while the queue is not ready and the device is not
    /// live (4.2.3.2: the driver sets them up before enabling the queue).
    private func updateSelectedQueue(_ change: (inout Virtqueue) -> Void) {
        guard state.status & VirtioStatus.driverOK == 0, let q = selectedQueue, !state.queues[q].ready else { return }
        change(&state.queues[q])
    }

    private static func setLow(_ old: UInt64, _ value: UInt32) -> UInt64 { (old & 0xFFFF_FFFF_0000_0000) | UInt64(value) }
    private static func setHigh(_ old: UInt64, _ value: UInt32) -> UInt64 { (old & 0xFFFF_FFFF) | (UInt64(value) << 32) }

    // MARK: - Status

    /// The device status state machine (2.1, 3.1.1). The driver only ever adds bits, in the order ACKNOWLEDGE,
    /// DRIVER, FEATURES_OK, DRIVER_OK (FAILED at any time); writing 0 resets. A write that clears bits or skips a
    /// step is ignored. DEVICE_NEEDS_RESET belongs to the device: the driver can neither set nor clear it.
    private func writeStatus(_ value: UInt32) {
        if value == 0 {
            resetDevice()
            return
        }
        if value & VirtioStatus.failed != 0 {
            // The driver gave up; accept that whatever else the write says.
            state.status |= VirtioStatus.failed
            return
        }
        let driverBits = VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK
            | VirtioStatus.driverOK | VirtioStatus.failed
        let old = state.status & driverBits
        let requested = value & driverBits
        guard requested & old == old else { return }
        let added = requested & ~old
        if added & VirtioStatus.driver != 0 && requested & VirtioStatus.acknowledge == 0 { return }
        if added & VirtioStatus.featuresOK != 0 && requested & VirtioStatus.driver == 0 { return }
        if added & VirtioStatus.driverOK != 0 && requested & VirtioStatus.featuresOK == 0 { return }
        var new = state.status | added
        if added & VirtioStatus.featuresOK != 0 && !featuresAcceptable {
            // 3.1.1 step 6: the driver re-reads Status and sees FEATURES_OK unset: the features were refused.
            new &= ~VirtioStatus.featuresOK
            if added & VirtioStatus.driverOK != 0 { return }
        }
        state.status = new
        if added & VirtioStatus.driverOK != 0 { activate() }
    }

    /// VERSION_1 must be accepted (this is not a legacy device), and nothing beyond what was offered.
    private var featuresAcceptable: Bool {
        state.driverFeatures & ~offeredFeatures == 0 && state.driverFeatures & VirtioFeature.version1 != 0
    }

    private func activate() {
        for i in state.queues.indices where state.queues[i].ready {
            do {
                try state.queues[i].activate(features: state.driverFeatures, memory: memory)
            } catch {
                markNeedsReset(reason: "queue \(i): \(error)")
                return
            }
        }
        backend.activate(features: state.driverFeatures)
    }

    private func resetDevice() {
        backend.reset()
        let generation = state.configGeneration
        state = VirtioMMIOState(queueMaxSizes: state.queues.map(\.maxSize))
        // Kept across resets so a driver comparing generations never sees an old value come back.
        state.configGeneration = generation
        pending = Array(repeating: false, count: pending.count)
        waitingForBuffers = pending
        interrupt.set(false)
    }

    /// Whether the device serves requests: live, not failed, not waiting for a reset.
    public var isLive: Bool {
        state.status & VirtioStatus.driverOK != 0
            && state.status & (VirtioStatus.deviceNeedsReset | VirtioStatus.failed) == 0
    }

    // MARK: - Device-initiated events

    /// Sets DEVICE_NEEDS_RESET (the device stops serving requests) and, if the driver is live, sends a
    /// configuration change interrupt so it notices (2.1.2). Used when a queue or request is hostile.
    public func markNeedsReset(reason: String) {
        guard state.status & VirtioStatus.deviceNeedsReset == 0 else { return }
        state.status |= VirtioStatus.deviceNeedsReset
        state.failure = reason
        if state.status & VirtioStatus.driverOK != 0 { raiseInterrupt(VirtioInterrupt.configChange) }
    }

    /// The configuration space changed: bumps ConfigGeneration and, once the driver is live, interrupts it.
    public func configChanged() {
        state.configGeneration &+= 1
        if state.status & VirtioStatus.driverOK != 0 { raiseInterrupt(VirtioInterrupt.configChange) }
    }

    private func raiseInterrupt(_ bits: UInt32) {
        setInterruptStatus(state.interruptStatus | bits)
    }

    /// The line follows InterruptStatus: asserted while any bit is set. Only changes are sent.
    private func setInterruptStatus(_ new: UInt32) {
        let old = state.interruptStatus
        state.interruptStatus = new
        if (old != 0) != (new != 0) { interrupt.set(new != 0) }
    }

    // MARK: - Queues

    /// Queue `index` was notified (its ioeventfd fired, or a QueueNotify write): serves up to `budget` available
    /// requests (default: the queue size), returns used buffers and interrupts the driver if it wants that.
    /// A hostile ring or request sets DEVICE_NEEDS_RESET. Notifications for unknown, inactive queues or a device
    /// that is not live are ignored.
    @discardableResult
    public func queueNotified(_ index: Int, budget: Int? = nil) -> QueueProgress {
        guard index >= 0, index < state.queues.count else { return .idle }
        guard isLive, state.queues[index].isActive else {
            pending[index] = false
            return .idle
        }
        if backend.isDeviceDriven(queue: index) { return serveDeviceDriven(index, budget: budget) }
        // Work on a copy: the backend runs in between and must not see the transport's state half-updated.
        var queue = state.queues[index]
        let limit = max(1, budget ?? Int(queue.size))
        var progress = QueueProgress.idle
        var steps = 0
        do {
            while true {
                // Every step counts, including a re-check after enabling notifications: a guest toggling avail->idx
                // must not keep us here.
                guard steps < limit else {
                    progress = .morePending
                    break
                }
                steps += 1
                guard let request = try queue.nextRequest(in: memory) else {
                    if try queue.enableNotification(in: memory) { continue }
                    break
                }
                let written = try backend.handle(request, queue: index, memory: memory)
                try queue.addUsed(head: request.head, length: written, in: memory)
            }
        } catch {
            markNeedsReset(reason: "queue \(index): \(error)")
            progress = .idle
        }
        return finish(index, queue, progress)
    }

    /// A device-driven queue (`VirtioDeviceBackend.isDeviceDriven`): the backend places up to `budget` units of
    /// its work (default: the queue size) in the buffers the driver made available; each unit's chains are returned
    /// together, or, when the backend cannot place it, not at all. Stops when the backend has nothing more, or
    /// waits for buffers: then the driver is asked to notify when it adds some, and the queue is not served again
    /// before it does (`wantsDeviceSource`).
    private func serveDeviceDriven(_ index: Int, budget: Int?) -> QueueProgress {
        var queue = state.queues[index]
        let limit = max(1, budget ?? Int(queue.size))
        var progress = QueueProgress.idle
        waitingForBuffers[index] = false
        do {
            var steps = 0
            work: while true {
                guard steps < limit else {
                    progress = .morePending
                    break
                }
                steps += 1
                var chains = ChainSource(queue: queue, memory: memory)
                switch try backend.produce(queue: index, chains: &chains, memory: memory) {
                case .completed(let used):
                    queue = chains.queue
                    try queue.addUsed(used, in: memory)
                case .dropped:
                    continue
                case .sourceEmpty:
                    break work
                case .needBuffers:
                    // Notified once the driver adds a buffer past those the backend looked at; buffers may also
                    // have come between its look and that request: then it tries again.
                    if try chains.queue.enableNotification(in: memory) { continue }
                    waitingForBuffers[index] = true
                    break work
                }
            }
        } catch {
            markNeedsReset(reason: "queue \(index): \(error)")
            progress = .idle
        }
        return finish(index, queue, progress)
    }

    /// Stores a queue worked on as a copy, remembers whether it has work left and interrupts the driver if it
    /// wants that for what was returned.
    private func finish(_ index: Int, _ queue: Virtqueue, _ progress: QueueProgress) -> QueueProgress {
        var queue = queue
        let notify = queue.needsInterrupt(in: memory)
        state.queues[index] = queue
        pending[index] = progress == .morePending
        if notify { raiseInterrupt(VirtioInterrupt.usedBuffer) }
        return progress
    }

    /// Whether the device-driven queue `index` can take the device's work now (live, active, not waiting for the
    /// driver's buffers): the device process watches its source (the tap) only then, and otherwise leaves what
    /// arrives to the host's own queue, whose bounded length keeps a guest that never refills from costing memory.
    public func wantsDeviceSource(queue index: Int) -> Bool {
        index >= 0 && index < state.queues.count && isLive && state.queues[index].isActive && !waitingForBuffers[index]
    }

    /// Whether some queue stopped at its budget with requests left.
    public var hasPendingWork: Bool { pending.contains(true) }

    /// Serves the queues that stopped at their budget (once each, up to `budget` requests each; default: the queue
    /// size). Returns whether some still have work left.
    @discardableResult
    public func runPendingQueues(budget: Int? = nil) -> Bool {
        for i in pending.indices where pending[i] {
            queueNotified(i, budget: budget)
        }
        return hasPendingWork
    }
}

// MARK: - Surviving the device process

extension VirtioMMIOTransport: Snapshotting {
    /// The longest failure reason kept across a restart (it is only said in the log).
    static let maxFailureBytes = 512

    /// The registers, the queues and the failure reason. The backend is not saved: the blk and rng backends keep
    /// nothing between requests (their configuration comes from the process's arguments).
    public func save(to w: inout SnapshotWriter) {
        w.u32(state.status)
        w.u32(state.deviceFeaturesSel)
        w.u32(state.driverFeaturesSel)
        w.u64(state.driverFeatures)
        w.u32(state.queueSel)
        w.u32(state.shmSel)
        w.u32(state.interruptStatus)
        w.u32(state.configGeneration)
        w.u8(UInt8(truncatingIfNeeded: state.queues.count))
        for q in state.queues { q.save(to: &w) }
        w.bool(state.failure != nil)
        if let failure = state.failure { w.bytes(Array(failure.utf8.prefix(Self.maxFailureBytes))) }
    }

    /// Restores what a previous process of this device committed, refusing any state the transport could never
    /// have been in (the bytes may come from a compromised predecessor): undefined status bits or a status the
    /// driver could not have reached, features past FEATURES_OK that were not acceptable, interrupt bits that do
    /// not exist, queues of another device, active queues that fail activation's checks, a live device whose
    /// queues are not in step. All-or-nothing: nothing changes unless every field passed. The interrupt line is
    /// set to the restored level; a live device's backend is activated again.
    public func restore(from r: inout SnapshotReader) throws(SnapshotError) {
        var s = VirtioMMIOState(queueMaxSizes: backend.queueMaxSizes)
        s.status = try r.u32()
        s.deviceFeaturesSel = try r.u32()
        s.driverFeaturesSel = try r.u32()
        s.driverFeatures = try r.u64()
        s.queueSel = try r.u32()
        s.shmSel = try r.u32()
        s.interruptStatus = try r.u32()
        s.configGeneration = try r.u32()
        guard Int(try r.u8()) == s.queues.count else { throw .invalid("virtio state with another number of queues") }
        for i in s.queues.indices {
            s.queues[i] = try Virtqueue.restored(from: &r, maxSize: s.queues[i].maxSize, features: s.driverFeatures,
                                                 memory: memory)
        }
        s.failure = try r.bool() ? String(decoding: try r.bytes(max: Self.maxFailureBytes), as: UTF8.self) : nil

        typealias S = VirtioStatus
        let known = S.acknowledge | S.driver | S.featuresOK | S.driverOK | S.deviceNeedsReset | S.failed
        guard s.status & ~known == 0 else { throw .invalid("virtio status 0x\(String(s.status, radix: 16))") }
        // The driver adds its bits in order (writeStatus refuses skipping a step).
        for (bit, needs) in [(S.driver, S.acknowledge), (S.featuresOK, S.driver), (S.driverOK, S.featuresOK)]
        where s.status & bit != 0 && s.status & needs == 0 {
            throw .invalid("virtio status 0x\(String(s.status, radix: 16)) skips a step")
        }
        if s.status & S.featuresOK != 0 {
            guard s.driverFeatures & ~offeredFeatures == 0, s.driverFeatures & VirtioFeature.version1 != 0 else {
                throw .invalid("features 0x\(String(s.driverFeatures, radix: 16)) accepted though not acceptable")
            }
        }
        guard (s.status & S.deviceNeedsReset != 0) == (s.failure != nil) else {
            throw .invalid("DEVICE_NEEDS_RESET without its reason, or a reason without it")
        }
        guard s.interruptStatus & ~(VirtioInterrupt.usedBuffer | VirtioInterrupt.configChange) == 0 else {
            throw .invalid("interrupt status 0x\(String(s.interruptStatus, radix: 16))")
        }
        for q in s.queues where q.isActive {
            // Queues are activated at DRIVER_OK only, and a reset deactivates them.
            guard s.status & S.driverOK != 0 else { throw .invalid("an active queue before DRIVER_OK") }
            // Served in order and synchronously (queueNotified): a live device never leaves a request half done.
            let live = s.status & (S.deviceNeedsReset | S.failed) == 0
            guard !live || q.lastAvailIndex == q.usedIndex else {
                throw .invalid("a live queue with a request taken but not completed")
            }
        }
        state = s
        pending = s.queues.map(\.isActive)
        interrupt.set(s.interruptStatus != 0)
        if isLive { backend.activate(features: s.driverFeatures) }
    }

    /// For a process that took over from a dead one, after `restore`: completions its predecessor published after
    /// its last commit are adopted (`Virtqueue.adoptPublishedCompletions`), and the driver is interrupted when
    /// there were any, since the predecessor may have died before it could (a spurious interrupt is harmless, a
    /// lost one hangs the driver). A used ring the guest scribbled on sets DEVICE_NEEDS_RESET. Returns the number
    /// of completions adopted.
    @discardableResult
    public func adoptPublishedCompletions() -> Int {
        guard isLive else { return 0 }
        var adopted = 0
        for i in state.queues.indices where state.queues[i].isActive {
            var queue = state.queues[i]
            do {
                adopted += Int(try queue.adoptPublishedCompletions(in: memory))
            } catch {
                markNeedsReset(reason: "queue \(i) at takeover: \(error)")
                return adopted
            }
            queue.markSignalled()
            state.queues[i] = queue
        }
        if adopted > 0 { raiseInterrupt(VirtioInterrupt.usedBuffer) }
        return adopted
    }
}

extension VirtioMMIOTransport {
    /// What a read of a virtio-mmio window returns once its device process has been given up on (it kept crashing):
    /// answered by the vcpu process without the device, from nothing but the offset. Status says DEVICE_NEEDS_RESET
    /// (with the driver bits of a live device: the real ones died with the process) and InterruptStatus the
    /// configuration-change bit, which is how a driver learns that its device needs a reset (2.1.2); the identity
    /// registers still identify a virtio-mmio device; everything else reads all-ones, as a dead device would.
    public static func brokenDeviceRead(offset: UInt64, size: Int) -> UInt64 {
        typealias R = VirtioMMIORegister
        let allOnes: UInt64 = size >= 8 ? .max : (1 << (UInt64(max(size, 0)) * 8)) - 1
        guard size == 4, offset < R.config else { return allOnes }
        switch offset {
        case R.magicValue: return UInt64(R.magic)
        case R.version: return UInt64(R.currentVersion)
        case R.status:
            return UInt64(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK
                          | VirtioStatus.deviceNeedsReset)
        case R.interruptStatus: return UInt64(VirtioInterrupt.configChange)
        default: return allOnes
        }
    }
}
