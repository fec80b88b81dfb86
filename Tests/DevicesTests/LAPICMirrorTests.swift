import XCTest
import Devices
import IRQChipLink
import System

/// The irqchip's published copy of a local APIC, read as the vcpu process reads it.
final class LAPICMirrorTests: XCTestCase {
    func testReadsWhatTheAPICReadsOnceEverythingSentIsHandled() throws {
        let fd = try InterruptMailbox.create(vcpus: 2)
        let irqchip = try InterruptMailbox(attaching: fd.raw, vcpus: 2), vcpu = try InterruptMailbox(attaching: fd.raw, vcpus: 2)
        XCTAssertNil(vcpu.mirror(vcpu: 1).read(offset: 0x20, sentPosition: 0, now: { 0 }), "nothing published yet")
        let apic = LocalAPIC(apicID: 1)
        _ = apic.write(offset: 0xf0, value: 0x1ff, now: 0)
        _ = apic.write(offset: 0x80, value: 0x20, now: 0)
        _ = apic.write(offset: 0x3e0, value: 0xb, now: 0)       // divide by 1
        _ = apic.write(offset: 0x320, value: 0x2_0040, now: 0)  // periodic, vector 0x40
        _ = apic.write(offset: 0x380, value: 1_000_000, now: 1_000)
        apic.accept(vector: 0x51, levelTriggered: true)
        irqchip.mirror(vcpu: 1).publish(apic, handledPosition: 7)
        let mirror = vcpu.mirror(vcpu: 1)
        for offset in stride(from: UInt64(0), to: 0x400, by: 16) {
            XCTAssertEqual(mirror.read(offset: offset, sentPosition: 7, now: { 251_000 }), apic.read(offset: offset, now: 251_000),
                           "offset 0x\(String(offset, radix: 16))")
        }
        XCTAssertEqual(mirror.read(offset: 0x390, sentPosition: 7, now: { 251_000 }), 750_000, "current count at the read's time")
        XCTAssertEqual(mirror.read(offset: 0x390, sentPosition: 7, now: { 1_251_000 }), 750_000, "periodic: counts down again")
        XCTAssertNil(mirror.read(offset: 0x80, sentPosition: 8, now: { 0 }), "a write the irqchip has not handled: ask it")
        XCTAssertNil(mirror.read(offset: 0x84, sentPosition: 7, now: { 0 }), "not a register's offset")
        XCTAssertNil(mirror.read(offset: 0x400, sentPosition: 7, now: { 0 }))
        var clockReads = 0
        _ = mirror.read(offset: 0x30, sentPosition: 7, now: { clockReads += 1; return 0 })
        XCTAssertEqual(clockReads, 0, "only the current count needs the time")
        _ = mirror.read(offset: 0x390, sentPosition: 7, now: { clockReads += 1; return 0 })
        XCTAssertEqual(clockReads, 1)
        XCTAssertNil(vcpu.mirror(vcpu: 0).read(offset: 0x20, sentPosition: 0, now: { 0 }), "the other vCPU's copy is its own")
    }

    func testTheTimerCopyGivesTheArmedTimeOnceEverythingSentIsHandled() throws {
        let fd = try InterruptMailbox.create(vcpus: 1)
        let boxes = try InterruptMailbox(attaching: fd.raw, vcpus: 1)
        defer { withExtendedLifetime(boxes) {} }  // the mirror points into its mapping
        let mirror = boxes.mirror(vcpu: 0)
        XCTAssertNil(mirror.timer(sentPosition: 0), "nothing published")
        let apic = LocalAPIC(apicID: 0)
        _ = apic.write(offset: 0xf0, value: 0x1ff, now: 0)
        _ = apic.write(offset: 0x3e0, value: 0xb, now: 0)     // divide by 1: a tick per ns of the model
        _ = apic.write(offset: 0x320, value: 0x40, now: 0)    // one-shot, vector 0x40
        mirror.publish(apic, handledPosition: 2)
        XCTAssertEqual(mirror.timer(sentPosition: 2), .disarmed)
        let effects = apic.write(offset: 0x380, value: 200_000, now: 5_000)
        XCTAssertTrue(effects.contains(.armTimer(atNanoseconds: 205_000)), "\(effects)")
        mirror.publish(apic, handledPosition: 3)
        XCTAssertEqual(mirror.timer(sentPosition: 3), .armed(at: 205_000), "the time the irqchip armed the timerfd to")
        XCTAssertNil(mirror.timer(sentPosition: 4), "a write the irqchip has not handled: the timerfd may change")
        _ = apic.write(offset: 0x380, value: 0, now: 6_000)   // a zero count stops it
        mirror.publish(apic, handledPosition: 4)
        XCTAssertEqual(mirror.timer(sentPosition: 4), .disarmed)
    }

