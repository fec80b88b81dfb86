import Synchronization
import XCTest
import Glibc
@testable import Channel
import System

/// A channel mapped twice in this process: one view per side, as two processes would have.
struct LocalChannel {
    let fd: Int32
    let device: ChannelRegion
    let vcpu: ChannelRegion
    init(layout: ChannelLayout) throws {
        fd = try ChannelRegion.create(layout: layout, name: "test-channel").take()
        device = try ChannelRegion(attaching: fd, layout: layout)
        vcpu = try ChannelRegion(attaching: fd, layout: layout)
    }
}

/// One lane of a channel with its two doorbells, for the tests of a vCPU's calls: the vCPU's client, and the device's
/// server as often as a test starts one (a device process, then its successor).
final class ClientLane: @unchecked Sendable {
    let channel: LocalChannel
    private let doorbell: EventFD, response: EventFD
    init() throws {
        channel = try LocalChannel(layout: ChannelLayout(lanes: 1, capacity: 8))
        doorbell = try EventFD()
        response = try EventFD()
    }
    /// The device's view of the channel.
    var region: ChannelRegion { channel.device }

    func client(timeoutMs: Int, failedProbeMs: Int = 2) -> DeviceClient {
        DeviceClient(region: channel.vcpu, lane: 0, deviceDoorbell: doorbell.raw, responseDoorbell: response.raw,
                     policy: WaitPolicy(maxSpinMicroseconds: 10), timeoutMs: timeoutMs, failedProbeMs: failedProbeMs)
    }

    func server() -> DeviceServer {
        DeviceServer(region: channel.device, deviceDoorbell: doorbell.raw, responseDoorbells: [response.raw],
                     policy: WaitPolicy(maxSpinMicroseconds: 0))
    }

    /// A new server answers the request waiting on the ring, if one waits, with `data`.
    func answerWaitingRequest(with data: UInt64) {
        var server = server()
        if let request = try? server.poll() { try? server.respond(lane: 0, to: request.message, data: data) }
    }
}

final class RingTests: XCTestCase {
    func message(_ i: UInt64, _ op: MessageKind = .portWrite) -> Message {
        Message(sequence: i, operation: op, size: 1, address: 0x3f8, data: i & 0xff)
    }

    func testWrapAroundKeepsOrder() throws {
        let ch = try LocalChannel(layout: ChannelLayout(lanes: 1, capacity: 4))
        var producer = RingProducer(ch.vcpu.requestRing(0))
        var consumer = RingConsumer(ch.device.requestRing(0))
        for round in 0..<10 {
            for i in 0..<3 { XCTAssertTrue(try producer.push(message(UInt64(round * 3 + i)))) }
            for i in 0..<3 { XCTAssertEqual(try consumer.pop(), message(UInt64(round * 3 + i))) }
            XCTAssertNil(try consumer.pop())
        }
    }

    /// A device's requests count as unhandled until it commits them, so a third party watching the channel (the
    /// supervisor stopping a VM) knows what has taken effect; the batch limit keeps a full ring moving.
    func testRequestsStayUnhandledUntilTheDeviceCommits() throws {
        let ch = try LocalChannel(layout: ChannelLayout(lanes: 2, capacity: 8))
        let doorbell = try EventFD()
        var lane0 = RingProducer(ch.vcpu.requestRing(0))
        var lane1 = RingProducer(ch.vcpu.requestRing(1))
        var server = DeviceServer(region: ch.device, deviceDoorbell: doorbell.raw, responseDoorbells: [doorbell.raw, doorbell.raw],
                                  policy: WaitPolicy(maxSpinMicroseconds: 0))
        for i in 0..<6 { XCTAssertTrue(try lane0.push(message(UInt64(i)))) }
        XCTAssertTrue(try lane1.push(Message(sequence: 9, operation: .sync, size: 0, address: 0, data: 0)))
        XCTAssertEqual(ch.vcpu.unhandledRequests().all, 7)
        XCTAssertEqual(ch.vcpu.unhandledRequests().postedWrites, 6, "the sync is not a posted write")

        var taken = 0
        while try server.poll() != nil { taken += 1 }
        XCTAssertEqual(taken, server.batchLimit, "at most half a ring between commits")
        XCTAssertEqual(ch.vcpu.unhandledRequests().all, 7, "taken is not handled")
        server.commit()
        XCTAssertEqual(ch.vcpu.unhandledRequests().all, 7 - taken)
        while try server.poll() != nil { taken += 1 }
        server.commit()
        XCTAssertEqual(taken, 7)
        XCTAssertEqual(ch.vcpu.unhandledRequests().all, 0)
    }

