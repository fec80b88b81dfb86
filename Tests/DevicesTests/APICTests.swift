import XCTest
@testable import Devices

final class LocalAPICTests: XCTestCase {
    var apic = LocalAPIC(apicID: 0)

    func enable() { _ = apic.write(offset: 0xf0, value: 0x1ff, now: 0) }

    func testIdentityAndVersion() {
        let a = LocalAPIC(apicID: 3)
        XCTAssertEqual(a.read(offset: 0x20, now: 0), 3 << 24)
        XCTAssertEqual(a.read(offset: 0x30, now: 0) & 0xff, 0x14)
        XCTAssertEqual(a.read(offset: 0xf0, now: 0), 0xff, "software-disabled after reset")
    }

    func testPriorityNestingAndEOI() {
        enable()
        apic.accept(vector: 0x41, levelTriggered: false)
        XCTAssertEqual(apic.deliverableVector, 0x41)
        apic.acknowledge(0x41)
        XCTAssertEqual(apic.read(offset: 0xa0, now: 0), 0x40, "PPR follows the in-service class")
        apic.accept(vector: 0x45, levelTriggered: false)
        XCTAssertNil(apic.deliverableVector, "same priority class does not preempt")
        apic.accept(vector: 0x61, levelTriggered: false)
        XCTAssertEqual(apic.deliverableVector, 0x61, "a higher class preempts")
        apic.acknowledge(0x61)
        XCTAssertEqual(apic.write(offset: 0xb0, value: 0, now: 0), [], "edge: no EOI broadcast")
        XCTAssertEqual(apic.isr.highest, 0x41, "EOI retires the highest in-service vector")
        _ = apic.write(offset: 0xb0, value: 0, now: 0)
        XCTAssertEqual(apic.deliverableVector, 0x45)
    }

    func testAnInterruptArrivingWhileItsVectorIsOfferedIsNotLost() {
        enable()
        apic.accept(vector: 0x24, levelTriggered: false)
        apic.offered = 0x24  // in the vCPU's mailbox, maybe already injected
        apic.accept(vector: 0x24, levelTriggered: false)  // a new edge before the acknowledge arrives
        apic.acknowledge(0x24)
        XCTAssertTrue(apic.isr.contains(0x24))
        XCTAssertTrue(apic.irr.contains(0x24), "the second edge waits in IRR for the EOI")
        _ = apic.write(offset: 0xb0, value: 0, now: 0)
        XCTAssertEqual(apic.deliverableVector, 0x24)
    }

    func testTPRMasksLowerClasses() {
        enable()
        _ = apic.write(offset: 0x80, value: 0x50, now: 0)
        apic.accept(vector: 0x52, levelTriggered: false)
        XCTAssertNil(apic.deliverableVector)
        apic.accept(vector: 0x62, levelTriggered: false)
        XCTAssertEqual(apic.deliverableVector, 0x62)
        _ = apic.write(offset: 0x80, value: 0x00, now: 0)
        XCTAssertEqual(apic.deliverableVector, 0x62)
    }

    func testLevelTriggeredEOIReachesTheIOAPIC() {
        enable()
        apic.accept(vector: 0x30, levelTriggered: true)
        XCTAssertEqual(apic.read(offset: 0x180 + 0x10, now: 0), 1 << 16, "TMR bit for vector 0x30")
        apic.acknowledge(0x30)
        XCTAssertEqual(apic.write(offset: 0xb0, value: 0, now: 0), [.endOfInterrupt(vector: 0x30)])
    }

    func testDisabledAPICDeliversNothingAndMasksLVT() {
        apic.accept(vector: 0x40, levelTriggered: false)
        XCTAssertNil(apic.deliverableVector)
        _ = apic.write(offset: 0x320, value: 0x20, now: 0)
        XCTAssertEqual(apic.read(offset: 0x320, now: 0) & (1 << 16), 1 << 16)
    }

