import TestSupport
import XCTest
@testable import Devices


/// One thing that happens to the interrupt system; replayed identically on an original and its restored copy.
private enum ChipOp {
    case read(vcpu: Int, offset: UInt64, now: UInt64)
    case write(vcpu: Int, offset: UInt64, value: UInt32, now: UInt64)
    case ioapicRead(index: UInt8)
    case ioapicWrite(index: UInt8, value: UInt32)
    case line(pin: Int, level: Bool)
    case timer(vcpu: Int, now: UInt64)
    case deadline(vcpu: Int, delay: UInt64?, now: UInt64)
    case offer
    /// The vCPU injects its mailbox's vector and acknowledges it.
    case take(vcpu: Int)
}

/// A controller with its mailboxes, driven the way the irqchip process and the vCPUs drive it.
private final class ChipRig {
    let chip: InterruptController
    let mailbox: TestMailbox

    init(vcpus: Int = 2) {
        chip = InterruptController(vcpuCount: vcpus)
        mailbox = TestMailbox(vcpus: vcpus)
    }

    func lapicWrite(_ vcpu: Int, _ offset: UInt64, _ value: UInt32, now: UInt64 = 0) {
        chip.write(vcpu: vcpu, address: LocalAPIC.defaultBase + offset, size: 4, value: UInt64(value), now: now)
    }

    func ioapicWrite(_ index: UInt8, _ value: UInt32) {
        chip.write(vcpu: 0, address: IOAPIC.defaultBase, size: 4, value: UInt64(index), now: 0)
        chip.write(vcpu: 0, address: IOAPIC.defaultBase + 0x10, size: 4, value: UInt64(value), now: 0)
    }

    /// Applies `op`; returns everything it made observable: a read's value, the vCPUs kicked, the mailboxes, the
    /// timer requests and CPU events taken, and what each LAPIC would deliver next.
    func step(_ op: ChipOp) -> String {
        var result = ""
        switch op {
        case .read(let vcpu, let offset, let now):
            result = "read \(chip.read(vcpu: vcpu, address: LocalAPIC.defaultBase + offset, size: 4, now: now))"
        case .write(let vcpu, let offset, let value, let now):
            lapicWrite(vcpu, offset, value, now: now)
        case .ioapicRead(let index):
            chip.write(vcpu: 0, address: IOAPIC.defaultBase, size: 4, value: UInt64(index), now: 0)
            result = "ioapic \(chip.read(vcpu: 1, address: IOAPIC.defaultBase + 0x10, size: 4, now: 0))"
        case .ioapicWrite(let index, let value):
            ioapicWrite(index, value)
        case .line(let pin, let level):
            chip.setLine(pin: pin, asserted: level)
        case .timer(let vcpu, let now):
            chip.timerExpired(vcpu: vcpu, now: now)
        case .deadline(let vcpu, let delay, let now):
            chip.setDeadline(vcpu: vcpu, nanosecondsFromNow: delay, now: now)
        case .offer:
            result = "kicked \(chip.updateOffers(mailbox).sorted())"
        case .take(let vcpu):
            let vector = mailbox.take(vcpu: vcpu)
            if let vector { chip.acknowledged(vcpu: vcpu, vector: vector) }
            result = "took \(String(describing: vector))"
        }
        let timers = chip.takeTimerRequests().map { "\($0.vcpu)@\(String(describing: $0.at))" }
        let events = chip.takeCPUEvents().map { "\($0.vcpu):\($0.event)" }
        let deliverable = chip.lapics.map { String(describing: $0.deliverableVector) }
        return "\(result) slots \(mailbox.slots) withdrawn \(mailbox.withdrawals) timers \(timers) events \(events) "
            + "deliverable \(deliverable)"
    }
}