    /// A sync answered after a commit stays uncommitted until the next one: a successor started from that commit
    /// handles it again (and answers it), the requests before it do not come again.
    func testACommitBeforeAnsweringLeavesTheRequestToASuccessor() throws {
        final class Nothing: RestartableDevice {
            func snapshot() -> [UInt8] { [] }
            func didCommit() {}
        }
        let ch = try LocalChannel(layout: ChannelLayout(lanes: 2, capacity: 8))
        let doorbell = try EventFD()
        func server() -> DeviceServer {
            DeviceServer(region: ch.device, deviceDoorbell: doorbell.raw, responseDoorbells: [doorbell.raw, doorbell.raw],
                         policy: WaitPolicy(maxSpinMicroseconds: 0))
        }
        var lane1 = RingProducer(ch.vcpu.requestRing(1))
        let sync = Message(sequence: 9, operation: .sync, size: 0, address: 0, data: 0)
        for m in [message(1), message(2), sync, message(3)] { XCTAssertTrue(try lane1.push(m)) }
        var first = server()
        XCTAssertNil(first.makeRestartable(Nothing()))
        XCTAssertEqual(first.next { _ in }?.message, message(1))
        XCTAssertEqual(first.next { _ in }?.message, message(2))
        XCTAssertEqual(first.next { _ in }?.message, sync)
        first.commit(answering: 1)
        XCTAssertEqual(first.uncommitted, 1)
        XCTAssertEqual(ch.vcpu.unhandledRequests().all, 2, "the sync and what follows it")
        // Killed before answering: the successor starts at the sync.
        var second = server()
        XCTAssertNotNil(second.makeRestartable(Nothing()))
        XCTAssertEqual(second.next { _ in }?.message, sync)
        XCTAssertEqual(second.next { _ in }?.message, message(3))
        second.commit()
        XCTAssertEqual(ch.vcpu.unhandledRequests().all, 0)
    }

    /// A producer that publishes an impossible tail loses its lane: one error, then the device neither reads it
    /// again nor wakes up for it, and the other lanes go on.
    func testACorruptTailCutsOffItsLaneOnly() throws {
        let ch = try LocalChannel(layout: ChannelLayout(lanes: 2, capacity: 8))
        let doorbell = try EventFD()
        var server = DeviceServer(region: ch.device, deviceDoorbell: doorbell.raw, responseDoorbells: [doorbell.raw, doorbell.raw],
                                  policy: WaitPolicy(maxSpinMicroseconds: 0))
        ch.vcpu.requestRing(0).tail.pointee.store(1_000_000, ordering: .releasing)
        var good = RingProducer(ch.vcpu.requestRing(1))
        XCTAssertTrue(try good.push(message(7)))
        var errors: [LaneError] = []
        XCTAssertEqual(server.next { errors.append($0) }?.message, message(7))
        XCTAssertNil(server.next { errors.append($0) })
        XCTAssertEqual(errors.map(\.lane), [0], "reported once")
        XCTAssertEqual(server.brokenLanes, [0])
        server.commit()
        let start = monotonicNanoseconds()
        _ = try server.wait(extra: [], timeoutMs: 50)
        XCTAssertGreaterThanOrEqual(monotonicNanoseconds() - start, 40_000_000, "the broken lane does not keep the device awake")
        XCTAssertTrue(try good.push(message(8)))
        XCTAssertEqual(server.next { errors.append($0) }?.message, message(8))
    }

    func testFullRingRefusesUntilConsumed() throws {
        let ch = try LocalChannel(layout: ChannelLayout(lanes: 1, capacity: 8))
        var producer = RingProducer(ch.vcpu.requestRing(0))
        var consumer = RingConsumer(ch.device.requestRing(0))
        for i in 0..<8 { XCTAssertTrue(try producer.push(message(UInt64(i)))) }
        XCTAssertFalse(try producer.push(message(8)), "a full ring refuses, never overwrites")
        XCTAssertEqual(try consumer.pop(), message(0))
        XCTAssertTrue(try producer.push(message(8)))
        for i in 1...8 { XCTAssertEqual(try consumer.pop(), message(UInt64(i))) }
    }

