import Devices
import Virtio
import XCTest

/// The host side of a test vsock device: byte queues per connection, what was connected, shut down and closed.
final class ByteHost: VsockHost {
    var incoming: [Int: [UInt8]] = [:]
    var eof: Set<Int> = []
    var written: [Int: [UInt8]] = [:]
    var writeLimit: Int?
    var connects: [(id: Int, port: UInt32)] = []
    var shutdowns: Set<Int> = []
    var closed: [Int] = []

    func read(_ id: Int, into buffer: UnsafeMutableRawBufferPointer) -> VsockHostIO {
        guard let bytes = incoming[id], !bytes.isEmpty else { return eof.contains(id) ? .closed : .wouldBlock }
        let n = min(bytes.count, buffer.count)
        buffer.copyBytes(from: bytes[0..<n])
        incoming[id] = Array(bytes[n...])
        return .bytes(n)
    }

    func write(_ id: Int, from buffer: UnsafeRawBufferPointer) -> VsockHostIO {
        let n = min(buffer.count, writeLimit ?? buffer.count)
        guard n > 0 else { return .wouldBlock }
        written[id, default: []] += buffer[0..<n]
        return .bytes(n)
    }

    func shutdownWrite(_ id: Int) { shutdowns.insert(id) }
    func close(_ id: Int) { closed.append(id) }
    func connect(_ id: Int, port: UInt32) { connects.append((id, port)) }
}

final class VirtioVsockTests: XCTestCase {
    typealias H = VsockHeader
    let ram = FakeRAM(size: 1 << 20)
    let host = ByteHost()
    var vsock: VirtioVsock!
    var transport: VirtioMMIOTransport!
    var rx: TestDriver!, tx: TestDriver!
    var seen: UInt16 = 0
    let cid: UInt64 = 3

    override func setUp() {
        vsock = VirtioVsock(guestCID: cid, host: host, queueSize: 16)
        transport = VirtioMMIOTransport(backend: vsock, memory: ram, interrupt: LineRecorder())
        rx = TestDriver(ram: ram, size: 16, desc: 0x1000, avail: 0x3000, used: 0x4000)
        tx = TestDriver(ram: ram, size: 16, desc: 0x8000, avail: 0xA000, used: 0xB000)
        let events = TestDriver(ram: ram, size: 16, desc: 0xC000, avail: 0xD000, used: 0xE000)
        let mmio = MMIODriver(transport: transport)
        mmio.negotiate()
        mmio.setUpQueue(0, rx)
        mmio.setUpQueue(1, tx)
        mmio.setUpQueue(2, events)
        mmio.driverOK()
        for i in 0..<16 { rx.submit([.w(0x40000 + UInt64(i) * 0x1000, 4096)]) }
    }

    /// What the guest received since the last call (headers and payloads), recycling the buffers.
    func received() -> [(header: H, payload: [UInt8])] {
        transport.queueNotified(0)
        var packets: [(H, [UInt8])] = []
        while seen != rx.usedIndex {
            let e = rx.usedElement(seen)
            let bytes = ram.read(at: 0x40000 + UInt64(e.id) * 0x1000, count: Int(e.length))
            let h = H(Array(bytes[0..<H.size]))
            packets.append((h, Array(bytes[H.size...])))
            seen &+= 1
            rx.submit([.w(0x40000 + UInt64(e.id) * 0x1000, 4096)])
        }
        return packets
    }

    /// The guest sends a packet from its port `from` to host port `to`.
    func send(_ op: UInt16, from: UInt32, to: UInt32, payload: [UInt8] = [], flags: UInt32 = 0, bufAlloc: UInt32 = 1 << 16,
              fwdCnt: UInt32 = 0, srcCID: UInt64? = nil) {
        var h = H()
        h.srcCID = srcCID ?? cid
        h.dstCID = 2
        h.srcPort = from
        h.dstPort = to
        h.op = op
        h.flags = flags
        h.length = UInt32(payload.count)
        h.bufAlloc = bufAlloc
        h.fwdCnt = fwdCnt
        ram.copyIn(h.bytes + payload, to: 0x90000)
        tx.submit([.r(0x90000, UInt32(H.size)), .r(0x90000 + UInt64(H.size), UInt32(payload.count))].filter { $0.length > 0 })
        transport.queueNotified(1)
    }