final class InterruptSnapshotTests: XCTestCase {
    // LAPIC registers.
    let tpr: UInt64 = 0x80, eoi: UInt64 = 0xb0, ldr: UInt64 = 0xd0, svr: UInt64 = 0xf0, esr: UInt64 = 0x280
    let icrLow: UInt64 = 0x300, icrHigh: UInt64 = 0x310, lvtTimer: UInt64 = 0x320, initialCount: UInt64 = 0x380
    let divide: UInt64 = 0x3e0
    /// Every LAPIC register offset the model decodes.
    let lapicOffsets: [UInt64] = {
        let single: [UInt64] = [0x20, 0x30, 0x80, 0x90, 0xa0, 0xd0, 0xe0, 0xf0, 0x280, 0x2f0, 0x300, 0x310, 0x320,
                                0x330, 0x340, 0x350, 0x360, 0x370, 0x380, 0x390, 0x3e0]
        let sets: [UInt64] = (0..<24).map { (i: UInt64) -> UInt64 in 0x100 + i * 0x10 }  // ISR, TMR, IRR
        return single + sets
    }()

    /// Both vCPUs enabled; on vCPU 0 a level-triggered pin (vector 0x34) delivered and in service, not EOI'd, a
    /// periodic timer (0x60, 1 ms) that has fired once and is offered, and a self-IPI (0x45) pending; on vCPU 1
    /// TPR 0x20, an IPI (0x51) offered and arrived again, recorded errors, a TSC-deadline timer at 7 ms whose
    /// request is not taken yet, and an NMI not taken; a masked edge pin held up. Returns the timer requests taken.
    private func busy(_ r: ChipRig) -> [String] {
        r.lapicWrite(0, svr, 0x1ff)
        r.lapicWrite(1, svr, 0x1ff)
        r.lapicWrite(0, ldr, 0x0100_0000)
        r.lapicWrite(1, ldr, 0x0200_0000)
        r.lapicWrite(1, tpr, 0x20)
        r.ioapicWrite(0x10 + 2 * 4 + 1, 0)  // pin 4 to APIC 0
        r.ioapicWrite(0x10 + 2 * 4, 0x34 | 1 << 15)  // level-triggered
        r.ioapicWrite(0x10 + 2 * 5 + 1, 1 << 24)
        r.ioapicWrite(0x10 + 2 * 5, 0x55 | 1 << 16)  // edge, masked
        r.chip.setLine(pin: 4, asserted: true)
        r.chip.setLine(pin: 5, asserted: true)
        XCTAssertEqual(r.chip.updateOffers(r.mailbox), [0])
        XCTAssertEqual(r.step(.take(vcpu: 0)).hasPrefix("took Optional(52)"), true)
        XCTAssertTrue(r.chip.ioapic.remoteIRR(pin: 4))

        r.lapicWrite(0, divide, 0xb)  // divide by 1
        r.lapicWrite(0, lvtTimer, 1 << 17 | 0x60)
        r.lapicWrite(0, initialCount, 1_000_000, now: 1_000)
        r.chip.timerExpired(vcpu: 0, now: 1_001_500)

        r.lapicWrite(0, icrHigh, 1 << 24)
        r.lapicWrite(0, icrLow, 0x51)
        XCTAssertEqual(r.chip.updateOffers(r.mailbox).sorted(), [0, 1])
        XCTAssertEqual(r.mailbox.slots, [0x60, 0x51])
        r.lapicWrite(0, icrLow, 0x51)  // again, while offered
        r.lapicWrite(0, icrLow, 0x45 | 1 << 18)  // self

        r.lapicWrite(1, icrLow, 0x05 | 1 << 18)  // illegal vector: send and receive errors
        r.lapicWrite(1, esr, 0)
        r.lapicWrite(1, icrLow, 0x06 | 1 << 18)
        r.lapicWrite(0, icrHigh, 1 << 24)
        r.lapicWrite(0, icrLow, 4 << 8)  // NMI to APIC 1

        r.lapicWrite(1, lvtTimer, 2 << 17 | 0x70)
        let taken = r.chip.takeTimerRequests().map { "\($0.vcpu)@\(String(describing: $0.at))" }
        r.chip.setDeadline(vcpu: 1, nanosecondsFromNow: 5_000_000, now: 2_000_000)
        return taken
    }

    /// A successor: a fresh controller restored from `original`'s snapshot, and the same mailboxes (shared
    /// memory, which outlives the process), holding the offers not yet taken.
    private func restoredCopy(of original: ChipRig) throws -> ChipRig {
        let copy = ChipRig(vcpus: original.chip.lapics.count)
        try copy.chip.restore(snapshot: original.chip.snapshot())
        for (vcpu, slot) in original.mailbox.slots.enumerated() {
            if let vector = slot { XCTAssertTrue(copy.mailbox.post(vector, vcpu: vcpu)) }
        }
        return copy
    }

