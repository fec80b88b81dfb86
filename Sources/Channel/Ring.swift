import Synchronization

/// Where one single-producer/single-consumer ring lives inside a shared mapping.
///
/// Layout: the producer's tail (own cache line), the consumer's head (own cache line), the consumer's
/// "sleeping" flag (own cache line), then `capacity` slots. Each side keeps its own index privately and only
/// publishes it, so a peer that scribbles over the shared copy cannot move our position.
public struct RingLayout: Sendable {
    public let capacity: Int
    public static let headerSize = 192

    public init(capacity: Int) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0, "ring capacity must be a power of two")
        self.capacity = capacity
    }

    public var byteSize: Int { Self.headerSize + capacity * Message.slotSize }
}

/// A view of one ring in shared memory.
struct RingView: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let layout: RingLayout

    var tail: UnsafeMutablePointer<Atomic<UInt64>> { base.assumingMemoryBound(to: Atomic<UInt64>.self) }
    var head: UnsafeMutablePointer<Atomic<UInt64>> { (base + 64).assumingMemoryBound(to: Atomic<UInt64>.self) }
    var sleeping: UnsafeMutablePointer<Atomic<UInt32>> { (base + 128).assumingMemoryBound(to: Atomic<UInt32>.self) }

    func slot(_ index: UInt64) -> UnsafeMutableRawPointer {
        base + RingLayout.headerSize + Int(index & UInt64(layout.capacity - 1)) * Message.slotSize
    }

    /// Zeroes indices and flags; only the channel's creator does this.
    func reset() {
        tail.pointee.store(0, ordering: .relaxed)
        head.pointee.store(0, ordering: .relaxed)
        sleeping.pointee.store(0, ordering: .relaxed)
    }
}

/// The writing end of a ring.
public struct RingProducer: @unchecked Sendable {
    let ring: RingView
    private var tail: UInt64
    /// The consumer's head as last read: read again only when the ring looks full by it. The consumer publishes its
    /// head after every message, so reading it on every push would fetch that cache line from the consumer's CPU
    /// each time (a spinning consumer is on another CPU), on the way back into the guest.
    private var knownHead: UInt64

    init(_ ring: RingView) {
        self.ring = ring
        // Attaching to a live ring (a restarted peer) continues from the published position.
        tail = ring.tail.pointee.load(ordering: .relaxed)
        knownHead = ring.head.pointee.load(ordering: .acquiring)
    }

    /// How many messages were ever pushed: the ring index the consumer's `position` reaches once it took them all.
    public var position: UInt64 { tail }

    /// Appends a message; false when the ring is full. Throws when the consumer published an impossible head (seen
    /// when the head is read again, i.e. at the latest once the ring looks full).
    ///
    /// `fenced` (the default) makes the tail's store a full barrier, so that `consumerSleeping()` right after is
    /// ordered after it. Unfenced, the store is a release and the caller must ask `consumerSleepingAfterFence()`
    /// before it relies on the consumer having seen the message: the barrier waits for the slot's and the tail's
    /// cache lines to come over from the consumer's CPU, and later, after other work, there is little left to wait for.
    public mutating func push(_ message: Message, fenced: Bool = true) throws(MessageError) -> Bool {
        if tail &- knownHead >= UInt64(ring.layout.capacity) {
            // Full by the last head read (or a head that was never valid): read it again and check it. The head only
            // moves forward, so a stale one can only make the ring look fuller than it is.
            let head = ring.head.pointee.load(ordering: .acquiring)
            guard head <= tail, tail - head <= UInt64(ring.layout.capacity) else {
                throw .indexOutOfRange(head: head, tail: tail)
            }
            knownHead = head
            if tail - head == UInt64(ring.layout.capacity) { return false }
        }
        message.store(to: ring.slot(tail))
        tail &+= 1
        // Sequentially consistent so that the load of `sleeping` below cannot pass this store (Dekker pairing
        // with the consumer's store to `sleeping` and its re-check of the tail).
        if fenced {
            ring.tail.pointee.store(tail, ordering: .sequentiallyConsistent)
        } else {
            ring.tail.pointee.store(tail, ordering: .releasing)
        }
        return true
    }

    /// True when the consumer has announced it is about to block, so a doorbell is needed (after a fenced push).
    public func consumerSleeping() -> Bool {
        ring.sleeping.pointee.load(ordering: .sequentiallyConsistent) != 0
    }

    /// The same after unfenced pushes: the barrier orders them before the load (the Dekker pairing again).
    public func consumerSleepingAfterFence() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return consumerSleeping()
    }
}

/// The reading end of a ring.
public struct RingConsumer: @unchecked Sendable {
    let ring: RingView
    private var head: UInt64

    init(_ ring: RingView) {
        self.ring = ring
        head = ring.head.pointee.load(ordering: .relaxed)
    }

    /// True when at least one message is waiting (or the producer's tail is corrupt, which pop reports).
    public func hasMessages() -> Bool {
        ring.tail.pointee.load(ordering: .acquiring) != head
    }

    /// Takes the next message and frees its slot at once, nil when empty. A corrupt tail or slot throws; a bad
    /// slot is consumed.
    public mutating func pop() throws(MessageError) -> Message? {
        let message = try take()
        publishTaken()
        return message
    }

    /// Takes the next message but keeps its slot until `publishTaken()`: the published head then means "handled",
    /// not just "copied out", so whoever watches the ring (the supervisor draining a stopping VM, a restarted
    /// device resuming) knows which messages have taken effect.
    public mutating func take() throws(MessageError) -> Message? {
        let tail = ring.tail.pointee.load(ordering: .acquiring)
        if tail == head { return nil }
        guard tail > head, tail - head <= UInt64(ring.layout.capacity) else {
            throw .indexOutOfRange(head: head, tail: tail)
        }
        let slot = ring.slot(head)
        head &+= 1
        return try Message.load(from: slot)
    }

    /// The position of the next message to take (taken ones before it may not be published yet).
    public var position: UInt64 { head }

    /// A restarted consumer continues from the position its predecessor committed, which may be ahead of the
    /// published one (killed between its commit and its publish): published here. A position outside what the
    /// producer has written is refused (false) and the published one kept.
    public mutating func resume(at committed: UInt64) -> Bool {
        let published = ring.head.pointee.load(ordering: .acquiring)
        let tail = ring.tail.pointee.load(ordering: .acquiring)
        guard committed >= published, committed <= tail else { return false }
        head = committed
        publishTaken()
        return true
    }

    /// Publishes every message taken so far as handled, freeing their slots for the producer.
    public func publishTaken() {
        ring.head.pointee.store(head, ordering: .releasing)
    }

    /// Publishes the messages taken before `position` (at most all taken) as handled.
    public func publishTaken(upTo position: UInt64) {
        ring.head.pointee.store(min(position, head), ordering: .releasing)
    }

    /// Announces (true) or withdraws (false) that this consumer is about to block on its doorbell.
    public func setSleeping(_ on: Bool) {
        ring.sleeping.pointee.store(on ? 1 : 0, ordering: .sequentiallyConsistent)
    }
}
