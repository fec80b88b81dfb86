import Devices

/// One buffer of a descriptor chain: a range of guest RAM the device may read (driver -> device) or write
/// (device -> driver). Every buffer handed out by `Virtqueue.nextRequest` lies entirely inside guest RAM.
public struct DescriptorBuffer: Equatable, Sendable {
    /// Guest-physical address of the first byte.
    public let gpa: UInt64
    /// Length in bytes (may be 0).
    public let length: UInt32
    /// True for a device write-only buffer (VIRTQ_DESC_F_WRITE), false for a device read-only one.
    public let isDeviceWritable: Bool

    public init(gpa: UInt64, length: UInt32, isDeviceWritable: Bool) {
        self.gpa = gpa
        self.length = length
        self.isDeviceWritable = isDeviceWritable
    }
}

/// A request taken from the available ring: the head descriptor index (what goes back in the used ring) and the
/// buffers, in order, with indirect tables already flattened. Validated: every buffer is inside RAM, readable
/// buffers come before writable ones, the chain has at most queue-size buffers.
public struct DescriptorChain: Equatable, Sendable {
    /// The index of the head descriptor; `Virtqueue.addUsed(head:length:in:)` returns it to the driver.
    public let head: UInt16
    /// The buffers: all device-readable ones first, then all device-writable ones.
    public let buffers: [DescriptorBuffer]

    public init(head: UInt16, buffers: [DescriptorBuffer]) {
        self.head = head
        self.buffers = buffers
    }

    /// The device-readable buffers (the driver's request).
    public var readable: ArraySlice<DescriptorBuffer> { buffers.prefix { !$0.isDeviceWritable } }
    /// The device-writable buffers (room for the device's answer).
    public var writable: ArraySlice<DescriptorBuffer> { buffers.drop { !$0.isDeviceWritable } }
}

/// One entry of the used ring: a chain's head and how many bytes the device wrote into its writable buffers.
public struct UsedElement: Equatable, Sendable {
    public let head: UInt16
    public let length: UInt32
    public init(head: UInt16, length: UInt32) {
        self.head = head
        self.length = length
    }
}

/// Why a virtqueue refused to go on. Each case is a driver bug or a hostile guest; the device reacts by setting
/// DEVICE_NEEDS_RESET (`VirtioMMIOTransport.markNeedsReset`) and touching the queue no more until a reset.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The queue was not activated (not ready, or its registers changed since activation).
    case notReady
    /// QueueNum is 0, not a power of two, or above QueueNumMax.
    case invalidSize(UInt16, max: UInt16)
    /// A ring area is misaligned or not entirely inside RAM.
    case invalidRing(VirtqueueArea, gpa: UInt64)
    /// A ring could not be accessed (it was validated at activation, so RAM must have changed under us).
    case ringOutsideRAM(VirtqueueArea)
    /// The driver's avail idx is more than queue-size entries ahead of the last one we consumed.
    case availIndexJumped(availIndex: UInt16, lastSeen: UInt16)
    /// A descriptor index at or above the size of the table it indexes.
    case descriptorIndexOutOfRange(UInt16, tableSize: UInt32)
    /// A chain with more buffers than the queue size (this is also how a loop shows up).
    case chainTooLong(limit: UInt16)
    /// An indirect descriptor inside an indirect table.
    case nestedIndirect
    /// An indirect descriptor that also has VIRTQ_DESC_F_NEXT set.
    case indirectWithNext
    /// An indirect descriptor although VIRTIO_F_INDIRECT_DESC was not negotiated.
    case indirectNotNegotiated
    /// An indirect table whose length is zero or not a multiple of 16.
    case indirectTableLength(UInt32)
    /// An indirect table not entirely inside RAM.
    case indirectTableOutsideRAM(gpa: UInt64, length: UInt32)
    /// A buffer not entirely inside RAM (including ranges that wrap around 2^64).
    case bufferOutsideRAM(gpa: UInt64, length: UInt32)
    /// A device-readable buffer after a device-writable one (the spec requires readable ones first).
    case readableAfterWritable
    /// `addUsed` with a head that is not a descriptor index of this queue.
    case usedHeadOutOfRange(UInt16)
    /// At a takeover: used->idx in guest RAM claims completions of requests the driver never made available (or
    /// the device's own positions disagree).
    case usedIndexAhead(published: UInt16, available: UInt16)

    public var description: String {
        switch self {
        case .notReady: "the queue is not ready"
        case let .invalidSize(size, max): "queue size \(size) is not a power of two in 1...\(max)"
        case let .invalidRing(area, gpa): "the \(area.rawValue) at 0x\(String(gpa, radix: 16)) is misaligned or outside RAM"
        case let .ringOutsideRAM(area): "the \(area.rawValue) is no longer inside RAM"
        case let .availIndexJumped(avail, last): "avail idx \(avail) is more than the queue size ahead of \(last)"
        case let .descriptorIndexOutOfRange(index, size): "descriptor index \(index) in a table of \(size)"
        case let .chainTooLong(limit): "a descriptor chain longer than \(limit) (or a loop)"
        case .nestedIndirect: "an indirect descriptor inside an indirect table"
        case .indirectWithNext: "an indirect descriptor with NEXT set"
        case .indirectNotNegotiated: "an indirect descriptor without VIRTIO_F_INDIRECT_DESC"
        case let .indirectTableLength(length): "an indirect table of \(length) bytes"
        case let .indirectTableOutsideRAM(gpa, length): "an indirect table 0x\(String(gpa, radix: 16))+\(length) outside RAM"
        case let .bufferOutsideRAM(gpa, length): "a buffer 0x\(String(gpa, radix: 16))+\(length) outside RAM"
        case .readableAfterWritable: "a device-readable buffer after a device-writable one"
        case let .usedHeadOutOfRange(head): "used head \(head) is not a descriptor index"
        case let .usedIndexAhead(published, available): "used idx \(published) is ahead of avail idx \(available)"
        }
    }
}