    private func assertSameBehaviour(_ a: ChipRig, _ b: ChipRig, _ ops: [ChipOp],
                                     file: StaticString = #filePath, line: UInt = #line) {
        for (index, op) in ops.enumerated() {
            let x = a.step(op), y = b.step(op)
            guard x == y else {
                XCTFail("step \(index) (\(op)): \(x)\n  vs \(y) after restore", file: file, line: line)
                return
            }
            guard a.chip.snapshot() == b.chip.snapshot() else {
                XCTFail("step \(index) (\(op)): the states differ after restore", file: file, line: line)
                return
            }
        }
    }

    private func randomOps(count: Int, seed: UInt64) -> [ChipOp] {
        var rng = SplitMix(state: seed)
        var now: UInt64 = 2_100_000
        let writable: [UInt64] = [0x80, 0xb0, 0xb0, 0xb0, 0xd0, 0xe0, 0xf0, 0x280, 0x300, 0x300, 0x310, 0x320, 0x350,
                                  0x370, 0x380, 0x3e0]
        return (0..<count).map { _ in
            now += UInt64.random(in: 0...400_000, using: &rng)
            let vcpu = Int.random(in: 0...1, using: &rng)
            switch Int.random(in: 0..<12, using: &rng) {
            case 0, 1: return .read(vcpu: vcpu, offset: lapicOffsets.randomElement(using: &rng) ?? 0, now: now)
            case 2, 3:
                let offset = writable.randomElement(using: &rng) ?? 0
                var value = UInt32.random(in: 0...UInt32.max, using: &rng)
                switch offset {
                case 0xf0: value |= 0x100  // mostly enabled, or little would be delivered
                case 0x380: value %= 3_000_000
                case 0x300: value &= 0xfffc_f8ff | (UInt32.random(in: 0...1, using: &rng) == 0 ? 0 : 0x400)
                default: break
                }
                return .write(vcpu: vcpu, offset: offset, value: value, now: now)
            case 4: return .ioapicRead(index: UInt8.random(in: 0...0x40, using: &rng))
            case 5:
                let index = UInt8.random(in: 0x10...0x3f, using: &rng)
                let value = index & 1 == 0 ? UInt32.random(in: 0...0x1_ffff, using: &rng) & ~0x700 : UInt32(vcpu) << 24
                return .ioapicWrite(index: index, value: value)
            case 6: return .line(pin: Int.random(in: 0..<6, using: &rng), level: Bool.random(using: &rng))
            case 7: return .timer(vcpu: vcpu, now: now)
            case 8: return .deadline(vcpu: vcpu, delay: Bool.random(using: &rng) ? UInt64.random(in: 0...2_000_000, using: &rng) : nil, now: now)
            case 9: return .offer
            default: return .take(vcpu: vcpu)
            }
        }
    }

    // MARK: - Round trip

