import Devices
import Virtio
import XCTest

/// The host side of a test network device: frames waiting to be received, frames sent, the offloads asked for.
final class FrameQueue: NetworkTap {
    var incoming: [[UInt8]] = []
    var sent: [[UInt8]] = []
    var refuseSends = false
    private(set) var offloads: [UInt32] = []
    private(set) var receiveCalls = 0

    func send(_ parts: [UnsafeRawBufferPointer]) -> Bool {
        guard !refuseSends else { return false }
        sent.append(parts.flatMap { Array($0) })
        return true
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        receiveCalls += 1
        guard !incoming.isEmpty else { return nil }
        let frame = incoming.removeFirst()
        let n = min(frame.count, buffer.count)
        buffer.copyBytes(from: frame[0..<n])
        return n
    }

    func setReceiveOffloads(_ flags: UInt32) { offloads.append(flags) }
}

final class VirtioNetTests: XCTestCase {
    typealias R = VirtioMMIORegister
    typealias F = VirtioNetFeature
    let ram = FakeRAM(size: 1 << 20)
    let line = LineRecorder()
    let tap = FrameQueue()
    /// Receive buffers: one page each from here; transmit data from 0x80000.
    let buffers: UInt64 = 0x40000
    let mac: [UInt8] = [0x02, 0, 0, 0, 0, 0x01]

    struct Device {
        let net: VirtioNet
        let transport: VirtioMMIOTransport
        var rx: TestDriver
        var tx: TestDriver
    }

    func makeDevice(features: UInt64? = nil, queueSize: UInt16 = 16, tapOffloads: UInt32 = TapOffload.checksum | TapOffload.tso4 | TapOffload.tso6) -> Device {
        let net = VirtioNet(tap: tap, configuration: VirtioNetConfiguration(mac: mac, tapOffloads: tapOffloads), queueSize: queueSize)
        let transport = VirtioMMIOTransport(backend: net, memory: ram, interrupt: line)
        let rx = TestDriver(ram: ram, size: queueSize, desc: 0x1000, avail: 0x3000, used: 0x4000)
        let tx = TestDriver(ram: ram, size: queueSize, desc: 0x8000, avail: 0xA000, used: 0xB000)
        let mmio = MMIODriver(transport: transport)
        mmio.negotiate(features)
        mmio.setUpQueue(0, rx)
        mmio.setUpQueue(1, tx)
        mmio.driverOK()
        return Device(net: net, transport: transport, rx: rx, tx: tx)
    }

    /// Makes `count` receive buffers of `size` bytes available, one chain each.
    func addReceiveBuffers(_ d: inout Device, count: Int, size: UInt32) {
        for _ in 0..<count {
            let slot = UInt64(d.rx.nextDescriptor)
            d.rx.submit([.w(buffers + slot * 0x1000, size)])
        }
    }

    /// A frame as the tap delivers it: a 12-byte header, then `length` bytes of Ethernet frame.
    func frame(_ length: Int, seed: Int = 1) -> [UInt8] {
        [UInt8](repeating: 0, count: VirtioNet.headerSize) + (0..<length).map { UInt8(truncatingIfNeeded: $0 * 31 + seed) }
    }

    /// The frames the driver got, reassembled from the used ring from `slot` on (num_buffers in each first header).
    func received(_ d: Device, from slot: UInt16 = 0) -> [(buffers: Int, bytes: [UInt8])] {
        var frames: [(Int, [UInt8])] = []
        var s = slot
        while s != d.rx.usedIndex {
            let first = d.rx.usedElement(s)
            let head = buffers + UInt64(first.id) * 0x1000
            let count = Int(ram.load(UInt16.self, at: head + 10) ?? 0)
            var bytes: [UInt8] = []
            for i in 0..<max(count, 1) {
                let e = d.rx.usedElement(s &+ UInt16(i))
                bytes += ram.read(at: buffers + UInt64(e.id) * 0x1000, count: Int(e.length))
            }
            frames.append((count, bytes))
            s &+= UInt16(max(count, 1))
        }
        return frames
    }

    /// The header with num_buffers set to `n` (what the driver sees in front of a received frame).
    func withBufferCount(_ f: [UInt8], _ n: UInt16) -> [UInt8] {
        var f = f
        f[10] = UInt8(n & 0xff)
        f[11] = UInt8(n >> 8)
        return f
    }