    func testTheTimerVectorIsTakenAtOnceOnlyWhenNothingOutranksIt() throws {
        let fd = try InterruptMailbox.create(vcpus: 1)
        let boxes = try InterruptMailbox(attaching: fd.raw, vcpus: 1)
        let mirror = boxes.mirror(vcpu: 0)
        XCTAssertNil(mirror.timerVectorTakenAtOnce(sentPosition: 0), "nothing published")
        let apic = LocalAPIC(apicID: 0)
        /// The answer from a copy of `apic` as it is now, which includes everything the vCPU sent.
        func takenAtOnce() -> UInt8? {
            mirror.publish(apic, handledPosition: 5)
            return mirror.timerVectorTakenAtOnce(sentPosition: 5)
        }
        XCTAssertNil(takenAtOnce(), "after reset: software-disabled, the timer masked")
        _ = apic.write(offset: 0xf0, value: 0x1ff, now: 0)
        _ = apic.write(offset: 0x320, value: 0x40, now: 0)
        XCTAssertEqual(takenAtOnce(), 0x40)
        XCTAssertNil(mirror.timerVectorTakenAtOnce(sentPosition: 6), "a write the irqchip has not handled")
        apic.accept(vector: 0x41, levelTriggered: false)
        XCTAssertNil(takenAtOnce(), "a higher vector is requested: it comes first")
        apic.acknowledge(0x41)
        XCTAssertNil(takenAtOnce(), "0x41 in service: class 4 is blocked")
        _ = apic.write(offset: 0xb0, value: 0, now: 0)  // EOI
        apic.accept(vector: 0x30, levelTriggered: false)
        XCTAssertEqual(takenAtOnce(), 0x40, "a lower request waits behind it")
        _ = apic.write(offset: 0x80, value: 0x40, now: 0)
        XCTAssertNil(takenAtOnce(), "TPR class 4 holds it")
        _ = apic.write(offset: 0x80, value: 0x30, now: 0)
        _ = apic.write(offset: 0x320, value: 0x1_0040, now: 0)
        XCTAssertNil(takenAtOnce(), "masked")
        _ = apic.write(offset: 0x320, value: 0x0e, now: 0)
        XCTAssertNil(takenAtOnce(), "an illegal vector: the irqchip reports the error")
        _ = apic.write(offset: 0x320, value: 0x40, now: 0)
        XCTAssertEqual(takenAtOnce(), 0x40)
        _ = apic.write(offset: 0xf0, value: 0xff, now: 0)
        XCTAssertNil(takenAtOnce(), "software-disabled (SVR bit 8 clear)")
        withExtendedLifetime(boxes) {}
    }

    func testRequestsAboveAPriorityClassReadIRREvenFromAnOlderCopy() throws {
        // A vCPU lowering its TPR asks the copy whether a requested vector is now above it: IRR bits stay until the
        // vCPU takes them, so an older copy (one before the vCPU's latest writes) still answers.
        let fd = try InterruptMailbox.create(vcpus: 1)
        let boxes = try InterruptMailbox(attaching: fd.raw, vcpus: 1)
        let mirror = boxes.mirror(vcpu: 0)
        XCTAssertNil(mirror.requestsAbove(priorityClass: 0), "nothing published: unknown")
        let apic = LocalAPIC(apicID: 0)
        _ = apic.write(offset: 0xf0, value: 0x1ff, now: 0)
        mirror.publish(apic, handledPosition: 3)
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 0), false)
        apic.accept(vector: 0x51, levelTriggered: false)
        mirror.publish(apic, handledPosition: 3)
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 4), true)
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 5), false, "same class: still held")
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 15), false)
        apic.accept(vector: 0xff, levelTriggered: false)
        mirror.publish(apic, handledPosition: 3)
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 14), true, "the last word's top bit")
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 15), false)
        apic.accept(vector: 0x3f, levelTriggered: false)
        apic.acknowledge(0xff)
        apic.acknowledge(0x51)
        mirror.publish(apic, handledPosition: 9)
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 2), true, "0x3f is class 3, in the middle of a word")
        XCTAssertEqual(mirror.requestsAbove(priorityClass: 3), false)
        // IRR and ISR as sets: only from a copy that includes what the vCPU sent, when it asks for that.
        let sets = try XCTUnwrap(mirror.vectorSets(sentPosition: 9))
        XCTAssertEqual(sets.requested.highest, 0x3f)
        XCTAssertEqual(sets.inService.highest, 0xff)
        var inService = sets.inService
        inService.remove(0xff)
        XCTAssertEqual(inService.highest, 0x51)
        XCTAssertNil(mirror.vectorSets(sentPosition: 10), "the irqchip has not handled everything sent")
        XCTAssertNotNil(mirror.vectorSets(sentPosition: nil))
    }
}

/// The times a vCPU sends the irqchip (absolute TSC deadlines, write stamps), as the irqchip takes them.
final class TimerStampTests: XCTestCase {
    func testDeadlinesAreAbsoluteAndStampsPlausible() {
        XCTAssertEqual(TimerDeadline.decode(TimerDeadline.encode(at: 123_456)), 123_456)
        XCTAssertNil(TimerDeadline.decode(TimerDeadline.encode(at: nil)))
        XCTAssertEqual(TimerDeadline.decode(TimerDeadline.encode(at: .max)), .max - 1, "a deadline is never read as disarmed")
        XCTAssertEqual(TimerDeadline.plausible(9_000, now: 10_000), 9_000)
        XCTAssertEqual(TimerDeadline.plausible(11_000, now: 10_000), 10_000, "not in the future")
        XCTAssertEqual(TimerDeadline.plausible(1, now: 2_000_000_000), 2_000_000_000, "not more than a second back")
    }

    func testAOneShotTimerCountsFromTheStampedWrite() {
        let chip = InterruptController(vcpuCount: 1)
        chip.write(vcpu: 0, address: LocalAPIC.defaultBase + 0xf0, size: 4, value: 0x1ff, now: 0)
        chip.write(vcpu: 0, address: LocalAPIC.defaultBase + 0x3e0, size: 4, value: 0xb, now: 0)
        chip.write(vcpu: 0, address: LocalAPIC.defaultBase + 0x320, size: 4, value: 0x40, now: 0)
        chip.write(vcpu: 0, address: LocalAPIC.defaultBase + 0x380, size: 4, value: 200_000, now: TimerDeadline.plausible(1_000_000, now: 1_050_000))
        XCTAssertEqual(chip.takeTimerRequests().last?.at, 1_200_000, "armed for the write's time plus the count, not the irqchip's")
    }
}