    func testABusyControllerRestoresAndBehavesTheSame() throws {
        let original = ChipRig()
        let history = busy(original)
        XCTAssertEqual(history, ["0@Optional(1001000)", "0@Optional(2001000)", "1@nil"])
        let copy = try restoredCopy(of: original)
        XCTAssertEqual(copy.chip.snapshot(), original.chip.snapshot())
        XCTAssertEqual(copy.chip.lapics[1].timerArmedAt, 7_000_000)

        // Every register on both vCPUs mid-period, then the pending requests and events, offers, EOIs (the level
        // pin re-delivers while held), timer expiries (early, due, periodic), an INIT and a start-up IPI.
        var script: [ChipOp] = lapicOffsets.flatMap { [ChipOp.read(vcpu: 0, offset: $0, now: 1_700_000),
                                                       .read(vcpu: 1, offset: $0, now: 1_700_000)] }
        script += (0..<0x40).map { ChipOp.ioapicRead(index: $0) }
        script += [.offer, .take(vcpu: 1), .take(vcpu: 0), .offer, .take(vcpu: 1), .take(vcpu: 0), .offer]
        script += [.write(vcpu: 0, offset: eoi, value: 0, now: 1_800_000), .take(vcpu: 0),
                   .write(vcpu: 0, offset: eoi, value: 0, now: 1_800_000), .offer, .take(vcpu: 0),
                   .write(vcpu: 0, offset: eoi, value: 0, now: 1_800_000), .offer, .take(vcpu: 0), .ioapicRead(index: 0x18),
                   .line(pin: 4, level: false), .write(vcpu: 0, offset: eoi, value: 0, now: 1_900_000), .ioapicRead(index: 0x18)]
        script += [.read(vcpu: 0, offset: 0x390, now: 2_000_999), .timer(vcpu: 0, now: 2_001_000),
                   .timer(vcpu: 1, now: 6_000_000), .read(vcpu: 0, offset: 0x390, now: 6_000_000),
                   .timer(vcpu: 0, now: 6_500_000), .timer(vcpu: 1, now: 7_000_000), .offer, .take(vcpu: 1)]
        script += [.read(vcpu: 1, offset: esr, now: 7_000_000), .write(vcpu: 1, offset: esr, value: 0, now: 7_000_000),
                   .read(vcpu: 1, offset: esr, now: 7_000_000), .line(pin: 5, level: false), .line(pin: 5, level: true),
                   .ioapicWrite(index: 0x1a, value: 0x55), .line(pin: 5, level: false), .line(pin: 5, level: true), .offer]
        script += [.write(vcpu: 0, offset: icrHigh, value: 1 << 24, now: 7_100_000),
                   .write(vcpu: 0, offset: icrLow, value: 5 << 8 | 1 << 14, now: 7_100_000), .offer,
                   .write(vcpu: 0, offset: icrLow, value: 6 << 8 | 0x9a, now: 7_100_000), .offer]
        assertSameBehaviour(original, copy, script)
        assertSameBehaviour(original, copy, randomOps(count: 5000, seed: 11))
    }

    func testRearmTimersQueuesTheArmedTimersAtTheSameAbsoluteTimes() throws {
        let original = ChipRig()
        _ = busy(original)
        XCTAssertEqual(original.chip.lapics.map(\.timerArmedAt), [2_001_000, 7_000_000])
        let copy = ChipRig()
        try copy.chip.restore(snapshot: original.chip.snapshot())
        let pending = copy.chip.takeTimerRequests()
        XCTAssertEqual(pending.map(\.vcpu), [1], "the request the predecessor had not taken is restored")
        XCTAssertEqual(pending.map(\.at), [7_000_000])
        copy.chip.rearmTimers()
        let rearmed = copy.chip.takeTimerRequests()
        XCTAssertEqual(rearmed.map(\.vcpu), [0, 1])
        XCTAssertEqual(rearmed.map(\.at), [2_001_000, 7_000_000], "the last times armed, absolute")

        // A periodic expiry due while the predecessor was down is re-armed in the past, fires at once, and the
        // timer continues on its grid; a fired one-shot and a disarmed timer are not re-armed.
        copy.chip.timerExpired(vcpu: 0, now: 3_500_000)
        XCTAssertEqual(copy.chip.takeTimerRequests().map(\.at), [4_001_000])
        copy.chip.timerExpired(vcpu: 1, now: 7_000_000)
        XCTAssertEqual(copy.chip.lapics.map(\.timerArmedAt), [4_001_000, nil])
        copy.lapicWrite(0, initialCount, 0, now: 3_600_000)
        XCTAssertEqual(copy.chip.takeTimerRequests().map(\.at), [nil])
        copy.chip.rearmTimers()
        XCTAssertTrue(copy.chip.takeTimerRequests().isEmpty, "nothing armed, nothing to re-arm")
    }

    func testAFreshControllerRoundTrips() throws {
        let fresh = ChipRig(vcpus: 3)
        let copy = ChipRig(vcpus: 3)
        try copy.chip.restore(snapshot: fresh.chip.snapshot())
        XCTAssertEqual(copy.chip.snapshot(), fresh.chip.snapshot())
        copy.chip.rearmTimers()
        XCTAssertTrue(copy.chip.takeTimerRequests().isEmpty)
    }

    // MARK: - Forged snapshots

    /// Field offsets in a LAPIC's snapshot, and the sizes of the parts of the controller's.
    private enum Layout {
        static let lapic = 196, ioapic = 198
        static let apicID = 0, tpr = 1, svr = 13, irr = 33, lvtTimer = 133, timerStart = 165, running = 173
        static let armedFlag = 182, armed = 183, offered = 192, hardwareEnabled = 195
        static func lapicBase(_ vcpu: Int) -> Int { 2 + vcpu * lapic }
        static let ioapicBase = 2 + 2 * lapic
        static let posted = ioapicBase + ioapic
        static let requests = posted + 2 * 2 + 2
    }

