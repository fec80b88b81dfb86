/// What a read or write on a host connection of the vsock device did.
public enum VsockHostIO: Equatable, Sendable {
    /// This many bytes moved (more than 0).
    case bytes(Int)
    /// Nothing now: the socket is empty (read) or full (write).
    case wouldBlock
    /// The peer closed its end (a read of 0 bytes) or the connection failed.
    case closed
}

/// The host side of the vsock device: Unix stream sockets, one per connection, named by the device's connection
/// numbers. The device process implements it over descriptors (it accepts on the listening socket the supervisor
/// made, and gets sockets to `<uds_path>_<port>` from the supervisor, since its sandbox cannot connect); tests over
/// byte queues.
public protocol VsockHost: AnyObject {
    /// Reads what connection `id` has (never blocks).
    func read(_ id: Int, into buffer: UnsafeMutableRawBufferPointer) -> VsockHostIO
    /// Writes to connection `id` (never blocks; a short write is `.bytes(n)` with n < count).
    func write(_ id: Int, from buffer: UnsafeRawBufferPointer) -> VsockHostIO
    /// The guest will send nothing more: the host end reads end-of-file once it has the rest.
    func shutdownWrite(_ id: Int)
    /// Closes and forgets connection `id`.
    func close(_ id: Int)
    /// Asks for a connection to the host's listener for `port` (`<uds_path>_<port>`); the outcome comes back through
    /// `VirtioVsock.hostConnectFinished(_:connected:)`.
    func connect(_ id: Int, port: UInt32)
}

/// The virtio-vsock packet header (virtio 1.2 section 5.10.6, `virtio_vsock_hdr`), 44 bytes little-endian.
public struct VsockHeader: Equatable, Sendable {
    public var srcCID: UInt64 = 0
    public var dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0
    public var dstPort: UInt32 = 0
    public var length: UInt32 = 0
    public var type: UInt16 = VsockHeader.stream
    public var op: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0
    public var fwdCnt: UInt32 = 0

    public static let size = 44
    public static let stream: UInt16 = 1
    public enum Op {
        public static let request: UInt16 = 1, response: UInt16 = 2, rst: UInt16 = 3, shutdown: UInt16 = 4
        public static let rw: UInt16 = 5, creditUpdate: UInt16 = 6, creditRequest: UInt16 = 7
    }
    /// SHUTDOWN flags: the sender will receive (RCV) / send (SEND) nothing more.
    public static let shutdownReceive: UInt32 = 1, shutdownSend: UInt32 = 2

    public init() {}