    func testOneShotAndPeriodicTimer() {
        enable()
        _ = apic.write(offset: 0x3e0, value: 0xb, now: 0)  // divide by 1
        _ = apic.write(offset: 0x320, value: 0x30, now: 0)  // one-shot, vector 0x30
        XCTAssertEqual(apic.write(offset: 0x380, value: 1000, now: 5000), [.armTimer(atNanoseconds: 6000)])
        XCTAssertEqual(apic.read(offset: 0x390, now: 5400), 600)
        XCTAssertEqual(apic.timerExpired(now: 6000), [])
        XCTAssertEqual(apic.deliverableVector, 0x30)
        XCTAssertEqual(apic.read(offset: 0x390, now: 7000), 0)
        XCTAssertEqual(apic.write(offset: 0x380, value: 500, now: 7000), [.armTimer(atNanoseconds: 7500)], "one-shot re-arm")

        let p = LocalAPIC(apicID: 0)
        _ = p.write(offset: 0xf0, value: 0x1ff, now: 0)
        _ = p.write(offset: 0x3e0, value: 0x3, now: 0)  // divide by 16
        _ = p.write(offset: 0x320, value: (1 << 17) | 0x31, now: 0)
        XCTAssertEqual(p.write(offset: 0x380, value: 100_000, now: 0), [.armTimer(atNanoseconds: 1_600_000)])
        XCTAssertEqual(p.timerExpired(now: 1_600_000), [.armTimer(atNanoseconds: 3_200_000)])
        XCTAssertEqual(p.timerExpired(now: 5_000_000), [.armTimer(atNanoseconds: 6_400_000)], "missed periods are skipped, not queued")
        XCTAssertEqual(p.read(offset: 0x390, now: 6_400_000 + 160_000), 90_000)
        _ = p.write(offset: 0x320, value: (1 << 17) | (1 << 16) | 0x31, now: 0)  // masked
        p.acknowledge(0x31)
        _ = p.write(offset: 0xb0, value: 0, now: 0)
        _ = p.timerExpired(now: 8_000_000)
        XCTAssertNil(p.deliverableVector, "a masked timer counts but raises nothing")
    }

    /// Divide 1 and count 1 would make a periodic timer fire every nanosecond: it is held to KVM's minimum period.
    func testAPeriodicTimerIsNeverFasterThanTheMinimumPeriod() {
        enable()
        _ = apic.write(offset: 0x3e0, value: 0xb, now: 0)                // divide by 1
        _ = apic.write(offset: 0x320, value: 0x2_0040, now: 0)           // periodic, vector 0x40
        XCTAssertEqual(apic.write(offset: 0x380, value: 1, now: 1000), [.armTimer(atNanoseconds: 1000 + LocalAPIC.minimumPeriodicNanoseconds)])
        let next = apic.timerExpired(now: 1000 + LocalAPIC.minimumPeriodicNanoseconds)
        XCTAssertTrue(next.contains(.armTimer(atNanoseconds: 1000 + 2 * LocalAPIC.minimumPeriodicNanoseconds)), "\(next)")
        _ = apic.write(offset: 0x320, value: 0x40, now: 0)               // one-shot: a short count is fine once
        XCTAssertEqual(apic.write(offset: 0x380, value: 1, now: 5000), [.armTimer(atNanoseconds: 5001)])
    }

