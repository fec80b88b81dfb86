import Synchronization

/// Where a one-way byte stream lives in a shared mapping: the writer's published position (own cache line), the
/// reader's published position (own cache line), then `capacity` bytes.
///
/// The console's bytes travel this way between the pio process (which parses the guest's UART accesses) and the
/// supervisor (which owns the console's file descriptors), so that a pio process killed at any instruction can be
/// replaced without a byte lost or written twice: each side keeps its own position privately, publishes it only
/// when what it stands for is final, and a restarted side resumes from the position its predecessor committed.
public struct ByteRingLayout: Sendable, Equatable {
    public let capacity: Int
    public static let headerSize = 128

    public init(capacity: Int) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0, "byte ring capacity must be a power of two")
        self.capacity = capacity
    }

    public var byteSize: Int { Self.headerSize + capacity }
}

/// A byte ring's indices were impossible: the peer is broken or hostile.
public struct ByteRingCorrupt: Error, CustomStringConvertible {
    public let read: UInt64, written: UInt64
    public var description: String { "byte ring indices out of range (read \(read), written \(written))" }
}

/// A view of one byte ring inside a mapping.
struct ByteRingView: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let layout: ByteRingLayout

    var written: UnsafeMutablePointer<Atomic<UInt64>> { base.assumingMemoryBound(to: Atomic<UInt64>.self) }
    var read: UnsafeMutablePointer<Atomic<UInt64>> { (base + 64).assumingMemoryBound(to: Atomic<UInt64>.self) }
    var data: UnsafeMutablePointer<UInt8> { (base + ByteRingLayout.headerSize).assumingMemoryBound(to: UInt8.self) }
    var mask: UInt64 { UInt64(layout.capacity - 1) }
}

/// The producing end. Bytes appended are invisible to the reader until `publish()`; appending more than the reader
/// has made room for is refused, never overwrites.
public struct ByteRingWriter: @unchecked Sendable {
    let ring: ByteRingView
    /// How far this writer has written, published or not.
    public private(set) var position: UInt64

    public init(base: UnsafeMutableRawPointer, layout: ByteRingLayout) {
        ring = ByteRingView(base: base, layout: layout)
        position = ring.written.pointee.load(ordering: .acquiring)
    }

    /// Free room for appending; throws when the reader published an impossible position.
    public func space() throws(ByteRingCorrupt) -> Int {
        let read = ring.read.pointee.load(ordering: .acquiring)
        guard read <= position, position - read <= UInt64(ring.layout.capacity) else {
            throw ByteRingCorrupt(read: read, written: position)
        }
        return ring.layout.capacity - Int(position - read)
    }

    /// Appends as many of `bytes` as fit; returns how many.
    public mutating func append(_ bytes: some Collection<UInt8>) throws(ByteRingCorrupt) -> Int {
        let n = min(bytes.count, try space())
        for byte in bytes.prefix(n) {
            ring.data[Int(position & ring.mask)] = byte
            position &+= 1
        }
        return n
    }

    /// Makes everything appended so far visible to the reader.
    public func publish() {
        ring.written.pointee.store(position, ordering: .releasing)
    }

    /// A restarted writer continues from the position its predecessor committed (and publishes it: a predecessor
    /// killed between its commit and its publish leaves the published position behind). Bytes the predecessor
    /// appended after that commit are written again, over themselves.
    public mutating func resume(at committed: UInt64) {
        position = committed
        publish()
    }
}

/// The consuming end.
public struct ByteRingReader: @unchecked Sendable {
    let ring: ByteRingView
    /// How far this reader has consumed, published or not.
    public private(set) var position: UInt64

    public init(base: UnsafeMutableRawPointer, layout: ByteRingLayout) {
        ring = ByteRingView(base: base, layout: layout)
        position = ring.read.pointee.load(ordering: .acquiring)
    }

    /// Bytes published and not consumed yet; throws when the writer published an impossible position.
    public func available() throws(ByteRingCorrupt) -> Int {
        let written = ring.written.pointee.load(ordering: .acquiring)
        guard written >= position, written - position <= UInt64(ring.layout.capacity) else {
            throw ByteRingCorrupt(read: position, written: written)
        }
        return Int(written - position)
    }

    /// Takes up to `max` bytes.
    public mutating func take(max: Int) throws(ByteRingCorrupt) -> [UInt8] {
        let n = min(max, try available())
        var bytes = [UInt8](repeating: 0, count: n)
        for i in 0..<n {
            bytes[i] = ring.data[Int(position & ring.mask)]
            position &+= 1
        }
        return bytes
    }

    /// Gives the room of everything taken so far back to the writer.
    public func publish() {
        ring.read.pointee.store(position, ordering: .releasing)
    }

    /// A restarted reader continues from the position its predecessor committed.
    public mutating func resume(at committed: UInt64) {
        position = committed
        publish()
    }
}
