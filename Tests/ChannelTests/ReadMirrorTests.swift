import XCTest
@testable import Channel
import System

/// The reads a device publishes for the vCPUs: answered only from a whole copy that includes everything the
/// asking lane sent, never from a predecessor's copy, never from a torn or scribbled one.
final class ReadMirrorTests: XCTestCase {
    private final class Sides {
        let channel: LocalChannel
        let doorbell: EventFD
        var server: DeviceServer
        var lanes: [DeviceClient]

        init(lanes count: Int) throws {
            channel = try LocalChannel(layout: ChannelLayout(lanes: count, capacity: 8))
            doorbell = try EventFD()
            let bells = [Int32](repeating: doorbell.raw, count: count)
            server = DeviceServer(region: channel.device, deviceDoorbell: doorbell.raw, responseDoorbells: bells,
                                  policy: WaitPolicy(maxSpinMicroseconds: 0))
            let (vcpu, bell) = (channel.vcpu, doorbell.raw)
            lanes = (0..<count).map {
                DeviceClient(region: vcpu, lane: $0, deviceDoorbell: bell, responseDoorbell: bell,
                             policy: WaitPolicy(maxSpinMicroseconds: 0), timeoutMs: 50)
            }
        }

        /// Takes and "handles" every waiting request, as a device would before it publishes.
        func handleAll() throws {
            while try server.poll() != nil {}
            server.commit()
        }
    }

    func testNothingIsAnsweredBeforeTheFirstPublication() throws {
        let s = try Sides(lanes: 1)
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fd, size: 1))
    }

    func testPublishedReadsAnswerEachByteOfAnAccess() throws {
        let s = try Sides(lanes: 1)
        s.server.publishReads([(0x3fd, 0x60), (0x3fe, 0xb0), (0x3ff, 0x5a)])
        XCTAssertEqual(s.lanes[0].mirroredPortRead(0x3fd, size: 1), 0x60)
        XCTAssertEqual(s.lanes[0].mirroredPortRead(0x3fd, size: 2), 0xb060, "little-endian, a byte per port")
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fc, size: 1), "a port left out (a read with a side effect) is asked")
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fe, size: 4), "one byte of the access left out: asked")
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fd, size: 0))
    }

    /// Once any lane sent something the copy does not include, every lane asks the device: a vCPU always reads its
    /// own writes, and a write another vCPU made before (say, under the guest's lock) as well.
    func testAnythingSentSinceOnAnyLaneSendsReadsToTheDevice() throws {
        let s = try Sides(lanes: 2)
        s.server.publishReads([(0x3ff, 1)])
        XCTAssertEqual(s.lanes[1].mirroredPortRead(0x3ff, size: 1), 1)
        try s.lanes[0].post(.portWrite, size: 1, address: 0x3ff, data: 2)
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3ff, size: 1), "its write is not in the copy")
        XCTAssertNil(s.lanes[1].mirroredPortRead(0x3ff, size: 1), "nor is the other vCPU's")
        try s.handleAll()
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3ff, size: 1), "handled, but not published yet")
        s.server.publishReads([(0x3ff, 2)])
        XCTAssertEqual(s.lanes[0].mirroredPortRead(0x3ff, size: 1), 2)
        XCTAssertEqual(s.lanes[1].mirroredPortRead(0x3ff, size: 1), 2)
    }

    /// A process started in place of a dead one takes its predecessor's copy away until it publishes its own.
    func testASuccessorWithdrawsItsPredecessorsCopy() throws {
        let s = try Sides(lanes: 1)
        s.server.publishReads([(0x3fd, 0x60)])
        let successor = DeviceServer(region: s.channel.device, deviceDoorbell: s.doorbell.raw,
                                     responseDoorbells: [s.doorbell.raw], policy: WaitPolicy(maxSpinMicroseconds: 0))
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fd, size: 1))
        successor.publishReads([(0x3fd, 0x61)])
        XCTAssertEqual(s.lanes[0].mirroredPortRead(0x3fd, size: 1), 0x61)
    }

    /// A device about to change on its own (input arriving) withdraws the copy until it publishes the next.
    func testWithdrawnReadsGoToTheDeviceUntilTheNextPublication() throws {
        let s = try Sides(lanes: 1)
        s.server.publishReads([(0x3fd, 0x60)])
        s.server.withdrawReads()
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fd, size: 1))
        s.server.publishReads([(0x3fd, 0x61)])
        XCTAssertEqual(s.lanes[0].mirroredPortRead(0x3fd, size: 1), 0x61)
    }

    /// Only a serving device's copy counts: one being restarted or given up on answers nothing from it.
    func testOnlyAServingDevicesCopyIsRead() throws {
        let s = try Sides(lanes: 1)
        s.server.publishReads([(0x3fd, 0x60)])
        s.channel.device.deviceStatus = .restarting
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fd, size: 1))
        s.channel.device.deviceStatus = .broken
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fd, size: 1))
        s.channel.device.deviceStatus = .serving
        XCTAssertEqual(s.lanes[0].mirroredPortRead(0x3fd, size: 1), 0x60)
    }

    /// The header page is the device's to scribble on: a copy being rewritten, an impossible entry count or
    /// garbage entries give "ask" or some byte, never a trap or a read outside the copy.
    func testAScribbledCopyNeverTraps() throws {
        let s = try Sides(lanes: 1)
        s.server.publishReads([(0x3fd, 0x60)])
        let mirror = try XCTUnwrap(s.channel.device.readMirror)
        let raw = mirror.base
        raw.storeBytes(of: UInt32(7), as: UInt32.self)  // odd: being written
        XCTAssertNil(s.lanes[0].mirroredPortRead(0x3fd, size: 1))
        raw.storeBytes(of: UInt32(8), as: UInt32.self)
        raw.storeBytes(of: UInt32.max, toByteOffset: 4, as: UInt32.self)  // entry count far past the capacity
        var generator = SystemRandomNumberGenerator()
        for i in 0..<ReadMirror.capacity {
            raw.storeBytes(of: UInt32.random(in: 0...UInt32.max, using: &generator), toByteOffset: 64 + 4 * i, as: UInt32.self)
        }
        for port in UInt16(0x3f8)...0x3ff { _ = s.lanes[0].mirroredPortRead(port, size: 8) }
        s.server.publishReads([(0x3fd, 0x20)])
        XCTAssertEqual(s.lanes[0].mirroredPortRead(0x3fd, size: 1), 0x20, "the next publication is whole again")
    }

    func testAChannelWithMoreLanesThanTheHeaderHoldsMirrorsNothing() throws {
        let ch = try LocalChannel(layout: ChannelLayout(lanes: ReadMirror.maxLanes + 1, capacity: 4))
        XCTAssertNil(ch.device.readMirror)
    }
}
