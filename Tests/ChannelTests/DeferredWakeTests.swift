import XCTest
@testable import Channel
import Glibc
import System
import Synchronization

/// The vCPU's posted writes leave the "does the device sleep?" question (and its barrier) for later: the device is
/// woken then, once, and only if it sleeps; a plain post still wakes it at once.
final class DeferredWakeTests: XCTestCase {
    func testAPostDeferringWakeRingsOnlyWhenAskedAndOnlyIfTheDeviceSleeps() throws {
        let channel = try LocalChannel(layout: ChannelLayout(lanes: 1, capacity: 8))
        let deviceBell = try EventFD(), answerBell = try EventFD()
        var client = DeviceClient(region: channel.vcpu, lane: 0, deviceDoorbell: deviceBell.raw, responseDoorbell: answerBell.raw,
                                  policy: WaitPolicy(maxSpinMicroseconds: 0), timeoutMs: 50)
        let device = RingConsumer(channel.device.requestRing(0))
        func rung() -> Bool {
            var count: UInt64 = 0
            return Glibc.read(deviceBell.raw, &count, 8) == 8 && count > 0
        }
        try deviceBell.raw.setNonBlockingForTest()

        try client.postDeferringWake(.portWrite, size: 1, address: 0x3f8, data: 1)
        try client.wakeIfAsleep()
        XCTAssertFalse(rung(), "a device awake needs no doorbell")

        device.setSleeping(true)
        try client.postDeferringWake(.portWrite, size: 1, address: 0x3f8, data: 2)
        XCTAssertTrue(client.wakeCheckDue)
        XCTAssertFalse(rung(), "the post leaves the doorbell to wakeIfAsleep")
        try client.wakeIfAsleep()
        XCTAssertTrue(rung(), "asked, it finds the device asleep")
        try client.wakeIfAsleep()
        XCTAssertFalse(rung(), "nothing is owed any more")

        try client.post(.portWrite, size: 1, address: 0x3f8, data: 3)
        XCTAssertTrue(rung(), "a plain post wakes a sleeping device at once")
        try client.postDeferringWake(.portWrite, size: 1, address: 0x3f8, data: 4)
        _ = try? client.call(.sync, size: 0, address: 0)  // nobody answers: it times out, but it rang first
        XCTAssertTrue(rung())
        XCTAssertFalse(client.wakeCheckDue, "a call's own check covers the lane's earlier posts")
    }

    /// The check before an entry has no barrier, so it can miss a device that announces its sleep just then; the
    /// device must find such a post itself (`recheckMs` after it went to sleep), not sleep on with it.
    func testADeviceAsleepFindsAPostNobodyRangFor() throws {
        let channel = try LocalChannel(layout: ChannelLayout(lanes: 1, capacity: 8))
        let deviceBell = try EventFD(), answerBell = try EventFD()
        var server = DeviceServer(region: channel.device, deviceDoorbell: deviceBell.raw, responseDoorbells: [answerBell.raw],
                                  policy: WaitPolicy(maxSpinMicroseconds: 0))
        server.recheckMs = 300  // the post below lands well inside it (the real window is a store's way to memory)
        let woke = Mutex<UInt64?>(nil)
        let sleeper = Thread { [server] in
            var s = server
            let start = monotonicNanoseconds()
            _ = try? s.wait(extra: [], timeoutMs: 5_000)
            woke.withLock { $0 = monotonicNanoseconds() - start }
        }
        sleeper.start()
        let ring = channel.vcpu.requestRing(0)
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while ring.sleeping.pointee.load(ordering: .acquiring) == 0 && monotonicNanoseconds() < deadline { usleep(100) }
        XCTAssertNotEqual(ring.sleeping.pointee.load(ordering: .acquiring), 0, "the device went to sleep")
        // The post the vCPU's unfenced check did not ring for: in the ring, no doorbell.
        var producer = RingProducer(ring)
        XCTAssertTrue(try producer.push(Message(sequence: 1, operation: .portWrite, size: 1, address: 0x3f8, data: 7)))
        while woke.withLock({ $0 }) == nil && monotonicNanoseconds() < deadline + 1_000_000_000 { usleep(100) }
        let took = try XCTUnwrap(woke.withLock { $0 }, "the device never woke")
        XCTAssertLessThan(took, 2_000_000_000, "it found the post at its second look (300 ms), not at its 5 s timeout")
        XCTAssertGreaterThanOrEqual(took, 300_000_000, "nothing rang: only the second look found it")
        var s = server
        XCTAssertEqual(try s.poll()?.message.data, 7)
    }
}

private extension Int32 {
    func setNonBlockingForTest() throws {
        let flags = fcntl(self, F_GETFL)
        guard fcntl(self, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError("fcntl", errno: errno) }
    }
}
