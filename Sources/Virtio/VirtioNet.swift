/// The host side of a virtio-net device: a tap opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte vnet
/// header, so every frame in either direction starts with the same `virtio_net_hdr_v1` the guest uses. The device
/// process implements it over the tap's descriptor (it can open nothing itself); tests over a frame queue.
public protocol NetworkTap: AnyObject {
    /// Sends one frame, header first, gathered from `parts` (ranges of guest RAM). False when the host refused it
    /// (a malformed header or frame, the interface down): the frame is dropped, as a NIC drops one.
    func send(_ parts: [UnsafeRawBufferPointer]) -> Bool
    /// Reads the next waiting frame, header first, into `buffer` and returns its length; nil when none waits.
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int?
    /// Which offloads the guest accepts in received frames (`TapOffload` bits): the host may then hand it frames
    /// with partial checksums or GSO frames of those kinds. Called when the driver starts the device and at reset.
    func setReceiveOffloads(_ flags: UInt32)
}

/// The tap's offload flags (TUN_F_* in linux/if_tun.h), as `TUNSETOFFLOAD` takes them.
public enum TapOffload {
    public static let checksum: UInt32 = 0x01
    public static let tso4: UInt32 = 0x02
    public static let tso6: UInt32 = 0x04
}

/// virtio-net feature bits (virtio 1.2 section 5.1.3).
public enum VirtioNetFeature {
    /// The device takes frames with a partial checksum (the guest offloads its transmit checksums).
    public static let checksum: UInt64 = 1 << 0
    /// The driver takes frames with a partial checksum.
    public static let guestChecksum: UInt64 = 1 << 1
    /// The configuration space holds the MAC address.
    public static let mac: UInt64 = 1 << 5
    /// The driver takes TCPv4 / TCPv6 GSO frames.
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    /// The device takes TCPv4 / TCPv6 GSO frames.
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    /// A received frame may span several receive buffers (the header says how many).
    public static let mergeableReceiveBuffers: UInt64 = 1 << 15
    /// The configuration space holds the link status.
    public static let status: UInt64 = 1 << 16
}

/// What the virtio-net device offers and where its frames go: the host's offload support decides the offload bits.
public struct VirtioNetConfiguration: Equatable, Sendable {
    /// The guest's MAC address (Firecracker's `guest_mac`); nil: the driver picks one.
    public var mac: [UInt8]?
    /// Offloads the tap supports (`TapOffload` bits, probed by whoever opened it).
    public var tapOffloads: UInt32
    public init(mac: [UInt8]?, tapOffloads: UInt32) {
        self.mac = mac
        self.tapOffloads = tapOffloads
    }
}

/// The virtio-net device (device ID 1, virtio 1.2 section 5.1): one receive and one transmit queue, the 12-byte
/// header of virtio 1.x, mergeable receive buffers, MAC and link status in the configuration space, checksum and
/// TCP segmentation offloads in both directions where the tap supports them.
///
/// Transmit is served request by request: a chain's readable buffers (header, then the frame) go to the tap in one
/// gathered write, straight from guest RAM; its used length is 0. A frame the host refuses (a bad header, too
/// short, the link down), or one larger than a 64 KiB GSO frame can be, is dropped and counted, never a reason to
/// stop the device.
///
/// Receive is device-driven (`isDeviceDriven`): a frame read from the tap is placed in the buffers the driver made
/// available, several chains with mergeable buffers (the header's num_buffers says how many), one otherwise, and
/// returned to the driver all at once. A frame waits in the device (one at most) while the driver has no buffers;
/// meanwhile nothing more is read from the tap, whose own bounded queue holds or drops what comes. A frame that
/// cannot fit even the whole queue, or one chain without mergeable buffers, is dropped.
public final class VirtioNet: VirtioDeviceBackend {
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    /// The virtio 1.x header (`virtio_net_hdr_v1`, num_buffers included).
    public static let headerSize = 12
    /// The largest frame: a 64 KiB GSO frame with its Ethernet and VLAN headers (Firecracker's bound too).
    public static let maxFrameSize = 65550

    public let tap: NetworkTap
    public let configuration: VirtioNetConfiguration
    public let queueSize: UInt16
    /// Frames dropped on the way in and out, for the process's log.
    public private(set) var receiveDropped = 0
    public private(set) var transmitDropped = 0
    public private(set) var framesReceived = 0
    public private(set) var framesSent = 0

    private var features: UInt64 = 0
    /// The frame read from the tap and not yet placed (length 0: none).
    private let frame: UnsafeMutableRawBufferPointer
    private var frameLength = 0

    public init(tap: NetworkTap, configuration: VirtioNetConfiguration, queueSize: UInt16 = 256) {
        self.tap = tap
        self.configuration = configuration
        self.queueSize = queueSize
        frame = .allocate(byteCount: Self.headerSize + Self.maxFrameSize, alignment: 16)
    }

    deinit { frame.deallocate() }

    public var deviceID: UInt32 { VirtioDeviceID.network }
    public var queueMaxSizes: [UInt16] { [queueSize, queueSize] }

