import Devices
import Virtio
import XCTest

/// A backend that records what the transport asks of it and answers every request by filling the first writable
/// byte with 0xAB.
final class RecordingBackend: VirtioDeviceBackend {
    var deviceID: UInt32 { 42 }
    var deviceFeatures: UInt64 { 1 << 0 | 1 << 5 }
    var queueMaxSizes: [UInt16] { [16, 8] }
    var config: [UInt8] = Array(0..<16)
    var activations: [UInt64] = []
    var resets = 0
    var handled: [(queue: Int, head: UInt16)] = []
    var failNext = false

    func readConfig(offset: UInt64, size: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<size where offset + UInt64(i) < UInt64(config.count) {
            v |= UInt64(config[Int(offset) + i]) << (8 * UInt64(i))
        }
        return v
    }

    func writeConfig(offset: UInt64, size: Int, value: UInt64) -> Bool {
        guard offset < 4 else { return false }
        config[Int(offset)] = UInt8(truncatingIfNeeded: value)
        return true
    }

    func activate(features: UInt64) { activations.append(features) }
    func reset() { resets += 1 }

    func handle(_ request: DescriptorChain, queue: Int, memory: GuestRAM) throws(VirtioRequestError) -> UInt32 {
        if failNext { throw VirtioRequestError("told to fail") }
        handled.append((queue, request.head))
        guard let w = request.writable.first, w.length > 0 else { return 0 }
        memory.store(UInt8(0xAB), at: w.gpa)
        return 1
    }
}

final class MMIOTransportTests: XCTestCase {
    typealias R = VirtioMMIORegister
    let ram = FakeRAM(size: 1 << 20)
    let line = LineRecorder()
    let backend = RecordingBackend()
    lazy var transport = VirtioMMIOTransport(backend: backend, memory: ram, interrupt: line, vendorID: 0x1234)
    lazy var mmio = MMIODriver(transport: transport)
    let all = VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK

    func testIdentityRegisters() {
        XCTAssertEqual(mmio.r(R.magicValue), 0x7472_6976)
        XCTAssertEqual(mmio.r(R.version), 2)
        XCTAssertEqual(mmio.r(R.deviceID), 42)
        XCTAssertEqual(mmio.r(R.vendorID), 0x1234)
        XCTAssertEqual(mmio.r(R.configGeneration), 0)
        XCTAssertEqual(mmio.r(R.status), 0)
        XCTAssertEqual(mmio.r(R.interruptStatus), 0)
    }

    func testDeviceFeaturesArePagedBySelect() {
        XCTAssertEqual(mmio.deviceFeatures, 1 << 0 | 1 << 5 | VirtioFeature.transportOffered)
        mmio.w(R.deviceFeaturesSel, 2)
        XCTAssertEqual(mmio.r(R.deviceFeatures), 0)
        XCTAssertEqual(transport.offeredFeatures, mmio.deviceFeatures)
    }

    func testWriteOnlyReservedAndSharedMemoryRegisters() {
        for offset in [R.deviceFeaturesSel, R.driverFeatures, R.driverFeaturesSel, R.queueSel, R.queueNum, R.queueNotify,
                       R.interruptACK, R.queueDescLow, R.queueDescHigh, R.queueDriverLow, R.queueDriverHigh,
                       R.queueDeviceLow, R.queueDeviceHigh, R.shmSel, R.queueReset, 0x018, 0x0f8] {
            mmio.w(R.queueSel, 0)
            XCTAssertEqual(mmio.r(offset), 0, "offset 0x\(String(offset, radix: 16))")
        }
        // No shared memory regions: length and base read as -1.
        mmio.w(R.shmSel, 0)
        for offset in [R.shmLenLow, R.shmLenHigh, R.shmBaseLow, R.shmBaseHigh] { XCTAssertEqual(mmio.r(offset), .max) }
        // Writes to read-only registers change nothing.
        mmio.w(R.magicValue, 0)
        mmio.w(R.version, 1)
        mmio.w(R.deviceID, 7)
        mmio.w(R.interruptStatus, 3)
        mmio.w(R.configGeneration, 9)
        mmio.w(R.queueNumMax, 2)
        XCTAssertEqual(mmio.r(R.magicValue), R.magic)
        XCTAssertEqual(mmio.r(R.version), 2)
        XCTAssertEqual(mmio.r(R.deviceID), 42)
        XCTAssertEqual(mmio.r(R.interruptStatus), 0)
        XCTAssertEqual(mmio.r(R.configGeneration), 0)
        XCTAssertEqual(mmio.r(R.queueNumMax), 16)
    }

