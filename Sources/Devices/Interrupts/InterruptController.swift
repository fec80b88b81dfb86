/// Where the interrupt controller offers each vCPU the vector it should take next: the vCPUs' mailboxes in shared
/// memory, in the irqchip process. A vCPU takes an offer on its own, so `post` and `replace` can fail.
public protocol InterruptOffers {
    /// Offers `vector` to an idle mailbox; false when an offer is still there.
    func post(_ vector: UInt8, vcpu: Int) -> Bool
    /// Swaps an offer not yet taken for a higher vector; false when it was taken meanwhile.
    func replace(_ old: UInt8, with new: UInt8, vcpu: Int) -> Bool
    /// Takes back an offer (INIT reset the vCPU's local APIC).
    func withdraw(vcpu: Int)
}

/// The LAPICs and the IOAPIC of one VM, and the routing between them (IOAPIC messages and IPIs to LAPICs,
/// level-triggered EOIs back to the IOAPIC). No syscalls: the process around it moves the bytes and the time.
public final class InterruptController {
    public let lapics: [LocalAPIC]
    public let ioapic: IOAPIC
    /// Per vCPU: the vector in its mailbox or taken and not yet acknowledged; nothing new is posted meanwhile.
    private var posted: [UInt8?]
    /// vCPUs reset by INIT whose mailbox vector must be taken back before anything new is posted.
    private var withdrawn: Set<Int> = []
    private var timerRequests: [(vcpu: Int, at: UInt64?)] = []
    private var cpuEvents: [(vcpu: Int, event: CPUEvent)] = []
    /// The re-raise flags of offers swapped by the last `planOffers`, for `offerMissed` (kept by this process only:
    /// a restart in between loses at most the re-raise of an interrupt that arrived while its vector was taken).
    private var swappedArrivals: [Int: Bool?] = [:]

    public init(vcpuCount: Int) {
        lapics = (0..<vcpuCount).map { LocalAPIC(apicID: UInt8($0)) }
        ioapic = IOAPIC(id: UInt8(vcpuCount))  // the ID the MP table gives it, after the CPUs' APIC IDs
        posted = Array(repeating: nil, count: vcpuCount)
    }

    /// A device drives an IOAPIC pin.
    public func setLine(pin: Int, asserted: Bool) {
        deliver(ioapic.setPin(pin, asserted))
    }

    public func timerExpired(vcpu: Int, now: UInt64) {
        guard lapics.indices.contains(vcpu) else { return }
        handle(lapics[vcpu].timerExpired(now: now), from: vcpu)
    }

    /// The vCPU took its timer's expiry itself and injected `vector` (see MessageKind.timerTaken): the expiry
    /// counts as the timer's (a periodic timer re-arms, a one-shot or deadline one is done), and the vector the
    /// guest is now handling is in service whatever the model made of the expiry, so that the guest's EOI ends it.
    public func timerTaken(vcpu: Int, vector: UInt8, now: UInt64) {
        guard lapics.indices.contains(vcpu) else { return }
        handle(lapics[vcpu].timerExpired(now: now), from: vcpu)
        lapics[vcpu].takenWithoutOffer(vector)
    }

    /// IA32_TSC_DEADLINE, converted by the vCPU to a delay (nil: disarmed by a write of 0).
    public func setDeadline(vcpu: Int, nanosecondsFromNow delay: UInt64?, now: UInt64) {
        setDeadline(vcpu: vcpu, at: delay.map { d in now.addingReportingOverflow(d).overflow ? UInt64.max : now + d }, now: now)
    }

    /// IA32_TSC_DEADLINE, converted by the vCPU to a time on the model's clock (nil: disarmed by a write of 0).
    public func setDeadline(vcpu: Int, at: UInt64?, now: UInt64) {
        guard lapics.indices.contains(vcpu) else { return }
        handle(lapics[vcpu].setDeadline(at.map { max(1, $0) } ?? 0, now: now), from: vcpu)
    }

    /// The vCPU's IA32_APIC_BASE changed (KVM applied the WRMSR; the vcpu process saw it in kvm_run.apic_base):
    /// clearing the global enable bit (11) resets the APIC and takes back what was offered to the vCPU; where the
    /// page sits is the vcpu process's business (it routes the guest's accesses).
    public func setAPICBase(vcpu: Int, value: UInt64) {
        guard lapics.indices.contains(vcpu) else { return }
        let enabled = value & Self.apicGlobalEnable != 0
        guard enabled != lapics[vcpu].hardwareEnabled else { return }
        handle(lapics[vcpu].setHardwareEnabled(enabled), from: vcpu)
        if !enabled { forgetOffer(vcpu) }
    }