    func testHostileSlotContentsAreRejected() throws {
        let ch = try LocalChannel(layout: ChannelLayout(lanes: 1, capacity: 4))
        let ring = ch.vcpu.requestRing(0)
        var consumer = RingConsumer(ch.device.requestRing(0))
        func publish(_ header: UInt64, data: UInt64 = 0) {
            let tail = ring.tail.pointee.load(ordering: .relaxed)
            let slot = ring.slot(tail)
            slot.storeBytes(of: tail, as: UInt64.self)
            slot.storeBytes(of: header, toByteOffset: 8, as: UInt64.self)
            slot.storeBytes(of: data, toByteOffset: 24, as: UInt64.self)
            ring.tail.pointee.store(tail + 1, ordering: .releasing)
        }
        publish(0x0109)  // operation 9
        XCTAssertThrowsError(try consumer.pop()) { XCTAssertEqual($0 as? MessageError, .unknownOperation(9)) }
        publish(0x0302)  // size 3
        XCTAssertThrowsError(try consumer.pop()) { XCTAssertEqual($0 as? MessageError, .badSize(3)) }
        publish(0x0102, data: 0x100)  // one-byte write carrying two bytes
        XCTAssertThrowsError(try consumer.pop()) { XCTAssertEqual($0 as? MessageError, .dataWiderThanSize) }
        publish(0xdead_0000_0102)  // reserved bytes
        XCTAssertThrowsError(try consumer.pop()) { XCTAssertEqual($0 as? MessageError, .reservedBitsSet) }
        publish(0x0102, data: 0x41)
        XCTAssertEqual(try consumer.pop()?.data, 0x41, "a good slot after bad ones is still read")

        ring.tail.pointee.store(1_000_000, ordering: .releasing)  // a tail far beyond the ring
        XCTAssertThrowsError(try consumer.pop()) {
            guard case .indexOutOfRange = $0 as? MessageError else { return XCTFail("\($0)") }
        }
        var producer = RingProducer(ch.device.responseRing(0))
        ch.vcpu.responseRing(0).head.pointee.store(99, ordering: .releasing)  // a head ahead of our tail
        // The producer reads the head again only when the ring looks full by the head it read last: at the latest then.
        for i in 0..<4 { XCTAssertEqual(try producer.push(message(UInt64(i), .response)), true) }
        XCTAssertThrowsError(try producer.push(message(4, .response))) {
            XCTAssertEqual($0 as? MessageError, .indexOutOfRange(head: 99, tail: 4))
        }
    }

    func testHeaderMismatchIsRefused() throws {
        let fd = try ChannelRegion.create(layout: ChannelLayout(lanes: 1, capacity: 4), name: "t").take()
        defer { close(fd) }
        XCTAssertThrowsError(try ChannelRegion(attaching: fd, layout: ChannelLayout(lanes: 1, capacity: 8)))
    }

    func testClientTimesOutOnASilentDeviceAndDropsTheLateAnswer() throws {
        let lane = try ClientLane()
        // A long probe: this test is about the late answer, not about how long a failed device is waited for.
        var client = lane.client(timeoutMs: 50, failedProbeMs: 50)
        var server = lane.server()
        let start = monotonicNanoseconds()
        XCTAssertThrowsError(try client.call(.portRead, size: 1, address: 0x3fd)) {
            guard case .timedOut = $0 as? ChannelError else { return XCTFail("\($0)") }
        }
        XCTAssertGreaterThanOrEqual(monotonicNanoseconds() - start, 50_000_000)
        // The device answers the first read late, then a second one; the client must take only the second.
        let first = try XCTUnwrap(try server.poll())
        try server.respond(lane: 0, to: first.message, data: 0x11)
        let reader = Thread { [server] in
            var s = server
            while true { if let r = try? s.poll() { try? s.respond(lane: 0, to: r.message, data: 0x22); return } }
        }
        reader.start()
        XCTAssertEqual(try client.call(.portRead, size: 1, address: 0x3fd), 0x22)
        XCTAssertFalse(client.failed, "a device that answers again is healthy again")
    }