/// The three areas of a split virtqueue (2.7).
public enum VirtqueueArea: String, Sendable, Codable {
    case descriptorTable = "descriptor table"
    case availRing = "available ring"
    case usedRing = "used ring"
}

/// The device side of one split virtqueue (virtio 1.2 section 2.7).
///
/// A plain value: the registers the driver programs (size, ring addresses, ready) and the device's private ring
/// positions. It holds no pointer: every operation takes the `GuestRAM` to work on, so the whole state can be
/// saved (it is `Codable`) and restored by a restarted device process, which then resumes where the old one stopped.
///
/// Use: the transport fills the registers, calls `activate(features:memory:)` at DRIVER_OK, then per request
/// `nextRequest(in:)` -> handle -> `addUsed(head:length:in:)`, and `needsInterrupt(in:)` once per batch; when
/// `nextRequest` returns nil, `enableNotification(in:)` says whether to look again (see there).
///
/// Work per call is bounded: `nextRequest` reads at most queue-size + 1 descriptors, and since it consumes one avail
/// entry per call, a caller that stops after a budget of calls cannot be kept spinning by a guest that keeps
/// re-publishing entries or never consumes the used ring (the used ring simply wraps; the driver owns that problem).
public struct Virtqueue: Codable, Equatable, Sendable {
    /// QueueNumMax: the largest size the device supports (a power of two).
    public let maxSize: UInt16

    // The registers. Any change deactivates the queue: an active queue has always been validated as it is.

    /// QueueNum: the number of descriptors (and ring entries) the driver chose.
    public var size: UInt16 { didSet { isActive = false } }
    /// QueueReady.
    public var ready: Bool { didSet { isActive = false } }
    /// QueueDesc: guest-physical address of the descriptor table (16-byte aligned, 16 * size bytes).
    public var descriptorTable: UInt64 { didSet { isActive = false } }
    /// QueueDriver: guest-physical address of the available ring (2-byte aligned, 6 + 2 * size bytes).
    public var availRing: UInt64 { didSet { isActive = false } }
    /// QueueDevice: guest-physical address of the used ring (4-byte aligned, 6 + 8 * size bytes).
    public var usedRing: UInt64 { didSet { isActive = false } }

    // The device's state.