    func testRegistersNeedAlignedWordAccess() {
        XCTAssertEqual(transport.read(offset: R.magicValue, size: 2), 0)
        XCTAssertEqual(transport.read(offset: R.magicValue, size: 8), 0)
        XCTAssertEqual(transport.read(offset: R.magicValue + 1, size: 4), 0)
        XCTAssertEqual(transport.read(offset: R.magicValue + 2, size: 4), 0)
        transport.write(offset: R.status, size: 1, value: 1)
        transport.write(offset: R.status + 2, size: 4, value: 1)
        XCTAssertEqual(mmio.r(R.status), 0)
        transport.write(offset: R.status, size: 4, value: 1)
        XCTAssertEqual(mmio.r(R.status), 1)
    }

    func testConfigSpaceTakesAnyWidth() {
        XCTAssertEqual(transport.read(offset: R.config, size: 1), 0x00)
        XCTAssertEqual(transport.read(offset: R.config + 1, size: 2), 0x0201)
        XCTAssertEqual(transport.read(offset: R.config + 3, size: 4), 0x0605_0403)
        XCTAssertEqual(transport.read(offset: R.config + 8, size: 8), 0x0F0E_0D0C_0B0A_0908)
        XCTAssertEqual(transport.read(offset: R.config + 14, size: 4), 0x0F0E, "past the end reads 0")
        XCTAssertEqual(transport.read(offset: R.config, size: 3), 0x020100)
        XCTAssertEqual(transport.read(offset: R.config, size: 0), 0)
        XCTAssertEqual(transport.read(offset: R.config, size: 16), 0)
        transport.write(offset: R.config + 1, size: 1, value: 0x1FF)
        XCTAssertEqual(backend.config[1], 0xFF)
        XCTAssertEqual(mmio.r(R.configGeneration), 1, "a config change bumps the generation")
        transport.write(offset: R.config + 8, size: 1, value: 0)
        XCTAssertEqual(mmio.r(R.configGeneration), 1, "an ignored write does not")
        XCTAssertFalse(line.level, "no config interrupt before DRIVER_OK")
    }

    func testNegotiationAcceptsSubsetWithVersion1() {
        XCTAssertTrue(mmio.negotiate(VirtioFeature.version1 | 1 << 5))
        XCTAssertEqual(transport.state.driverFeatures, VirtioFeature.version1 | 1 << 5)
        // Features are frozen after FEATURES_OK.
        mmio.writeDriverFeatures(VirtioFeature.version1)
        XCTAssertEqual(transport.state.driverFeatures, VirtioFeature.version1 | 1 << 5)
    }

    func testNegotiationRefusesUnofferedOrLegacy() {
        XCTAssertFalse(mmio.negotiate(VirtioFeature.version1 | 1 << 1), "bit 1 was not offered")
        XCTAssertEqual(mmio.r(R.status), VirtioStatus.acknowledge | VirtioStatus.driver)
        XCTAssertFalse(mmio.negotiate(1 << 5), "no VERSION_1")
        XCTAssertFalse(mmio.negotiate(VirtioFeature.version1 | 1 << 40))
        mmio.w(R.driverFeaturesSel, 2)
        mmio.w(R.driverFeatures, 0xFFFF_FFFF) // a page that does not exist is ignored
        XCTAssertTrue(mmio.negotiate(VirtioFeature.version1))
        // DRIVER_OK cannot follow a refused FEATURES_OK.
        mmio.negotiate(1 << 5)
        mmio.w(R.status, all)
        XCTAssertEqual(mmio.r(R.status), VirtioStatus.acknowledge | VirtioStatus.driver)
        XCTAssertTrue(backend.activations.isEmpty)
    }