    /// IA32_APIC_BASE bit 11.
    public static let apicGlobalEnable: UInt64 = 1 << 11

    /// The vCPU's mailbox is to be emptied before anything new is offered (its APIC was reset).
    private func forgetOffer(_ vcpu: Int) {
        posted[vcpu] = nil
        withdrawn.insert(vcpu)
    }

    /// The vCPU injected `vector`: it is in service now.
    public func acknowledged(vcpu: Int, vector: UInt8) {
        guard lapics.indices.contains(vcpu), posted[vcpu] == vector else { return }  // not what was offered: ignore
        lapics[vcpu].acknowledge(vector)
        posted[vcpu] = nil
    }

    /// NMIs, INITs and start-up IPIs for the vcpu process (through the mailboxes' event words).
    public func takeCPUEvents() -> [(vcpu: Int, event: CPUEvent)] {
        defer { cpuEvents.removeAll() }
        return cpuEvents
    }

    /// Timer arming the process must do (at nil: disarm).
    public func takeTimerRequests() -> [(vcpu: Int, at: UInt64?)] {
        defer { timerRequests.removeAll() }
        return timerRequests
    }

    /// A change to a vCPU's mailbox the controller decided on.
    public enum OfferIntent: Equatable, Sendable {
        /// Take back whatever the box holds (INIT reset the vCPU's local APIC).
        case withdraw(vcpu: Int)
        /// Offer `vector` to the empty box.
        case post(vcpu: Int, vector: UInt8)
        /// Swap the offer `old`, if the vCPU has not taken it yet, for the higher `new`.
        case replace(vcpu: Int, old: UInt8, new: UInt8)

        public var vcpu: Int {
            switch self {
            case .withdraw(let v), .post(let v, _), .replace(let v, _, _): return v
            }
        }
    }

    /// Decides each vCPU's offer (its highest deliverable vector) and records it as made. The caller makes the
    /// changes in the mailboxes, in order, and reports a post or replace that did not happen with `offerMissed`.
    /// Deciding first lets a restartable irqchip commit its decisions before the vCPUs can see them.
    public func planOffers() -> [OfferIntent] {
        var intents: [OfferIntent] = []
        swappedArrivals.removeAll()
        // In order: a set's own order differs between two sets holding the same vCPUs (a restored one).
        for i in withdrawn.sorted() { intents.append(.withdraw(vcpu: i)) }
        withdrawn.removeAll()
        for i in lapics.indices {
            guard let want = lapics[i].deliverableVector else { continue }
            if let current = posted[i] {
                // A higher vector may overtake one that has not been taken yet.
                guard want > current else { continue }
                intents.append(.replace(vcpu: i, old: current, new: want))
                swappedArrivals[i] = lapics[i].swapOffer(to: want)
            } else {
                intents.append(.post(vcpu: i, vector: want))
                lapics[i].offered = want
            }
            posted[i] = want
        }
        return intents
    }

    /// `intent` did not happen: a replace lost to the vCPU taking the old vector (which stays offered, and its
    /// acknowledgement is what comes), a post found the box full.
    public func offerMissed(_ intent: OfferIntent) {
        switch intent {
        case .withdraw: break
        case .post(let vcpu, let vector):
            guard posted[vcpu] == vector else { return }
            posted[vcpu] = nil
            lapics[vcpu].offered = nil
        case .replace(let vcpu, let old, let new):
            guard posted[vcpu] == new else { return }
            posted[vcpu] = old
            lapics[vcpu].revertOffer(to: old, arrivedWhileOffered: swappedArrivals[vcpu] ?? nil)
        }
    }

    /// The earliest time a LAPIC timer is armed for (CLOCK_MONOTONIC ns), nil when none is.
    public var earliestTimer: UInt64? { lapics.compactMap(\.timerArmedAt).min() }

    /// Offers each vCPU its highest deliverable vector at once (`planOffers` carried out); returns the vCPUs
    /// whose offer is new.
    public func updateOffers(_ mailbox: some InterruptOffers) -> [Int] {
        var kicked: [Int] = []
        for intent in planOffers() {
            switch intent {
            case .withdraw(let vcpu):
                mailbox.withdraw(vcpu: vcpu)
            case .post(let vcpu, let vector):
                if mailbox.post(vector, vcpu: vcpu) { kicked.append(vcpu) } else { offerMissed(intent) }
            case .replace(let vcpu, let old, let new):
                if mailbox.replace(old, with: new, vcpu: vcpu) { kicked.append(vcpu) } else { offerMissed(intent) }
            }
        }
        return kicked
    }