    public init(_ b: [UInt8]) {
        func u(_ at: Int, _ n: Int) -> UInt64 { (0..<n).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
        srcCID = u(0, 8); dstCID = u(8, 8)
        srcPort = UInt32(u(16, 4)); dstPort = UInt32(u(20, 4)); length = UInt32(u(24, 4))
        type = UInt16(u(28, 2)); op = UInt16(u(30, 2)); flags = UInt32(u(32, 4))
        bufAlloc = UInt32(u(36, 4)); fwdCnt = UInt32(u(40, 4))
    }

    public var bytes: [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(Self.size)
        func put(_ v: UInt64, _ n: Int) { for i in 0..<n { b.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        put(srcCID, 8); put(dstCID, 8); put(UInt64(srcPort), 4); put(UInt64(dstPort), 4); put(UInt64(length), 4)
        put(UInt64(type), 2); put(UInt64(op), 2); put(UInt64(flags), 4); put(UInt64(bufAlloc), 4); put(UInt64(fwdCnt), 4)
        return b
    }
}

/// The virtio-vsock device (device ID 19, virtio 1.2 section 5.10) with Firecracker's host-side protocol: stream
/// sockets between the guest (CID `guestCID`) and the host (CID 2), bridged to Unix sockets.
///
/// - Host to guest: a program connects to the device's listening socket (`uds_path`) and writes `CONNECT <port>\n`;
///   the device sends the guest a REQUEST from a local port of its own to `port`; on the guest's RESPONSE it writes
///   `OK <local port>\n` and bridges the streams; on RST (nobody listens) it closes the connection.
/// - Guest to host: a REQUEST to CID 2 port P makes the device ask for a connection to `<uds_path>_<P>`; connected,
///   it answers RESPONSE; otherwise RST (the guest's connect fails with ECONNRESET).
/// - Credit-based flow control both ways: the device sends the guest no more than its buf_alloc minus what is in
///   flight, and advertises a buffer of `bufferSize` bytes per connection, which bounds what it holds for a host
///   socket that does not read. A guest that sends beyond its credit has the connection reset.
/// - Shutdown in both directions, RST on anything addressed to no connection, at most `maxConnections` at once.
///
/// Queues: receive (0, device-driven: control packets first, then data from readable host connections in turn),
/// transmit (1, served packet by packet), event (2: a transport reset after the device process restarted, since
/// the host connections died with the old process).
public final class VirtioVsock: VirtioDeviceBackend {
    public static let receiveQueue = 0, transmitQueue = 1, eventQueue = 2
    public static let hostCID: UInt64 = 2
    /// What the device advertises as each connection's receive buffer (and so the most it holds for one).
    public static let bufferSize: UInt32 = 128 << 10
    public static let maxConnections = 256
    /// Control packets waiting for receive buffers beyond this are dropped (the guest is not reading its queue).
    public static let maxControlPackets = 1024
    /// The largest payload per packet either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
    public static let maxPayload = 64 << 10

    public let guestCID: UInt64
    public let host: VsockHost
    public let queueSize: UInt16

    enum State: Equatable {
        /// A host program connected to `uds_path`; its `CONNECT <port>\n` line is not complete yet.
        case readingConnectLine
        /// REQUEST sent to the guest; waiting for its RESPONSE.
        case awaitingGuest
        /// The guest's REQUEST; waiting for the host connection.
        case awaitingHost
        case established
    }

    struct Connection {
        var id: Int
        var state: State
        /// The host's port (CID 2) and the guest's.
        var localPort: UInt32 = 0
        var peerPort: UInt32 = 0
        var line: [UInt8] = []
        /// The guest's credit: its buffer and how much of what it was sent it has consumed.
        var peerBufAlloc: UInt32 = 0
        var peerFwdCnt: UInt32 = 0
        /// Payload bytes sent to the guest.
        var txCnt: UInt32 = 0
        /// Payload bytes of the guest's delivered to the host, and the value last told to the guest.
        var fwdCnt: UInt32 = 0
        var advertisedFwdCnt: UInt32 = 0
        /// The guest's bytes the host socket has not taken yet; the first `ownBytes` of them are the device's own
        /// (the `OK` line), not the guest's payload.
        var toHost: [UInt8] = []
        var ownBytes = 0
        var hostReadable = true
        var hostEOF = false
        var guestSendsNoMore = false
        var guestReceivesNoMore = false
        var hostWriteShut = false

        var credit: Int { max(0, Int(peerBufAlloc) - Int(txCnt &- peerFwdCnt)) }
        var hasDataForGuest: Bool {
            state == .established && !guestReceivesNoMore && credit > 0 && hostReadable && !hostEOF
        }
    }

    private var connections: [Int: Connection] = [:]
    private var nextID = 1
    private var nextLocalPort: UInt32 = 1 << 30
    private var control: [VsockHeader] = []
    private var rotation = 0
    private var transportResetPending = false
    private let bounce: UnsafeMutableRawBufferPointer
    /// Packets the device dropped or answered with RST, for the process's log.
    public private(set) var dropped = 0

    public init(guestCID: UInt64, host: VsockHost, queueSize: UInt16 = 256) {
        self.guestCID = guestCID
        self.host = host
        self.queueSize = queueSize
        bounce = .allocate(byteCount: Self.maxPayload, alignment: 16)
    }

    deinit { bounce.deallocate() }

    public var deviceID: UInt32 { VirtioDeviceID.vsock }
    public var deviceFeatures: UInt64 { 0 }
    public var queueMaxSizes: [UInt16] { [queueSize, queueSize, queueSize] }

    /// guest_cid (le64).
    public func readConfig(offset: UInt64, size: Int) -> UInt64 {
        VirtioConfigSpace.read(withUnsafeBytes(of: guestCID.littleEndian) { Array($0) }, offset: offset, size: size)
    }

    public func writeConfig(offset: UInt64, size: Int, value: UInt64) -> Bool { false }
    public func activate(features: UInt64) {}

    /// A reset closes every connection: the driver forgets its sockets' state too.
    public func reset() {
        for id in connections.keys { host.close(id) }
        connections = [:]
        control = []
    }

    public func isDeviceDriven(queue: Int) -> Bool { queue == Self.receiveQueue || queue == Self.eventQueue }

    /// Called by a process that took over from a dead one: the connections died with it, so the driver is told to
    /// reset its transport (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET): its sockets see ECONNRESET, its listeners stay.
    public func announceTransportReset() { transportResetPending = true }

    // MARK: - The host side (the device process reports what its sockets did)

    /// The connection numbers in use, and whether each wants its host socket watched for reading (a connection whose
    /// socket is known readable is not watched: the device reads it when the guest has room).
    public var watchedConnections: [(id: Int, read: Bool)] {
        connections.values.map { c in
            (c.id, c.state == .readingConnectLine || (c.state == .established && !c.hostReadable && !c.hostEOF
                                                       && !c.guestReceivesNoMore && c.credit > 0))
        }
    }

    /// Whether some connection holds the guest's bytes its host socket has not taken yet (the process retries soon).
    public var hasBytesForHost: Bool { connections.values.contains { !$0.toHost.isEmpty } }

    public var canAcceptHostConnection: Bool { connections.count < Self.maxConnections }

    /// A number for a host program's connection (before `hostConnectionAccepted`).
    public func reserveConnectionID() -> Int { takeID() }

    /// A host program connected to `uds_path` (the process checked `canAcceptHostConnection` first); its socket goes
    /// by `id`. Its `CONNECT <port>\n` line is read as it arrives.
    public func hostConnectionAccepted(_ id: Int) {
        connections[id] = Connection(id: id, state: .readingConnectLine)
        readConnectLine(id)
    }

    public func isReadingConnectLine(_ id: Int) -> Bool { connections[id]?.state == .readingConnectLine }

    /// Connection `id`'s host socket is readable (or hung up).
    public func hostReadable(_ id: Int) {
        guard var c = connections[id] else { return }
        if c.state == .readingConnectLine { return readConnectLine(id) }
        c.hostReadable = true
        connections[id] = c
    }

    /// The host connection the guest asked for is there (`connected`) or not.
    public func hostConnectFinished(_ id: Int, connected: Bool) {
        guard var c = connections[id], c.state == .awaitingHost else {
            if connected { host.close(id) }
            return
        }
        guard connected else {
            connections[id] = nil
            queueControl(c, op: VsockHeader.Op.rst)
            return
        }
        c.state = .established
        c.hostReadable = true
        connections[id] = c
        queueControl(c, op: VsockHeader.Op.response)
    }

    /// Gives the host sockets what the guest sent and they could not take before.
    public func flushToHost() {
        for id in connections.keys where !(connections[id]?.toHost.isEmpty ?? true) { flush(id) }
    }

    private func readConnectLine(_ id: Int) {
        guard var c = connections[id] else { return }
        while c.line.count < 32 {
            var byte: UInt8 = 0
            let got = withUnsafeMutableBytes(of: &byte) { host.read(id, into: $0) }
            switch got {
            case .wouldBlock:
                connections[id] = c
                return
            case .closed:
                return drop(id)
            case .bytes:
                if byte == UInt8(ascii: "\n") {
                    let text = String(decoding: c.line, as: UTF8.self).trimmingTrailingCR
                    guard text.hasPrefix("CONNECT "), let port = UInt32(text.dropFirst(8)) else { return drop(id) }
                    c.peerPort = port
                    c.localPort = takeLocalPort()
                    c.state = .awaitingGuest
                    c.line = []
                    connections[id] = c
                    queueControl(c, op: VsockHeader.Op.request)
                    return
                }
                c.line.append(byte)
            }
        }
        drop(id)  // no line within 32 bytes: not the protocol
    }

    private func drop(_ id: Int) {
        connections[id] = nil
        host.close(id)
    }

    private func takeID() -> Int {
        defer { nextID += 1 }
        return nextID
    }

    private func takeLocalPort() -> UInt32 {
        while true {
            let port = nextLocalPort
            nextLocalPort = nextLocalPort == .max ? 1 << 30 : nextLocalPort + 1
            if !connections.values.contains(where: { $0.localPort == port }) { return port }
        }
    }

    // MARK: - Packets to the guest

    private func header(_ c: Connection, op: UInt16, flags: UInt32 = 0, length: UInt32 = 0) -> VsockHeader {
        var h = VsockHeader()
        h.srcCID = Self.hostCID
        h.dstCID = guestCID
        h.srcPort = c.localPort
        h.dstPort = c.peerPort
        h.op = op
        h.flags = flags
        h.length = length
        h.bufAlloc = Self.bufferSize
        h.fwdCnt = c.fwdCnt
        return h
    }

    /// A control packet for connection `c` (its live state, when it still has one: the packet tells the guest
    /// how much the device forwarded).
    private func queueControl(_ c: Connection, op: UInt16, flags: UInt32 = 0) {
        var current = connections[c.id] ?? c
        current.advertisedFwdCnt = current.fwdCnt
        if connections[c.id] != nil { connections[c.id] = current }
        queueControl(header(current, op: op, flags: flags))
    }

    private func queueControl(_ h: VsockHeader) {
        guard control.count < Self.maxControlPackets else {
            dropped += 1
            return
        }
        control.append(h)
    }

    /// An RST for a packet that belongs to no connection (not for an RST: two sides must not bounce them).
    private func reset(answering packet: VsockHeader) {
        dropped += 1
        guard packet.op != VsockHeader.Op.rst else { return }
        var h = VsockHeader()
        h.srcCID = Self.hostCID
        h.dstCID = guestCID
        h.srcPort = packet.dstPort
        h.dstPort = packet.srcPort
        h.op = VsockHeader.Op.rst
        queueControl(h)
    }

    public func produce(queue: Int, chains: inout ChainSource, memory: GuestRAM) throws(VirtioRequestError) -> DeviceWork {
        if queue == Self.eventQueue {
            guard transportResetPending else { return .sourceEmpty }
            guard let chain = try chains.next() else { return .needBuffers }
            let event = [UInt8](repeating: 0, count: 4)  // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0
            let written = memory.scatter(event, into: chain.writable)
            transportResetPending = false
            return .completed([UsedElement(head: chain.head, length: UInt32(written))])
        }
        guard queue == Self.receiveQueue else { return .sourceEmpty }
        if let packet = control.first {
            guard let chain = try chains.next() else { return .needBuffers }
            guard memory.scatter(packet.bytes, into: chain.writable) == VsockHeader.size else {
                throw VirtioRequestError("a receive buffer smaller than a packet header")
            }
            control.removeFirst()
            return .completed([UsedElement(head: chain.head, length: UInt32(VsockHeader.size))])
        }
        // Data: the connections in turn, so that one busy stream cannot starve the others. One chain is taken for
        // the first connection that may have data and offered to each in turn until one has some.
        let ids = connections.keys.sorted()
        var chain: DescriptorChain?
        for step in 0..<ids.count {
            let id = ids[(rotation + step) % ids.count]
            guard var c = connections[id], c.hasDataForGuest else { continue }
            if chain == nil {
                guard let next = try chains.next() else { return .needBuffers }
                chain = next
            }
            guard let chain else { break }
            let room = chain.writable.reduce(0) { $0 + Int($1.length) } - VsockHeader.size
            guard room > 0 else { throw VirtioRequestError("a receive buffer smaller than a packet header") }
            let want = min(room, c.credit, Self.maxPayload)
            let n: Int
            switch host.read(id, into: UnsafeMutableRawBufferPointer(rebasing: bounce[0..<want])) {
            case .bytes(let got):
                n = got
            case .wouldBlock:
                c.hostReadable = false
                connections[id] = c
                continue
            case .closed:
                c.hostEOF = true
                connections[id] = c
                // The host will send nothing more: the guest's reads see end-of-file.
                queueControl(c, op: VsockHeader.Op.shutdown, flags: VsockHeader.shutdownSend)
                continue
            }
            let written = memory.scatter(header(c, op: VsockHeader.Op.rw, length: UInt32(n)).bytes + Array(bounce[0..<n]),
                                         into: chain.writable)
            c.txCnt &+= UInt32(n)
            c.advertisedFwdCnt = c.fwdCnt
            connections[id] = c
            rotation = (rotation + step + 1) % ids.count
            return .completed([UsedElement(head: chain.head, length: UInt32(written))])
        }
        // A SHUTDOWN queued on the way (a host that closed) goes out next time; nothing was placed in the chain.
        return control.isEmpty ? .sourceEmpty : .dropped
    }

    // MARK: - Packets from the guest

    public func handle(_ request: DescriptorChain, queue: Int, memory: GuestRAM) throws(VirtioRequestError) -> UInt32 {
        guard queue == Self.transmitQueue else { return 0 }
        // The header and the payload, gathered from the readable buffers (bounded by the largest packet).
        let readable = request.readable.reduce(0) { $0 + Int($1.length) }
        let packet = memory.gather(min(readable, VsockHeader.size + Self.maxPayload), from: request.readable) ?? []
        guard packet.count >= VsockHeader.size else {
            dropped += 1
            return 0
        }
        let h = VsockHeader(Array(packet[0..<VsockHeader.size]))
        // Only what the guest can send as itself, to the host, on stream sockets, with the payload it claims.
        guard h.srcCID == guestCID, h.dstCID == Self.hostCID, Int(h.length) <= packet.count - VsockHeader.size else {
            dropped += 1
            return 0
        }
        guard h.type == VsockHeader.stream else {
            reset(answering: h)
            return 0
        }
        let payload = packet[VsockHeader.size..<VsockHeader.size + Int(h.length)]
        guard let id = connections.first(where: { $0.value.localPort == h.dstPort && $0.value.peerPort == h.srcPort
                                                  && $0.value.state != .readingConnectLine })?.key else {
            if h.op == VsockHeader.Op.request { connectToHost(h) } else { reset(answering: h) }
            return 0
        }
        guard var c = connections[id] else { return 0 }
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        connections[id] = c
        switch h.op {
        case VsockHeader.Op.response where c.state == .awaitingGuest:
            c.state = .established
            c.toHost = Array("OK \(c.localPort)\n".utf8)
            c.ownBytes = c.toHost.count
            connections[id] = c
            flush(id)
        case VsockHeader.Op.rw where c.state == .established && !c.guestSendsNoMore:
            // The guest may have at most our buffer in flight; more breaks the flow control it agreed to.
            guard c.toHost.count + payload.count <= Int(Self.bufferSize) else { return resetConnection(id) }
            c.toHost += payload
            connections[id] = c
            flush(id)
        case VsockHeader.Op.creditUpdate:
            break
        case VsockHeader.Op.creditRequest:
            queueControl(c, op: VsockHeader.Op.creditUpdate)
        case VsockHeader.Op.shutdown:
            if h.flags & VsockHeader.shutdownSend != 0 { c.guestSendsNoMore = true }
            if h.flags & VsockHeader.shutdownReceive != 0 { c.guestReceivesNoMore = true }
            connections[id] = c
            flush(id)
        case VsockHeader.Op.rst:
            // The guest gave up on it (or refused our REQUEST: nobody listens on that port).
            drop(id)
        default:
            // A REQUEST for a connection that exists, a RESPONSE or RW out of turn, an unknown op.
            resetConnection(id)
        }
        return 0
    }

    private func connectToHost(_ h: VsockHeader) {
        guard connections.count < Self.maxConnections else { return reset(answering: h) }
        let id = takeID()
        var c = Connection(id: id, state: .awaitingHost)
        c.localPort = h.dstPort
        c.peerPort = h.srcPort
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        connections[id] = c
        host.connect(id, port: h.dstPort)
    }

    private func resetConnection(_ id: Int) -> UInt32 {
        if let c = connections[id] { queueControl(c, op: VsockHeader.Op.rst) }
        drop(id)
        dropped += 1
        return 0
    }

    /// Writes what the guest sent to the host socket as far as it takes it; once the guest shut down its sending
    /// side and everything is out, the host reads end-of-file; once it shut down both, the connection ends with RST.
    private func flush(_ id: Int) {
        guard var c = connections[id] else { return }
        while !c.toHost.isEmpty {
            let result = c.toHost.withUnsafeBytes { host.write(id, from: $0) }
            guard case .bytes(let n) = result else {
                if result == .closed {
                    connections[id] = c
                    _ = resetConnection(id)
                    return
                }
                break
            }
            c.toHost.removeFirst(n)
            // The OK line is the device's own, not the guest's payload.
            let own = min(n, c.ownBytes)
            c.ownBytes -= own
            c.fwdCnt &+= UInt32(n - own)
        }
        connections[id] = c
        if c.toHost.isEmpty {
            if c.guestSendsNoMore && c.guestReceivesNoMore {
                queueControl(c, op: VsockHeader.Op.rst)
                drop(id)
                return
            }
            if c.guestSendsNoMore && !c.hostWriteShut {
                host.shutdownWrite(id)
                c.hostWriteShut = true
                connections[id] = c
            }
        }
        // Tell the guest it may send more once a good part of its credit came back.
        if c.fwdCnt &- c.advertisedFwdCnt >= Self.bufferSize / 4 { queueControl(c, op: VsockHeader.Op.creditUpdate) }
    }
}

extension String {
    fileprivate var trimmingTrailingCR: String { hasSuffix("\r") ? String(dropLast()) : self }
}
