import Devices
import TestSupport
import Virtio
import XCTest

/// A virtio device's state across its process: the transport's snapshot round-trips, forged snapshots are refused,
/// and a successor adopts the completions its predecessor published after its last commit (exactly once).
final class VirtioSnapshotTests: XCTestCase {
    typealias R = VirtioMMIORegister
    let ram = FakeRAM(size: 1 << 20)
    let line = LineRecorder()
    let backend = RecordingBackend()
    lazy var transport = VirtioMMIOTransport(backend: backend, memory: ram, interrupt: line)
    lazy var mmio = MMIODriver(transport: transport)

    /// A successor's transport on the same RAM, with its own backend and line.
    func successor() -> (VirtioMMIOTransport, RecordingBackend, LineRecorder) {
        let b = RecordingBackend(), l = LineRecorder()
        return (VirtioMMIOTransport(backend: b, memory: ram, interrupt: l), b, l)
    }

    /// A live device with queue 0 set up by `d` and one request served.
    func liveDevice(_ d: inout TestDriver) {
        mmio.bringUp(d)
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        XCTAssertEqual(d.usedIndex, 1)
    }

    func testSnapshotRoundTripsAndTheRestoredDeviceGoesOn() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        mmio.w(R.queueSel, 1)
        let saved = transport.snapshot()
        let (next, nextBackend, nextLine) = successor()
        try next.restore(snapshot: saved)
        XCTAssertEqual(next.snapshot(), saved)
        XCTAssertEqual(next.state, transport.state)
        XCTAssertTrue(next.isLive)
        XCTAssertEqual(nextBackend.activations, [transport.state.driverFeatures], "a live device's backend is activated again")
        XCTAssertEqual(nextLine.level, line.level, "the line says the restored InterruptStatus")
        XCTAssertTrue(nextLine.level)
        d.submit([.w(0x12000, 4)])
        next.queueNotified(0)
        XCTAssertEqual(d.usedIndex, 2)
        XCTAssertEqual(nextBackend.handled.map(\.head), [1])
    }

    /// A successor's transport leaves the line alone until its restore says the level: a level-triggered line
    /// that is up stays up (no needless low in between).
    func testASuccessorSaysTheLineOnlyOnceRestored() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        XCTAssertTrue(line.level)
        let calls = CallRecorder()
        let next = VirtioMMIOTransport(backend: RecordingBackend(), memory: ram, interrupt: calls, settingLine: false)
        XCTAssertEqual(calls.calls, [], "nothing said before the restore")
        try next.restore(snapshot: transport.snapshot())
        XCTAssertEqual(calls.calls, [true])
        let fresh = CallRecorder()
        let other = VirtioMMIOTransport(backend: RecordingBackend(), memory: ram, interrupt: fresh, settingLine: false)
        other.sayInterruptLevel()
        XCTAssertEqual(fresh.calls, [false], "a device with nothing to restore says its line is low")
    }

    func testSnapshotOfAFailedDeviceKeepsItsReason() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        transport.markNeedsReset(reason: "because")
        let (next, _, _) = successor()
        try next.restore(snapshot: transport.snapshot())
        XCTAssertEqual(next.state.failure, "because")
        XCTAssertFalse(next.isLive)
    }

    /// Offsets in the snapshot of a transport with RecordingBackend's two queues.
    enum At {
        static let status = 0, driverFeatures = 12, interruptStatus = 28, queueCount = 36
        static let queue0 = 37, queueBytes = 39
        // Within a queue.
        static let maxSize = 0, used = 21, active = 29, eventIndex = 30, lastAvail = 32
        static let failure = queue0 + 2 * queueBytes
    }

    func testForgedSnapshotsAreRefusedAndChangeNothing() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        let good = transport.snapshot()
        XCTAssertEqual(good.count, At.failure + 1)
        let (target, _, _) = successor()
        let before = target.snapshot()
        func patched(_ at: Int, _ bytes: [UInt8]) -> [UInt8] {
            var b = good
            b.replaceSubrange(at..<at + bytes.count, with: bytes)
            return b
        }
        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        let live = transport.state.status
        let q0 = At.queue0
        let features = transport.state.driverFeatures
        assertRefusesForgeries(target, before: before, [
            ("undefined status bit", patched(At.status, le32(live | 0x10)), .invalid("virtio status 0x1f")),
            ("DRIVER_OK without FEATURES_OK", patched(At.status, le32(0x7)), .invalid("virtio status 0x7 skips a step")),
            ("DRIVER without ACKNOWLEDGE", patched(At.status, le32(0x2)), .invalid("virtio status 0x2 skips a step")),
            ("unoffered feature accepted", patched(At.driverFeatures, le64(features | 1 << 63)),
             .invalid("features 0x\(String(features | 1 << 63, radix: 16)) accepted though not acceptable")),
            ("NEEDS_RESET without a reason", patched(At.status, le32(live | VirtioStatus.deviceNeedsReset)),
             .invalid("DEVICE_NEEDS_RESET without its reason, or a reason without it")),
            ("a reason without NEEDS_RESET", Array(good[..<At.failure]) + [1, 1, 0, 0, 0, 0x41],
             .invalid("DEVICE_NEEDS_RESET without its reason, or a reason without it")),
            ("an overlong reason", Array(good[..<At.failure]) + [1] + le32(513) + [UInt8](repeating: 0x41, count: 513),
             .invalid("byte string of 513 bytes, at most 512 allowed")),
            ("undefined interrupt bit", patched(At.interruptStatus, le32(4)), .invalid("interrupt status 0x4")),
            ("another number of queues", patched(At.queueCount, [3]), .invalid("virtio state with another number of queues")),
            ("another QueueNumMax", patched(q0 + At.maxSize, [32, 0]), .invalid("virtqueue of another QueueNumMax")),
            ("a boolean that is not one", patched(q0 + At.active, [2]), .invalid("boolean byte 2")),
            ("an active queue's used ring misaligned", patched(q0 + At.used, le64(0x4002)),
             .invalid("active virtqueue: the used ring at 0x4002 is misaligned or outside RAM")),
            ("an active queue's used ring outside RAM", patched(q0 + At.used, le64(1 << 20)),
             .invalid("active virtqueue: the used ring at 0x100000 is misaligned or outside RAM")),
            ("ring features not negotiated", patched(q0 + At.eventIndex, [0]),
             .invalid("virtqueue ring features that the negotiated features do not give")),
            ("a live queue out of step", patched(q0 + At.lastAvail, [2, 0]),
             .invalid("a live queue with a request taken but not completed")),
            ("an active queue before DRIVER_OK", patched(At.status, le32(0xb)), .invalid("an active queue before DRIVER_OK")),
            ("trailing bytes", good + [0], .trailingBytes),
        ])
        XCTAssertFalse(target.isLive)
    }

    // MARK: - Adopting what the predecessor published

    /// The predecessor committed after one request, then served two more (used ring published) and died before
    /// its next commit: the successor counts them as done, serves none of them again, and interrupts the driver.
    func testCompletionsPublishedAfterTheCommitAreAdoptedNotRepeated() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        mmio.w(R.interruptACK, VirtioInterrupt.usedBuffer)
        let committed = transport.snapshot()
        d.submit([.w(0x12000, 4)])
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        XCTAssertEqual(d.usedIndex, 3)
        XCTAssertEqual(backend.handled.map(\.head), [0, 1, 2])

        let (next, nextBackend, nextLine) = successor()
        try next.restore(snapshot: committed)
        XCTAssertFalse(nextLine.level, "the committed InterruptStatus was acknowledged")
        XCTAssertEqual(next.adoptPublishedCompletions(), 2)
        XCTAssertTrue(nextLine.level, "the driver is interrupted again: the predecessor may have died before it did")
        XCTAssertEqual(next.state.interruptStatus, VirtioInterrupt.usedBuffer)
        next.runPendingQueues()
        XCTAssertEqual(nextBackend.handled.count, 0, "nothing published is served again")
        XCTAssertEqual(d.usedIndex, 3)
        // The next request is the successor's, once.
        d.submit([.w(0x12000, 4)])
        next.queueNotified(0)
        XCTAssertEqual(nextBackend.handled.map(\.head), [3])
        XCTAssertEqual(d.usedIndex, 4)
        XCTAssertEqual(d.usedElement(3).id, 3)
    }

    /// A request available but not completed when the predecessor died (taken or not) is served by the successor,
    /// once; completions published before it are still adopted.
    func testARequestNotPublishedIsServedOnce() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        let committed = transport.snapshot()
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)  // published after the commit
        d.submit([.w(0x12000, 4)])  // available, never served
        let (next, nextBackend, _) = successor()
        try next.restore(snapshot: committed)
        XCTAssertEqual(next.adoptPublishedCompletions(), 1)
        next.runPendingQueues()
        XCTAssertEqual(nextBackend.handled.map(\.head), [2])
        XCTAssertEqual(d.usedIndex, 3)
        XCTAssertEqual(d.usedElement(2).id, 2)
    }

    /// used->idx is in guest RAM: a value claiming more completions than requests made available is hostile.
    func testAUsedIndexAheadOfTheAvailRingNeedsAReset() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        mmio.w(R.interruptACK, VirtioInterrupt.usedBuffer)
        let committed = transport.snapshot()
        d.submit([.w(0x12000, 4)])
        ram.store(UInt16(3), at: d.used + 2)  // two more than the one request made available
        let (next, nextBackend, nextLine) = successor()
        try next.restore(snapshot: committed)
        XCTAssertEqual(next.adoptPublishedCompletions(), 0)
        XCTAssertFalse(next.isLive)
        XCTAssertEqual(next.state.failure, "queue 0 at takeover: used idx 3 is ahead of avail idx 2")
        XCTAssertEqual(next.state.interruptStatus, VirtioInterrupt.configChange)
        XCTAssertTrue(nextLine.level)
        next.runPendingQueues()
        XCTAssertTrue(nextBackend.handled.isEmpty)
        // Wrapping below the committed index (a used->idx moved backwards) is as hostile.
        let (other, _, _) = successor()
        ram.store(UInt16(0), at: d.used + 2)
        try other.restore(snapshot: committed)
        other.adoptPublishedCompletions()
        XCTAssertEqual(other.state.failure, "queue 0 at takeover: used idx 0 is ahead of avail idx 2")
    }

    /// A driver that set its queue up on memory holding an old used->idx (a reused ring after a reset): activation
    /// writes 0 there, so a successor never takes the stale value for completions its predecessor published.
    func testActivationZeroesAStaleUsedIndex() throws {
        var d = TestDriver(ram: ram, size: 8)
        ram.store(UInt16(5), at: d.used + 2)
        mmio.bringUp(d)
        XCTAssertEqual(d.usedIndex, 0)
        let committed = transport.snapshot()
        for _ in 0..<3 { d.submit([.w(0x12000, 4)]) }
        let (next, nextBackend, _) = successor()
        try next.restore(snapshot: committed)
        XCTAssertEqual(next.adoptPublishedCompletions(), 0)
        next.runPendingQueues()
        XCTAssertEqual(nextBackend.handled.map(\.head), [0, 1, 2], "none of the three is skipped")
        XCTAssertEqual(d.usedIndex, 3)
    }

    /// Nothing is adopted and no interrupt raised when nothing was published after the commit, or the device is
    /// not live.
    func testNothingToAdopt() throws {
        var d = TestDriver(ram: ram, size: 8)
        liveDevice(&d)
        mmio.w(R.interruptACK, VirtioInterrupt.usedBuffer)
        let committed = transport.snapshot()
        let (next, _, nextLine) = successor()
        try next.restore(snapshot: committed)
        XCTAssertEqual(next.adoptPublishedCompletions(), 0)
        XCTAssertFalse(nextLine.level)
        mmio.w(R.status, 0)
        let (reset, _, _) = successor()
        try reset.restore(snapshot: transport.snapshot())
        XCTAssertEqual(reset.adoptPublishedCompletions(), 0)
        XCTAssertEqual(reset.state.status, 0)
    }
}

/// Every `set` call, in order (LineRecorder keeps only the level and the changes).
final class CallRecorder: InterruptLine {
    private(set) var calls: [Bool] = []
    func set(_ asserted: Bool) { calls.append(asserted) }
}

/// What the vcpu process answers for a virtio device given up on.
final class BrokenVirtioDeviceTests: XCTestCase {
    typealias R = VirtioMMIORegister

    func testStatusSaysNeedsResetAndTheRestIsAllOnes() {
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.status, size: 4), 0x4f)
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.interruptStatus, size: 4), UInt64(VirtioInterrupt.configChange))
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.magicValue, size: 4), 0x7472_6976)
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.version, size: 4), 2)
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.queueReady, size: 4), 0xffff_ffff)
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.status, size: 2), 0xffff, "registers need 32-bit reads")
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.config, size: 8), .max)
        XCTAssertEqual(VirtioMMIOTransport.brokenDeviceRead(offset: R.config + 4, size: 1), 0xff)
    }
}