    /// Whether `activate` validated the current registers; requests are served only then.
    public private(set) var isActive = false
    /// VIRTIO_F_EVENT_IDX was negotiated: use used_event / avail_event instead of the ring flags.
    public private(set) var eventIndexEnabled = false
    /// VIRTIO_F_INDIRECT_DESC was negotiated.
    public private(set) var indirectEnabled = false
    /// The free-running avail index of the next entry to consume.
    public private(set) var lastAvailIndex: UInt16 = 0
    /// The free-running used index: the next used entry to fill, and the value last published in used->idx.
    public private(set) var usedIndex: UInt16 = 0
    /// The used index when `needsInterrupt` last decided (the "old" of `vring_need_event`).
    public private(set) var signalledUsedIndex: UInt16 = 0
    /// Whether `addUsed` published something since the last `needsInterrupt`.
    public private(set) var addedSinceSignal = false

    /// A queue as after reset: size = `maxSize` (the default the MMIO spec gives QueueNum), not ready.
    public init(maxSize: UInt16) {
        self.maxSize = maxSize
        size = maxSize
        ready = false
        descriptorTable = 0
        availRing = 0
        usedRing = 0
    }

    /// Back to the state after device reset.
    public mutating func reset() {
        self = Virtqueue(maxSize: maxSize)
    }

    /// Validates the registers against `memory` and the spec's alignment rules and starts serving requests, with
    /// the ring features taken from the negotiated `features`. Called at DRIVER_OK for every ready queue.
    public mutating func activate(features: UInt64, memory: GuestRAM) throws(VirtqueueError) {
        try validateLayout(memory: memory)
        // used->idx starts at 0 in guest RAM too, whatever a driver that reused the memory left there: a device
        // process that takes over from a dead one counts the completions published since the last commit from it
        // (`adoptPublishedCompletions`), so it must never hold a value this device did not write.
        guard memory.store(UInt16(0), at: usedRing + 2) else { throw .ringOutsideRAM(.usedRing) }
        eventIndexEnabled = features & VirtioFeature.eventIndex != 0
        indirectEnabled = features & VirtioFeature.indirectDescriptors != 0
        lastAvailIndex = 0
        usedIndex = 0
        signalledUsedIndex = 0
        addedSinceSignal = false
        isActive = true
    }

    /// Checks the registers: ready, a power-of-two size within QueueNumMax, and each ring aligned as 2.7 requires
    /// and entirely inside RAM (so no ring address computed later can overflow or leave RAM). `activate` runs it;
    /// a process restoring a saved state runs it again rather than trust what it reads back.
    public func validateLayout(memory: GuestRAM) throws(VirtqueueError) {
        guard ready else { throw .notReady }
        guard size != 0, size <= maxSize, size & (size - 1) == 0 else { throw .invalidSize(size, max: maxSize) }
        let n = UInt64(size)
        let ram = memory.size
        // 2.7 "Virtqueue Alignment": descriptor table 16, available ring 2, used ring 4. The ring sizes include
        // used_event / avail_event whether or not EVENT_IDX is negotiated (the layout is the same in 1.x).
        guard descriptorTable % 16 == 0, GuestRange.isInside(gpa: descriptorTable, count: 16 * n, ramSize: ram) else {
            throw .invalidRing(.descriptorTable, gpa: descriptorTable)
        }
        guard availRing % 2 == 0, GuestRange.isInside(gpa: availRing, count: 6 + 2 * n, ramSize: ram) else {
            throw .invalidRing(.availRing, gpa: availRing)
        }
        guard usedRing % 4 == 0, GuestRange.isInside(gpa: usedRing, count: 6 + 8 * n, ramSize: ram) else {
            throw .invalidRing(.usedRing, gpa: usedRing)
        }
    }

    // MARK: - Ring addresses (valid only while active; the size is then a power of two and the rings inside RAM)

    private var availIndexAddress: UInt64 { availRing + 2 }
    private var usedEventAddress: UInt64 { availRing + 4 + 2 * UInt64(size) }
    private var usedIndexAddress: UInt64 { usedRing + 2 }
    private var availEventAddress: UInt64 { usedRing + 4 + 8 * UInt64(size) }
    private func slot(_ index: UInt16) -> UInt64 { UInt64(index & (size &- 1)) }

    // MARK: - Taking requests

