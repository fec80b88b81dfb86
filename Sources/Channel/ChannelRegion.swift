import System

/// The shape of one device channel's shared memory: a header page, one request ring and one response ring
/// per lane (a lane per vCPU, so every ring keeps a single producer), then a state area the device keeps
/// across its own restarts. Both sides compute the layout from their own arguments, never from the header.
public struct ChannelLayout: Equatable, Sendable {
    public let lanes: Int
    public let ring: RingLayout
    public let stateSize: Int

    public static let headerSize = 4096
    static let magic: UInt64 = 0x3153_4E41_4843_4D56  // "VMCHANS1"

    public init(lanes: Int, capacity: Int = 256, stateSize: Int = 4096) {
        precondition(lanes >= 1 && stateSize >= 0)
        self.lanes = lanes
        self.ring = RingLayout(capacity: capacity)
        self.stateSize = stateSize
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.lanes == b.lanes && a.ring.capacity == b.ring.capacity && a.stateSize == b.stateSize
    }

    var ringStride: Int { (ring.byteSize + 63) & ~63 }
    func requestOffset(lane: Int) -> Int { Self.headerSize + lane * 2 * ringStride }
    func responseOffset(lane: Int) -> Int { requestOffset(lane: lane) + ringStride }
    public var stateOffset: Int { (requestOffset(lane: lanes) + 4095) & ~4095 }
    public var byteSize: Int { (stateOffset + stateSize + 4095) & ~4095 }
}

/// Channel setup failures.
public enum ChannelError: Error, CustomStringConvertible {
    case system(SystemError)
    case headerMismatch
    case timedOut(String)
    case peer(MessageError)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .headerMismatch: return "channel header does not match the expected layout"
        case .timedOut(let what): return "device did not answer in time (\(what))"
        case .peer(let e): return "device sent a malformed message: \(e)"
        }
    }
}

/// One mapping of a channel's shared memory.
public final class ChannelRegion: @unchecked Sendable {
    public let layout: ChannelLayout
    private let mapping: MappedRegion

    /// Creates the memfd for a new channel (supervisor side) and initialises it.
    public static func create(layout: ChannelLayout, name: String) throws(ChannelError) -> FileDescriptor {
        let fd: FileDescriptor
        do { fd = try MemFD.create(name: name, size: layout.byteSize) } catch { throw .system(error) }
        let region = try ChannelRegion(fd: fd.raw, layout: layout, validate: false)
        region.initialise()
        return fd
    }

    /// Maps an existing channel; checks the header written by `create`.
    public convenience init(attaching fd: Int32, layout: ChannelLayout) throws(ChannelError) {
        try self.init(fd: fd, layout: layout, validate: true)
    }

    private init(fd: Int32, layout: ChannelLayout, validate: Bool) throws(ChannelError) {
        self.layout = layout
        do { mapping = try MappedRegion(fd: fd, size: layout.byteSize) } catch { throw .system(error) }
        if validate {
            let b = mapping.base
            guard b.load(as: UInt64.self) == ChannelLayout.magic,
                  b.load(fromByteOffset: 8, as: UInt32.self) == UInt32(layout.lanes),
                  b.load(fromByteOffset: 12, as: UInt32.self) == UInt32(layout.ring.capacity),
                  b.load(fromByteOffset: 16, as: UInt32.self) == UInt32(layout.stateSize)
            else { throw ChannelError.headerMismatch }
        }
    }

    private func initialise() {
        mapping.base.initializeMemory(as: UInt8.self, repeating: 0, count: ChannelLayout.headerSize)
        for lane in 0..<layout.lanes {
            requestRing(lane).reset()
            responseRing(lane).reset()
        }
        mapping.base.storeBytes(of: UInt32(layout.lanes), toByteOffset: 8, as: UInt32.self)
        mapping.base.storeBytes(of: UInt32(layout.ring.capacity), toByteOffset: 12, as: UInt32.self)
        mapping.base.storeBytes(of: UInt32(layout.stateSize), toByteOffset: 16, as: UInt32.self)
        mapping.base.storeBytes(of: ChannelLayout.magic, as: UInt64.self)
    }

    func requestRing(_ lane: Int) -> RingView {
        RingView(base: mapping.base + layout.requestOffset(lane: lane), layout: layout.ring)
    }

    func responseRing(_ lane: Int) -> RingView {
        RingView(base: mapping.base + layout.responseOffset(lane: lane), layout: layout.ring)
    }

    /// The area a device keeps its restartable state in.
    public var state: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: mapping.base + layout.stateOffset, count: layout.stateSize)
    }
}