    func testTimerModeChangesKeepTheCountOrDisarmAsTheSDMSays() {
        // One-shot <-> periodic while counting: the count goes on (never 0 while armed, reloaded to the initial
        // count in periodic mode); into or out of TSC-deadline mode: disarmed, and the initial count reads 0.
        enable()
        _ = apic.write(offset: 0x3e0, value: 0xb, now: 0)                        // divide by 1
        _ = apic.write(offset: 0x320, value: 0x40, now: 0)                       // one-shot
        XCTAssertEqual(apic.write(offset: 0x380, value: 1_000_000, now: 0), [.armTimer(atNanoseconds: 1_000_000)])
        XCTAssertEqual(apic.write(offset: 0x320, value: 0x2_0040, now: 400_000), [.armTimer(atNanoseconds: 1_000_000)])
        XCTAssertEqual(apic.read(offset: 0x390, now: 400_000), 600_000, "not restarted by the change")
        XCTAssertEqual(apic.timerExpired(now: 1_000_000), [.armTimer(atNanoseconds: 2_000_000)], "periodic now")
        XCTAssertEqual(apic.read(offset: 0x390, now: 1_000_000), 1_000_000, "reloaded, not 0")
        XCTAssertEqual(apic.read(offset: 0x390, now: 2_250_000), 750_000)
        XCTAssertEqual(apic.write(offset: 0x320, value: 0x40, now: 2_250_000), [.armTimer(atNanoseconds: 3_000_000)])
        XCTAssertEqual(apic.read(offset: 0x390, now: 2_250_000), 750_000, "one-shot: the period in progress counts down")
        XCTAssertEqual(apic.read(offset: 0x390, now: 2_999_999), 1, "never 0 while armed")
        XCTAssertEqual(apic.timerExpired(now: 3_000_000), [])
        XCTAssertEqual(apic.read(offset: 0x390, now: 3_500_000), 0, "a one-shot that fired reads 0")
        XCTAssertEqual(apic.write(offset: 0x320, value: 0x2_0040, now: 3_600_000), [], "a stopped timer stays stopped")
        XCTAssertEqual(apic.read(offset: 0x390, now: 3_600_000), 0)

        XCTAssertEqual(apic.write(offset: 0x380, value: 1_000_000, now: 4_000_000), [.armTimer(atNanoseconds: 5_000_000)])
        XCTAssertEqual(apic.write(offset: 0x320, value: 0x4_0040, now: 4_100_000), [.cancelTimer], "to TSC-deadline: disarmed")
        XCTAssertEqual(apic.read(offset: 0x380, now: 4_100_000), 0, "initial count cleared")
        XCTAssertEqual(apic.read(offset: 0x390, now: 4_100_000), 0)
        XCTAssertEqual(apic.setDeadline(9_000_000, now: 4_200_000), [.armTimer(atNanoseconds: 9_000_000)])
        XCTAssertEqual(apic.write(offset: 0x320, value: 0x40, now: 4_300_000), [.cancelTimer], "out of TSC-deadline: disarmed")
        XCTAssertEqual(apic.deadline, 0)
    }

    func testTSCDeadlineMode() {
        enable()
        _ = apic.write(offset: 0x320, value: (2 << 17) | 0x40, now: 0)
        XCTAssertEqual(apic.write(offset: 0x380, value: 100, now: 0), [], "the initial count is ignored")
        XCTAssertEqual(apic.setDeadline(9000, now: 1000), [.armTimer(atNanoseconds: 9000)])
        XCTAssertEqual(apic.timerExpired(now: 8000), [], "too early")
        XCTAssertNil(apic.deliverableVector)
        _ = apic.timerExpired(now: 9000)
        XCTAssertEqual(apic.deliverableVector, 0x40)
        XCTAssertEqual(apic.deadline, 0, "the deadline disarms once it fired")
        XCTAssertEqual(apic.setDeadline(0, now: 0), [.cancelTimer])
    }

    func testICRSendsIPIsWithShorthands() {
        enable()
        _ = apic.write(offset: 0x310, value: 0x0200_0000, now: 0)
        let sent = apic.write(offset: 0x300, value: 0x4000 | 0x50, now: 0)  // fixed, level assert, vector 0x50
        XCTAssertEqual(sent, [.interprocessorInterrupt(InterruptMessage(vector: 0x50, deliveryMode: .fixed, logical: false,
                                                                        destination: 2, levelTriggered: false), shorthand: 0)])
        let initAll = apic.write(offset: 0x300, value: (3 << 18) | (5 << 8), now: 0)
        guard case .interprocessorInterrupt(let m, let shorthand)? = initAll.first else { return XCTFail() }
        XCTAssertEqual(m.deliveryMode, .initialize)
        XCTAssertEqual(shorthand, 3)
        let sipi = apic.write(offset: 0x300, value: (6 << 8) | 0x9a, now: 0)
        guard case .interprocessorInterrupt(let s, _)? = sipi.first else { return XCTFail() }
        XCTAssertEqual(s.deliveryMode, .startup)
        XCTAssertEqual(s.vector, 0x9a)
        XCTAssertEqual(apic.read(offset: 0x300, now: 0) & (1 << 12), 0, "delivery status idle")
    }

    func testINITDeassertSendsNothingAndResetKeepsOnlyTheID() {
        enable()
        _ = apic.write(offset: 0x310, value: 0x0100_0000, now: 0)
        XCTAssertEqual(apic.write(offset: 0x300, value: 0x8500, now: 0), [], "INIT level de-assert")
        XCTAssertEqual(apic.write(offset: 0x300, value: 0xc500, now: 0).count, 1, "INIT level assert")
        apic.accept(vector: 0x40, levelTriggered: false)
        _ = apic.write(offset: 0x80, value: 0x20, now: 0)
        apic.reset()
        XCTAssertEqual(apic.read(offset: 0x20, now: 0), UInt32(apic.apicID) << 24)
        XCTAssertEqual(apic.read(offset: 0x80, now: 0), 0, "TPR")
        XCTAssertEqual(apic.read(offset: 0xf0, now: 0), 0xff, "SVR: software-disabled")
        XCTAssertEqual(apic.read(offset: 0x320, now: 0), 1 << 16, "LVT timer masked")
        XCTAssertNil(apic.irr.highest)
    }