    /// Takes the next available request, or returns nil when the driver has published nothing new.
    ///
    /// Throws when the ring or the chain is hostile. The avail entry is consumed either way; after a throw the
    /// device should set DEVICE_NEEDS_RESET and stop using the queue.
    public mutating func nextRequest(in memory: GuestRAM) throws(VirtqueueError) -> DescriptorChain? {
        guard isActive else { throw .notReady }
        guard let availIndex = memory.load(UInt16.self, at: availIndexAddress) else { throw .ringOutsideRAM(.availRing) }
        let pending = availIndex &- lastAvailIndex
        if pending == 0 { return nil }
        // The driver can have at most `size` entries outstanding; more means it is broken or hostile.
        guard pending <= size else { throw .availIndexJumped(availIndex: availIndex, lastSeen: lastAvailIndex) }
        // The entries the index covers must be read after the index (pairs with the driver's wmb before it).
        RingBarrier.acquire()
        guard let head = memory.load(UInt16.self, at: availRing + 4 + 2 * slot(lastAvailIndex)) else {
            throw .ringOutsideRAM(.availRing)
        }
        lastAvailIndex &+= 1
        return DescriptorChain(head: head, buffers: try walkChain(head: head, memory: memory))
    }

    /// Follows the chain from `head`, flattening an indirect table, validating every descriptor as it is copied.
    private func walkChain(head: UInt16, memory: GuestRAM) throws(VirtqueueError) -> [DescriptorBuffer] {
        var buffers: [DescriptorBuffer] = []
        var table = descriptorTable
        var tableSize = UInt32(size)
        var index = head
        var inIndirect = false
        var sawWritable = false
        let ram = memory.size
        while true {
            guard UInt32(index) < tableSize else { throw .descriptorIndexOutOfRange(index, tableSize: tableSize) }
            // Copy the 16-byte descriptor once; only the copy is validated and used.
            guard let d = memory.bytes(at: table + 16 * UInt64(index), count: 16) else {
                throw inIndirect ? .indirectTableOutsideRAM(gpa: table, length: tableSize * 16) : .ringOutsideRAM(.descriptorTable)
            }
            let raw = UnsafeRawBufferPointer(d)
            let addr = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
            let len = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 14, as: UInt16.self))