    /// A 32-bit register access in either page; other sizes and addresses read as all-ones / are ignored.
    public func read(vcpu: Int, address: UInt64, size: UInt8, now: UInt64) -> UInt32 {
        guard size == 4, lapics.indices.contains(vcpu) else { return ~0 }
        if address & ~0xfff == LocalAPIC.defaultBase {
            // A disabled APIC has no page (the vcpu process does not route to it; this is a late or forged access).
            return lapics[vcpu].hardwareEnabled ? lapics[vcpu].read(offset: address & 0xfff, now: now) : ~0
        }
        if address & ~0xfff == IOAPIC.defaultBase { return ioapic.read(offset: address & 0xfff) }
        return ~0
    }

    public func write(vcpu: Int, address: UInt64, size: UInt8, value: UInt64, now: UInt64) {
        guard size == 4, lapics.indices.contains(vcpu) else { return }
        let v = UInt32(truncatingIfNeeded: value)
        if address & ~0xfff == LocalAPIC.defaultBase {
            guard lapics[vcpu].hardwareEnabled else { return }
            handle(lapics[vcpu].write(offset: address & 0xfff, value: v, now: now), from: vcpu)
        } else if address & ~0xfff == IOAPIC.defaultBase {
            deliver(ioapic.write(offset: address & 0xfff, value: v))
        }
    }

    func handle(_ effects: [APICEffect], from vcpu: Int) {
        for e in effects {
            switch e {
            case .endOfInterrupt(let vector): deliver(ioapic.endOfInterrupt(vector: vector))
            case .interprocessorInterrupt(let m, let shorthand):
                // Shorthands reach every APIC that is there: one disabled through IA32_APIC_BASE is not.
                let present = lapics.indices.filter { lapics[$0].hardwareEnabled }
                switch shorthand {
                case 1: dispatch(m, to: [vcpu])
                case 2: dispatch(m, to: present)
                case 3: dispatch(m, to: present.filter { $0 != vcpu })
                default: dispatch(m, to: lapics.indices.filter { lapics[$0].isDestination(of: m) })
                }
            case .armTimer(let at): timerRequests.append((vcpu, at))
            case .cancelTimer: timerRequests.append((vcpu, nil))
            }
        }
    }

    /// IOAPIC messages to the LAPICs they name.
    func deliver(_ messages: [InterruptMessage]) {
        for m in messages { dispatch(m, to: lapics.indices.filter { lapics[$0].isDestination(of: m) }) }
    }

    /// One message to its destination CPUs: a fixed vector into IRR (lowest priority: the first of them), an NMI,
    /// INIT (which also resets the LAPIC and withdraws what was offered) or a start-up IPI to the vcpu process.
    private func dispatch(_ m: InterruptMessage, to targets: [Int]) {
        switch m.deliveryMode {
        case .fixed:
            for t in targets { lapics[t].accept(vector: m.vector, levelTriggered: m.levelTriggered) }
        case .lowestPriority:
            if let t = targets.first { lapics[t].accept(vector: m.vector, levelTriggered: m.levelTriggered) }
        case .nmi:
            cpuEvents += targets.map { ($0, .nmi) }
        case .initialize:
            for t in targets {
                lapics[t].reset()
                forgetOffer(t)
                timerRequests.append((t, nil))
                cpuEvents.append((t, .initialize))
            }
        case .startup:
            cpuEvents += targets.map { ($0, .startup(vector: m.vector)) }
        case .smi, .external:
            break  // no SMM, no 8259 behind LINT0
        }
    }
}

extension InterruptController: Snapshotting {
    /// The LAPICs in vCPU order, the IOAPIC, then the controller's bookkeeping: the vector posted to each vCPU,
    /// the vCPUs whose mailbox must be withdrawn, and the timer requests and CPU events the process has not taken
    /// yet. Mailboxes and timerfds are the process's wiring: after a restore the successor calls `rearmTimers()`
    /// to arm its own timers.
    public func save(to writer: inout SnapshotWriter) {
        writer.u16(UInt16(lapics.count))
        for lapic in lapics { lapic.save(to: &writer) }
        ioapic.save(to: &writer)
        for vector in posted {
            writer.bool(vector != nil)
            writer.u8(vector ?? 0)
        }
        for vcpu in lapics.indices { writer.bool(withdrawn.contains(vcpu)) }
        writer.u32(UInt32(timerRequests.count))
        for request in timerRequests {
            writer.u16(UInt16(request.vcpu))
            writer.bool(request.at != nil)
            writer.u64(request.at ?? 0)
        }
        writer.u32(UInt32(cpuEvents.count))
        for (vcpu, event) in cpuEvents {
            writer.u16(UInt16(vcpu))
            switch event {
            case .nmi: writer.u8(0); writer.u8(0)
            case .initialize: writer.u8(1); writer.u8(0)
            case .startup(let vector): writer.u8(2); writer.u8(vector)
            }
        }
    }