    private func patched(_ bytes: [UInt8], at offset: Int, _ value: UInt64, width: Int) -> [UInt8] {
        var bytes = bytes
        for i in 0..<width { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        return bytes
    }

    func testForgedSnapshotsAreRefusedAndChangeNothing() throws {
        let r = ChipRig()
        _ = busy(r)
        let before = r.chip.snapshot()
        XCTAssertEqual(r.chip.lapics[0].snapshot().count, Layout.lapic)
        XCTAssertEqual(r.chip.ioapic.snapshot().count, Layout.ioapic)
        XCTAssertEqual(before.count, Layout.requests + 4 + 11 + 4 + 4, "one timer request and one event pending")
        // The offsets are right: a change there is accepted and shows.
        let lapic0 = Layout.lapicBase(0), lapic1 = Layout.lapicBase(1), ioapic = Layout.ioapicBase
        let probe = ChipRig()
        try probe.chip.restore(snapshot: patched(before, at: lapic1 + Layout.tpr, 0x30, width: 4))
        XCTAssertEqual(probe.chip.read(vcpu: 1, address: LocalAPIC.defaultBase + tpr, size: 4, now: 0), 0x30)
        try probe.chip.restore(snapshot: patched(before, at: Layout.requests + 4 + 3, 9, width: 8))
        XCTAssertEqual(probe.chip.takeTimerRequests().map(\.at), [9])

        let cases: [(String, [UInt8], SnapshotError)] = [
            ("APIC ID", patched(before, at: lapic0 + Layout.apicID, 1, width: 1), .invalid("snapshot of LAPIC 1 for LAPIC 0")),
            ("TPR", patched(before, at: lapic1 + Layout.tpr, 0x100, width: 4), .invalid("LAPIC TPR 0x100")),
            ("vector 5 in IRR", patched(before, at: lapic0 + Layout.irr, 0x20, width: 1), .invalid("LAPIC IRR holds a vector below 16")),
            ("LVT reserved bit", patched(before, at: lapic0 + Layout.lvtTimer, 1 << 20 | 1 << 17 | 0x60, width: 4),
             .invalid("LAPIC LVT entry 1 0x120060")),
            ("disabled, timer unmasked", patched(before, at: lapic0 + Layout.svr, 0xff, width: 4),
             .invalid("LAPIC LVT entry 1 unmasked while the APIC is disabled")),
            ("count timer in deadline mode", patched(before, at: lapic1 + Layout.running, 1, width: 1),
             .invalid("LAPIC timer running in mode 2 with count 0")),
            ("start beyond 2^63", patched(before, at: lapic0 + Layout.timerStart, 1 << 63, width: 8),
             .invalid("LAPIC timer start 9223372036854775808")),
            ("armed for 0", patched(before, at: lapic0 + Layout.armed, 0, width: 8), .invalid("LAPIC timer armed for time 0")),
            ("absent armed time", patched(before, at: lapic0 + Layout.armedFlag, 0, width: 1),
             .invalid("LAPIC absent armed time holds 2001000")),
            ("disabled with a vector pending", patched(before, at: lapic0 + Layout.hardwareEnabled, 0, width: 1),
             .invalid("LAPIC disabled through IA32_APIC_BASE with state beyond its reset values")),
            ("enable flag 2", patched(before, at: lapic0 + Layout.hardwareEnabled, 2, width: 1), .invalid("boolean byte 2")),
            ("offer not in IRR", patched(before, at: lapic0 + Layout.offered, 0x33, width: 1),
             .invalid("LAPIC offers vector 0x33, not in IRR")),
            ("delivery status", patched(before, at: ioapic + 2 + 4 * 8, 0x34 | 1 << 15 | 1 << 12 | 1 << 14, width: 4),
             .invalid("IOAPIC pin 4 delivery status set")),
            ("remote IRR on an edge pin", patched(before, at: ioapic + 2 + 4 * 8, 0x34 | 1 << 14, width: 4),
             .invalid("IOAPIC pin 4 remote IRR set on an edge-triggered pin")),
            ("level of pin 24", patched(before, at: ioapic + 194, 1 << 24, width: 4),
             .invalid("IOAPIC levels 0x1000000 for pins beyond 23")),
            ("IOAPIC ID", patched(before, at: ioapic, 0x20, width: 1), .invalid("IOAPIC ID 32")),
            ("posted other than offered", patched(before, at: Layout.posted + 1, 0x45, width: 1),
             .invalid("vCPU 0 posted Optional(69), its LAPIC offers Optional(96)")),
            ("withdrawn while posted", patched(before, at: Layout.posted + 4, 1, width: 1),
             .invalid("vCPU 0 both withdrawn and posted")),
            ("timer request for vCPU 2", patched(before, at: Layout.requests + 4, 2, width: 2),
             .invalid("timer request for vCPU 2")),
            ("timer request for time 0", patched(before, at: Layout.requests + 4 + 3, 0, width: 8),
             .invalid("timer request for time 0, present true")),
            ("huge request count", patched(before, at: Layout.requests, 0xffff_ffff, width: 4), .truncated),
            ("event kind 3", patched(before, at: Layout.requests + 4 + 11 + 4 + 2, 3, width: 1),
             .invalid("CPU event kind 3 with vector 0")),
            ("NMI with a vector", patched(before, at: Layout.requests + 4 + 11 + 4 + 3, 7, width: 1),
             .invalid("CPU event kind 0 with vector 7")),
            ("event for vCPU 9", patched(before, at: Layout.requests + 4 + 11 + 4, 9, width: 2), .invalid("CPU event for vCPU 9")),
            ("trailing byte", before + [0], .trailingBytes),
        ]
        assertRefusesForgeries(r.chip, before: before, cases)

        // Another number of vCPUs.
        let three = ChipRig(vcpus: 3)
        let empty = three.chip.snapshot()
        XCTAssertThrowsError(try three.chip.restore(snapshot: before)) {
            XCTAssertEqual($0 as? SnapshotError, .invalid("snapshot of 2 LAPICs for 3 vCPUs"))
        }
        XCTAssertEqual(three.chip.snapshot(), empty)
    }

    // MARK: - Fuzz

    /// Random byte strings, and valid snapshots with random bytes changed, into the controller's restore: never a
    /// trap; a refusal leaves it as it was; an accepted snapshot is one it would write itself, and the controller
    /// keeps working from it.
    func testRandomSnapshotsNeverTrap() {
        let r = ChipRig()
        _ = busy(r)
        let valid = r.chip.snapshot()
        var rng = SplitMix(state: 12)
        var accepted = 0
        for round in 0..<5000 {
            let bytes = rng.hostileSnapshot(from: valid, random: round % 4 == 0, round: round)
            let target = ChipRig()
            if round % 2 == 0 { _ = busy(target) }
            let before = target.chip.snapshot()
            do {
                try target.chip.restore(snapshot: bytes)
                accepted += 1
                XCTAssertEqual(target.chip.snapshot(), bytes, "round \(round): an accepted snapshot is canonical")
                // A forged state keeps working: whatever it holds, the controller's paths do not trap on it.
                target.chip.rearmTimers()
                let now = UInt64.random(in: 0...(1 << 40), using: &rng)
                for op in [ChipOp.offer, .take(vcpu: 0), .take(vcpu: 1), .timer(vcpu: 0, now: now), .timer(vcpu: 1, now: now),
                           .read(vcpu: 0, offset: 0x390, now: now), .read(vcpu: 1, offset: 0x390, now: now),
                           .write(vcpu: 0, offset: 0xb0, value: 0, now: now), .write(vcpu: 1, offset: 0xb0, value: 0, now: now),
                           .write(vcpu: 0, offset: 0x300, value: 0x41 | 2 << 18, now: now), .line(pin: 4, level: false),
                           .line(pin: 4, level: true), .deadline(vcpu: 1, delay: 10, now: now), .offer] {
                    _ = target.step(op)
                }
            } catch {
                XCTAssertEqual(target.chip.snapshot(), before, "round \(round): a refused snapshot changes nothing")
            }
        }
        XCTAssertGreaterThan(accepted, 0, "the mutations reach the accepting path too")
    }
}