            if flags & VirtqDescriptorFlag.indirect != 0 {
                guard !inIndirect else { throw .nestedIndirect }
                guard indirectEnabled else { throw .indirectNotNegotiated }
                guard flags & VirtqDescriptorFlag.next == 0 else { throw .indirectWithNext }
                guard len != 0, len % 16 == 0 else { throw .indirectTableLength(len) }
                guard GuestRange.isInside(gpa: addr, count: UInt64(len), ramSize: ram) else {
                    throw .indirectTableOutsideRAM(gpa: addr, length: len)
                }
                // The chain continues at entry 0 of the table; the indirect descriptor's WRITE flag means nothing.
                table = addr
                tableSize = len / 16
                index = 0
                inIndirect = true
                continue
            }
            guard GuestRange.isInside(gpa: addr, count: UInt64(len), ramSize: ram) else {
                throw .bufferOutsideRAM(gpa: addr, length: len)
            }
            let writable = flags & VirtqDescriptorFlag.write != 0
            if writable {
                sawWritable = true
            } else if sawWritable {
                throw .readableAfterWritable
            }
            // Every descriptor but the (single, final) indirect one adds a buffer, so bounding the buffers bounds
            // the walk and catches loops, in the main table and in an indirect table alike.
            guard buffers.count < Int(size) else { throw .chainTooLong(limit: size) }
            buffers.append(DescriptorBuffer(gpa: addr, length: len, isDeviceWritable: writable))
            guard flags & VirtqDescriptorFlag.next != 0 else { return buffers }
            index = next
        }
    }

    // MARK: - Returning requests

    /// Puts `head` in the used ring with the number of bytes the device wrote into the chain's writable buffers,
    /// and publishes the new used index.
    public mutating func addUsed(head: UInt16, length: UInt32, in memory: GuestRAM) throws(VirtqueueError) {
        guard isActive else { throw .notReady }
        try placeUsed(head: head, length: length, at: usedIndex, in: memory)
        try publishUsed(usedIndex &+ 1, in: memory)
    }

    /// Puts several used entries in the ring and publishes them with one used->idx store, so that the driver sees
    /// all of them or none (a frame spread over several mergeable receive buffers must arrive whole).
    public mutating func addUsed(_ entries: [UsedElement], in memory: GuestRAM) throws(VirtqueueError) {
        guard isActive else { throw .notReady }
        guard !entries.isEmpty else { return }
        for (i, e) in entries.enumerated() {
            try placeUsed(head: e.head, length: e.length, at: usedIndex &+ UInt16(truncatingIfNeeded: i), in: memory)
        }
        try publishUsed(usedIndex &+ UInt16(truncatingIfNeeded: entries.count), in: memory)
    }

    private func placeUsed(head: UInt16, length: UInt32, at index: UInt16, in memory: GuestRAM) throws(VirtqueueError) {
        guard head < size else { throw .usedHeadOutOfRange(head) }
        let element = usedRing + 4 + 8 * slot(index)
        guard memory.store(UInt32(head), at: element), memory.store(length, at: element + 4) else {
            throw .ringOutsideRAM(.usedRing)
        }
    }

    private mutating func publishUsed(_ newIndex: UInt16, in memory: GuestRAM) throws(VirtqueueError) {
        // The elements must be visible before the index that hands them to the driver (pairs with the driver's rmb
        // after it reads used->idx).
        RingBarrier.release()
        usedIndex = newIndex
        guard memory.store(usedIndex, at: usedIndexAddress) else { throw .ringOutsideRAM(.usedRing) }
        addedSinceSignal = true
    }

    /// Whether the driver wants an interrupt for what `addUsed` published since the last call. Call once after a
    /// batch. With EVENT_IDX: only when the used index passed the driver's used_event since the last decision
    /// (`vring_need_event`); without: unless the driver set VRING_AVAIL_F_NO_INTERRUPT. If the driver's field cannot
    /// be read, it answers true: a spurious interrupt is harmless, a lost one hangs the driver.
    public mutating func needsInterrupt(in memory: GuestRAM) -> Bool {
        guard isActive, addedSinceSignal else { return false }
        addedSinceSignal = false
        // Our used->idx store must be globally visible before we read the driver's suppression state, or we could
        // read a stale used_event while the driver reads our stale idx, and both decide nobody needs to act.
        RingBarrier.full()
        let old = signalledUsedIndex
        let new = usedIndex
        signalledUsedIndex = new
        if eventIndexEnabled {
            guard let usedEvent = memory.load(UInt16.self, at: usedEventAddress) else { return true }
            return new &- usedEvent &- 1 < new &- old
        }
        guard let flags = memory.load(UInt16.self, at: availRing) else { return true }
        return flags & VirtqAvailFlag.noInterrupt == 0
    }

    /// Writes avail_event: the driver should notify once it publishes avail index `value + 1` or later (meaningful
    /// only with EVENT_IDX; a no-op without it, where that word may be in use by nobody but is still ours).
    public func setAvailEvent(_ value: UInt16, in memory: GuestRAM) throws(VirtqueueError) {
        guard isActive else { throw .notReady }
        guard eventIndexEnabled else { return }
        guard memory.store(value, at: availEventAddress) else { throw .ringOutsideRAM(.usedRing) }
    }

    /// Call when `nextRequest` returned nil, before going to sleep on the queue's notification: asks the driver
    /// to notify for the next entry (avail_event = the next index we will read) and then looks again. Returns true
    /// when an entry arrived in the meantime, so the caller must keep going instead of sleeping: otherwise a
    /// driver that published just before seeing our avail_event would never notify and the request would hang.
    public func enableNotification(in memory: GuestRAM) throws(VirtqueueError) -> Bool {
        guard isActive else { throw .notReady }
        try setAvailEvent(lastAvailIndex, in: memory)
        // The avail_event store must be visible before we re-read avail->idx (the driver does the mirror image:
        // store idx, full barrier, load avail_event).
        RingBarrier.full()
        guard let availIndex = memory.load(UInt16.self, at: availIndexAddress) else { throw .ringOutsideRAM(.availRing) }
        return availIndex != lastAvailIndex
    }
}

