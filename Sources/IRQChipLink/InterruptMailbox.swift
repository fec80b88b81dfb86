import Devices
import Synchronization
import System

/// Per-vCPU interrupt mailboxes in a shared memory region of their own (the vcpu and irqchip processes map it;
/// no device does): the irqchip offers the vector a vCPU should take next, the vcpu process takes it when the guest
/// can accept it and acknowledges it over the irqchip channel. One cache line per vCPU: a vector word, an event
/// word for what is not a vector (NMI, INIT, start-up IPI) and the vCPU's timer-watch word. Every word is read as hostile: the peer may write
/// anything.
///
/// Both words carry, in their upper 16 bits, the sequence number of the irqchip's last write to them: an irqchip
/// process that replaces a dead one tells from it which of the writes its predecessor decided (and committed) were
/// made (see `MailboxOutbox`), so that no vector is offered twice and no event signalled twice or lost.
///
/// Vector word: bits 0-7 the vector, bit 8 offered (waiting to be taken), bit 9 taken (the vCPU took it; its
/// acknowledgement is on its way), bits 16-31 the offer's sequence number. Event word: bit 0 an NMI, bit 3 a second
/// NMI, bit 1 INIT, bit 2 start-up IPI with its vector in bits 8-15, bits 16-31 the sequence number of the last
/// signal. Two NMIs, not one: a CPU holds one NMI in service (blocked until its handler's IRET) and latches one more,
/// so two that arrive before the vCPU takes either must both be delivered; a third collapses, as on the CPU.
public final class InterruptMailbox: @unchecked Sendable {
    private let mapping: MappedRegion
    @usableFromInline let base: UnsafeMutableRawPointer
    public let vcpus: Int
    /// Computed, not stored, so that the vCPU's inlined checks can name them (a stored one is a lazy global).
    @usableFromInline static var offeredBit: UInt32 { 0x100 }
    @usableFromInline static var takenBit: UInt32 { 0x200 }

    /// The mailboxes, then each vCPU's LAPICMirror from the next page on.
    static func mirrorsOffset(vcpus: Int) -> Int { (vcpus * 64 + 4095) & ~4095 }
    static func byteSize(vcpus: Int) -> Int { (mirrorsOffset(vcpus: vcpus) + vcpus * LAPICMirror.byteSize + 4095) & ~4095 }

    /// The register copy the irqchip publishes for `vcpu`.
    public func mirror(vcpu: Int) -> LAPICMirror {
        precondition(vcpu >= 0 && vcpu < vcpus)
        return LAPICMirror(base: base + Self.mirrorsOffset(vcpus: vcpus) + vcpu * LAPICMirror.byteSize)
    }

    /// Creates the region for `vcpus` mailboxes, all empty (supervisor side).
    public static func create(vcpus: Int) throws(SystemError) -> FileDescriptor {
        try MemFD.create(name: "interrupt-mailboxes", size: byteSize(vcpus: vcpus))
    }

    /// Maps the region made by `create`.
    public init(attaching fd: Int32, vcpus: Int) throws(SystemError) {
        precondition(vcpus >= 1)
        mapping = try MappedRegion(fd: fd, size: Self.byteSize(vcpus: vcpus))
        base = mapping.base
        self.vcpus = vcpus
    }

    @inlinable @inline(__always)
    func word(_ vcpu: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + 64 * vcpu).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    @inlinable @inline(__always)
    func eventWord(_ vcpu: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + 64 * vcpu + 4).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// Events other than a vector, as the vcpu process takes them.
    public struct Events: Equatable, Sendable {
        /// NMIs not taken yet: 0, 1 or 2 (the one the CPU will deliver and the one it latches meanwhile).
        public private(set) var nmis: Int = 0
        public var initialize = false
        /// A start-up IPI's vector (the CPU starts at vector << 12), if one came.
        public var startup: UInt8?
        /// The most NMIs that wait: more collapse, as on the CPU (one in service, one latched).
        public static let maxNMIs = 2

        public init(nmis: Int = 0, initialize: Bool = false, startup: UInt8? = nil) {
            self.nmis = min(max(nmis, 0), Self.maxNMIs)
            self.initialize = initialize
            self.startup = startup
        }
        public var isEmpty: Bool { nmis == 0 && !initialize && startup == nil }

