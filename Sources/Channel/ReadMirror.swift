import Synchronization

/// Register reads a device publishes for its channel's vCPUs to answer themselves: the ports whose read has no
/// side effect at the moment (a UART's LSR without an error to report, its scratch register, ...) with the value a
/// read would give, and how far into each lane's requests the device had handled when it made the copy. While no
/// lane has sent anything since, a vCPU reads the value here instead of asking the device: the answer is the one
/// the round trip would give (everything any vCPU sent is in the copy, so a write another vCPU made before this
/// read, under the guest's lock, is too; what changes the device on its own, such as input arriving, it
/// republishes). A seqlock keeps a reader from taking half of one copy and half of the next.
///
/// Lives in the channel's header page, which a device process can scribble on: every word is read as hostile,
/// though a device could answer the guest anything through a round trip anyway.
public struct ReadMirror: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let lanes: Int

    /// Where in the header page it lives, and how many ports and lanes it has room for.
    static let headerOffset = 1024
    public static let capacity = 64
    static let maxLanes = (ChannelLayout.headerSize - headerOffset - positionsOffset) / 8
    // 0 sequence, 4 entry count, 64: entries (port u16, value u8, pad), 512: one handled position per lane.
    private static let entriesOffset = 64, positionsOffset = 512

    private var sequence: UnsafeMutablePointer<Atomic<UInt32>> { base.assumingMemoryBound(to: Atomic<UInt32>.self) }
    private var count: UnsafeMutablePointer<Atomic<UInt32>> { (base + 4).assumingMemoryBound(to: Atomic<UInt32>.self) }
    private func entry(_ i: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + Self.entriesOffset + 4 * i).assumingMemoryBound(to: Atomic<UInt32>.self)
    }
    private func position(_ lane: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (base + Self.positionsOffset + 8 * lane).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// nil when the channel has more lanes than the header has room for (then nothing is mirrored).
    init?(header: UnsafeMutableRawPointer, lanes: Int) {
        guard lanes <= Self.maxLanes else { return nil }
        base = header + Self.headerOffset
        self.lanes = lanes
    }

    // MARK: device side

    /// Publishes `reads` (at most `capacity`; the rest are left out), having handled each lane's requests up to
    /// `handled[lane]`.
    func publish(_ reads: [(port: UInt16, value: UInt8)], handled: [UInt64]) {
        let s = sequence.pointee.load(ordering: .relaxed)
        let writing = s | 1  // odd: being written (already odd after `invalidate`)
        sequence.pointee.store(writing, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)
        let n = min(reads.count, Self.capacity)
        for i in 0..<n { entry(i).pointee.store(UInt32(reads[i].port) | UInt32(reads[i].value) << 16 | 1 << 24, ordering: .relaxed) }
        count.pointee.store(UInt32(n), ordering: .relaxed)
        for lane in 0..<min(lanes, handled.count) { position(lane).pointee.store(handled[lane], ordering: .relaxed) }
        sequence.pointee.store(writing &+ 1, ordering: .releasing)  // even: whole
    }

    /// Takes the copy away until the next `publish` (a process started in place of a dead one, before it has
    /// handled anything). Never back to zero: a reader that began before must see the sequence change.
    func invalidate() {
        let s = sequence.pointee.load(ordering: .relaxed)
        sequence.pointee.store(s | 1, ordering: .releasing)
    }

    // MARK: vcpu side

    /// The value a `size`-byte read of `port` would give, if every byte of it is in a whole copy made once the
    /// device had handled every lane's requests up to `sent(lane)`; nil: ask the device.
    public func read(port: UInt16, size: Int, sent: (Int) -> UInt64) -> UInt64? {
        let before = sequence.pointee.load(ordering: .acquiring)
        guard before & 1 == 0, before != 0, (1...8).contains(size) else { return nil }
        for lane in 0..<lanes where position(lane).pointee.load(ordering: .relaxed) != sent(lane) { return nil }
        let n = min(Int(count.pointee.load(ordering: .relaxed)), Self.capacity)
        var value: UInt64 = 0
        for byte in 0..<size {
            let wanted = port &+ UInt16(byte)
            var found: UInt8?
            for i in 0..<n {
                let e = entry(i).pointee.load(ordering: .relaxed)
                if e >> 24 == 1, UInt16(truncatingIfNeeded: e) == wanted { found = UInt8(truncatingIfNeeded: e >> 16); break }
            }
            guard let found else { return nil }
            value |= UInt64(found) << (8 * UInt64(byte))
        }
        atomicMemoryFence(ordering: .acquiring)
        guard sequence.pointee.load(ordering: .relaxed) == before else { return nil }
        return value
    }
}