    func testFeaturesFollowTheTapAndConfigSpaceHoldsMACAndLinkUp() {
        let full = VirtioNet(tap: tap, configuration: VirtioNetConfiguration(mac: mac, tapOffloads: TapOffload.checksum | TapOffload.tso4 | TapOffload.tso6))
        XCTAssertEqual(full.deviceID, 1)
        XCTAssertEqual(full.queueMaxSizes, [256, 256])
        XCTAssertEqual(full.deviceFeatures, F.checksum | F.guestChecksum | F.mac | F.guestTSO4 | F.guestTSO6 | F.hostTSO4
                       | F.hostTSO6 | F.mergeableReceiveBuffers | F.status)
        XCTAssertEqual(full.readConfig(offset: 0, size: 4), 0x0000_0002)
        XCTAssertEqual(full.readConfig(offset: 4, size: 4), 0x0001_0100, "mac[4..5], then status LINK_UP")
        XCTAssertEqual(full.readConfig(offset: 6, size: 2), 1)
        XCTAssertEqual(full.readConfig(offset: 8, size: 8), 0)
        XCTAssertEqual(full.readConfig(offset: .max, size: 8), 0)
        XCTAssertFalse(full.writeConfig(offset: 0, size: 4, value: 0xffff_ffff))
        XCTAssertEqual(full.readConfig(offset: 0, size: 4), 2, "the MAC is the device's")

        let plain = VirtioNet(tap: tap, configuration: VirtioNetConfiguration(mac: nil, tapOffloads: 0))
        XCTAssertEqual(plain.deviceFeatures, F.checksum | F.hostTSO4 | F.hostTSO6 | F.mergeableReceiveBuffers | F.status,
                       "no receive offloads the tap cannot deliver, no MAC when none is configured")
        XCTAssertEqual(plain.readConfig(offset: 0, size: 4), 0)
    }

    func testReceiveOffloadsAreWhatTheDriverAcceptedAndResetClearsThem() {
        _ = makeDevice(features: VirtioFeature.version1 | F.guestChecksum | F.guestTSO4 | F.mergeableReceiveBuffers)
        XCTAssertEqual(tap.offloads.last, TapOffload.checksum | TapOffload.tso4)
        _ = makeDevice(features: VirtioFeature.version1 | F.guestTSO4)
        XCTAssertEqual(tap.offloads.last, 0, "TSO without checksum offload is not asked for")
        let d = makeDevice()
        XCTAssertEqual(tap.offloads.last, TapOffload.checksum | TapOffload.tso4 | TapOffload.tso6)
        MMIODriver(transport: d.transport).w(R.status, 0)
        XCTAssertEqual(tap.offloads.last, 0)
    }

    func testTransmitGathersHeaderAndFrameAndDropsWhatCannotBeAFrame() {
        var d = makeDevice()
        let payload = frame(60)
        ram.copyIn(Array(payload[0..<12]), to: 0x80000)
        ram.copyIn(Array(payload[12...]), to: 0x90000)
        d.tx.submit([.r(0x80000, 12), .r(0x90000, 60)])
        d.tx.submit([.r(0x80000, 12)])                         // a header and nothing else
        d.tx.submit([.r(0x80000, 12), .r(0x90000, 70_000)])    // more than any frame can be
        d.tx.submit([.r(0x80000, 12), .r(0x90000, 60), .w(0xA0000, 100)])  // a writable buffer is ignored
        d.transport.queueNotified(1)
        XCTAssertEqual(tap.sent, [payload, payload])
        XCTAssertEqual(d.tx.usedIndex, 4, "every chain is returned")
        XCTAssertEqual((0..<4).map { d.tx.usedElement($0).length }, [0, 0, 0, 0])
        XCTAssertEqual(d.net.transmitDropped, 2)
        XCTAssertTrue(d.transport.isLive)

        tap.refuseSends = true
        d.tx.submit([.r(0x80000, 12), .r(0x90000, 60)])
        d.transport.queueNotified(1)
        XCTAssertEqual(d.net.transmitDropped, 3, "a frame the host refuses is dropped")
        XCTAssertEqual(d.tx.usedIndex, 5)
    }

    func testAFrameSpansMergeableBuffersAndArrivesWhole() {
        var d = makeDevice()
        addReceiveBuffers(&d, count: 16, size: 256)
        let big = frame(1042), small = frame(50, seed: 7)
        tap.incoming = [big, small]
        d.transport.queueNotified(0)
        let got = received(d)
        XCTAssertEqual(got.map(\.buffers), [5, 1])
        XCTAssertEqual(got.map(\.bytes), [withBufferCount(big, 5), withBufferCount(small, 1)])
        XCTAssertEqual(d.rx.usedIndex, 6)
        XCTAssertTrue(line.level, "the driver is interrupted")
        XCTAssertEqual(d.net.framesReceived, 2)
    }

