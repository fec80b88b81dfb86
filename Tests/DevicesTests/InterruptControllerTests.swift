import Glibc
import XCTest
@testable import Devices

/// The vCPUs' mailboxes as the shared-memory `InterruptMailbox` behaves: one vector slot per vCPU; `post` fails
/// while the slot is full, `replace` succeeds only while the old offer is still there (not yet taken by the
/// vCPU), `withdraw` empties it. The test plays the vCPU with `take(vcpu:)`.
final class TestMailbox: InterruptOffers {
    private(set) var slots: [UInt8?]
    /// Every `withdraw` call, in order.
    private(set) var withdrawals: [Int] = []

    init(vcpus: Int) { slots = Array(repeating: nil, count: vcpus) }

    func post(_ vector: UInt8, vcpu: Int) -> Bool {
        guard slots.indices.contains(vcpu), slots[vcpu] == nil else { return false }
        slots[vcpu] = vector
        return true
    }

    func replace(_ old: UInt8, with new: UInt8, vcpu: Int) -> Bool {
        guard slots.indices.contains(vcpu), slots[vcpu] == old else { return false }
        slots[vcpu] = new
        return true
    }

    func withdraw(vcpu: Int) {
        withdrawals.append(vcpu)
        if slots.indices.contains(vcpu) { slots[vcpu] = nil }
    }

    /// The vCPU takes its offer (to inject it), leaving the slot empty.
    func take(vcpu: Int) -> UInt8? {
        defer { slots[vcpu] = nil }
        return slots[vcpu]
    }
}

final class InterruptControllerTests: XCTestCase {
    struct Event: Equatable { var vcpu: Int; var event: CPUEvent }
    struct TimerRequest: Equatable { var vcpu: Int; var at: UInt64? }

    var chip = InterruptController(vcpuCount: 2)
    var mailbox = TestMailbox(vcpus: 2)

    // LAPIC registers.
    let id: UInt64 = 0x20, version: UInt64 = 0x30, tpr: UInt64 = 0x80, eoiRegister: UInt64 = 0xb0, ldr: UInt64 = 0xd0
    let dfr: UInt64 = 0xe0, svr: UInt64 = 0xf0, esr: UInt64 = 0x280, icrLow: UInt64 = 0x300, icrHigh: UInt64 = 0x310
    let lvtTimer: UInt64 = 0x320, initialCount: UInt64 = 0x380, currentCount: UInt64 = 0x390, divide: UInt64 = 0x3e0
    // ICR fields.
    let levelAssert: UInt32 = 1 << 14, levelTrigger: UInt32 = 1 << 15, logicalMode: UInt32 = 1 << 11
    let toSelf: UInt32 = 1 << 18, toAllIncludingSelf: UInt32 = 2 << 18, toAllExcludingSelf: UInt32 = 3 << 18
    let nmiMode: UInt32 = 4 << 8, initMode: UInt32 = 5 << 8, startupMode: UInt32 = 6 << 8

    func make(vcpus: Int) {
        chip = InterruptController(vcpuCount: vcpus)
        mailbox = TestMailbox(vcpus: vcpus)
    }

    // MARK: the guest's side: MMIO through the controller

    func lapicRead(_ vcpu: Int, _ offset: UInt64, now: UInt64 = 0) -> UInt32 {
        chip.read(vcpu: vcpu, address: LocalAPIC.defaultBase + offset, size: 4, now: now)
    }

    func lapicWrite(_ vcpu: Int, _ offset: UInt64, _ value: UInt32, now: UInt64 = 0) {
        chip.write(vcpu: vcpu, address: LocalAPIC.defaultBase + offset, size: 4, value: UInt64(value), now: now)
    }

    func enableAll() { for v in chip.lapics.indices { lapicWrite(v, svr, 0x1ff) } }

    func ioapicWrite(_ index: UInt8, _ value: UInt32, vcpu: Int = 0) {
        chip.write(vcpu: vcpu, address: IOAPIC.defaultBase, size: 4, value: UInt64(index), now: 0)
        chip.write(vcpu: vcpu, address: IOAPIC.defaultBase + 0x10, size: 4, value: UInt64(value), now: 0)
    }

    func ioapicRead(_ index: UInt8, vcpu: Int = 0) -> UInt32 {
        chip.write(vcpu: vcpu, address: IOAPIC.defaultBase, size: 4, value: UInt64(index), now: 0)
        return chip.read(vcpu: vcpu, address: IOAPIC.defaultBase + 0x10, size: 4, now: 0)
    }

    /// Programs redirection entry `pin` (0x10 + 2 * pin): the high half (destination) first, then the low half.
    func route(pin: Int, vector: UInt8, destination: UInt8 = 0, mode: UInt32 = 0, logical: Bool = false,
               activeLow: Bool = false, level: Bool = false, masked: Bool = false) {
        ioapicWrite(UInt8(0x10 + 2 * pin + 1), UInt32(destination) << 24)
        ioapicWrite(UInt8(0x10 + 2 * pin), redirection(vector, mode: mode, logical: logical, activeLow: activeLow,
                                                       level: level, masked: masked))
    }

    func redirection(_ vector: UInt8, mode: UInt32 = 0, logical: Bool = false, activeLow: Bool = false,
                     level: Bool = false, masked: Bool = false) -> UInt32 {
        UInt32(vector) | mode << 8 | (logical ? 1 << 11 : 0) | (activeLow ? 1 << 13 : 0) | (level ? 1 << 15 : 0)
            | (masked ? 1 << 16 : 0)
    }

    func remoteIRR(pin: Int) -> Bool { ioapicRead(UInt8(0x10 + 2 * pin)) & (1 << 14) != 0 }

    func sendIPI(from vcpu: Int, _ low: UInt32, destination: UInt8 = 0) {
        lapicWrite(vcpu, icrHigh, UInt32(destination) << 24)
        lapicWrite(vcpu, icrLow, low)
    }

    func eoi(_ vcpu: Int) { lapicWrite(vcpu, eoiRegister, 0) }

