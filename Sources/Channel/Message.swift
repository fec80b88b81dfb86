/// What a slot carries. The transport defines guest accesses, the sync barrier and the response; a device protocol
/// defines its own posted operations in the range `MessageKind.device(0)...` (the irqchip's acknowledgements, lines
/// and timer deadlines, for example) without the transport knowing what they mean. Requests flow vcpu -> device,
/// responses device -> vcpu.
public struct MessageKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init?(rawValue: UInt8) {
        guard Self.isTransport(rawValue) || Self.deviceRange.contains(rawValue) else { return nil }
        self.rawValue = rawValue
    }
    @usableFromInline init(code: UInt8) { rawValue = code }

    @inlinable public static var portRead: MessageKind { MessageKind(code: 1) }
    @inlinable public static var portWrite: MessageKind { MessageKind(code: 2) }
    @inlinable public static var mmioRead: MessageKind { MessageKind(code: 3) }
    @inlinable public static var mmioWrite: MessageKind { MessageKind(code: 4) }
    /// A barrier: the device answers once every earlier request on the lane has been handled.
    @inlinable public static var sync: MessageKind { MessageKind(code: 5) }
    @inlinable public static var response: MessageKind { MessageKind(code: 0x80) }

    /// The transport's codes (1-5 and the response), as a test rather than a set: every message read off a ring
    /// asks, and a Set hashed the byte (plus a lazy global's check) each time.
    private static func isTransport(_ code: UInt8) -> Bool { (1...5).contains(code) || code == 0x80 }
    @usableFromInline static var deviceRange: ClosedRange<UInt8> { 0x40...0x7f }

    /// The `n`th operation of a device protocol: always posted, with a size of 1, 2, 4 or 8 and data that fits it.
    /// The kinds are computed, inlinable, rather than stored: a stored one is a lazy global, checked at every use
    /// on the vCPU's exit path.
    @inlinable public static func device(_ n: UInt8) -> MessageKind {
        precondition(n <= deviceRange.upperBound - deviceRange.lowerBound, "device operations are 0...63")
        return MessageKind(code: deviceRange.lowerBound + n)
    }

    public var isRead: Bool { self == .portRead || self == .mmioRead }
    public var needsResponse: Bool { isRead || self == .sync }
    public var isDeviceDefined: Bool { Self.deviceRange.contains(rawValue) }

    public var description: String {
        switch self {
        case .portRead: return "portRead"
        case .portWrite: return "portWrite"
        case .mmioRead: return "mmioRead"
        case .mmioWrite: return "mmioWrite"
        case .sync: return "sync"
        case .response: return "response"
        default: return "device operation \(rawValue - Self.deviceRange.lowerBound)"
        }
    }
}

/// A guest access or its answer: one fixed-size slot (32 bytes) on a ring.
public struct Message: Equatable, Sendable {
    public var sequence: UInt64
    public var operation: MessageKind
    public var size: UInt8
    public var address: UInt64
    public var data: UInt64

    public init(sequence: UInt64, operation: MessageKind, size: UInt8, address: UInt64, data: UInt64) {
        self.sequence = sequence
        self.operation = operation
        self.size = size
        self.address = address
        self.data = data
    }

    public static let slotSize = 32

    /// Every bit of the access's width (all 64 for 8 bytes or more): a device answers a read with `value & widthMask`,
    /// a floating bus with `widthMask`.
    public var widthMask: UInt64 { size >= 8 ? .max : (UInt64(1) << (UInt64(size) * 8)) - 1 }
}

/// A slot whose contents a well-behaved peer would never write.
public enum MessageError: Error, Equatable, CustomStringConvertible {
    case unknownOperation(UInt8)
    case badSize(UInt8)
    case dataWiderThanSize
    case reservedBitsSet
    case unexpectedSequence(expected: UInt64, got: UInt64)
    case indexOutOfRange(head: UInt64, tail: UInt64)

    public var description: String {
        switch self {
        case .unknownOperation(let op): return "unknown operation \(op)"
        case .badSize(let s): return "access size \(s) is not 1, 2, 4 or 8"
        case .dataWiderThanSize: return "data wider than the access size"
        case .reservedBitsSet: return "reserved bytes are not zero"
        case .unexpectedSequence(let e, let g): return "sequence \(g) where \(e) was expected"
        case .indexOutOfRange(let h, let t): return "ring indices out of range (head \(h), tail \(t))"
        }
    }
}

extension Message {
    /// Slot layout: sequence u64 | operation u8 | size u8 | reserved u16+u32 | address u64 | data u64.
    func store(to slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: sequence, as: UInt64.self)
        slot.storeBytes(of: UInt64(operation.rawValue) | UInt64(size) << 8, toByteOffset: 8, as: UInt64.self)
        slot.storeBytes(of: address, toByteOffset: 16, as: UInt64.self)
        slot.storeBytes(of: data, toByteOffset: 24, as: UInt64.self)
    }

    /// Copies a slot out of shared memory once, then validates the copy: the peer may change it meanwhile.
    static func load(from slot: UnsafeRawPointer) throws(MessageError) -> Message {
        let sequence = slot.load(as: UInt64.self)
        let header = slot.load(fromByteOffset: 8, as: UInt64.self)
        let address = slot.load(fromByteOffset: 16, as: UInt64.self)
        let data = slot.load(fromByteOffset: 24, as: UInt64.self)
        guard header >> 16 == 0 else { throw .reservedBitsSet }
        let rawOp = UInt8(truncatingIfNeeded: header)
        guard let op = MessageKind(rawValue: rawOp) else { throw .unknownOperation(rawOp) }
        let size = UInt8(truncatingIfNeeded: header >> 8)
        if op == .sync || (op == .response && size == 0) {  // a sync and its answer carry no access
            guard size == 0, data == 0 else { throw .badSize(size) }
        } else {
            guard size == 1 || size == 2 || size == 4 || size == 8 else { throw .badSize(size) }
            if size < 8, data >> (UInt64(size) * 8) != 0 { throw .dataWiderThanSize }
        }
        return Message(sequence: sequence, operation: op, size: size, address: address, data: data)
    }
}
