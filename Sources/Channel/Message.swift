/// What a slot carries. Requests flow vcpu -> device, responses device -> vcpu.
public enum MessageKind: UInt8, Sendable {
    case portRead = 1
    case portWrite = 2
    case mmioRead = 3
    case mmioWrite = 4
    /// A barrier: the device answers once every earlier request on the lane has been handled.
    case sync = 5
    /// The vCPU injected this vector (data): the irqchip moves it from IRR to ISR.
    case interruptAck = 6
    /// A device drives an interrupt line: `address` is the IOAPIC pin, `data` the level (0 or 1).
    case lineLevel = 7
    /// The vCPU wrote IA32_TSC_DEADLINE: `data` is how many nanoseconds from now it expires (0: already due), or
    /// `Message.disarmed` for a write of 0.
    case timerDeadline = 8
    case response = 0x80

    public var isRead: Bool { self == .portRead || self == .mmioRead }
    public var needsResponse: Bool { isRead || self == .sync }
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
    /// `timerDeadline` data for "disarmed".
    public static let disarmed = UInt64.max
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
        } else if op == .interruptAck || op == .lineLevel {
            guard size == 1 else { throw .badSize(size) }
            guard data <= (op == .lineLevel ? 1 : 0xff) else { throw .dataWiderThanSize }
        } else {
            guard size == 1 || size == 2 || size == 4 || size == 8 else { throw .badSize(size) }
            if size < 8, data >> (UInt64(size) * 8) != 0 { throw .dataWiderThanSize }
        }
        return Message(sequence: sequence, operation: op, size: size, address: address, data: data)
    }
}
