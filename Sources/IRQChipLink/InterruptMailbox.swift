import Devices
import Synchronization
import System

/// Per-vCPU interrupt mailboxes in a shared memory region of their own (the vcpu and irqchip processes map it;
/// no device does): the irqchip posts the vector a vCPU should take next, the vcpu process takes it when the guest
/// can accept it and acknowledges it over the irqchip channel. One cache line per vCPU: a vector word (0 when
/// empty, else 0x100 | vector) and an event word for what is not a vector (NMI, INIT, start-up IPI with its
/// vector in bits 8-15). Every word is read as hostile: the peer may write anything.
public final class InterruptMailbox: InterruptOffers, @unchecked Sendable {
    private let mapping: MappedRegion
    private let base: UnsafeMutableRawPointer
    public let vcpus: Int
    static let full: UInt32 = 0x100

    static func byteSize(vcpus: Int) -> Int { (vcpus * 64 + 4095) & ~4095 }

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

    private func word(_ vcpu: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + 64 * vcpu).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    private func eventWord(_ vcpu: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + 64 * vcpu + 4).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// Events other than a vector, as the vcpu process takes them.
    public struct Events: Equatable, Sendable {
        public var nmi = false
        public var initialize = false
        /// A start-up IPI's vector (the CPU starts at vector << 12), if one came.
        public var startup: UInt8?
        public init(nmi: Bool = false, initialize: Bool = false, startup: UInt8? = nil) {
            self.nmi = nmi
            self.initialize = initialize
            self.startup = startup
        }
        public var isEmpty: Bool { !nmi && !initialize && startup == nil }

        static let nmiBit: UInt32 = 1, initBit: UInt32 = 2, startupBit: UInt32 = 4

        init(word w: UInt32) {
            nmi = w & Self.nmiBit != 0
            initialize = w & Self.initBit != 0
            startup = w & Self.startupBit != 0 ? UInt8(truncatingIfNeeded: w >> 8) : nil
        }
    }

    /// irqchip: adds events for a vCPU (a later start-up vector replaces an earlier one not yet taken).
    public func signal(_ events: Events, vcpu: Int) {
        var bits = (events.nmi ? Events.nmiBit : 0) | (events.initialize ? Events.initBit : 0)
        if let v = events.startup { bits |= Events.startupBit | UInt32(v) << 8 }
        var old = eventWord(vcpu).pointee.load(ordering: .relaxed)
        while true {
            let keep = events.startup == nil ? old : old & ~0xff00
            let (done, now) = eventWord(vcpu).pointee.compareExchange(expected: old, desired: keep | bits, ordering: .releasing)
            if done { return }
            old = now
        }
    }

    /// vcpu: takes every event signalled since the last call (unknown bits in a hostile word are ignored).
    public func takeEvents(vcpu: Int) -> Events {
        Events(word: eventWord(vcpu).pointee.exchange(0, ordering: .acquiringAndReleasing))
    }

    /// vcpu: whether events wait, without taking them.
    public func hasEvents(vcpu: Int) -> Bool { !Events(word: eventWord(vcpu).pointee.load(ordering: .acquiring)).isEmpty }

    /// irqchip: takes back a posted vector the vCPU has not taken (INIT reset its LAPIC).
    public func withdraw(vcpu: Int) { _ = word(vcpu).pointee.exchange(0, ordering: .acquiringAndReleasing) }

    /// irqchip: posts `vector` into an empty box; false when the box is not empty.
    public func post(_ vector: UInt8, vcpu: Int) -> Bool {
        word(vcpu).pointee.compareExchange(expected: 0, desired: Self.full | UInt32(vector), ordering: .releasing).exchanged
    }

    /// irqchip: swaps a posted, not yet taken vector for a higher one; false when it was taken meanwhile.
    public func replace(_ old: UInt8, with new: UInt8, vcpu: Int) -> Bool {
        word(vcpu).pointee.compareExchange(expected: Self.full | UInt32(old), desired: Self.full | UInt32(new),
                                           ordering: .acquiringAndReleasing).exchanged
    }

    /// vcpu: whether something is waiting (a hostile word counts as nothing).
    public func hasPending(vcpu: Int) -> Bool { Self.vector(word(vcpu).pointee.load(ordering: .acquiring)) != nil }

    /// vcpu: takes the posted vector, nil when empty or not a valid vector (below 16).
    public func take(vcpu: Int) -> UInt8? {
        Self.vector(word(vcpu).pointee.exchange(0, ordering: .acquiringAndReleasing))
    }

    static func vector(_ w: UInt32) -> UInt8? {
        guard w & ~0x1ff == 0, w & full != 0, w & 0xff >= 16 else { return nil }
        return UInt8(w & 0xff)
    }
}
