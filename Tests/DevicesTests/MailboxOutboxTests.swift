import Devices
import IRQChipLink
import System
import TestSupport
import XCTest

/// The irqchip's mailbox writes through `MailboxOutbox` on the real shared-memory mailboxes, and what a successor
/// irqchip process does with a predecessor's last commit (a snapshot of the controller and the outbox) when the
/// predecessor died before, during or after making the writes: every offer is made once, every event signalled
/// once, and the vCPU's acknowledgement always finds the vector the controller expects.
final class MailboxOutboxTests: XCTestCase {
    let lapicBase: UInt64 = 0xfee0_0000

    /// One irqchip process's state: the controller and its outbox.
    final class IRQChip {
        let chip: InterruptController
        let outbox: MailboxOutbox
        init(vcpus: Int) {
            chip = InterruptController(vcpuCount: vcpus)
            outbox = MailboxOutbox(vcpus: vcpus)
        }
        /// What a commit records.
        func snapshot() -> [UInt8] {
            var w = SnapshotWriter()
            chip.save(to: &w)
            outbox.save(to: &w)
            return w.bytes
        }
        /// A successor started from a commit.
        static func restored(_ bytes: [UInt8], vcpus: Int) throws -> IRQChip {
            let successor = IRQChip(vcpus: vcpus)
            var r = SnapshotReader(bytes)
            try successor.chip.restore(from: &r)
            try successor.outbox.restore(from: &r)
            try r.finish()
            return successor
        }
        /// Decides and stages (the commit follows in the process).
        func stage() { outbox.stage(chip.planOffers(), events: chip.takeCPUEvents()) }
        @discardableResult
        func deliver(_ mailbox: InterruptMailbox) -> Set<Int> {
            let (kick, missed) = outbox.deliver(to: mailbox)
            for intent in missed { chip.offerMissed(intent) }
            return kick
        }
    }

    var memory: FileDescriptor?
    var mailbox: InterruptMailbox!

    override func setUpWithError() throws {
        let fd = try InterruptMailbox.create(vcpus: 2)
        mailbox = try InterruptMailbox(attaching: fd.raw, vcpus: 2)
        memory = consume fd
    }

    func enabledChip() -> IRQChip {
        let irqchip = IRQChip(vcpus: 2)
        irqchip.outbox.continueNumbering(from: mailbox)  // as a fresh process does over used mailboxes
        for vcpu in 0..<2 { irqchip.chip.write(vcpu: vcpu, address: lapicBase + 0xf0, size: 4, value: 0x1ff, now: 0) }
        return irqchip
    }

    /// Whether `vector` is in service on vCPU 0 (its ISR bit).
    func inService(_ chip: InterruptController, _ vector: UInt8) -> Bool {
        let word = chip.read(vcpu: 0, address: lapicBase + 0x100 + UInt64(vector / 32) * 0x10, size: 4, now: 0)
        return word & (1 << (UInt32(vector) % 32)) != 0
    }

    func testAnOfferIsMadeOnceWhateverTheSuccessorFindsInTheBox() throws {
        // Killed after the commit, before the write: the successor makes it.
        var irqchip = enabledChip()
        irqchip.chip.lapics[0].accept(vector: 0x30, levelTriggered: false)
        irqchip.stage()
        var successor = try IRQChip.restored(irqchip.snapshot(), vcpus: 2)
        XCTAssertFalse(mailbox.hasPending(vcpu: 0))
        XCTAssertEqual(successor.deliver(mailbox), [0])
        XCTAssertEqual(mailbox.take(vcpu: 0), 0x30)
        successor.chip.acknowledged(vcpu: 0, vector: 0x30)
        XCTAssertTrue(inService(successor.chip, 0x30))

        // Killed after the write, which the vCPU took: the successor does not offer it again, and the vCPU's
        // acknowledgement (handled again from the ring) is honoured.
        irqchip = enabledChip()
        irqchip.chip.lapics[0].accept(vector: 0x31, levelTriggered: false)
        irqchip.stage()
        let commit = irqchip.snapshot()
        irqchip.deliver(mailbox)
        XCTAssertEqual(mailbox.take(vcpu: 0), 0x31)
        successor = try IRQChip.restored(commit, vcpus: 2)
        successor.deliver(mailbox)
        XCTAssertFalse(mailbox.hasPending(vcpu: 0), "offered once")
        successor.chip.acknowledged(vcpu: 0, vector: 0x31)
        XCTAssertTrue(inService(successor.chip, 0x31))
        successor.stage()
        successor.deliver(mailbox)
        XCTAssertFalse(mailbox.hasPending(vcpu: 0), "nothing else is deliverable")

        // Killed after the write, not yet taken: still offered once.
        irqchip = enabledChip()
        irqchip.chip.lapics[1].accept(vector: 0x40, levelTriggered: false)
        irqchip.stage()
        let second = irqchip.snapshot()
        irqchip.deliver(mailbox)
        successor = try IRQChip.restored(second, vcpus: 2)
        successor.deliver(mailbox)
        XCTAssertEqual(mailbox.take(vcpu: 1), 0x40)
        XCTAssertNil(mailbox.take(vcpu: 1))
    }