    /// The vectors set in one of a LAPIC's 256-bit registers (ISR 0x100, TMR 0x180, IRR 0x200), read over MMIO.
    func vectors(_ vcpu: Int, at base: UInt64) -> [UInt8] {
        (0..<8).flatMap { i -> [UInt8] in
            let word = lapicRead(vcpu, base + UInt64(i) * 0x10)
            return (0..<32).filter { word & (1 << $0) != 0 }.map { UInt8(i * 32 + $0) }
        }
    }
    func pending(_ vcpu: Int) -> [UInt8] { vectors(vcpu, at: 0x200) }
    func inService(_ vcpu: Int) -> [UInt8] { vectors(vcpu, at: 0x100) }
    func levelTriggered(_ vcpu: Int) -> [UInt8] { vectors(vcpu, at: 0x180) }

    // MARK: the irqchip process's side

    func offer() -> [Int] { chip.updateOffers(mailbox).sorted() }
    func takeEvents() -> [Event] { chip.takeCPUEvents().map { Event(vcpu: $0.vcpu, event: $0.event) } }
    func takeTimers() -> [TimerRequest] { chip.takeTimerRequests().map { TimerRequest(vcpu: $0.vcpu, at: $0.at) } }

    /// The vCPU injects its offer and acknowledges it.
    func takeAndAcknowledge(_ vcpu: Int) -> UInt8? {
        guard let v = mailbox.take(vcpu: vcpu) else { return nil }
        chip.acknowledged(vcpu: vcpu, vector: v)
        return v
    }

    // MARK: registers and routing

    func testEachVCPUReachesItsOwnLocalAPICAndTheSharedIOAPIC() {
        XCTAssertEqual(lapicRead(0, id), 0)
        XCTAssertEqual(lapicRead(1, id), 1 << 24)
        XCTAssertEqual(lapicRead(1, version), 0x0005_0014)
        lapicWrite(1, tpr, 0x30)
        XCTAssertEqual(lapicRead(1, tpr), 0x30)
        XCTAssertEqual(lapicRead(0, tpr), 0, "another vCPU's TPR is untouched")
        XCTAssertEqual(ioapicRead(0x00), 2 << 24, "IOAPIC ID = vCPU count, as the MP table says")
        XCTAssertEqual(ioapicRead(0x01), 0x0017_0020, "24 pins, version 0x20")
        chip.write(vcpu: 0, address: IOAPIC.defaultBase, size: 4, value: 0x12, now: 0)
        XCTAssertEqual(chip.read(vcpu: 1, address: IOAPIC.defaultBase, size: 4, now: 0), 0x12, "one IOREGSEL for all vCPUs")
        route(pin: 4, vector: 0x34, destination: 1, level: true)
        XCTAssertEqual(ioapicRead(0x18, vcpu: 1), 0x34 | 1 << 15)
        XCTAssertEqual(ioapicRead(0x19, vcpu: 1), 0x0100_0000)
        XCTAssertEqual(ioapicRead(0x10), 1 << 16, "other pins stay masked")
    }