    /// Refuses a snapshot for another number of vCPUs, any part its LAPIC or IOAPIC restore would refuse, a
    /// posted vector other than the one its LAPIC says is offered, a withdrawal for a vCPU with a vector posted,
    /// and requests or events for vCPUs that do not exist. Nothing changes until every part is valid.
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        let count = try reader.u16()
        guard Int(count) == lapics.count else { throw .invalid("snapshot of \(count) LAPICs for \(lapics.count) vCPUs") }
        var lapicStates: [LocalAPIC.State] = []
        for lapic in lapics { lapicStates.append(try lapic.decodeState(from: &reader)) }
        let ioapicState = try ioapic.decodeState(from: &reader)
        var posted: [UInt8?] = []
        for _ in lapics.indices {
            let present = try reader.bool()
            let vector = try reader.u8()
            guard present || vector == 0 else { throw .invalid("absent posted vector holds \(vector)") }
            posted.append(present ? vector : nil)
        }
        var withdrawn: Set<Int> = []
        for vcpu in lapics.indices where try reader.bool() { withdrawn.insert(vcpu) }
        let requestCount = try reader.u32()
        // Each entry is at least 11 bytes: a forged count is refused before anything is allocated for it.
        guard UInt64(requestCount) * 11 <= UInt64(reader.remaining) else { throw .truncated }
        var timerRequests: [(vcpu: Int, at: UInt64?)] = []
        for _ in 0..<requestCount {
            let vcpu = Int(try reader.u16())
            let present = try reader.bool()
            let at = try reader.u64()
            guard lapics.indices.contains(vcpu) else { throw .invalid("timer request for vCPU \(vcpu)") }
            // nil disarms; a time of 0 would disarm too, and no effect asks for it.
            guard present ? at != 0 : at == 0 else { throw .invalid("timer request for time \(at), present \(present)") }
            timerRequests.append((vcpu, present ? at : nil))
        }
        let eventCount = try reader.u32()
        guard UInt64(eventCount) * 4 <= UInt64(reader.remaining) else { throw .truncated }
        var cpuEvents: [(vcpu: Int, event: CPUEvent)] = []
        for _ in 0..<eventCount {
            let vcpu = Int(try reader.u16())
            let kind = try reader.u8()
            let vector = try reader.u8()
            guard lapics.indices.contains(vcpu) else { throw .invalid("CPU event for vCPU \(vcpu)") }
            switch (kind, vector) {
            case (0, 0): cpuEvents.append((vcpu, .nmi))
            case (1, 0): cpuEvents.append((vcpu, .initialize))
            case (2, _): cpuEvents.append((vcpu, .startup(vector: vector)))
            default: throw .invalid("CPU event kind \(kind) with vector \(vector)")
            }
        }

        for vcpu in lapics.indices {
            // updateOffers sets both together, and acknowledge and INIT clear both.
            guard posted[vcpu] == lapicStates[vcpu].offered else {
                throw .invalid("vCPU \(vcpu) posted \(String(describing: posted[vcpu])), its LAPIC offers "
                               + String(describing: lapicStates[vcpu].offered))
            }
            // INIT empties the post; nothing is posted again before the withdrawal is done.
            guard !withdrawn.contains(vcpu) || posted[vcpu] == nil else {
                throw .invalid("vCPU \(vcpu) both withdrawn and posted")
            }
        }

        for (lapic, state) in zip(lapics, lapicStates) { lapic.apply(state) }
        ioapic.apply(ioapicState)
        self.posted = posted
        self.withdrawn = withdrawn
        self.timerRequests = timerRequests
        self.cpuEvents = cpuEvents
    }

    /// After a restore, in the successor process: queues, for `takeTimerRequests()`, a request for every LAPIC
    /// whose timer its predecessor had armed, at the same absolute CLOCK_MONOTONIC time, so that the fresh
    /// (disarmed) timerfds are armed as the old ones were. A time already past fires at once, so an expiry due
    /// while the predecessor was dying is delivered late rather than lost. Disarmed timers need no request.
    public func rearmTimers() {
        for (vcpu, lapic) in lapics.enumerated() {
            if let at = lapic.timerArmedAt { timerRequests.append((vcpu, at)) }
        }
    }
}