    func testASwapTheVCPUBeatLeavesTheOldVectorExpected() throws {
        let irqchip = enabledChip()
        irqchip.chip.lapics[0].accept(vector: 0x30, levelTriggered: false)
        irqchip.stage()
        irqchip.deliver(mailbox)
        irqchip.chip.lapics[0].accept(vector: 0x50, levelTriggered: false)
        irqchip.stage()  // a swap of 0x30 for 0x50 is decided and committed...
        let commit = irqchip.snapshot()
        XCTAssertEqual(mailbox.take(vcpu: 0), 0x30)  // ...but the vCPU takes 0x30 first

        // The predecessor itself, and a successor from its commit, reach the same: 0x30 is expected, then 0x50.
        for chip in [irqchip, try IRQChip.restored(commit, vcpus: 2)] {
            XCTAssertEqual(chip.deliver(mailbox), [], "the swap missed")
            chip.chip.acknowledged(vcpu: 0, vector: 0x30)
            XCTAssertTrue(inService(chip.chip, 0x30))
            chip.stage()
            XCTAssertEqual(chip.deliver(mailbox), [0])
            XCTAssertEqual(mailbox.take(vcpu: 0), 0x50)
            chip.chip.acknowledged(vcpu: 0, vector: 0x50)
            XCTAssertTrue(inService(chip.chip, 0x50))
            mailbox.withdraw(vcpu: 0)
            mailbox.signal(.init(), sequence: 0, vcpu: 0)
            // Back to the committed box for the second round: 0x30 taken under its sequence number.
            XCTAssertTrue(mailbox.post(0x30, sequence: 1, vcpu: 0))
            XCTAssertEqual(mailbox.take(vcpu: 0), 0x30)
        }
    }

