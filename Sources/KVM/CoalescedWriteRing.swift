import CKVM
import Synchronization

/// KVM's ring of coalesced writes (struct kvm_coalesced_mmio_ring), one page of the vCPU mapping: KVM appends the
/// guest's writes to the zones registered with `VirtualMachine.coalesceWrites` at `last` and the guest runs on; the
/// VMM takes them from `first` and hands them to their devices as if each had exited, before anything else the
/// next exit brings. Which vCPU wrote an entry is not recorded: with more than one vCPU the VMM must not use it
/// (each vCPU posts its writes in order on its own lane of a device's channel).
///
/// Only KVM and this process write the page; its indices are bounded all the same, and an entry's length is taken
/// as at most 8 bytes.
public struct CoalescedWriteRing: @unchecked Sendable {
    /// One write the guest made.
    public struct Write: Equatable, Sendable {
        public var address: UInt64
        public var size: Int
        public var value: UInt64
        public var port: Bool
        public init(address: UInt64, size: Int, value: UInt64, port: Bool) {
            self.address = address
            self.size = size
            self.value = value
            self.port = port
        }
    }

    @usableFromInline let page: UnsafeMutableRawPointer
    static let capacity = VMM_KVM_COALESCED_MMIO_MAX
    /// struct kvm_coalesced_mmio: phys_addr (8), len (4), pio (4), data (8).
    static let entrySize = 24
    static let entriesOffset = 8

    /// `page`: the ring's page (KVM_CAP_COALESCED_MMIO's page offset in the vCPU mapping), or any page laid out
    /// as one (the tests').
    public init(page: UnsafeMutableRawPointer) { self.page = page }

    private var first: UnsafeMutablePointer<Atomic<UInt32>> { page.assumingMemoryBound(to: Atomic<UInt32>.self) }
    private var last: UnsafeMutablePointer<Atomic<UInt32>> { (page + 4).assumingMemoryBound(to: Atomic<UInt32>.self) }

    /// Whether KVM queued anything since the last `drain`: one load from the ring's first line, on every exit.
    @inlinable @inline(__always)
    public var isEmpty: Bool { position == nil }

    /// Where the ring stands, its two indices in one word; nil when it is empty. Another thread can tell from two
    /// readings whether KVM or the draining vCPU moved it in between.
    @inlinable @inline(__always)
    public var position: UInt64? {
        let indices = page.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.load(ordering: .acquiring)
        return UInt32(truncatingIfNeeded: indices) == UInt32(truncatingIfNeeded: indices >> 32) ? nil : indices
    }

    /// Hands every queued write to `body`, oldest first, and frees its entry.
    public func drain(_ body: (Write) -> Void) {
        var index = first.pointee.load(ordering: .relaxed)
        while true {
            let end = last.pointee.load(ordering: .acquiring)
            guard index != end, index < Self.capacity, end < Self.capacity else { break }
            let entry = page + Self.entriesOffset + Int(index) * Self.entrySize
            let size = Int(min(entry.loadUnaligned(fromByteOffset: 8, as: UInt32.self), 8))
            var value: UInt64 = 0
            withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(start: entry + 16, count: size)) }
            body(Write(address: entry.loadUnaligned(as: UInt64.self), size: size, value: UInt64(littleEndian: value),
                       port: entry.loadUnaligned(fromByteOffset: 12, as: UInt32.self) != 0))
            index = (index + 1) % Self.capacity
            first.pointee.store(index, ordering: .releasing)
        }
    }
}