    func testAPinRoutedToVCPU1IsOfferedToVCPU1Only() {
        enableAll()
        route(pin: 4, vector: 0x34, destination: 1)
        XCTAssertEqual(offer(), [], "nothing before the line rises")
        chip.setLine(pin: 4, asserted: true)
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(pending(1), [0x34])
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.slots, [nil, 0x34])
        XCTAssertEqual(offer(), [], "an offer is made once")
        XCTAssertEqual(takeAndAcknowledge(1), 0x34)
        XCTAssertEqual(pending(1), [])
        XCTAssertEqual(inService(1), [0x34])
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(levelTriggered(1), [], "edge: TMR clear")
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.slots, [nil, nil])
        XCTAssertEqual(takeEvents(), [])
        XCTAssertEqual(takeTimers(), [])
    }

    func testASoftwareDisabledLAPICIsOfferedNothingUntilEnabled() {
        lapicWrite(0, svr, 0x1ff)  // vCPU 1 stays disabled
        route(pin: 4, vector: 0x34, destination: 1)
        chip.setLine(pin: 4, asserted: true)
        XCTAssertEqual(pending(1), [0x34])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.slots, [nil, nil])
        lapicWrite(1, svr, 0x1ff)
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.slots, [nil, 0x34])
    }

    func testMaskedPinOffersNothingUntilUnmasked() {
        enableAll()
        route(pin: 3, vector: 0x33, level: true, masked: true)
        chip.setLine(pin: 3, asserted: true)
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.slots, [nil, nil])
        XCTAssertFalse(remoteIRR(pin: 3))
        ioapicWrite(0x10 + 3 * 2, redirection(0x33, level: true))  // unmask
        XCTAssertEqual(pending(0), [0x33], "an asserted level pin delivers when unmasked")
        XCTAssertEqual(ioapicRead(0x10 + 3 * 2), 0x33 | 1 << 15 | 1 << 14, "remote IRR set")
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.slots, [0x33, nil])

        // An edge while masked is lost, as on the 82093AA.
        route(pin: 5, vector: 0x55, destination: 1, masked: true)
        chip.setLine(pin: 5, asserted: true)
        ioapicWrite(0x10 + 5 * 2, redirection(0x55))
        XCTAssertEqual(pending(1), [])
        chip.setLine(pin: 5, asserted: false)
        chip.setLine(pin: 5, asserted: true)
        XCTAssertEqual(pending(1), [0x55])
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.slots, [0x33, 0x55])
    }

    func testLevelPinRefiresAtEOIWhileAssertedAndStopsOnceLowered() {
        enableAll()
        route(pin: 9, vector: 0x39, level: true)
        chip.setLine(pin: 9, asserted: true)
        XCTAssertTrue(remoteIRR(pin: 9))
        XCTAssertEqual(levelTriggered(0), [0x39], "TMR set")
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(takeAndAcknowledge(0), 0x39)
        XCTAssertEqual(inService(0), [0x39])

        chip.setLine(pin: 9, asserted: true)
        XCTAssertEqual(pending(0), [], "held off by remote IRR")
        XCTAssertEqual(offer(), [])

        eoi(0)  // the handler did not clear the device: the line is still up
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(pending(0), [0x39], "EOI with the line asserted delivers again")
        XCTAssertTrue(remoteIRR(pin: 9))
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.slots, [0x39, nil])
        XCTAssertEqual(takeAndAcknowledge(0), 0x39)

        chip.setLine(pin: 9, asserted: false)
        eoi(0)
        XCTAssertFalse(remoteIRR(pin: 9))
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.slots, [nil, nil])

        chip.setLine(pin: 9, asserted: true)
        XCTAssertEqual(pending(0), [0x39], "raised again after the EOI: a new delivery")
        XCTAssertEqual(offer(), [0])
    }

    func testSuppressedEOIBroadcastLeavesRemoteIRRForTheIOAPICEOIRegister() {
        lapicWrite(0, svr, 0x11ff)
        XCTAssertEqual(lapicRead(0, svr), 0x11ff)
        route(pin: 10, vector: 0x3a, level: true)
        chip.setLine(pin: 10, asserted: true)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(takeAndAcknowledge(0), 0x3a)
        eoi(0)
        XCTAssertEqual(inService(0), [])
        XCTAssertTrue(remoteIRR(pin: 10), "no EOI broadcast reached the IOAPIC")
        XCTAssertEqual(pending(0), [])
        chip.write(vcpu: 0, address: IOAPIC.defaultBase + 0x40, size: 4, value: 0x3a, now: 0)
        XCTAssertTrue(remoteIRR(pin: 10), "still asserted: delivered again")
        XCTAssertEqual(pending(0), [0x3a])
        XCTAssertEqual(offer(), [0])
    }

    func testActiveLowLevelPinIsAssertedWhenTheLineIsLow() {
        enableAll()
        route(pin: 11, vector: 0x3b, destination: 1, activeLow: true, level: true)
        chip.setLine(pin: 11, asserted: true)
        XCTAssertEqual(pending(1), [])
        chip.setLine(pin: 11, asserted: false)
        XCTAssertEqual(pending(1), [0x3b])
        XCTAssertEqual(offer(), [1])
    }

    func testEdgePinFiresOncePerRisingEdge() {
        enableAll()
        route(pin: 4, vector: 0x24)
        chip.setLine(pin: 4, asserted: true)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.slots, [0x24, nil])
        chip.setLine(pin: 4, asserted: true)  // no edge
        XCTAssertEqual(takeAndAcknowledge(0), 0x24)
        XCTAssertEqual(pending(0), [], "a held line is one interrupt")
        XCTAssertFalse(remoteIRR(pin: 4))
        chip.setLine(pin: 4, asserted: false)
        XCTAssertEqual(pending(0), [], "a falling edge delivers nothing")
        chip.setLine(pin: 4, asserted: true)
        XCTAssertEqual(pending(0), [0x24], "the next rising edge")
        XCTAssertEqual(offer(), [], "the same vector waits while it is in service")
        eoi(0)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(takeAndAcknowledge(0), 0x24)
        eoi(0)
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(levelTriggered(0), [])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.slots, [nil, nil])
    }

    func testAnEdgeWhileItsVectorIsTakenButNotAcknowledgedIsRaisedAgain() {
        enableAll()
        route(pin: 4, vector: 0x24)
        chip.setLine(pin: 4, asserted: true)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.take(vcpu: 0), 0x24)  // injected; the acknowledge is on its way
        chip.setLine(pin: 4, asserted: false)
        chip.setLine(pin: 4, asserted: true)
        chip.acknowledged(vcpu: 0, vector: 0x24)
        XCTAssertEqual(inService(0), [0x24])
        XCTAssertEqual(pending(0), [0x24], "the second edge is not merged into the one being taken")
        XCTAssertEqual(offer(), [])
        eoi(0)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(takeAndAcknowledge(0), 0x24)
        eoi(0)
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(offer(), [])
    }

    // MARK: offers

    func testAHigherVectorReplacesAnUntakenLowerOffer() {
        enableAll()
        sendIPI(from: 0, toSelf | levelAssert | 0x31)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.slots, [0x31, nil])
        sendIPI(from: 0, toSelf | levelAssert | 0x61)
        XCTAssertEqual(offer(), [0], "the replacement is new: kick")
        XCTAssertEqual(mailbox.slots, [0x61, nil])
        sendIPI(from: 0, toSelf | levelAssert | 0x41)
        XCTAssertEqual(offer(), [], "a lower vector does not replace a higher one")
        XCTAssertEqual(mailbox.slots, [0x61, nil])
        XCTAssertEqual(takeAndAcknowledge(0), 0x61)
        XCTAssertEqual(inService(0), [0x61])
        XCTAssertEqual(pending(0), [0x31, 0x41], "the replaced offer is still pending")
        XCTAssertEqual(offer(), [])
        eoi(0)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(takeAndAcknowledge(0), 0x41)
        eoi(0)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(takeAndAcknowledge(0), 0x31)
        eoi(0)
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(pending(0), [])
    }

    func testATakenOfferIsNotReplacedAndTheHigherVectorFollowsItsAcknowledge() {
        enableAll()
        sendIPI(from: 0, toSelf | levelAssert | 0x31)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.take(vcpu: 0), 0x31)  // injected, not yet acknowledged
        sendIPI(from: 0, toSelf | levelAssert | 0x61)
        XCTAssertEqual(offer(), [], "replace fails: the vCPU took the offer")
        XCTAssertEqual(mailbox.slots, [nil, nil], "nothing posted while the taken vector is unacknowledged")
        chip.acknowledged(vcpu: 0, vector: 0x31)
        XCTAssertEqual(inService(0), [0x31])
        XCTAssertEqual(pending(0), [0x61])
        XCTAssertEqual(offer(), [0], "a higher class preempts the one in service")
        XCTAssertEqual(mailbox.slots, [0x61, nil])
    }

    func testAnAcknowledgedOfferIsNotReplacedAndTheHigherVectorComesAfterEOI() {
        enableAll()
        sendIPI(from: 0, toSelf | levelAssert | 0x41)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(takeAndAcknowledge(0), 0x41)
        sendIPI(from: 0, toSelf | levelAssert | 0x45)
        XCTAssertEqual(lapicRead(0, 0xa0), 0x40, "PPR: the in-service class")
        XCTAssertEqual(offer(), [], "same priority class: waits for the EOI")
        XCTAssertEqual(mailbox.slots, [nil, nil])
        eoi(0)
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.slots, [0x45, nil])
    }

    func testAcknowledgingAVectorThatWasNotOfferedIsIgnored() {
        enableAll()
        sendIPI(from: 0, toSelf | levelAssert | 0x30)
        XCTAssertEqual(offer(), [0])
        chip.acknowledged(vcpu: 0, vector: 0x31)
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(pending(0), [0x30])
        chip.acknowledged(vcpu: 1, vector: 0x30)
        XCTAssertEqual(inService(1), [], "another vCPU's offer")
        XCTAssertEqual(pending(0), [0x30])

        sendIPI(from: 0, toSelf | levelAssert | 0x50)
        XCTAssertEqual(offer(), [0])
        chip.acknowledged(vcpu: 0, vector: 0x30)
        XCTAssertEqual(inService(0), [], "the replaced offer is no longer the one offered")
        XCTAssertEqual(mailbox.slots, [0x50, nil])

        XCTAssertEqual(takeAndAcknowledge(0), 0x50)
        chip.acknowledged(vcpu: 0, vector: 0x50)
        chip.acknowledged(vcpu: 0, vector: 0x30)
        XCTAssertEqual(inService(0), [0x50], "a repeated acknowledge changes nothing")
        XCTAssertEqual(pending(0), [0x30])
        eoi(0)
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(offer(), [0])
        XCTAssertEqual(mailbox.slots, [0x30, nil])
    }

    // MARK: IPIs

    func testFixedIPIToAPhysicalDestination() {
        make(vcpus: 3)
        enableAll()
        sendIPI(from: 0, levelAssert | 0x51, destination: 2)
        XCTAssertEqual(lapicRead(0, icrLow), levelAssert | 0x51, "delivery status idle")
        XCTAssertEqual(lapicRead(0, icrHigh), 0x0200_0000)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[], [], [0x51]])
        XCTAssertEqual(offer(), [2])
        XCTAssertEqual(mailbox.slots, [nil, nil, 0x51])

        sendIPI(from: 2, levelAssert | 0x52, destination: 0xff)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x52], [0x52], [0x51, 0x52]], "0xff: broadcast")
        XCTAssertEqual(offer(), [0, 1, 2])
        XCTAssertEqual(mailbox.slots, [0x52, 0x52, 0x52])

        sendIPI(from: 0, levelAssert | 0x53, destination: 7)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x52], [0x52], [0x51, 0x52]], "no APIC 7")
        XCTAssertEqual(takeEvents(), [])
    }

    func testIPIShorthandSelf() {
        make(vcpus: 3)
        enableAll()
        sendIPI(from: 1, toSelf | levelAssert | 0x61, destination: 2)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[], [0x61], []], "the destination field is ignored")
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.slots, [nil, 0x61, nil])
    }

    func testIPIShorthandAllIncludingSelf() {
        make(vcpus: 3)
        enableAll()
        sendIPI(from: 1, toAllIncludingSelf | levelAssert | 0x62, destination: 2)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x62], [0x62], [0x62]])
        XCTAssertEqual(offer(), [0, 1, 2])
        XCTAssertEqual(mailbox.slots, [0x62, 0x62, 0x62])
    }

    func testIPIShorthandAllExcludingSelf() {
        make(vcpus: 3)
        enableAll()
        sendIPI(from: 1, toAllExcludingSelf | levelAssert | 0x63, destination: 1)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x63], [], [0x63]])
        XCTAssertEqual(offer(), [0, 2])
        XCTAssertEqual(mailbox.slots, [0x63, nil, 0x63])
    }

    func testIPIAndIOAPICToLogicalDestinationsInTheFlatModel() {
        make(vcpus: 3)
        enableAll()
        for v in 0..<3 { lapicWrite(v, ldr, UInt32(1 << v) << 24) }
        XCTAssertEqual(lapicRead(2, ldr), 0x0400_0000)
        XCTAssertEqual(lapicRead(2, dfr), 0xffff_ffff, "flat model after reset")
        sendIPI(from: 1, logicalMode | levelAssert | 0x71, destination: 0x05)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x71], [], [0x71]])
        sendIPI(from: 0, logicalMode | levelAssert | 0x72, destination: 0x00)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x71], [], [0x71]], "an empty logical destination")
        route(pin: 7, vector: 0x37, destination: 0x02, logical: true)
        chip.setLine(pin: 7, asserted: true)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x71], [0x37], [0x71]])
        XCTAssertEqual(offer(), [0, 1, 2])
        XCTAssertEqual(mailbox.slots, [0x71, 0x37, 0x71])
    }

    func testIPIToLogicalDestinationsInTheClusterModel() {
        make(vcpus: 3)
        enableAll()
        for (v, logicalID) in [(0, 0x11), (1, 0x12), (2, 0x21)] {
            lapicWrite(v, dfr, 0x0fff_ffff)
            lapicWrite(v, ldr, UInt32(logicalID) << 24)
        }
        XCTAssertEqual(lapicRead(1, dfr), 0x0fff_ffff)
        sendIPI(from: 0, logicalMode | levelAssert | 0x41, destination: 0x13)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x41], [0x41], []], "cluster 1, members 1 and 2")
        sendIPI(from: 0, logicalMode | levelAssert | 0x42, destination: 0x21)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x41], [0x41], [0x42]])
        sendIPI(from: 0, logicalMode | levelAssert | 0x43, destination: 0xf1)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x41, 0x43], [0x41], [0x42, 0x43]], "every cluster, member 1")
        sendIPI(from: 0, logicalMode | levelAssert | 0x44, destination: 0x31)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x41, 0x43], [0x41], [0x42, 0x43]], "no cluster 3")
    }

    func testLowestPriorityGoesToExactlyOneDestination() {
        make(vcpus: 3)
        enableAll()
        for v in 0..<3 { lapicWrite(v, ldr, UInt32(1 << v) << 24) }
        route(pin: 6, vector: 0x46, destination: 0x06, mode: 1, logical: true)
        chip.setLine(pin: 6, asserted: true)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[], [0x46], []], "the first of vCPUs 1 and 2")
        sendIPI(from: 0, toAllIncludingSelf | 1 << 8 | levelAssert | 0x47)
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[0x47], [0x46], []])
        XCTAssertEqual(offer(), [0, 1])
    }

    func testAFixedIPIWithAnIllegalVectorIsAnErrorOnBothSides() {
        enableAll()
        sendIPI(from: 0, levelAssert | 0x05, destination: 1)
        lapicWrite(0, esr, 0)
        lapicWrite(1, esr, 0)
        XCTAssertEqual(lapicRead(0, esr), 1 << 5, "send illegal vector")
        XCTAssertEqual(lapicRead(1, esr), 1 << 6, "receive illegal vector")
        XCTAssertEqual(pending(1), [])
        XCTAssertEqual(offer(), [])
    }

    // MARK: NMI, INIT, start-up

    func testNMIBecomesACPUEventForItsTargetsOnly() {
        make(vcpus: 3)
        enableAll()
        sendIPI(from: 0, nmiMode | levelAssert, destination: 2)
        XCTAssertEqual(takeEvents(), [Event(vcpu: 2, event: .nmi)])
        XCTAssertEqual(takeEvents(), [], "taken once")
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[], [], []], "an NMI is not a vector")
        XCTAssertEqual(offer(), [])
        sendIPI(from: 0, toAllExcludingSelf | nmiMode | levelAssert)
        XCTAssertEqual(takeEvents(), [Event(vcpu: 1, event: .nmi), Event(vcpu: 2, event: .nmi)])
        route(pin: 8, vector: 0, destination: 1, mode: 4)  // an IOAPIC pin in NMI mode
        chip.setLine(pin: 8, asserted: true)
        XCTAssertEqual(takeEvents(), [Event(vcpu: 1, event: .nmi)])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(takeTimers(), [])
    }

    func testDisablingThroughTheAPICBaseResetsTheAPICAndNothingReachesItUntilEnabled() throws {
        // IA32_APIC_BASE bit 11 clear: the CPU has no APIC (SDM vol. 3, 10.4.3). Its state goes back to power-up
        // values, its offer is taken back, its timer cancelled, and no IPI, shorthand or IOAPIC message reaches it
        // until it is enabled again, which finds it software-disabled.
        make(vcpus: 3)
        enableAll()
        lapicWrite(1, tpr, 0x20)
        for v in 0..<3 { lapicWrite(v, ldr, 1 << (24 + UInt32(v))) }  // flat logical IDs 1, 2, 4
        lapicWrite(1, divide, 0xb)
        lapicWrite(1, lvtTimer, 0x3a)
        lapicWrite(1, initialCount, 1000, now: 0)
        _ = takeTimers()
        sendIPI(from: 0, levelAssert | 0x61, destination: 1)
        XCTAssertEqual(offer(), [1])

        chip.setAPICBase(vcpu: 1, value: 0xfee0_0000)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: nil)])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.withdrawals, [1])
        XCTAssertEqual(mailbox.slots, [nil, nil, nil])
        XCTAssertEqual(lapicRead(1, id), ~0, "no APIC page while disabled")
        lapicWrite(1, svr, 0x1ff)  // a late write: ignored
        sendIPI(from: 0, levelAssert | 0x62, destination: 1)
        sendIPI(from: 0, levelAssert | 0x63, destination: 0xff)
        sendIPI(from: 2, toAllExcludingSelf | levelAssert | 0x64)
        sendIPI(from: 0, toAllIncludingSelf | nmiMode | levelAssert)
        sendIPI(from: 0, logicalMode | levelAssert | 0x65, destination: 0xff)
        XCTAssertEqual(takeEvents(), [Event(vcpu: 0, event: .nmi), Event(vcpu: 2, event: .nmi)], "no NMI for the absent APIC")
        chip.timerExpired(vcpu: 1, now: 1000)
        chip.acknowledged(vcpu: 1, vector: 0x61)  // the withdrawn offer's late acknowledgement

        chip.setAPICBase(vcpu: 1, value: 0xfee0_0800)
        XCTAssertEqual(lapicRead(1, id), 1 << 24, "the ID stays")
        XCTAssertEqual(lapicRead(1, svr), 0xff, "software-disabled, as after power-up")
        XCTAssertEqual(lapicRead(1, tpr), 0)
        XCTAssertEqual(lapicRead(1, ldr), 0)
        XCTAssertEqual(lapicRead(1, lvtTimer), 1 << 16)
        XCTAssertEqual(lapicRead(1, initialCount), 0)
        XCTAssertEqual(pending(1), [], "nothing arrived while it was disabled")
        XCTAssertEqual(inService(1), [])
        XCTAssertEqual(pending(0), [0x63, 0x64, 0x65])
        XCTAssertEqual(pending(2), [0x63, 0x65])
        lapicWrite(1, svr, 0x1ff)
        sendIPI(from: 0, levelAssert | 0x66, destination: 1)
        XCTAssertEqual(pending(1), [0x66], "enabled again, it takes IPIs")
        chip.setAPICBase(vcpu: 1, value: 0xfed0_0800)
        XCTAssertEqual(pending(1), [0x66], "moving the page is the vcpu process's business: the state stays")
    }

    func testINITResetsTheTargetLAPICButKeepsItsIDWithdrawsItsOfferAndCancelsItsTimer() {
        enableAll()
        lapicWrite(1, tpr, 0x20)
        lapicWrite(1, ldr, 0x0200_0000)
        lapicWrite(1, divide, 0xb)
        lapicWrite(1, lvtTimer, 0x3a)
        lapicWrite(1, initialCount, 1000, now: 0)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 1000)])
        sendIPI(from: 1, toSelf | levelAssert | 0x61)
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.slots, [nil, 0x61])
        sendIPI(from: 0, levelAssert | 0x50, destination: 0)
        XCTAssertEqual(offer(), [0])

        sendIPI(from: 0, initMode | levelAssert, destination: 1)
        XCTAssertEqual(takeEvents(), [Event(vcpu: 1, event: .initialize)])
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: nil)])
        XCTAssertEqual(offer(), [], "nothing new to kick")
        XCTAssertEqual(mailbox.withdrawals, [1])
        XCTAssertEqual(mailbox.slots, [0x50, nil], "vCPU 1's offer is taken back, vCPU 0's stays")
        XCTAssertEqual(lapicRead(1, id), 1 << 24, "the APIC ID survives INIT")
        XCTAssertEqual(lapicRead(1, svr), 0xff, "software-disabled")
        XCTAssertEqual(lapicRead(1, tpr), 0)
        XCTAssertEqual(lapicRead(1, ldr), 0)
        XCTAssertEqual(lapicRead(1, lvtTimer), 1 << 16)
        XCTAssertEqual(lapicRead(1, initialCount), 0)
        XCTAssertEqual(lapicRead(1, currentCount, now: 500), 0)
        XCTAssertEqual(pending(1), [])
        XCTAssertEqual(inService(1), [])
        XCTAssertEqual(lapicRead(0, svr), 0x1ff, "the sender is untouched")

        chip.acknowledged(vcpu: 1, vector: 0x61)  // a late acknowledge of the withdrawn offer
        XCTAssertEqual(inService(1), [])
        chip.timerExpired(vcpu: 1, now: 1000)  // a late expiry of the cancelled timer
        XCTAssertEqual(pending(1), [])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.withdrawals, [1], "withdrawn once")

        lapicWrite(1, svr, 0x1ff)  // the vCPU started again and enabled its APIC
        sendIPI(from: 0, levelAssert | 0x41, destination: 1)
        XCTAssertEqual(offer(), [1], "offers resume after INIT")
        XCTAssertEqual(mailbox.slots, [0x50, 0x41])
    }

    func testINITAfterTheOfferWasTakenIgnoresItsLateAcknowledge() {
        enableAll()
        sendIPI(from: 0, levelAssert | 0x61, destination: 1)
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.take(vcpu: 1), 0x61)
        sendIPI(from: 0, initMode | levelAssert, destination: 1)
        XCTAssertEqual(takeEvents(), [Event(vcpu: 1, event: .initialize)])
        XCTAssertEqual(offer(), [])
        chip.acknowledged(vcpu: 1, vector: 0x61)
        XCTAssertEqual(inService(1), [])
        XCTAssertEqual(pending(1), [])
    }

    func testINITLevelDeassertDeliversNothing() {
        enableAll()
        sendIPI(from: 0, levelTrigger | initMode, destination: 1)
        sendIPI(from: 0, toAllExcludingSelf | levelTrigger | initMode)
        XCTAssertEqual(takeEvents(), [])
        XCTAssertEqual(takeTimers(), [])
        XCTAssertEqual(mailbox.withdrawals, [])
        _ = offer()
        XCTAssertEqual(mailbox.withdrawals, [])
        XCTAssertEqual(lapicRead(1, svr), 0x1ff, "not reset")
    }

    func testINITAndStartupIPIsToTheApplicationProcessors() {
        make(vcpus: 3)
        enableAll()
        sendIPI(from: 0, toAllExcludingSelf | levelTrigger | levelAssert | initMode)  // as Linux: level assert
        XCTAssertEqual(takeEvents(), [Event(vcpu: 1, event: .initialize), Event(vcpu: 2, event: .initialize)])
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: nil), TimerRequest(vcpu: 2, at: nil)])
        XCTAssertEqual(lapicRead(0, svr), 0x1ff)
        XCTAssertEqual(lapicRead(2, svr), 0xff)
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.withdrawals.sorted(), [1, 2])

        for _ in 0..<2 {  // the MP protocol sends two
            sendIPI(from: 0, toAllExcludingSelf | levelAssert | startupMode | 0x9a)
            XCTAssertEqual(takeEvents(), [Event(vcpu: 1, event: .startup(vector: 0x9a)),
                                          Event(vcpu: 2, event: .startup(vector: 0x9a))])
        }
        sendIPI(from: 0, levelAssert | startupMode | 0x10, destination: 2)
        XCTAssertEqual(takeEvents(), [Event(vcpu: 2, event: .startup(vector: 0x10))])
        XCTAssertEqual([pending(0), pending(1), pending(2)], [[], [], []], "a start-up vector is not an interrupt")
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(takeTimers(), [])
    }

    // MARK: timers

    func testOneShotTimerArmsARequestAndItsExpiryOffersTheTimerVector() {
        enableAll()
        lapicWrite(1, divide, 0xb)  // divide by 1
        lapicWrite(1, lvtTimer, 0x3a)  // one-shot
        XCTAssertEqual(takeTimers(), [], "same mode: nothing to cancel")
        lapicWrite(1, initialCount, 1000, now: 5000)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 6000)])
        XCTAssertEqual(takeTimers(), [], "taken once")
        XCTAssertEqual(lapicRead(1, currentCount, now: 5400), 600)
        XCTAssertEqual(lapicRead(1, initialCount), 1000)
        chip.timerExpired(vcpu: 1, now: 6000)
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(pending(1), [0x3a])
        XCTAssertEqual(takeTimers(), [], "a one-shot timer does not re-arm")
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.slots, [nil, 0x3a])
        XCTAssertEqual(takeAndAcknowledge(1), 0x3a)
        eoi(1)
        chip.timerExpired(vcpu: 1, now: 7000)  // a stale expiry
        XCTAssertEqual(pending(1), [])
        XCTAssertEqual(lapicRead(1, currentCount, now: 7000), 0)

        lapicWrite(1, divide, 0)  // divide by 2
        lapicWrite(1, initialCount, 1000, now: 10_000)
        lapicWrite(1, initialCount, 0, now: 10_500)  // stopped
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 12_000), TimerRequest(vcpu: 1, at: nil)])
        chip.timerExpired(vcpu: 1, now: 12_000)
        XCTAssertEqual(pending(1), [])
    }

    func testPeriodicAndMaskedTimers() {
        enableAll()
        lapicWrite(0, divide, 0xb)
        lapicWrite(0, lvtTimer, 1 << 17 | 0x3b)
        XCTAssertEqual(takeTimers(), [], "one-shot to periodic: a stopped timer stays stopped, nothing to disarm")
        lapicWrite(0, initialCount, 1_000_000, now: 0)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 0, at: 1_000_000)])
        chip.timerExpired(vcpu: 0, now: 1_000_000)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 0, at: 2_000_000)])
        XCTAssertEqual(pending(0), [0x3b])
        XCTAssertEqual(offer(), [0])
        chip.timerExpired(vcpu: 0, now: 4_500_000)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 0, at: 5_000_000)], "missed periods are skipped")

        lapicWrite(1, divide, 0xb)
        lapicWrite(1, lvtTimer, 1 << 16 | 0x3c)  // masked one-shot
        lapicWrite(1, initialCount, 50, now: 0)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 50)])
        chip.timerExpired(vcpu: 1, now: 50)
        XCTAssertEqual(pending(1), [], "a masked timer raises nothing")
        XCTAssertEqual(takeTimers(), [])
        XCTAssertEqual(mailbox.slots, [0x3b, nil])
    }

    func testATimerExpiryTheVCPUTookItselfCountsAsTheTimersAndIsInService() {
        enableAll()
        lapicWrite(0, divide, 0xb)
        lapicWrite(0, lvtTimer, 1 << 17 | 0x3b)  // periodic
        lapicWrite(0, initialCount, 1_000_000, now: 0)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 0, at: 1_000_000)])
        chip.timerTaken(vcpu: 0, vector: 0x3b, now: 1_000_000)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 0, at: 2_000_000)], "a periodic timer goes on")
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(inService(0), [0x3b], "the guest is handling it")
        XCTAssertEqual(offer(), [], "nothing to offer: the vCPU injected it")
        eoi(0)
        XCTAssertEqual(inService(0), [])

        // One-shot: done, its current count 0; an IPI offered meanwhile stays offered.
        lapicWrite(1, divide, 0xb)
        lapicWrite(1, lvtTimer, 0x3c)
        lapicWrite(1, initialCount, 500, now: 0)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 500)])
        sendIPI(from: 0, levelAssert | 0x70, destination: 1)
        XCTAssertEqual(offer(), [1])
        chip.timerTaken(vcpu: 1, vector: 0x3c, now: 600)
        XCTAssertEqual(lapicRead(1, currentCount, now: 600), 0)
        XCTAssertEqual(inService(1), [0x3c])
        XCTAssertEqual(pending(1), [0x70])
        XCTAssertEqual(mailbox.slots, [nil, 0x70])
        XCTAssertEqual(takeAndAcknowledge(1), 0x70)
        XCTAssertEqual(inService(1), [0x3c, 0x70])

        // An expiry the model no longer expects (the vCPU's copy was older than a mask it had not seen cannot
        // happen: the copy must include every write the vCPU sent; but whatever the model makes of it) still puts
        // the injected vector in service, so the guest's EOI ends that vector and not another.
        chip.timerTaken(vcpu: 0, vector: 0x3b, now: 1_500_000)
        XCTAssertEqual(inService(0), [0x3b])
        chip.timerTaken(vcpu: 0, vector: 0x0f, now: 1_600_000)
        XCTAssertEqual(inService(0), [0x3b], "an illegal vector changes nothing")
    }

    func testTSCDeadlineSetAndDisarmGiveTimerRequests() {
        enableAll()
        lapicWrite(1, lvtTimer, 2 << 17 | 0x40)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: nil)], "a mode change stops the timer")
        lapicWrite(1, initialCount, 100, now: 0)
        XCTAssertEqual(takeTimers(), [], "the initial count is ignored in TSC-deadline mode")

        chip.setDeadline(vcpu: 1, nanosecondsFromNow: 500, now: 1000)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 1500)])
        chip.timerExpired(vcpu: 1, now: 1400)
        XCTAssertEqual(pending(1), [], "too early")
        chip.timerExpired(vcpu: 1, now: 1500)
        XCTAssertEqual(pending(1), [0x40])
        XCTAssertEqual(pending(0), [])
        XCTAssertEqual(offer(), [1])
        XCTAssertEqual(mailbox.slots, [nil, 0x40])
        XCTAssertEqual(takeTimers(), [])

        chip.setDeadline(vcpu: 1, nanosecondsFromNow: 300, now: 2000)
        chip.setDeadline(vcpu: 1, nanosecondsFromNow: nil, now: 2100)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 2300), TimerRequest(vcpu: 1, at: nil)])
        chip.timerExpired(vcpu: 1, now: 2300)
        XCTAssertEqual(pending(1), [0x40], "disarmed: nothing more (0x40 is the first, still offered)")
        XCTAssertEqual(takeAndAcknowledge(1), 0x40)
        XCTAssertEqual(pending(1), [])

        chip.setDeadline(vcpu: 1, nanosecondsFromNow: 0, now: 0)
        XCTAssertEqual(takeTimers(), [TimerRequest(vcpu: 1, at: 1)], "due at once, not taken for a disarm")

        chip.setDeadline(vcpu: 0, nanosecondsFromNow: 100, now: 0)
        XCTAssertEqual(takeTimers(), [], "vCPU 0 is not in TSC-deadline mode")
    }

    // MARK: bad accesses

    func testAccessesOfOtherSizesOrOutsideBothWindowsReadAllOnesAndAreIgnored() {
        enableAll()
        for size: UInt8 in [0, 1, 2, 3, 8] {
            XCTAssertEqual(chip.read(vcpu: 0, address: LocalAPIC.defaultBase + svr, size: size, now: 0), 0xffff_ffff)
            XCTAssertEqual(chip.read(vcpu: 0, address: IOAPIC.defaultBase + 0x10, size: size, now: 0), 0xffff_ffff)
            chip.write(vcpu: 0, address: LocalAPIC.defaultBase + tpr, size: size, value: 0x50, now: 0)
            chip.write(vcpu: 0, address: IOAPIC.defaultBase, size: size, value: 0x01, now: 0)
            chip.write(vcpu: 0, address: LocalAPIC.defaultBase + icrLow, size: size, value: UInt64(toSelf | levelAssert | 0x41), now: 0)
        }
        XCTAssertEqual(lapicRead(0, tpr), 0)
        XCTAssertEqual(chip.read(vcpu: 0, address: IOAPIC.defaultBase, size: 4, now: 0), 0, "IOREGSEL unchanged")
        XCTAssertEqual(pending(0), [], "no IPI sent")

        for address: UInt64 in [0, 0xfebf_f0f0, 0xfec0_1000, 0xfec0_1010, 0xfed0_0000, 0xfee0_10f0, 0xfedf_f0f0,
                                0x1_fee0_00f0, 0xffff_ffff_fee0_00f0] {
            XCTAssertEqual(chip.read(vcpu: 0, address: address, size: 4, now: 0), 0xffff_ffff, "\(address)")
        }
        chip.write(vcpu: 0, address: LocalAPIC.defaultBase + 0x1000 + tpr, size: 4, value: 0x50, now: 0)
        chip.write(vcpu: 0, address: 0x1_0000_0000 | (LocalAPIC.defaultBase + tpr), size: 4, value: 0x50, now: 0)
        chip.write(vcpu: 0, address: IOAPIC.defaultBase + 0x1000, size: 4, value: 0x01, now: 0)
        chip.write(vcpu: 0, address: IOAPIC.defaultBase - 0x1000, size: 4, value: 0x01, now: 0)
        XCTAssertEqual(lapicRead(0, tpr), 0)
        XCTAssertEqual(chip.read(vcpu: 0, address: IOAPIC.defaultBase, size: 4, now: 0), 0)

        chip.write(vcpu: 0, address: LocalAPIC.defaultBase + tpr, size: 4, value: 0xdead_beef_0000_0050, now: 0)
        XCTAssertEqual(lapicRead(0, tpr), 0x50, "a 4-byte write uses the low 32 bits")
        XCTAssertEqual(takeEvents(), [])
        XCTAssertEqual(takeTimers(), [])
        XCTAssertEqual(offer(), [])
    }

    // MARK: out-of-range vCPUs

    func testOutOfRangeVCPUIndicesAreIgnored() {
        enableAll()
        sendIPI(from: 0, toSelf | levelAssert | 0x30)
        XCTAssertEqual(offer(), [0])
        for vcpu in [2, -1, Int.max, Int.min] {
            XCTAssertEqual(chip.read(vcpu: vcpu, address: LocalAPIC.defaultBase + id, size: 4, now: 0), 0xffff_ffff)
            XCTAssertEqual(chip.read(vcpu: vcpu, address: IOAPIC.defaultBase, size: 4, now: 0), 0xffff_ffff)
            chip.write(vcpu: vcpu, address: LocalAPIC.defaultBase + svr, size: 4, value: 0xff, now: 0)
            chip.write(vcpu: vcpu, address: LocalAPIC.defaultBase + icrLow, size: 4,
                       value: UInt64(toAllIncludingSelf | levelAssert | 0x70), now: 0)
            chip.write(vcpu: vcpu, address: IOAPIC.defaultBase, size: 4, value: 0x12, now: 0)
            chip.acknowledged(vcpu: vcpu, vector: 0x30)
            chip.setDeadline(vcpu: vcpu, nanosecondsFromNow: 100, now: 0)
            chip.setDeadline(vcpu: vcpu, nanosecondsFromNow: nil, now: 0)
        }
        XCTAssertEqual(lapicRead(0, svr), 0x1ff)
        XCTAssertEqual(lapicRead(1, svr), 0x1ff)
        XCTAssertEqual(chip.read(vcpu: 0, address: IOAPIC.defaultBase, size: 4, now: 0), 0, "IOREGSEL unchanged")
        XCTAssertEqual(inService(0), [])
        XCTAssertEqual(pending(0), [0x30])
        XCTAssertEqual(pending(1), [])
        XCTAssertEqual(takeTimers(), [])
        XCTAssertEqual(takeEvents(), [])

        // Destinations and pins that name no vCPU.
        sendIPI(from: 0, levelAssert | 0x71, destination: 2)
        sendIPI(from: 0, nmiMode | levelAssert, destination: 2)
        sendIPI(from: 0, initMode | levelAssert, destination: 9)
        route(pin: 12, vector: 0x3c, destination: 5)
        chip.setLine(pin: 12, asserted: true)
        chip.setLine(pin: 24, asserted: true)
        chip.setLine(pin: -1, asserted: true)
        chip.setLine(pin: Int.max, asserted: true)
        XCTAssertEqual(pending(0), [0x30])
        XCTAssertEqual(pending(1), [])
        XCTAssertEqual(takeEvents(), [])
        XCTAssertEqual(takeTimers(), [])
        XCTAssertEqual(offer(), [])
        XCTAssertEqual(mailbox.slots, [0x30, nil])
        XCTAssertEqual(mailbox.withdrawals, [])
    }

    /// Every entry point that takes a vCPU index, run in a child process so that a trap fails this test instead
    /// of killing the test run.
    func testOutOfRangeVCPUIndicesNeverCrash() {
        let calls: [(String, (InterruptController) -> Void)] = [
            ("read", { _ = $0.read(vcpu: 2, address: LocalAPIC.defaultBase + 0x20, size: 4, now: 0) }),
            ("write", { $0.write(vcpu: -1, address: LocalAPIC.defaultBase + 0x80, size: 4, value: 0, now: 0) }),
            ("acknowledged", { $0.acknowledged(vcpu: 2, vector: 0x30) }),
            ("setDeadline", { $0.setDeadline(vcpu: -1, nanosecondsFromNow: 1, now: 0) }),
            ("timerExpired(vcpu: 2)", { $0.timerExpired(vcpu: 2, now: 0) }),
            ("timerExpired(vcpu: -1)", { $0.timerExpired(vcpu: -1, now: 0) }),
        ]
        for (name, call) in calls {
            let chip = InterruptController(vcpuCount: 2)
            XCTAssertEqual(exitStatusInChild { call(chip) }, 0, "\(name) with an out-of-range vCPU crashed")
        }
    }

    /// Runs `body` in a forked child: 0 when it returned, 70 when it trapped, -1 when it did not end in 10 s.
    private func exitStatusInChild(_ body: () -> Void) -> Int32 {
        let pid = fork()
        guard pid >= 0 else { XCTFail("fork: \(errno)"); return -2 }
        if pid == 0 {
            for s in [SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS] { signal(s) { _ in _exit(70) } }
            body()
            _exit(0)
        }
        var status: Int32 = 0
        for _ in 0..<10_000 {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }
            if r < 0 && errno != EINTR { return -2 }
            usleep(1000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
        return -1
    }
}