    func testEventsAreSignalledOnce() throws {
        let irqchip = enabledChip()
        // An NMI to vCPU 1 through the ICR (fixed destination, physical APIC ID 1).
        irqchip.chip.write(vcpu: 0, address: lapicBase + 0x310, size: 4, value: 1 << 24, now: 0)
        irqchip.chip.write(vcpu: 0, address: lapicBase + 0x300, size: 4, value: 4 << 8, now: 0)
        irqchip.stage()
        let commit = irqchip.snapshot()
        // Died before signalling: the successor signals.
        let first = try IRQChip.restored(commit, vcpus: 2)
        XCTAssertEqual(first.deliver(mailbox), [1])
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 1))
        // Died after signalling, taken or not: not again.
        let second = try IRQChip.restored(commit, vcpus: 2)
        second.deliver(mailbox)
        XCTAssertFalse(mailbox.hasEvents(vcpu: 1))
        XCTAssertFalse(mailbox.hasEvents(vcpu: 0))
    }

    /// The timer-watch word is each vCPU's own and lives beside its vector and event words without touching them:
    /// an offer, an event and another vCPU's watch leave it as it was, and it leaves them.
    func testATimerLeftToOneVCPUIsThatVCPUsOnly() throws {
        XCTAssertFalse(mailbox.timerLeftToVCPU(0))
        mailbox.leaveTimer(true, vcpu: 1)
        XCTAssertTrue(mailbox.timerLeftToVCPU(1))
        XCTAssertFalse(mailbox.timerLeftToVCPU(0), "vCPU 0's timer stays the irqchip's")
        XCTAssertTrue(mailbox.post(0x40, sequence: 1, vcpu: 1))
        mailbox.signal(.init(nmis: 1), sequence: 1, vcpu: 1)
        XCTAssertTrue(mailbox.timerLeftToVCPU(1))
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 1))
        XCTAssertEqual(mailbox.take(vcpu: 1), 0x40, "the offer is untouched by the watch")
        mailbox.leaveTimer(false, vcpu: 1)
        XCTAssertFalse(mailbox.timerLeftToVCPU(1))
        XCTAssertEqual(mailbox.offer(vcpu: 1).state, .taken)
    }

    /// An NMI through the ICR from `vcpu` to vCPU 1 (fixed destination, physical APIC ID 1).
    func sendNMI(_ irqchip: IRQChip, from vcpu: Int = 0) {
        irqchip.chip.write(vcpu: vcpu, address: lapicBase + 0x310, size: 4, value: 1 << 24, now: 0)
        irqchip.chip.write(vcpu: vcpu, address: lapicBase + 0x300, size: 4, value: 4 << 8, now: 0)
    }

    func testTwoNMIsBeforeTheVCPUTakesThemAreTwoAndAThirdCollapses() throws {
        // The CPU delivers one NMI and latches one more: two that wait for the vCPU must both reach it, whether
        // the irqchip decided them in one batch or in two; more than two are one in service plus one latched.
        let irqchip = enabledChip()
        sendNMI(irqchip)
        sendNMI(irqchip, from: 1)
        irqchip.stage()
        XCTAssertEqual(irqchip.deliver(mailbox), [1])
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 2), "one batch")
        sendNMI(irqchip)
        irqchip.stage()
        irqchip.deliver(mailbox)
        sendNMI(irqchip)
        irqchip.stage()
        irqchip.deliver(mailbox)
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 2), "two batches")
        for _ in 0..<3 {
            sendNMI(irqchip)
            irqchip.stage()
            irqchip.deliver(mailbox)
        }
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 2), "a third collapses")
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(), "taken")
        // Taken one by one, each is one.
        sendNMI(irqchip)
        irqchip.stage()
        irqchip.deliver(mailbox)
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 1))
        XCTAssertEqual(InterruptMailbox.Events(nmis: 1).merged(with: .init(nmis: 1, startup: 0x12)),
                       .init(nmis: 2, startup: 0x12))
    }

    func testTwoStagedNMIsAreSignalledOnceByAReplay() throws {
        // Two NMIs committed together, the process dies after signalling them: its successor replays the commit
        // and must not make them three (or four).
        let irqchip = enabledChip()
        sendNMI(irqchip)
        sendNMI(irqchip)
        irqchip.stage()
        let commit = irqchip.snapshot()
        irqchip.deliver(mailbox)
        let successor = try IRQChip.restored(commit, vcpus: 2)
        successor.deliver(mailbox)
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 2))
        // Died before signalling, with one NMI still in the box from before: the replay adds its two, and the
        // box holds what the CPU can: two.
        let fresh = enabledChip()
        sendNMI(fresh)
        fresh.stage()
        fresh.deliver(mailbox)
        sendNMI(fresh)
        sendNMI(fresh)
        fresh.stage()
        let replayed = try IRQChip.restored(fresh.snapshot(), vcpus: 2)
        replayed.deliver(mailbox)
        replayed.deliver(mailbox)
        XCTAssertEqual(mailbox.takeEvents(vcpu: 1), .init(nmis: 2))
    }

    func testNMICountsAreClampedToWhatACPUHolds() throws {
        let events = InterruptMailbox.Events(nmis: 7)
        XCTAssertEqual(events.nmis, 2)
        XCTAssertEqual(InterruptMailbox.Events(nmis: -1).nmis, 0)
    }

    func testForgedOutboxesAreRefusedAndChangeNothing() throws {
        let irqchip = enabledChip()
        irqchip.chip.lapics[0].accept(vector: 0x30, levelTriggered: false)
        irqchip.chip.write(vcpu: 0, address: lapicBase + 0x300, size: 4, value: 4 << 8 | 1 << 18, now: 0)  // NMI to self
        irqchip.stage()
        let outbox = irqchip.outbox
        let before = outbox.snapshot()
        // Layout: vCPUs u16, 2+2 sequences, offer count u32, offers [kind u8, vCPU u16, u8, u8, seq u16, seq u16],
        // event count u32, events [vCPU u16, NMI count u8, init, has-startup, startup u8, seq u16].
        let offer = 2 + 4 + 4 + 4
        func patched(_ at: Int, _ bytes: [UInt8]) -> [UInt8] {
            var b = before
            b.replaceSubrange(at..<(at + bytes.count), with: bytes)
            return b
        }
        assertRefusesForgeries(outbox, before: before, [
            ("another vCPU count", patched(0, [3, 0]), .invalid("mailbox outbox of 3 vCPUs for 2")),
            ("an offer for vCPU 2", patched(offer + 1, [2, 0]), .invalid("staged mailbox write for vCPU 2")),
            ("a vector below 16", patched(offer + 4, [15]), .invalid("staged mailbox write kind 1 (0, 15, #1, #0)")),
            ("an offer numbered 0", patched(offer + 5, [0, 0]), .invalid("staged mailbox write kind 1 (0, 48, #0, #0)")),
            ("an unknown kind", patched(offer, [7]), .invalid("staged mailbox write kind 7 (0, 48, #1, #0)")),
            ("events for vCPU 5", patched(offer + 9 + 4, [5, 0]), .invalid("staged events for vCPU 5")),
            ("no events", patched(offer + 9 + 4 + 2, [0]), .invalid("empty staged events for vCPU 0")),
            ("three NMIs", patched(offer + 9 + 4 + 2, [3]), .invalid("3 NMIs staged for vCPU 0")),
            ("a huge offer count", patched(offer - 4, [0xff, 0xff, 0xff, 0x7f]), .truncated),
        ])
    }
}
