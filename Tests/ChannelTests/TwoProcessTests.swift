import XCTest
import Glibc
import Channel
import System

/// The ring between two real processes: this test process as the vcpu side, ring-peer as the device.
final class TwoProcessTests: XCTestCase {
    static var productsDirectory: String {
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") {
            return (b.bundlePath as NSString).deletingLastPathComponent
        }
        return (CommandLine.arguments[0] as NSString).deletingLastPathComponent
    }

    func exchange(count: Int, capacity: Int, spinUs: Int, slow: Bool = false) throws {
        let layout = ChannelLayout(lanes: 1, capacity: capacity)
        let memory = try ChannelRegion.create(layout: layout, name: "two-process")
        let doorbell = try EventFD(), response = try EventFD()
        let peer = try ChildProcess.spawn(
            executable: Self.productsDirectory + "/ring-peer", arguments: ["\(capacity)", "\(spinUs)", slow ? "slow" : "fast"],
            stdio: (0, 1, 2), fds: [memory.raw, doorbell.raw, response.raw])
        defer { peer.kill(); _ = try? peer.reap(block: true) }
        let region = try ChannelRegion(attaching: memory.raw, layout: layout)
        var client = DeviceClient(region: region, lane: 0, deviceDoorbell: doorbell.raw, responseDoorbell: response.raw,
                                  policy: WaitPolicy(maxSpinMicroseconds: spinUs), timeoutMs: 10_000)
        for i in 0..<count {
            try client.post(.portWrite, size: 4, address: 0x3f8, data: UInt64(i) & 0xffff_ffff)
            if i % 50_000 == 49_999 {
                XCTAssertEqual(try client.call(.portRead, size: 8, address: 1), UInt64(i + 1), "reads see every earlier write")
            }
        }
        XCTAssertEqual(try client.call(.portRead, size: 8, address: 2), UInt64(count), "none lost or reordered")
        XCTAssertEqual(try peer.reap(block: true), .exited(0))
    }

    func testMillionMessagesSpinning() throws {
        try exchange(count: 1_000_000, capacity: 256, spinUs: 100)
    }

    func testMillionMessagesBlockingOnDoorbells() throws {
        // No spinning at all: every wait goes through the eventfd doorbells.
        try exchange(count: 1_000_000, capacity: 1024, spinUs: 0)
    }

    func testSlowDeviceFillsTheRing() throws {
        try exchange(count: 20_000, capacity: 16, spinUs: 0, slow: true)
    }
}