        @usableFromInline static var nmiBit: UInt32 { 1 }
        @usableFromInline static var initBit: UInt32 { 2 }
        @usableFromInline static var startupBit: UInt32 { 4 }
        @usableFromInline static var secondNMIBit: UInt32 { 8 }
        /// Every bit `init(word:)` reads a signal from: a word without them is empty.
        @inlinable static var signalBits: UInt32 { nmiBit | initBit | startupBit | secondNMIBit }

        /// A second NMI without a first (a word only a hostile peer writes) counts as one.
        init(word w: UInt32) {
            nmis = w & (Self.nmiBit | Self.secondNMIBit) == 0 ? 0 : w & Self.nmiBit != 0 && w & Self.secondNMIBit != 0 ? 2 : 1
            initialize = w & Self.initBit != 0
            startup = w & Self.startupBit != 0 ? UInt8(truncatingIfNeeded: w >> 8) : nil
        }

        var bits: UInt32 {
            var bits = (nmis > 0 ? Self.nmiBit : 0) | (nmis > 1 ? Self.secondNMIBit : 0) | (initialize ? Self.initBit : 0)
            if let v = startup { bits |= Self.startupBit | UInt32(v) << 8 }
            return bits
        }

        /// These and `later` together: NMIs add up to two, a later start-up vector replaces an earlier one not yet
        /// taken.
        public func merged(with later: Events) -> Events {
            Events(nmis: nmis + later.nmis, initialize: initialize || later.initialize, startup: later.startup ?? startup)
        }
    }

    /// Word 2 of a vCPU's line: nonzero while the vCPU, halted, watches its LAPIC timer's timerfd itself and the
    /// irqchip should leave the expiries to it (see `leaveTimer`).
    private func timerWatchWord(_ vcpu: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + 64 * vcpu + 8).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    // MARK: irqchip side

    /// A vector word as the irqchip reads it.
    public struct Offer: Equatable, Sendable {
        public enum State: Equatable, Sendable { case empty, offered, taken }
        public var state: State
        public var vector: UInt8
        public var sequence: UInt16

        public init(state: State, vector: UInt8, sequence: UInt16) {
            self.state = state
            self.vector = vector
            self.sequence = sequence
        }

        init(word w: UInt32) {
            sequence = UInt16(truncatingIfNeeded: w >> 16)
            vector = UInt8(truncatingIfNeeded: w)
            switch w & (InterruptMailbox.offeredBit | InterruptMailbox.takenBit) {
            case InterruptMailbox.offeredBit: state = .offered
            case InterruptMailbox.takenBit: state = .taken
            default: state = .empty  // nothing, or a word no irqchip or vCPU writes
            }
        }

        var word: UInt32 {
            let flag: UInt32 = state == .offered ? InterruptMailbox.offeredBit : state == .taken ? InterruptMailbox.takenBit : 0
            return UInt32(sequence) << 16 | flag | UInt32(vector)
        }
    }

    /// What a vCPU's vector word holds now.
    public func offer(vcpu: Int) -> Offer { Offer(word: word(vcpu).pointee.load(ordering: .acquiring)) }

    /// Offers `vector` under `sequence` to a box that holds no offer; false when one is still there.
    public func post(_ vector: UInt8, sequence: UInt16, vcpu: Int) -> Bool {
        let current = word(vcpu).pointee.load(ordering: .acquiring)
        guard Offer(word: current).state != .offered else { return false }
        let desired = Offer(state: .offered, vector: vector, sequence: sequence).word
        // The vCPU writes only offered words: this can fail only to a hostile peer.
        return word(vcpu).pointee.compareExchange(expected: current, desired: desired, ordering: .acquiringAndReleasing).exchanged
    }

    /// Swaps the offer (`old`, `oldSequence`), if the vCPU has not taken it yet, for (`new`, `sequence`).
    public func replace(_ old: UInt8, oldSequence: UInt16, with new: UInt8, sequence: UInt16, vcpu: Int) -> Bool {
        let expected = Offer(state: .offered, vector: old, sequence: oldSequence).word
        let desired = Offer(state: .offered, vector: new, sequence: sequence).word
        return word(vcpu).pointee.compareExchange(expected: expected, desired: desired, ordering: .acquiringAndReleasing).exchanged
    }