    /// A frame that needs more buffers than are available waits in the device (nothing is returned half done, no
    /// further frame is read) until the driver adds buffers.
    func testAFrameWaitsForBuffersWithoutReadingMore() {
        var d = makeDevice()
        addReceiveBuffers(&d, count: 2, size: 256)
        tap.incoming = [frame(1042), frame(60)]
        d.transport.queueNotified(0)
        XCTAssertEqual(d.rx.usedIndex, 0, "two buffers cannot hold it: nothing is used")
        XCTAssertEqual(tap.incoming.count, 1, "one frame taken from the tap, the next left there")
        XCTAssertFalse(d.transport.wantsDeviceSource(queue: 0), "the tap is not watched while buffers are missing")
        addReceiveBuffers(&d, count: 4, size: 256)
        d.transport.queueNotified(0)
        XCTAssertEqual(received(d).map(\.buffers), [5, 1])
        XCTAssertTrue(d.transport.wantsDeviceSource(queue: 0))
    }

    /// A guest that never refills its receive queue costs one frame of memory: the rest waits on the host side.
    func testAGuestThatNeverRefillsHoldsOneFrame() {
        let d = makeDevice()
        tap.incoming = (0..<1000).map { frame(60, seed: $0) }
        for _ in 0..<10 { d.transport.queueNotified(0) }
        XCTAssertEqual(tap.incoming.count, 999)
        XCTAssertEqual(d.rx.usedIndex, 0)
        XCTAssertFalse(d.transport.wantsDeviceSource(queue: 0))
    }

    func testFramesThatCanNeverFitAreDroppedAndTheNextOneIsDelivered() {
        var d = makeDevice(queueSize: 4)
        addReceiveBuffers(&d, count: 4, size: 256)
        tap.incoming = [frame(2000), frame(10), frame(100)]   // larger than the whole queue; shorter than Ethernet
        d.transport.queueNotified(0)
        XCTAssertEqual(received(d).map(\.bytes), [withBufferCount(frame(100), 1)])
        XCTAssertEqual(d.net.receiveDropped, 2)

        var plain = makeDevice(features: VirtioFeature.version1, queueSize: 4)
        addReceiveBuffers(&plain, count: 4, size: 256)
        tap.incoming = [frame(300), frame(100, seed: 3)]   // without mergeable buffers a frame must fit one chain
        plain.transport.queueNotified(0)
        XCTAssertEqual(received(plain).map(\.bytes), [withBufferCount(frame(100, seed: 3), 1)])
        XCTAssertEqual(plain.net.receiveDropped, 1)
    }

    func testAReceiveChainWithoutWritableSpaceNeedsAReset() {
        var d = makeDevice()
        d.rx.submit([.r(buffers, 256)])
        tap.incoming = [frame(60)]
        d.transport.queueNotified(0)
        XCTAssertEqual(d.transport.state.status & VirtioStatus.deviceNeedsReset, VirtioStatus.deviceNeedsReset)
        XCTAssertEqual(d.transport.state.failure, "queue 0: a receive chain with no device-writable space")
        XCTAssertFalse(d.transport.wantsDeviceSource(queue: 0))
    }

    /// A frame's buffers are published with one used->idx store, so a successor that adopts what its predecessor
    /// published after the last commit adopts whole frames.
    func testASuccessorAdoptsWholeFrames() throws {
        var d = makeDevice()
        addReceiveBuffers(&d, count: 16, size: 256)
        let committed = d.transport.snapshot()
        tap.incoming = [frame(1042)]
        d.transport.queueNotified(0)
        XCTAssertEqual(d.rx.usedIndex, 5)

        let next = VirtioMMIOTransport(backend: VirtioNet(tap: tap, configuration: VirtioNetConfiguration(mac: mac, tapOffloads: 7), queueSize: 16),
                                       memory: ram, interrupt: LineRecorder(), settingLine: false)
        try next.restore(snapshot: committed)
        XCTAssertEqual(next.adoptPublishedCompletions(), 5)
        tap.incoming = [frame(60, seed: 9)]
        next.runPendingQueues()
        XCTAssertEqual(received(d).map(\.buffers), [5, 1])
        XCTAssertEqual(received(d).last?.bytes, withBufferCount(frame(60, seed: 9), 1))
    }
}
