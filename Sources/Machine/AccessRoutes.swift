/// When a guest's write to a device may complete, relative to the device applying it.
public enum WriteOrdering: String, Codable, Sendable {
    /// The vCPU re-enters the guest at once; order with later accesses to the same device is kept by the ring.
    case posted
    /// The vCPU waits until the device has applied the write (an IOAPIC unmask that a device's next raise must
    /// not overtake; an IPI that must be pending when its ICR write completes).
    case synchronous
    /// Every other device's posted writes must have taken effect first, then the write is posted. For the
    /// LAPIC's EOI: a handler that cleared its device's level-triggered interrupt must not see it fire again
    /// because the EOI overtook the device on another channel.
    case afterPostedWritesElsewhere
}

/// Which device channel serves each guest port and MMIO address, and how writes there are ordered: what the
/// supervisor hands the vcpu process, built from the machine layout.
public struct AccessRoutes: Codable, Sendable, Equatable {
    public struct PortRange: Codable, Sendable, Equatable {
        public var first: UInt16
        public var last: UInt16
        public var channel: Int
        public init(first: UInt16, last: UInt16, channel: Int) {
            self.first = first
            self.last = last
            self.channel = channel
        }
    }

    public struct MMIORange: Codable, Sendable, Equatable {
        public var base: UInt64
        public var size: UInt64
        public var channel: Int
        /// How writes in the range are ordered, but for the offsets listed in `exceptions`.
        public var writes: WriteOrdering
        public var exceptions: [UInt64: WriteOrdering]
        public init(base: UInt64, size: UInt64, channel: Int, writes: WriteOrdering, exceptions: [UInt64: WriteOrdering] = [:]) {
            self.base = base
            self.size = size
            self.channel = channel
            self.writes = writes
            self.exceptions = exceptions
        }
    }

    public var ports: [PortRange]
    public var mmio: [MMIORange]
    /// Where KVM queues writes for the vCPU to post at its next exit (empty: every write exits).
    public var coalesced: [CoalescedZone]
    public init(ports: [PortRange], mmio: [MMIORange], coalesced: [CoalescedZone] = []) {
        self.ports = ports
        self.mmio = mmio
        self.coalesced = coalesced
    }
}

/// Ports or MMIO bytes whose writes KVM may queue in its coalesced ring (KVM_REGISTER_COALESCED_MMIO) instead of
/// exiting: the guest runs on, and the vCPU posts them to their device at its next exit, before that exit's own
/// access. Only for writes that are posted anyway and whose effect may wait for that exit: any read of the device
/// is an exit, so it still sees every earlier write; what waits is a side effect nobody reads for, such as an
/// interrupt the write would raise (until the next exit: a HLT, a timer's kick, any access that exits).
public struct CoalescedZone: Codable, Sendable, Equatable {
    public var address: UInt64
    public var size: UInt32
    public var port: Bool
    public init(address: UInt64, size: UInt32, port: Bool) {
        self.address = address
        self.size = size
        self.port = port
    }
}

/// The exceptions travel as the standard library writes a dictionary whose keys are not strings, offset and ordering
/// in turn (`[768, "synchronous", 176, "posted"]`), here in the offsets' order, but by this code: the library's
/// generic Codable for dictionaries, unspecialised, scanned every protocol conformance of vmm at its first use in a
/// process (the vcpu process's spec, on its way to the guest's first instruction).
extension AccessRoutes.MMIORange {
    private enum CodingKeys: String, CodingKey { case base, size, channel, writes, exceptions }

    public init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: CodingKeys.self)
        var pairs = try fields.nestedUnkeyedContainer(forKey: .exceptions)
        var exceptions: [UInt64: WriteOrdering] = [:]
        while !pairs.isAtEnd {
            let offset = try pairs.decode(UInt64.self)
            guard !pairs.isAtEnd else {
                throw DecodingError.dataCorruptedError(in: pairs, debugDescription: "offset \(offset) has no ordering")
            }
            exceptions[offset] = try pairs.decode(WriteOrdering.self)
        }
        self.init(base: try fields.decode(UInt64.self, forKey: .base), size: try fields.decode(UInt64.self, forKey: .size),
                  channel: try fields.decode(Int.self, forKey: .channel), writes: try fields.decode(WriteOrdering.self, forKey: .writes),
                  exceptions: exceptions)
    }

    public func encode(to encoder: any Encoder) throws {
        var fields = encoder.container(keyedBy: CodingKeys.self)
        try fields.encode(base, forKey: .base)
        try fields.encode(size, forKey: .size)
        try fields.encode(channel, forKey: .channel)
        try fields.encode(writes, forKey: .writes)
        var pairs = fields.nestedUnkeyedContainer(forKey: .exceptions)
        for (offset, writes) in exceptions.sorted(by: { $0.key < $1.key }) {
            try pairs.encode(offset)
            try pairs.encode(writes)
        }
    }
}