    func testConfigSpaceHoldsTheGuestCID() {
        XCTAssertEqual(vsock.deviceID, 19)
        XCTAssertEqual(vsock.queueMaxSizes.count, 3)
        XCTAssertEqual(vsock.readConfig(offset: 0, size: 8), 3)
        XCTAssertEqual(vsock.readConfig(offset: 4, size: 4), 0)
        XCTAssertEqual(vsock.readConfig(offset: .max, size: 8), 0)
    }

    /// Firecracker's host-initiated connection: CONNECT line, REQUEST to the guest, RESPONSE, OK line, data both ways.
    func testHostConnectsThroughTheConnectLineAndDataFlowsBothWays() throws {
        let id = vsock.reserveConnectionID()
        host.incoming[id] = Array("CONNECT 1234\n".utf8)
        vsock.hostConnectionAccepted(id)
        let request = try XCTUnwrap(received().first)
        XCTAssertEqual(request.header.op, H.Op.request)
        XCTAssertEqual(request.header.srcCID, 2)
        XCTAssertEqual(request.header.dstCID, cid)
        XCTAssertEqual(request.header.dstPort, 1234)
        let local = request.header.srcPort
        send(H.Op.response, from: 1234, to: local)
        XCTAssertEqual(host.written[id], Array("OK \(local)\n".utf8))

        host.incoming[id] = Array("hello guest".utf8)
        vsock.hostReadable(id)
        let data = received()
        XCTAssertEqual(data.map(\.header.op), [H.Op.rw])
        XCTAssertEqual(data.first?.payload, Array("hello guest".utf8))
        send(H.Op.rw, from: 1234, to: local, payload: Array("hello host".utf8))
        XCTAssertEqual(host.written[id], Array("OK \(local)\nhello host".utf8))
        XCTAssertEqual(received().count, 0, "no credit update for 10 bytes")
    }

    func testABadConnectLineClosesTheConnection() {
        let id = vsock.reserveConnectionID()
        host.incoming[id] = Array("HELLO 1\n".utf8)
        vsock.hostConnectionAccepted(id)
        XCTAssertEqual(host.closed, [id])
        let long = vsock.reserveConnectionID()
        host.incoming[long] = [UInt8](repeating: UInt8(ascii: "7"), count: 100)
        vsock.hostConnectionAccepted(long)
        XCTAssertEqual(host.closed, [id, long])
        XCTAssertEqual(received().count, 0)
    }

    /// The guest connects to a host port: the device asks for a host connection; RESPONSE when there is one, RST
    /// (the guest's ECONNRESET) when nobody listens.
    func testGuestConnectsToAHostListenerOrGetsReset() throws {
        send(H.Op.request, from: 5000, to: 80)
        let ask = try XCTUnwrap(host.connects.first)
        XCTAssertEqual(ask.port, 80)
        vsock.hostConnectFinished(ask.id, connected: true)
        let answer = received()
        XCTAssertEqual(answer.map(\.header.op), [H.Op.response])
        XCTAssertEqual(answer.first?.header.srcPort, 80)
        XCTAssertEqual(answer.first?.header.dstPort, 5000)
        XCTAssertEqual(answer.first?.header.bufAlloc, VirtioVsock.bufferSize)

        send(H.Op.request, from: 5001, to: 81)
        vsock.hostConnectFinished(host.connects[1].id, connected: false)
        XCTAssertEqual(received().map(\.header.op), [H.Op.rst])
    }