// MARK: - Surviving the device process

extension Virtqueue {
    /// Appends the queue's registers and ring positions (see `restored(from:maxSize:features:memory:)`).
    public func save(to w: inout SnapshotWriter) {
        w.u16(maxSize)
        w.u16(size)
        w.bool(ready)
        w.u64(descriptorTable)
        w.u64(availRing)
        w.u64(usedRing)
        w.bool(isActive)
        w.bool(eventIndexEnabled)
        w.bool(indirectEnabled)
        w.u16(lastAvailIndex)
        w.u16(usedIndex)
        w.u16(signalledUsedIndex)
        w.bool(addedSinceSignal)
    }

    /// A queue read back from a snapshot a previous device process committed, which is trusted no more than the
    /// guest: its QueueNumMax must be the device's (`maxSize`); an active queue must pass the checks `activate`
    /// made (`validateLayout`) and have the ring features the negotiated `features` give it, so no later address
    /// computation can overflow or leave RAM.
    public static func restored(from r: inout SnapshotReader, maxSize: UInt16, features: UInt64,
                                memory: GuestRAM) throws(SnapshotError) -> Virtqueue {
        guard try r.u16() == maxSize else { throw .invalid("virtqueue of another QueueNumMax") }
        var q = Virtqueue(maxSize: maxSize)
        q.size = try r.u16()
        q.ready = try r.bool()
        q.descriptorTable = try r.u64()
        q.availRing = try r.u64()
        q.usedRing = try r.u64()
        let active = try r.bool()
        q.eventIndexEnabled = try r.bool()
        q.indirectEnabled = try r.bool()
        q.lastAvailIndex = try r.u16()
        q.usedIndex = try r.u16()
        q.signalledUsedIndex = try r.u16()
        q.addedSinceSignal = try r.bool()
        if active {
            do { try q.validateLayout(memory: memory) } catch { throw .invalid("active virtqueue: \(error)") }
            guard q.eventIndexEnabled == (features & VirtioFeature.eventIndex != 0),
                  q.indirectEnabled == (features & VirtioFeature.indirectDescriptors != 0) else {
                throw .invalid("virtqueue ring features that the negotiated features do not give")
            }
            q.isActive = true  // set last: the register stores above clear it
        }
        return q
    }

    /// For a device process that took over from one that died: the completions its predecessor published in the
    /// used ring after its last commit are taken as done, so they are neither served again (the driver may have
    /// reused their buffers already) nor lost. Returns how many there were.
    ///
    /// This relies on the queue being served in order and synchronously, as `VirtioMMIOTransport.queueNotified`
    /// does: every request taken is completed (its used entry and used->idx published) before the next is taken,
    /// so a committed queue has `lastAvailIndex == usedIndex`, and each used entry past the committed `usedIndex`
    /// is the completion of the avail entry at the same distance past `lastAvailIndex`. A request the predecessor
    /// took but did not publish is simply served again: the driver cannot touch its buffers before its completion.
    ///
    /// used->idx lives in guest RAM, so the guest can have written anything there: a value that claims more
    /// completions than the driver made requests available (or more than the queue holds) throws.
    public mutating func adoptPublishedCompletions(in memory: GuestRAM) throws(VirtqueueError) -> UInt16 {
        guard isActive else { throw .notReady }
        guard lastAvailIndex == usedIndex else {
            throw .usedIndexAhead(published: usedIndex, available: lastAvailIndex)
        }
        guard let published = memory.load(UInt16.self, at: usedIndexAddress) else { throw .ringOutsideRAM(.usedRing) }
        guard let availIndex = memory.load(UInt16.self, at: availIndexAddress) else { throw .ringOutsideRAM(.availRing) }
        let completed = published &- usedIndex
        let available = availIndex &- lastAvailIndex
        guard completed <= available, available <= size else {
            throw .usedIndexAhead(published: published, available: availIndex)
        }
        lastAvailIndex &+= completed
        usedIndex &+= completed
        return completed
    }

    /// Forgets what `needsInterrupt` would have decided: the caller interrupts the driver itself.
    public mutating func markSignalled() {
        signalledUsedIndex = usedIndex
        addedSinceSignal = false
    }
}
