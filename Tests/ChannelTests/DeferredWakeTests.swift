import XCTest
@testable import Channel
import Glibc
import System

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
}

private extension Int32 {
    func setNonBlockingForTest() throws {
        let flags = fcntl(self, F_GETFL)
        guard fcntl(self, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError("fcntl", errno: errno) }
    }
}