    func testTheDeviceSendsNoMoreThanTheGuestsCredit() throws {
        send(H.Op.request, from: 5000, to: 80, bufAlloc: 10)
        let id = host.connects[0].id
        vsock.hostConnectFinished(id, connected: true)
        _ = received()
        host.incoming[id] = [UInt8](repeating: 7, count: 25)
        vsock.hostReadable(id)
        XCTAssertEqual(received().map(\.payload.count), [10], "the guest's buffer is 10 bytes")
        XCTAssertEqual(vsock.watchedConnections.first?.read, false, "no credit: the socket is not watched")
        send(H.Op.creditUpdate, from: 5000, to: 80, bufAlloc: 10, fwdCnt: 10)
        XCTAssertEqual(received().map(\.payload.count), [10])
        send(H.Op.creditUpdate, from: 5000, to: 80, bufAlloc: 10, fwdCnt: 20)
        XCTAssertEqual(received().map(\.payload.count), [5])
    }

    func testAGuestBeyondItsCreditIsReset() {
        send(H.Op.request, from: 5000, to: 80)
        let id = host.connects[0].id
        vsock.hostConnectFinished(id, connected: true)
        _ = received()
        host.writeLimit = 0  // the host program does not read
        for _ in 0..<40 { send(H.Op.rw, from: 5000, to: 80, payload: [UInt8](repeating: 1, count: 4000)) }
        XCTAssertTrue(received().contains { $0.header.op == H.Op.rst }, "past 128 KiB in flight the connection is reset")
        XCTAssertTrue(host.closed.contains(id))
    }

    func testShutdownInBothDirections() throws {
        send(H.Op.request, from: 5000, to: 80)
        let id = host.connects[0].id
        vsock.hostConnectFinished(id, connected: true)
        _ = received()
        send(H.Op.shutdown, from: 5000, to: 80, flags: H.shutdownSend)
        XCTAssertEqual(host.shutdowns, [id], "the host program reads end-of-file")
        host.eof.insert(id)
        vsock.hostReadable(id)
        let shutdown = received()
        XCTAssertEqual(shutdown.map(\.header.op), [H.Op.shutdown])
        XCTAssertEqual(shutdown.first?.header.flags, H.shutdownSend, "the guest's reads see end-of-file")
        send(H.Op.shutdown, from: 5000, to: 80, flags: H.shutdownSend | H.shutdownReceive)
        XCTAssertEqual(received().map(\.header.op), [H.Op.rst], "a full shutdown is answered with RST")
        XCTAssertEqual(host.closed, [id])
    }

    func testPacketsForNoConnectionGetResetAndForgedOnesAreDropped() {
        send(H.Op.rw, from: 1, to: 2, payload: [1, 2, 3])
        XCTAssertEqual(received().map(\.header.op), [H.Op.rst])
        send(H.Op.rst, from: 1, to: 2)
        XCTAssertEqual(received().count, 0, "an RST is never answered")
        send(H.Op.request, from: 1, to: 2, srcCID: 99)
        XCTAssertEqual(host.connects.count, 0, "a packet from another CID is dropped")
        // A header cut short, and a length beyond the buffers.
        ram.copyIn([UInt8](repeating: 0, count: 20), to: 0x90000)
        tx.submit([.r(0x90000, 20)])
        var h = H()
        h.srcCID = cid; h.dstCID = 2; h.op = H.Op.rw; h.length = 1000
        ram.copyIn(h.bytes, to: 0x91000)
        tx.submit([.r(0x91000, UInt32(H.size))])
        transport.queueNotified(1)
        XCTAssertEqual(received().count, 0)
        XCTAssertTrue(transport.isLive)
        XCTAssertGreaterThanOrEqual(vsock.dropped, 4)
    }

    func testATransportResetIsAnnouncedOnTheEventQueue() {
        let events = TestDriver(ram: ram, size: 16, desc: 0xC000, avail: 0xD000, used: 0xE000)
        var e = events
        e.submit([.w(0x60000, 8)])
        vsock.announceTransportReset()
        transport.queueNotified(2)
        XCTAssertEqual(events.usedIndex, 1)
        XCTAssertEqual(events.usedElement(0).length, 4)
        XCTAssertEqual(ram.read(at: 0x60000, count: 4), [0, 0, 0, 0], "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET")
    }
}