    func testLogicalDestinations() {
        _ = apic.write(offset: 0xd0, value: 0x0400_0000, now: 0)  // logical ID bit 2
        XCTAssertTrue(apic.isDestination(of: InterruptMessage(vector: 0x30, deliveryMode: .fixed, logical: true, destination: 0x04, levelTriggered: false)))
        XCTAssertFalse(apic.isDestination(of: InterruptMessage(vector: 0x30, deliveryMode: .fixed, logical: true, destination: 0x02, levelTriggered: false)))
        XCTAssertTrue(apic.isDestination(of: InterruptMessage(vector: 0x30, deliveryMode: .fixed, logical: false, destination: 0xff, levelTriggered: false)))
    }

    func testIllegalVectorIsAnError() {
        enable()
        apic.accept(vector: 5, levelTriggered: false)
        XCTAssertNil(apic.deliverableVector)
        _ = apic.write(offset: 0x280, value: 0, now: 0)
        XCTAssertEqual(apic.read(offset: 0x280, now: 0), 1 << 6, "received illegal vector")
    }
}

final class IOAPICTests: XCTestCase {
    let io = IOAPIC()

    func program(pin: Int, vector: UInt8, level: Bool = false, masked: Bool = false, destination: UInt8 = 0) {
        _ = io.write(offset: 0, value: UInt32(0x10 + pin * 2 + 1))
        _ = io.write(offset: 0x10, value: UInt32(destination) << 24)
        _ = io.write(offset: 0, value: UInt32(0x10 + pin * 2))
        _ = io.write(offset: 0x10, value: UInt32(vector) | (level ? 1 << 15 : 0) | (masked ? 1 << 16 : 0))
    }

    func testVersionAndReset() {
        _ = io.write(offset: 0, value: 1)
        XCTAssertEqual(io.read(offset: 0x10), 0x0017_0020, "24 pins, version 0x20")
        _ = io.write(offset: 0, value: 0x10)
        XCTAssertEqual(io.read(offset: 0x10) & (1 << 16), 1 << 16, "pins are masked after reset")
        XCTAssertEqual(io.setPin(0, true), [])
    }

    func testEdgeTriggeredDeliversOnRisingEdges() {
        program(pin: 4, vector: 0x24)
        XCTAssertEqual(io.setPin(4, true).map(\.vector), [0x24])
        XCTAssertEqual(io.setPin(4, true), [], "no new edge")
        XCTAssertEqual(io.setPin(4, false), [])
        XCTAssertEqual(io.setPin(4, true).count, 1)
    }

    func testLevelTriggeredRemoteIRRAndEOI() {
        program(pin: 9, vector: 0x29, level: true)
        let first = io.setPin(9, true)
        XCTAssertEqual(first, [InterruptMessage(vector: 0x29, deliveryMode: .fixed, logical: false, destination: 0, levelTriggered: true)])
        XCTAssertTrue(io.remoteIRR(pin: 9))
        XCTAssertEqual(io.setPin(9, true), [], "held off by remote IRR")
        XCTAssertEqual(io.endOfInterrupt(vector: 0x29).count, 1, "still asserted at EOI: delivered again")
        _ = io.setPin(9, false)
        XCTAssertEqual(io.endOfInterrupt(vector: 0x29), [])
        XCTAssertFalse(io.remoteIRR(pin: 9))
        XCTAssertEqual(io.write(offset: 0x40, value: 0x29), [], "the EOI register works the same way")
    }

    func testMaskedPinStaysQuietUntilUnmasked() {
        program(pin: 3, vector: 0x23, level: true, masked: true)
        XCTAssertEqual(io.setPin(3, true), [])
        _ = io.write(offset: 0, value: 0x10 + 3 * 2)
        XCTAssertEqual(io.write(offset: 0x10, value: 0x23 | (1 << 15)).map(\.vector), [0x23], "unmasking an asserted level pin delivers")
    }
}