/// The vcpu process's lookup for every port and MMIO exit: one table load per port, a short scan per MMIO
/// address. Routes that make no sense (an empty or wrapping range, a channel number the table cannot hold) are
/// dropped: the address then floats, as on a bus with nothing behind it.
public struct AccessRouter: Sendable {
    /// The most channels a vCPU can route to.
    public static let maxChannels = 64
    /// A port nobody serves (inlined code compares with the literal: a static would be an accessor call).
    private static let none: UInt8 = 0xff
    @usableFromInline var portTable = [UInt8](repeating: AccessRouter.none, count: 65536)
    private let mmio: [MMIORoute]

    /// An MMIO range as the lookup keeps it: its exceptions in an array, scanned (there are a handful at most),
    /// where a dictionary hashed the offset (SipHash) on every MMIO write, ~200 ns after a 64-bit guest's exit here.
    private struct MMIORoute: Sendable {
        let base: UInt64, size: UInt64, channel: Int, writes: WriteOrdering
        let exceptions: [(offset: UInt64, writes: WriteOrdering)]

        func contains(_ address: UInt64) -> Bool { address >= base && address - base < size }
        func writes(at offset: UInt64) -> WriteOrdering {
            for e in exceptions where e.offset == offset { return e.writes }
            return writes
        }
    }

    /// `channels`: how many channels there are (at most `maxChannels`); routes to others are dropped.
    public init(_ routes: AccessRoutes, channels: Int = AccessRouter.maxChannels) {
        let known = 0..<min(channels, Self.maxChannels)
        for r in routes.ports where r.first <= r.last && known.contains(r.channel) {
            for port in Int(r.first)...Int(r.last) { portTable[port] = UInt8(r.channel) }
        }
        mmio = routes.mmio.filter { $0.size > 0 && $0.base <= UInt64.max - $0.size && known.contains($0.channel) }.map {
            MMIORoute(base: $0.base, size: $0.size, channel: $0.channel, writes: $0.writes,
                      exceptions: $0.exceptions.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        }
    }

    /// The channel serving `port`, nil when nothing answers it. Inlinable: it is on every port exit's path.
    @inlinable @inline(__always)
    public func channel(forPort port: UInt16) -> Int? {
        let c = portTable[Int(port)]
        return c == 0xff ? nil : Int(c)
    }

    /// The channel serving `address` and how a write there is ordered, nil when nothing answers it.
    public func mmio(_ address: UInt64) -> (channel: Int, writes: WriteOrdering)? {
        for r in mmio where r.contains(address) { return (r.channel, r.writes(at: address - r.base)) }
        return nil
    }

    /// The channel serving `address` (a read's question: no ordering to look up), nil when nothing answers it.
    public func mmioChannel(_ address: UInt64) -> Int? {
        for r in mmio where r.contains(address) { return r.channel }
        return nil
    }
}

/// One vCPU's record of which channels have posted writes that may not have taken effect yet. A read or a sync
/// on a channel is answered in order, so its answer settles every earlier write to that channel.
public struct PostedWrites: Sendable, Equatable {
    @usableFromInline var unsettled: UInt64 = 0

    public init() {}

    /// Inlinable: the vCPU notes every posted write and every read answered from a device's copy (a call from another
    /// module costs its own code lines on every exit, see InterruptInjector.beforeEntry).
    @inlinable @inline(__always)
    public mutating func posted(to channel: Int) { unsettled |= 1 << UInt64(channel) }

    @inlinable @inline(__always)
    public mutating func answered(by channel: Int) { unsettled &= ~(1 << UInt64(channel)) }

    /// The other channels to sync before a write to `channel` with `afterPostedWritesElsewhere` ordering, in
    /// channel order.
    public func toSettle(before channel: Int) -> [Int] {
        let others = unsettled & ~(1 << UInt64(channel))
        return (0..<AccessRouter.maxChannels).filter { others & (1 << UInt64($0)) != 0 }
    }

    /// Every channel with writes not yet known to be applied.
    public var all: [Int] { (0..<AccessRouter.maxChannels).filter { unsettled & (1 << UInt64($0)) != 0 } }
}
