import Synchronization

/// Guest RAM as the virtio code sees it: one range of guest-physical addresses `[0, size)`.
///
/// The device process uses `MappedGuestRAM` over its mapping of the RAM memfd (e.g. `GuestMemory.hostBase` and its
/// size from the `Memory` module); tests implement it over an allocation of their own. The protocol is deliberately one method: every other
/// access in this module goes through `bytes(at:count:)`, so there is a single place where a guest address becomes a
/// host pointer and a single bounds check to get right.
///
/// Guest RAM is shared with a running, possibly hostile guest: it can change between any two loads. Code in this
/// module therefore loads every field it needs once into a local, validates the copy and uses only the copy.
public protocol GuestRAM: AnyObject {
    /// The number of bytes of guest RAM, starting at guest-physical address 0.
    var size: UInt64 { get }

    /// The host bytes behind `[gpa, gpa + count)`, or nil when any of them is outside RAM, when `count` is negative
    /// or when `gpa + count` overflows. Implementations should use `GuestRange.isInside` for the check.
    func bytes(at gpa: UInt64, count: Int) -> UnsafeMutableRawBufferPointer?
}

/// Guest RAM mapped into this process at `base`: the implementation a device process uses.
///
/// Unsafe by construction (it trusts `base` and `size`): the process must keep the mapping alive, at least `size`
/// bytes long, for as long as this object is used. Everything handed out is bounds-checked against `size`.
public final class MappedGuestRAM: GuestRAM {
    private let base: UnsafeMutableRawPointer
    public let size: UInt64

    public init(base: UnsafeMutableRawPointer, size: Int) {
        self.base = base
        self.size = UInt64(max(0, size))
    }

    public func bytes(at gpa: UInt64, count: Int) -> UnsafeMutableRawBufferPointer? {
        guard GuestRange.isInside(gpa: gpa, count: count, ramSize: size) else { return nil }
        return UnsafeMutableRawBufferPointer(start: base + Int(gpa), count: count)
    }
}

/// Overflow-checked arithmetic on guest-physical ranges, shared by every `GuestRAM` implementation and by the
/// validation of rings and buffers (so that `gpa + length` can never wrap around 2^64 and pass a check).
public enum GuestRange {
    /// Whether `[gpa, gpa + count)` lies entirely inside `[0, ramSize)`. A zero-length range is inside when
    /// `gpa <= ramSize`.
    @inlinable
    public static func isInside(gpa: UInt64, count: UInt64, ramSize: UInt64) -> Bool {
        // Written as two comparisons instead of `gpa + count <= ramSize` so nothing can overflow.
        gpa <= ramSize && count <= ramSize - gpa
    }

    /// The same check for a signed byte count (negative counts are never inside).
    @inlinable
    public static func isInside(gpa: UInt64, count: Int, ramSize: UInt64) -> Bool {
        count >= 0 && isInside(gpa: gpa, count: UInt64(count), ramSize: ramSize)
    }
}

/// Little-endian loads and stores and copies through `GuestRAM`. Each returns nil / false instead of trapping when
/// the access is not entirely inside RAM: the caller turns that into a protocol error for the guest.
extension GuestRAM {
    /// Loads a little-endian integer at `gpa` (any alignment), or nil when it is not inside RAM.
    @inlinable
    public func load<T: FixedWidthInteger>(_ type: T.Type, at gpa: UInt64) -> T? {
        guard let b = bytes(at: gpa, count: MemoryLayout<T>.size), let base = b.baseAddress else { return nil }
        return T(littleEndian: UnsafeRawPointer(base).loadUnaligned(as: T.self))
    }

    /// Stores a little-endian integer at `gpa` (any alignment). Returns false when it is not inside RAM.
    @inlinable
    @discardableResult
    public func store<T: FixedWidthInteger>(_ value: T, at gpa: UInt64) -> Bool {
        guard let b = bytes(at: gpa, count: MemoryLayout<T>.size), let base = b.baseAddress else { return false }
        base.storeBytes(of: value.littleEndian, as: T.self)
        return true
    }

    /// Copies `count` guest bytes at `gpa` into a new array (for small structures: headers, segment lists).
    public func copyOut(from gpa: UInt64, count: Int) -> [UInt8]? {
        guard let b = bytes(at: gpa, count: count) else { return nil }
        return Array(UnsafeRawBufferPointer(b))
    }

    /// Copies `source` into guest RAM at `gpa`. Returns false (and writes nothing) when the range is not inside RAM.
    @discardableResult
    public func copyIn(_ source: UnsafeRawBufferPointer, to gpa: UInt64) -> Bool {
        guard let b = bytes(at: gpa, count: source.count) else { return false }
        if let dst = b.baseAddress, let src = source.baseAddress { dst.copyMemory(from: src, byteCount: source.count) }
        return true
    }

    /// Copies an array of bytes into guest RAM at `gpa`. Returns false (and writes nothing) when it does not fit.
    @discardableResult
    public func copyIn(_ source: [UInt8], to gpa: UInt64) -> Bool {
        source.withUnsafeBytes { copyIn($0, to: gpa) }
    }
}

/// The memory barriers the split-ring protocol needs. Guest RAM is plain memory shared with other CPUs (the vCPU
/// threads), so ordering comes from fences around ordinary loads and stores, as in Linux's `virtio_*mb()`.
enum RingBarrier {
    /// After reading an index the other side published, before reading what it covers (`virtio_rmb`).
    @inline(__always) static func acquire() { atomicMemoryFence(ordering: .acquiring) }
    /// After writing entries, before publishing the index that covers them (`virtio_wmb`).
    @inline(__always) static func release() { atomicMemoryFence(ordering: .releasing) }
    /// Between a store we publish and a load of the other side's reaction to it (`virtio_mb`): only a full fence
    /// orders a store before a later load.
    @inline(__always) static func full() { atomicMemoryFence(ordering: .sequentiallyConsistent) }
}

/// Moving bytes through a chain's buffers, in order (for structures and payloads split across descriptors). The
/// buffers come from a validated chain, so they lie inside RAM.
extension GuestRAM {
    /// Copies the first `count` bytes of `segments` out of guest RAM; nil when they hold fewer.
    public func gather(_ count: Int, from segments: some Sequence<DescriptorBuffer>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        for s in segments where out.count < count {
            guard let bytes = copyOut(from: s.gpa, count: min(Int(s.length), count - out.count)) else { return nil }
            out += bytes
        }
        return out.count == count ? out : nil
    }

    /// Copies `bytes` into `segments` in order, as far as they reach; returns how many bytes were written.
    public func scatter(_ bytes: [UInt8], into segments: some Sequence<DescriptorBuffer>) -> Int {
        var done = 0
        for s in segments where done < bytes.count {
            let n = min(Int(s.length), bytes.count - done)
            guard copyIn(Array(bytes[done..<done + n]), to: s.gpa) else { break }
            done += n
        }
        return done
    }
}
