import Synchronization

/// Per-vCPU interrupt mailboxes in the irqchip channel's state area: the irqchip posts the vector a vCPU should
/// take next, the vcpu process takes it when the guest can accept it and acknowledges it over the channel.
/// One 32-bit word per vCPU on its own cache line: 0 when empty, else 0x100 | vector.
public struct InterruptMailbox: @unchecked Sendable {
    private let base: UnsafeMutableRawPointer
    public let vcpus: Int
    static let full: UInt32 = 0x100

    public init(region: ChannelRegion, vcpus: Int) {
        precondition(vcpus * 64 <= region.layout.stateSize, "the state area holds one cache line per vCPU")
        base = region.state.baseAddress!
        self.vcpus = vcpus
    }

    private func word(_ vcpu: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + 64 * vcpu).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

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