    func testStatusMachineOrderAndReset() {
        mmio.w(R.status, VirtioStatus.driver)
        XCTAssertEqual(mmio.r(R.status), 0, "DRIVER before ACKNOWLEDGE")
        mmio.w(R.status, VirtioStatus.acknowledge)
        mmio.w(R.status, VirtioStatus.acknowledge | VirtioStatus.featuresOK)
        XCTAssertEqual(mmio.r(R.status), VirtioStatus.acknowledge, "FEATURES_OK before DRIVER")
        mmio.w(R.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.driverOK)
        XCTAssertEqual(mmio.r(R.status), VirtioStatus.acknowledge, "DRIVER_OK before FEATURES_OK")
        mmio.w(R.status, VirtioStatus.acknowledge | VirtioStatus.driver)
        mmio.w(R.status, VirtioStatus.acknowledge)
        XCTAssertEqual(mmio.r(R.status), VirtioStatus.acknowledge | VirtioStatus.driver, "bits are only cleared by reset")
        mmio.w(R.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.deviceNeedsReset)
        XCTAssertEqual(mmio.r(R.status), VirtioStatus.acknowledge | VirtioStatus.driver, "the driver cannot set NEEDS_RESET")
        mmio.w(R.status, VirtioStatus.failed)
        XCTAssertEqual(mmio.r(R.status), VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.failed)
        mmio.w(R.status, 0)
        XCTAssertEqual(mmio.r(R.status), 0)
        XCTAssertEqual(backend.resets, 1)
    }

    func testQueueRegistersAndReadyRules() {
        mmio.negotiate()
        mmio.w(R.queueSel, 1)
        XCTAssertEqual(mmio.r(R.queueNumMax), 8)
        mmio.w(R.queueSel, 2)
        XCTAssertEqual(mmio.r(R.queueNumMax), 0, "no queue 2")
        mmio.w(R.queueNum, 4) // ignored
        mmio.w(R.queueReady, 1)
        XCTAssertEqual(mmio.r(R.queueReady), 0)
        mmio.w(R.queueSel, 0)
        XCTAssertEqual(mmio.r(R.queueNumMax), 16)
        XCTAssertEqual(transport.state.queues[0].size, 16, "QueueNum defaults to the maximum")
        mmio.w(R.queueNum, 8)
        mmio.w(R.queueDescLow, 0x1000)
        mmio.w(R.queueDescHigh, 0x1)
        mmio.w(R.queueDriverLow, 0x3000)
        mmio.w(R.queueDeviceLow, 0x4000)
        mmio.w(R.queueDeviceHigh, 0x2)
        var q = transport.state.queues[0]
        XCTAssertEqual(q.size, 8)
        XCTAssertEqual(q.descriptorTable, 0x1_0000_1000)
        XCTAssertEqual(q.availRing, 0x3000)
        XCTAssertEqual(q.usedRing, 0x2_0000_4000)
        mmio.w(R.queueDescHigh, 0)
        mmio.w(R.queueDeviceHigh, 0)
        mmio.w(R.queueReady, 1)
        XCTAssertEqual(mmio.r(R.queueReady), 1)
        // Ready: the other registers are locked.
        mmio.w(R.queueNum, 4)
        mmio.w(R.queueDescLow, 0x5000)
        q = transport.state.queues[0]
        XCTAssertEqual(q.size, 8)
        XCTAssertEqual(q.descriptorTable, 0x1000)
        // Not ready again (before DRIVER_OK), they can change.
        mmio.w(R.queueReady, 0)
        mmio.w(R.queueNum, 0x1_0000)
        XCTAssertEqual(transport.state.queues[0].size, 0, "a QueueNum above 16 bits is kept invalid, not truncated")
        mmio.w(R.queueNum, 8)
        mmio.w(R.queueReady, 1)
        mmio.w(R.status, all)
        XCTAssertTrue(transport.state.queues[0].isActive)
        XCTAssertFalse(transport.state.queues[1].isActive)
        XCTAssertEqual(backend.activations, [transport.offeredFeatures])
        // After DRIVER_OK nothing about the queue changes, not even ready.
        mmio.w(R.queueReady, 0)
        mmio.w(R.queueSel, 1)
        mmio.w(R.queueNum, 4)
        mmio.w(R.queueReady, 1)
        mmio.w(R.queueSel, 0)
        XCTAssertEqual(mmio.r(R.queueReady), 1)
        XCTAssertEqual(transport.state.queues[1].size, 8)
        XCTAssertFalse(transport.state.queues[1].ready)
    }