    /// A device that keeps sending stale answers cannot hold a vCPU past the deadline, and once it has missed one,
    /// later accesses wait only the short probe, not the whole timeout each.
    func testStaleAnswersCannotHoldTheVCPUAndAFailedDeviceCostsOnlyAProbe() throws {
        let lane = try ClientLane()
        var client = lane.client(timeoutMs: 200, failedProbeMs: 5)
        let stop = Atomic<Bool>(false)
        let region = lane.region
        let flooder = Thread {
            var forged = RingProducer(region.responseRing(0))
            while !stop.load(ordering: .relaxed) {
                _ = try? forged.push(Message(sequence: 0, operation: .response, size: 1, address: 0, data: 0))
            }
        }
        flooder.start()
        defer { stop.store(true, ordering: .relaxed) }
        var start = monotonicNanoseconds()
        XCTAssertThrowsError(try client.call(.portRead, size: 1, address: 0x3fd)) {
            guard case .timedOut = $0 as? ChannelError else { return XCTFail("\($0)") }
        }
        let first = monotonicNanoseconds() - start
        XCTAssertGreaterThanOrEqual(first, 200_000_000)
        XCTAssertLessThan(first, 2_000_000_000, "stale answers must not extend the deadline")
        XCTAssertTrue(client.failed)
        stop.store(true, ordering: .relaxed)
        start = monotonicNanoseconds()
        XCTAssertThrowsError(try client.call(.portRead, size: 1, address: 0x3fd))
        XCTAssertLessThan(monotonicNanoseconds() - start, 150_000_000, "a failed device costs the probe, not the 200 ms timeout")
    }

    /// A device replaced while a vCPU waits: the successor answers again a read its predecessor had answered but
    /// not committed (a stale answer), then is slow to reach the vCPU's own request (writing console output, say),
    /// past the deadline. The vCPU waits for it as it waited for the restart, instead of giving up on the stale
    /// answer. (A device never replaced gets no such time: see the test above.)
    func testAStaleAnswerFromARestartedDeviceDoesNotEndTheWait() throws {
        let lane = try ClientLane()
        var client = lane.client(timeoutMs: 50, failedProbeMs: 5)
        let region = lane.region
        region.deviceStatus = .restarting
        let successor = Thread {
            // The restart outlasts one timeout (the wait is extended at 50 ms); the successor's stale answer is on
            // the ring, its doorbell not rung, when the extended deadline (100 ms) comes, and its answer to the
            // vCPU's request comes 30 ms after that.
            usleep(95_000)
            var answers = RingProducer(region.responseRing(0))
            _ = try? answers.push(Message(sequence: 0, operation: .response, size: 1, address: 0x3ff, data: 0x11))
            region.deviceStatus = .serving
            usleep(35_000)
            lane.answerWaitingRequest(with: 0x22)
        }
        successor.start()
        XCTAssertEqual(try client.call(.portRead, size: 1, address: 0x3ff), 0x22)
        XCTAssertFalse(client.failed)
    }

    func testASuccessorStillWorkingThroughTheRingAtTheDeadlineIsWaitedFor() throws {
        // The device's process dies after the request went out; the supervisor replaces it (restarting, the restart
        // counted, serving), and the successor, busy with what its predecessor left on the ring, has answered nothing
        // when the deadline comes (50 ms): it is waited for as a restart is, and answers at 80 ms. (tools/test once
        // failed so: a pio successor started after a 600 ms back-off had not reached the read by the deadline.)
        let lane = try ClientLane()
        var client = lane.client(timeoutMs: 50, failedProbeMs: 5)
        let region = lane.region
        let successor = Thread {
            usleep(10_000)
            region.deviceStatus = .restarting
            usleep(10_000)
            region.restarts &+= 1
            region.deviceStatus = .serving
            usleep(60_000)
            lane.answerWaitingRequest(with: 0x33)
        }
        successor.start()
        XCTAssertEqual(try client.call(.portRead, size: 1, address: 0x3fd), 0x33)
        XCTAssertFalse(client.failed)
        // A device never replaced gets one timeout: the next read, which nobody answers, fails after 50 ms.
        XCTAssertThrowsError(try client.call(.portRead, size: 1, address: 0x3fd)) {
            guard case .timedOut = $0 as? ChannelError else { return XCTFail("\($0)") }
        }
    }

    func testWrongSequenceFromDeviceIsAnError() throws {
        let lane = try ClientLane()
        var client = lane.client(timeoutMs: 100)
        var forged = RingProducer(lane.region.responseRing(0))
        XCTAssertTrue(try forged.push(Message(sequence: 77, operation: .response, size: 1, address: 0, data: 0)))
        XCTAssertThrowsError(try client.call(.portRead, size: 1, address: 0x3fd)) {
            guard case .peer(.unexpectedSequence) = $0 as? ChannelError else { return XCTFail("\($0)") }
        }
    }
}
