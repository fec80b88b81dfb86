import Synchronization
import System

/// The life of the device behind a channel, as the supervisor sees it.
public enum DeviceStatus: UInt32, Sendable {
    case serving = 0
    /// Its process died or hung and a new one is on its way: accesses wait for it.
    case restarting = 1
    /// It failed more often than its restart budget allows: reads get all-ones at once, writes are dropped.
    case broken = 2
}

/// The shape of one device channel's shared memory: a header page (the channel's status words and its read mirror),
/// one request ring and one response ring
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
    /// The supervisor gave up on the device (restart budget spent).
    case broken
    case peer(MessageError)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .headerMismatch: return "channel header does not match the expected layout"
        case .timedOut(let what): return "device did not answer in time (\(what))"
        case .broken: return "the device failed more often than its restart budget allows and was given up on"
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

    /// Requests on every lane that the device has not yet handled (see `DeviceServer.commit`), and how many of
    /// them are posted writes, whose effect is lost if the device never handles them. Read by a third party (the
    /// supervisor stopping a VM) from indices both peers can scribble on: an impossible pair counts as a full ring.
    public func unhandledRequests() -> (all: Int, postedWrites: Int) {
        var all = 0
        var posted = 0
        for lane in 0..<layout.lanes {
            let ring = requestRing(lane)
            let head = ring.head.pointee.load(ordering: .acquiring)
            let tail = ring.tail.pointee.load(ordering: .acquiring)
            guard tail >= head, tail - head <= UInt64(layout.ring.capacity) else {
                all += layout.ring.capacity
                continue
            }
            all += Int(tail - head)
            var index = head
            while index != tail {
                if let m = try? Message.load(from: ring.slot(index)), !m.operation.needsResponse { posted += 1 }
                index &+= 1
            }
        }
        return (all, posted)
    }

    /// Whether the device behind the channel is serving, being replaced, or given up on. Written by the supervisor
    /// only; the vcpu side reads it to wait for a restart rather than time out, and to stop waiting for a broken
    /// device. (A device process could scribble on it: at worst it makes the vCPU wait its bounded time.)
    public var deviceStatus: DeviceStatus {
        get { DeviceStatus(rawValue: statusWord.pointee.load(ordering: .acquiring)) ?? .serving }
        set { statusWord.pointee.store(newValue.rawValue, ordering: .releasing) }
    }

    /// How many times the supervisor has replaced the device's process.
    public var restarts: UInt32 {
        get { restartsWord.pointee.load(ordering: .acquiring) }
        set { restartsWord.pointee.store(newValue, ordering: .releasing) }
    }

    /// When the device next has work to do without being asked (CLOCK_MONOTONIC ns; 0: nothing due), such as an
    /// armed timer. Written by the device; the supervisor counts a device that lets this time pass unattended as
    /// stalled, as it does one that leaves requests waiting, so a hung irqchip is found while the guest sleeps in
    /// HLT waiting for its timer. (A device that scribbles on it can only get itself restarted, or go unwatched as a
    /// device that answers nothing could anyway.)
    public var dueBy: UInt64 {
        get { dueByWord.pointee.load(ordering: .acquiring) }
        set { dueByWord.pointee.store(newValue, ordering: .releasing) }
    }

    /// Whether requests wait unhandled, or work the device said was due (`dueBy`) is overdue at `now`.
    public func hasOverdueWork(now: UInt64) -> Bool {
        let due = dueBy
        return (due != 0 && due <= now) || unhandledRequests().all > 0
    }

    private var dueByWord: UnsafeMutablePointer<Atomic<UInt64>> { (mapping.base + 72).assumingMemoryBound(to: Atomic<UInt64>.self) }

    /// Work the device did that its rings do not show (virtqueue requests completed: the guest's notifications
    /// reach a virtio device through an eventfd, not the channel), counted by the device and read by the supervisor
    /// with `handledRequests` to see a device make progress. A device can scribble on it: at worst that hides its
    /// own hang (which its rings, or a notification left unread, still show) or skews the fault report.
    public func addDeviceProgress(_ count: UInt64) {
        progressWord.pointee.wrappingAdd(count, ordering: .releasing)
    }

    public var deviceProgress: UInt64 { progressWord.pointee.load(ordering: .acquiring) }

    /// Set by the device while it has work in hand that its rings do not show (queue notifications taken, requests
    /// not yet completed), cleared once that work is done: a device that stops while it is set has work waiting, as
    /// one with requests on its rings has. Like `deviceProgress`, only the device's own hang detection depends on it.
    public var deviceBusy: Bool {
        get { busyWord.pointee.load(ordering: .acquiring) != 0 }
        set { busyWord.pointee.store(newValue ? 1 : 0, ordering: .releasing) }
    }

    private var busyWord: UnsafeMutablePointer<Atomic<UInt32>> { (mapping.base + 104).assumingMemoryBound(to: Atomic<UInt32>.self) }
    private var progressWord: UnsafeMutablePointer<Atomic<UInt64>> { (mapping.base + 96).assumingMemoryBound(to: Atomic<UInt64>.self) }
    private var statusWord: UnsafeMutablePointer<Atomic<UInt32>> { (mapping.base + 64).assumingMemoryBound(to: Atomic<UInt32>.self) }
    private var restartsWord: UnsafeMutablePointer<Atomic<UInt32>> { (mapping.base + 68).assumingMemoryBound(to: Atomic<UInt32>.self) }

    /// Every request handled so far on every lane (the published heads), plus the device's own `deviceProgress`,
    /// for watching a device's progress.
    public func handledRequests() -> UInt64 {
        (0..<layout.lanes).reduce(deviceProgress) { $0 &+ requestRing($1).head.pointee.load(ordering: .acquiring) }
    }

    /// The reads the device publishes for the vCPUs to answer themselves (see ReadMirror); nil when the header has
    /// no room for the channel's lanes.
    public var readMirror: ReadMirror? { ReadMirror(header: mapping.base, lanes: layout.lanes) }

    /// The area a device keeps its restartable state in.
    public var state: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: mapping.base + layout.stateOffset, count: layout.stateSize)
    }
}