    public var deviceFeatures: UInt64 {
        typealias F = VirtioNetFeature
        var f = F.mergeableReceiveBuffers | F.status
        if configuration.mac != nil { f |= F.mac }
        // Transmit offloads: the tap parses the header of every frame written to it, whatever TUNSETOFFLOAD says.
        f |= F.checksum | F.hostTSO4 | F.hostTSO6
        // Receive offloads: only what the tap can be asked to deliver.
        let tap = configuration.tapOffloads
        if tap & TapOffload.checksum != 0 {
            f |= F.guestChecksum
            if tap & TapOffload.tso4 != 0 { f |= F.guestTSO4 }
            if tap & TapOffload.tso6 != 0 { f |= F.guestTSO6 }
        }
        return f
    }

    /// mac[6], then status (le16: VIRTIO_NET_S_LINK_UP); the rest of the structure is not offered and reads 0.
    public func readConfig(offset: UInt64, size: Int) -> UInt64 {
        var space = [UInt8](repeating: 0, count: 8)
        if let mac = configuration.mac { space.replaceSubrange(0..<6, with: mac.prefix(6)) }
        space[6] = 1  // VIRTIO_NET_S_LINK_UP: the tap is there for the VM's life
        return VirtioConfigSpace.read(space, offset: offset, size: size)
    }

    /// The MAC is the device's (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered) and the status read-only.
    public func writeConfig(offset: UInt64, size: Int, value: UInt64) -> Bool { false }

    public func activate(features: UInt64) {
        self.features = features
        typealias F = VirtioNetFeature
        var offloads: UInt32 = 0
        if features & F.guestChecksum != 0 {
            offloads |= TapOffload.checksum
            if features & F.guestTSO4 != 0 { offloads |= TapOffload.tso4 }
            if features & F.guestTSO6 != 0 { offloads |= TapOffload.tso6 }
        }
        tap.setReceiveOffloads(offloads & configuration.tapOffloads)
    }

    public func reset() {
        features = 0
        frameLength = 0
        tap.setReceiveOffloads(0)
    }

    public func isDeviceDriven(queue: Int) -> Bool { queue == Self.receiveQueue }

    // MARK: - Transmit

    public func handle(_ request: DescriptorChain, queue: Int, memory: GuestRAM) throws(VirtioRequestError) -> UInt32 {
        guard queue == Self.transmitQueue else { return 0 }
        var parts: [UnsafeRawBufferPointer] = []
        var total = 0
        for buffer in request.readable where buffer.length > 0 {
            total += Int(buffer.length)
            guard total <= Self.headerSize + Self.maxFrameSize else { break }
            // Inside RAM: the queue validated every buffer.
            guard let bytes = memory.bytes(at: buffer.gpa, count: Int(buffer.length)) else { break }
            parts.append(UnsafeRawBufferPointer(bytes))
        }
        // A header and at least an Ethernet header; nothing larger than a GSO frame can be.
        guard total >= Self.headerSize + 14, total <= Self.headerSize + Self.maxFrameSize, tap.send(parts) else {
            transmitDropped += 1
            return 0
        }
        framesSent += 1
        return 0
    }

    // MARK: - Receive

    public func produce(queue: Int, chains: inout ChainSource, memory: GuestRAM) throws(VirtioRequestError) -> DeviceWork {
        guard queue == Self.receiveQueue else { return .sourceEmpty }
        if frameLength == 0 {
            guard let n = tap.receive(into: frame) else { return .sourceEmpty }
            guard n >= Self.headerSize + 14, n <= frame.count else {
                receiveDropped += 1
                return .dropped
            }
            frameLength = n
        }
        let mergeable = features & VirtioNetFeature.mergeableReceiveBuffers != 0
        var used: [UsedElement] = []
        var placed = 0
        // Where num_buffers (frame bytes 10 and 11) landed: the header may be split over buffers.
        var numBuffersAt: [UInt64] = []
        while placed < frameLength {
            guard let chain = try chains.next() else {
                if chains.holdsWholeQueue { return dropFrame() }
                return .needBuffers
            }
            var written = 0
            for buffer in chain.writable where buffer.length > 0 && placed < frameLength {
                let n = min(Int(buffer.length), frameLength - placed)
                guard let destination = memory.bytes(at: buffer.gpa, count: n) else {
                    throw VirtioRequestError("a receive buffer outside RAM")
                }
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: frame[placed..<placed + n]))
                for field in 10...11 where (placed..<placed + n).contains(field) {
                    numBuffersAt.append(buffer.gpa + UInt64(field - placed))
                }
                placed += n
                written += n
            }
            // A receive chain the device cannot write into is a driver bug the queue cannot recover from.
            guard written > 0 else { throw VirtioRequestError("a receive chain with no device-writable space") }
            used.append(UsedElement(head: chain.head, length: UInt32(written)))
            if !mergeable && placed < frameLength { return dropFrame() }
        }
        let count = UInt16(truncatingIfNeeded: used.count)
        guard numBuffersAt.count == 2, memory.store(UInt8(truncatingIfNeeded: count), at: numBuffersAt[0]),
              memory.store(UInt8(truncatingIfNeeded: count >> 8), at: numBuffersAt[1]) else {
            throw VirtioRequestError("a receive buffer outside RAM")
        }
        frameLength = 0
        framesReceived += 1
        return .completed(used)
    }

    private func dropFrame() -> DeviceWork {
        frameLength = 0
        receiveDropped += 1
        return .dropped
    }
}