    func testInvalidQueueAtDriverOKNeedsReset() {
        var d = TestDriver(ram: ram, size: 8)
        d = TestDriver(ram: ram, size: 8, desc: 0x1008) // misaligned descriptor table
        mmio.bringUp(d)
        XCTAssertEqual(mmio.r(R.status), all | VirtioStatus.deviceNeedsReset)
        XCTAssertEqual(mmio.r(R.interruptStatus), VirtioInterrupt.configChange)
        XCTAssertTrue(line.level)
        XCTAssertNotNil(transport.state.failure)
        XCTAssertTrue(backend.activations.isEmpty)
        // Reset clears it all and lowers the line.
        mmio.w(R.status, 0)
        XCTAssertEqual(mmio.r(R.status), 0)
        XCTAssertEqual(mmio.r(R.interruptStatus), 0)
        XCTAssertFalse(line.level)
        XCTAssertNil(transport.state.failure)
        XCTAssertFalse(transport.state.queues[0].ready)
    }

    func testQueueNotificationServesRequestsAndInterrupts() {
        var d = TestDriver(ram: ram, size: 8)
        mmio.bringUp(d)
        d.submit([.r(0x10000, 4), .w(0x11000, 4)])
        d.submit([.w(0x12000, 4)])
        XCTAssertEqual(transport.queueNotified(0), .idle)
        XCTAssertEqual(backend.handled.map(\.head), [0, 2])
        XCTAssertEqual(d.usedIndex, 2)
        XCTAssertEqual(d.usedElement(0).length, 1)
        XCTAssertEqual(ram.load(UInt8.self, at: 0x11000), 0xAB)
        XCTAssertEqual(d.availEvent, 2, "EVENT_IDX: notify me at the next entry")
        XCTAssertEqual(mmio.r(R.interruptStatus), VirtioInterrupt.usedBuffer)
        XCTAssertTrue(line.level)
        mmio.w(R.interruptACK, VirtioInterrupt.usedBuffer)
        XCTAssertEqual(mmio.r(R.interruptStatus), 0)
        XCTAssertFalse(line.level)
        // The QueueNotify register takes the same path. (The driver re-arms used_event as Linux does.)
        d.setUsedEvent(2)
        d.submit([.w(0x12000, 4)])
        mmio.w(R.queueNotify, 0)
        XCTAssertEqual(d.usedIndex, 3)
        XCTAssertTrue(line.level)
        // Unknown and inactive queues are ignored.
        XCTAssertEqual(transport.queueNotified(1), .idle)
        XCTAssertEqual(transport.queueNotified(7), .idle)
        XCTAssertEqual(transport.queueNotified(-1), .idle)
    }

    func testEventIndexSuppressesInterrupts() {
        var d = TestDriver(ram: ram, size: 8)
        mmio.bringUp(d)
        d.setUsedEvent(1) // interrupt once used idx passes 1
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        XCTAssertFalse(line.level)
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        XCTAssertTrue(line.level)
    }

    func testNoInterruptFlagWithoutEventIndex() {
        var d = TestDriver(ram: ram, size: 8)
        mmio.bringUp(d, features: VirtioFeature.version1)
        d.setAvailFlags(VirtqAvailFlag.noInterrupt)
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        XCTAssertEqual(d.usedIndex, 1)
        XCTAssertFalse(line.level)
    }

    func testBudgetBoundsWorkPerCall() {
        var d = TestDriver(ram: ram, size: 8)
        mmio.bringUp(d)
        for _ in 0..<8 { d.submit([.w(0x12000, 4)]) }
        XCTAssertEqual(transport.queueNotified(0, budget: 3), .morePending)
        XCTAssertEqual(d.usedIndex, 3)
        XCTAssertTrue(transport.hasPendingWork)
        XCTAssertTrue(line.level, "what was done is signalled")
        XCTAssertTrue(transport.runPendingQueues() == false || d.usedIndex == 8)
        XCTAssertEqual(d.usedIndex, 8)
        XCTAssertFalse(transport.hasPendingWork)
    }

