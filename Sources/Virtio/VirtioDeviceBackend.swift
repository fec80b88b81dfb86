/// A virtio device type (block, entropy, ...) behind `VirtioMMIOTransport`.
///
/// The transport owns everything the device types share: registers, feature negotiation, the status machine, the
/// virtqueues and their ordering rules, notification suppression and interrupts. A backend sees only validated
/// requests, one at a time, and answers each with the number of bytes it wrote into the guest's buffers. That keeps
/// the hostile-input handling of the rings in one audited place, and a backend a small, testable function of
/// (request, guest RAM, its storage).
public protocol VirtioDeviceBackend: AnyObject {
    /// The virtio device ID (`VirtioDeviceID`), read by the driver from the DeviceID register.
    var deviceID: UInt32 { get }
    /// The device-specific feature bits offered (bits 0...23 and any others the backend implements). The transport
    /// adds VERSION_1, EVENT_IDX and INDIRECT_DESC itself.
    var deviceFeatures: UInt64 { get }
    /// QueueNumMax of each virtqueue; the count is the number of queues. Each must be a power of two.
    var queueMaxSizes: [UInt16] { get }

    /// Reads `size` (1...8) bytes of the device configuration space at `offset` (from its start, i.e. MMIO
    /// offset - 0x100), little-endian. Bytes beyond the structure read as 0.
    func readConfig(offset: UInt64, size: Int) -> UInt64
    /// A driver write to the configuration space. Returns true when the configuration changed (the transport then
    /// bumps ConfigGeneration). Read-only fields ignore writes.
    func writeConfig(offset: UInt64, size: Int, value: UInt64) -> Bool

    /// The driver set DRIVER_OK with these negotiated features; requests follow.
    func activate(features: UInt64)
    /// The driver reset the device (status 0): forget every negotiated setting and request in flight.
    func reset()

    /// Serves one request from queue `queue` and returns how many bytes it wrote into the chain's device-writable
    /// buffers (the used length). Throws only when the request cannot even be answered with an error status; the
    /// transport then sets DEVICE_NEEDS_RESET.
    func handle(_ request: DescriptorChain, queue: Int, memory: GuestRAM) throws(VirtioRequestError) -> UInt32

    /// Whether queue `queue` is filled by the device rather than served request by request: the driver only
    /// supplies buffers, and the device takes them when it has something to put there (virtio-net's receive
    /// queue). The transport then calls `produce` instead of `handle` for it. Default: no queue is.
    func isDeviceDriven(queue: Int) -> Bool

    /// For a device-driven queue: places one unit of the device's work (one received frame) in buffers it takes
    /// from `chains`, and says what became of it. What the backend took from `chains` counts only when it answers
    /// `.completed`; otherwise the transport puts every chain back, untouched as far as the driver can tell.
    func produce(queue: Int, chains: inout ChainSource, memory: GuestRAM) throws(VirtioRequestError) -> DeviceWork
}

extension VirtioDeviceBackend {
    public func isDeviceDriven(queue: Int) -> Bool { false }
    public func produce(queue: Int, chains: inout ChainSource, memory: GuestRAM) throws(VirtioRequestError) -> DeviceWork {
        .sourceEmpty
    }
}

/// A device configuration space kept as bytes.
public enum VirtioConfigSpace {
    /// `size` (at most 8) bytes of `space` from `offset`, little-endian, as the transport reads it; bytes past the
    /// end (or past 2^64) read as 0.
    public static func read(_ space: [UInt8], offset: UInt64, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<min(size, 8) {
            let (at, overflow) = offset.addingReportingOverflow(UInt64(i))
            guard !overflow, at < UInt64(space.count) else { break }
            value |= UInt64(space[Int(at)]) << (8 * UInt64(i))
        }
        return value
    }
}

/// What a backend's `produce` did with one unit of work.
public enum DeviceWork: Equatable, Sendable {
    /// Placed: these chains (taken from the source, in order) are returned to the driver together.
    case completed([UsedElement])
    /// The device has nothing to deliver now (no frame waiting on the host side).
    case sourceEmpty
    /// Something waits, but the driver has not made enough buffers available: keep it and try again once the
    /// driver adds buffers (its notification).
    case needBuffers
    /// The unit was dropped (too large for the buffers the driver can ever give, malformed): nothing was used;
    /// go on with the next.
    case dropped
}

/// The chains a backend may take from a device-driven queue for one unit of work (`VirtioDeviceBackend.produce`):
/// validated as every request is; taking one does not yet return it to the driver.
public struct ChainSource {
    var queue: Virtqueue
    let memory: GuestRAM
    /// How many chains were taken.
    public private(set) var taken = 0

    init(queue: Virtqueue, memory: GuestRAM) {
        self.queue = queue
        self.memory = memory
    }

    /// The next chain the driver made available, or nil when there is none now.
    public mutating func next() throws(VirtioRequestError) -> DescriptorChain? {
        do {
            guard let chain = try queue.nextRequest(in: memory) else { return nil }
            taken += 1
            return chain
        } catch {
            throw VirtioRequestError("\(error)")
        }
    }

    /// Whether every buffer of the queue is taken already: when a unit does not fit even then, it never will.
    public var holdsWholeQueue: Bool { taken >= Int(queue.size) }
}

/// A request a backend cannot complete nor fail in-band (e.g. a block request with no status byte to report an
/// error in). The device needs a reset.
public struct VirtioRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}
