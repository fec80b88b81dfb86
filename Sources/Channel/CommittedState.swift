import Synchronization

/// Why a commit was refused.
public enum CommittedStateError: Error, Equatable, CustomStringConvertible {
    case tooLarge(size: Int, capacity: Int)

    public var description: String {
        switch self {
        case .tooLarge(let size, let capacity):
            return "device state of \(size) bytes does not fit its \(capacity)-byte committed-state slot"
        }
    }
}

/// A device's last committed state, kept crash-consistent in a shared buffer (a channel's state area) so that a
/// device process the supervisor restarts resumes exactly where its predecessor's last complete commit left off.
///
/// Double-buffered: a generation counter, then two slots. A commit writes the slot the generation does *not*
/// point at and only then publishes generation + 1 (release), so a process killed at any instruction of a commit
/// leaves the previous commit intact and still pointed at. Each slot carries its length and a checksum over
/// generation, length and payload: a successor reading a torn or scribbled slot gets nil, never a trap. The
/// checksum catches accidents, not forgery (a compromised predecessor can write a valid one), which is why the
/// device's restore still validates every field.
///
/// Layout: `Atomic<UInt64>` generation at offset 0, then two equal slots of [u32 length, u32 checksum, payload].
/// Generation 0 means never committed; generation g points at slot g & 1.
public struct CommittedState: @unchecked Sendable {
    private let base: UnsafeMutableRawPointer
    private let slotSize: Int

    static let headerSize = 8
    static let slotHeaderSize = 8

    /// `buffer` is shared memory both the committing process and its successor map (`ChannelRegion.state`). It
    /// must be 8-byte aligned and hold the header and two slot headers; its content may be anything.
    public init(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { preconditionFailure("committed state needs a buffer") }
        precondition(Int(bitPattern: base) % 8 == 0, "committed state must be 8-byte aligned")
        precondition(buffer.count >= Self.headerSize + 2 * Self.slotHeaderSize, "committed state buffer too small")
        self.base = base
        // Slots keep 8-byte alignment, so both slot headers are naturally aligned.
        slotSize = ((buffer.count - Self.headerSize) / 2) & ~7
    }

    /// The largest payload a commit accepts.
    public var capacity: Int { min(slotSize - Self.slotHeaderSize, Int(UInt32.max)) }  // the length field is a u32

    private var generation: UnsafeMutablePointer<Atomic<UInt64>> {
        base.assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    func slotOffset(_ slot: Int) -> Int { Self.headerSize + slot * slotSize }

    /// Makes `payload` the committed state. The slot written is the one no reader is directed to, and the
    /// generation that directs readers to it is stored last: killed before that store, the previous commit stands.
    public func commit(_ payload: [UInt8]) throws(CommittedStateError) {
        guard payload.count <= capacity else { throw .tooLarge(size: payload.count, capacity: capacity) }
        // The generation in shared memory may have been written by a compromised predecessor: any value works
        // (wrapping arithmetic), but never publish 0, which would read as "never committed". Skipping from
        // UInt64.max to 2 keeps the slot the parity chooses.
        let current = generation.pointee.load(ordering: .relaxed)
        var next = current &+ 1
        if next == 0 { next = 2 }
        let slot = base + slotOffset(Int(next & 1))
        let length = UInt32(payload.count)
        slot.storeBytes(of: length, as: UInt32.self)
        slot.storeBytes(of: Self.checksum(generation: next, payload), toByteOffset: 4, as: UInt32.self)
        payload.withUnsafeBytes { bytes in
            if let source = bytes.baseAddress {
                (slot + Self.slotHeaderSize).copyMemory(from: source, byteCount: bytes.count)
            }
        }
        // Release: a reader that sees the new generation (acquire) sees the slot written above.
        generation.pointee.store(next, ordering: .releasing)
    }

    /// The last committed payload; nil when nothing was ever committed or the slot the generation points at
    /// does not hold a complete commit (bad length or checksum). Meant for a successor whose predecessor is gone;
    /// a commit racing the read makes the generation change under it, which is seen and retried.
    public func load() -> [UInt8]? {
        for _ in 0..<4 {
            let current = generation.pointee.load(ordering: .acquiring)
            if current == 0 { return nil }
            let payload = read(generation: current)
            // Keeps the slot reads above from moving past the re-check below.
            atomicMemoryFence(ordering: .acquiring)
            if generation.pointee.load(ordering: .relaxed) == current { return payload }
        }
        return nil  // commits keep racing the read: nothing consistent to return
    }

    private func read(generation current: UInt64) -> [UInt8]? {
        let slot = base + slotOffset(Int(current & 1))
        let length = Int(slot.load(as: UInt32.self))
        guard length <= capacity else { return nil }
        let stored = slot.load(fromByteOffset: 4, as: UInt32.self)
        let payload = [UInt8](UnsafeRawBufferPointer(start: slot + Self.slotHeaderSize, count: length))
        guard Self.checksum(generation: current, payload) == stored else { return nil }
        return payload
    }

    /// FNV-1a (32-bit) over the generation, the length and the payload: binding the slot to its generation means
    /// a slot left over from an older commit cannot pass for the current one.
    static func checksum(generation: UInt64, _ payload: [UInt8]) -> UInt32 {
        var hash: UInt32 = 0x811c_9dc5
        func mix(_ byte: UInt8) { hash = (hash ^ UInt32(byte)) &* 0x0100_0193 }
        for i in 0..<8 { mix(UInt8(truncatingIfNeeded: generation >> (8 * i))) }
        let length = UInt32(payload.count)
        for i in 0..<4 { mix(UInt8(truncatingIfNeeded: length >> (8 * i))) }
        for byte in payload { mix(byte) }
        return hash
    }
}