    /// Empties the box (INIT reset the vCPU's local APIC): an offer not taken is taken back, and a taken vector's
    /// acknowledgement will be ignored.
    public func withdraw(vcpu: Int) { word(vcpu).pointee.store(0, ordering: .releasing) }

    /// The sequence number of the last signal of events to `vcpu`.
    public func eventSequence(vcpu: Int) -> UInt16 {
        UInt16(truncatingIfNeeded: eventWord(vcpu).pointee.load(ordering: .acquiring) >> 16)
    }

    /// Adds events for a vCPU under `sequence` (a later start-up vector replaces an earlier one not yet taken).
    public func signal(_ events: Events, sequence: UInt16, vcpu: Int) {
        var old = eventWord(vcpu).pointee.load(ordering: .relaxed)
        while true {
            let merged = Events(word: old).merged(with: events)
            let desired = UInt32(sequence) << 16 | merged.bits
            let (done, now) = eventWord(vcpu).pointee.compareExchange(expected: old, desired: desired, ordering: .acquiringAndReleasing)
            if done { return }
            old = now
        }
    }

    /// Whether `vcpu` watches its timer itself (see `leaveTimer`): the irqchip neither reads nor waits on that
    /// timerfd meanwhile, so that the expiry goes to the halted vCPU it is for, in one wake-up.
    public func timerLeftToVCPU(_ vcpu: Int) -> Bool { timerWatchWord(vcpu).pointee.load(ordering: .sequentiallyConsistent) != 0 }

    // MARK: vcpu side

    /// Halted in HLT, the vCPU watches its LAPIC timer's timerfd itself (`true`) and takes the expiry or hands it
    /// back, or stops watching (`false`). Whoever clears it without having taken the expiry must then wake the
    /// irqchip (MessageKind.timerWatchEnded): it may be asleep in a wait that left the timerfd out.
    public func leaveTimer(_ watched: Bool, vcpu: Int) {
        timerWatchWord(vcpu).pointee.store(watched ? 1 : 0, ordering: .sequentiallyConsistent)
    }

    /// Takes every event signalled since the last call (unknown bits in a hostile word are ignored); the
    /// sequence number stays for the irqchip.
    public func takeEvents(vcpu: Int) -> Events {
        var old = eventWord(vcpu).pointee.load(ordering: .acquiring)
        while true {
            let (done, now) = eventWord(vcpu).pointee.compareExchange(expected: old, desired: old & 0xffff_0000,
                                                                       ordering: .acquiringAndReleasing)
            if done { return Events(word: old) }
            old = now
        }
    }

    /// Whether events wait, without taking them. Inlinable, as `pendingVector`: the vCPU asks before every entry.
    @inlinable @inline(__always)
    public func hasEvents(vcpu: Int) -> Bool { eventWord(vcpu).pointee.load(ordering: .acquiring) & Events.signalBits != 0 }

    /// Whether a vector is offered (a hostile word counts as nothing).
    public func hasPending(vcpu: Int) -> Bool { Self.offeredVector(word(vcpu).pointee.load(ordering: .acquiring)) != nil }

    /// The offered vector, without taking it (nil: nothing valid is offered).
    @inlinable @inline(__always)
    public func pendingVector(vcpu: Int) -> UInt8? { Self.offeredVector(word(vcpu).pointee.load(ordering: .acquiring)) }

    /// Takes the offered vector, leaving it marked taken; nil when nothing valid (a vector of 16 or more) is offered.
    public func take(vcpu: Int) -> UInt8? {
        var current = word(vcpu).pointee.load(ordering: .acquiring)
        while let vector = Self.offeredVector(current) {
            let taken = current & ~Self.offeredBit | Self.takenBit
            let (done, now) = word(vcpu).pointee.compareExchange(expected: current, desired: taken, ordering: .acquiringAndReleasing)
            if done { return vector }
            current = now  // the irqchip swapped in a higher vector meanwhile
        }
        return nil
    }

    /// Offered (not taken), no bit of 10-15 set, a vector of 16 or more (bits as `Offer(word:)` reads them).
    @inlinable @inline(__always)
    static func offeredVector(_ w: UInt32) -> UInt8? {
        guard w & 0xff00 == offeredBit, w & 0xff >= 16 else { return nil }
        return UInt8(truncatingIfNeeded: w)
    }
}