    func testHostileQueueMarksNeedsResetAndStopsServing() {
        var d = TestDriver(ram: ram, size: 8)
        mmio.bringUp(d)
        mmio.w(R.interruptACK, 3)
        d.setAvailIndex(100)
        XCTAssertEqual(transport.queueNotified(0), .idle)
        XCTAssertEqual(mmio.r(R.status), all | VirtioStatus.deviceNeedsReset)
        XCTAssertEqual(mmio.r(R.interruptStatus), VirtioInterrupt.configChange)
        XCTAssertTrue(line.level)
        XCTAssertEqual(transport.state.failure, "queue 0: avail idx 100 is more than the queue size ahead of 0")
        // The driver cannot clear NEEDS_RESET by writing status; the device stays stopped.
        mmio.w(R.status, all)
        XCTAssertNotEqual(mmio.r(R.status) & VirtioStatus.deviceNeedsReset, 0)
        d.setAvailIndex(1)
        transport.queueNotified(0)
        XCTAssertEqual(d.usedIndex, 0)
        // A full reset and bring-up makes it usable again.
        d = TestDriver(ram: ram, size: 8)
        d.setAvailIndex(0)
        mmio.bringUp(d)
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        XCTAssertEqual(d.usedIndex, 1)
    }

    func testBackendFailureMarksNeedsReset() {
        var d = TestDriver(ram: ram, size: 8)
        mmio.bringUp(d)
        backend.failNext = true
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        XCTAssertNotEqual(mmio.r(R.status) & VirtioStatus.deviceNeedsReset, 0)
        XCTAssertEqual(transport.state.failure, "queue 0: told to fail")
    }

    func testConfigChangedInterruptsOnceLive() {
        let d = TestDriver(ram: ram, size: 8)
        transport.configChanged()
        XCTAssertEqual(mmio.r(R.configGeneration), 1)
        XCTAssertFalse(line.level)
        mmio.bringUp(d)
        transport.configChanged()
        XCTAssertEqual(mmio.r(R.configGeneration), 2)
        XCTAssertEqual(mmio.r(R.interruptStatus), VirtioInterrupt.configChange)
        XCTAssertTrue(line.level)
        mmio.w(R.interruptACK, VirtioInterrupt.usedBuffer)
        XCTAssertTrue(line.level, "acknowledging another bit leaves the line up")
        mmio.w(R.interruptACK, VirtioInterrupt.configChange)
        XCTAssertFalse(line.level)
        XCTAssertEqual(line.changes, 2)
    }

    func testRestoringStateResumesTheDevice() throws {
        var d = TestDriver(ram: ram, size: 8)
        mmio.bringUp(d)
        d.submit([.w(0x12000, 4)])
        transport.queueNotified(0)
        let saved = try JSONDecoder().decode(VirtioMMIOState.self, from: JSONEncoder().encode(transport.state))
        XCTAssertEqual(saved, transport.state)
        // The old process dies with a request published but not notified.
        d.submit([.w(0x12000, 4)])
        let line2 = LineRecorder()
        let backend2 = RecordingBackend()
        let restored = VirtioMMIOTransport(backend: backend2, memory: ram, interrupt: line2, restoring: saved)
        XCTAssertTrue(line2.level, "InterruptStatus was still set")
        XCTAssertEqual(backend2.activations.count, 1)
        XCTAssertTrue(restored.hasPendingWork)
        restored.runPendingQueues()
        XCTAssertEqual(d.usedIndex, 2)
        XCTAssertEqual(backend2.handled.map(\.head), [1])
        // A saved state whose rings no longer fit RAM is not trusted.
        let small = FakeRAM(size: 0x2000)
        let line3 = LineRecorder()
        let distrusted = VirtioMMIOTransport(backend: RecordingBackend(), memory: small, interrupt: line3, restoring: saved)
        XCTAssertNotEqual(distrusted.state.status & VirtioStatus.deviceNeedsReset, 0)
        XCTAssertFalse(distrusted.isLive)
        XCTAssertTrue(line3.level)
        // A state from a different device shape is not used.
        let other = VirtioMMIOTransport(backend: VirtioEntropy(source: CountingEntropy()), memory: ram, interrupt: line2,
                                        restoring: saved)
        XCTAssertEqual(other.state.status, 0)
    }
}
