import Devices

/// The irqchip's writes to the vCPUs' mailboxes, decided before they are made: staged, committed with the rest of
/// the irqchip's state, then delivered. A vCPU reacts to a mailbox at once (it takes a vector, acknowledges it, takes
/// an NMI), so a restartable irqchip must never let it see a write its committed state does not account for. Each
/// write carries a sequence number that the mailbox keeps; delivering the same staged writes again, which is what a
/// successor process does with what its dead predecessor committed last, makes each of them at most once:
/// - an offer whose sequence number the box shows was made (the vCPU may have taken it since) and is not repeated;
/// - a swap for a higher vector that loses to the vCPU taking the old one is reported missed, so the controller
///   expects the old vector's acknowledgement, as it would have in the predecessor;
/// - events (NMI, INIT, start-up) are signalled once: the event word keeps the last signal's number. NMIs count
///   (up to two, see `InterruptMailbox`), so a repeated signal would be a second NMI, not a harmless repeat.
public final class MailboxOutbox {
    /// A staged mailbox write.
    public struct StagedOffer: Equatable {
        public var intent: InterruptController.OfferIntent
        /// The sequence number the offer gets (0 for a withdrawal).
        public var sequence: UInt16
        /// For a swap: the sequence number of the offer it replaces.
        public var replacedSequence: UInt16
    }

    public let vcpus: Int
    /// Per vCPU: the sequence number of the offer the controller believes is in the mailbox (or was taken from it).
    public private(set) var offerSequence: [UInt16]
    /// Per vCPU: the sequence number of the last events staged for it.
    public private(set) var eventSequence: [UInt16]
    public private(set) var offers: [StagedOffer] = []
    /// Per vCPU, events staged since the last delivery (merged), with their sequence number.
    public private(set) var events: [(vcpu: Int, events: InterruptMailbox.Events, sequence: UInt16)] = []

    public init(vcpus: Int) {
        self.vcpus = vcpus
        offerSequence = Array(repeating: 0, count: vcpus)
        eventSequence = Array(repeating: 0, count: vcpus)
    }

    /// A fresh outbox over mailboxes that an earlier irqchip process wrote (one whose committed state was
    /// unusable) numbers on from what they show, so that its first writes cannot pass for ones already made.
    public func continueNumbering(from mailbox: InterruptMailbox) {
        for vcpu in 0..<min(vcpus, mailbox.vcpus) {
            offerSequence[vcpu] = mailbox.offer(vcpu: vcpu).sequence
            eventSequence[vcpu] = mailbox.eventSequence(vcpu: vcpu)
        }
    }

    /// 0 marks an empty word, so it is never a write's number.
    static func after(_ sequence: UInt16) -> UInt16 { sequence == .max ? 1 : sequence + 1 }

    /// Stages the controller's decisions (`planOffers`) and CPU events (`takeCPUEvents`), numbering them.
    public func stage(_ intents: [InterruptController.OfferIntent], events cpuEvents: [(vcpu: Int, event: CPUEvent)]) {
        for intent in intents {
            let vcpu = intent.vcpu
            guard (0..<vcpus).contains(vcpu) else { continue }
            switch intent {
            case .withdraw:
                offers.append(StagedOffer(intent: intent, sequence: 0, replacedSequence: 0))
            case .post, .replace:
                let previous = offerSequence[vcpu]
                offerSequence[vcpu] = Self.after(previous)
                offers.append(StagedOffer(intent: intent, sequence: offerSequence[vcpu], replacedSequence: previous))
            }
        }
        for (vcpu, event) in cpuEvents where (0..<vcpus).contains(vcpu) {
            let added: InterruptMailbox.Events
            switch event {
            case .nmi: added = .init(nmis: 1)
            case .initialize: added = .init(initialize: true)
            case .startup(let vector): added = .init(startup: vector)
            }
            if let i = events.firstIndex(where: { $0.vcpu == vcpu }) {
                events[i].events = events[i].events.merged(with: added)
            } else {
                eventSequence[vcpu] = Self.after(eventSequence[vcpu])
                events.append((vcpu, added, eventSequence[vcpu]))
            }
        }
    }

    /// Whether anything waits to be delivered.
    public var isEmpty: Bool { offers.isEmpty && events.isEmpty }

    /// Makes the staged writes that the mailboxes do not show yet, in order; returns the vCPUs to kick and the
    /// offers that did not happen (for `InterruptController.offerMissed`). Safe to call again for the same writes.
    public func deliver(to mailbox: InterruptMailbox) -> (kick: Set<Int>, missed: [InterruptController.OfferIntent]) {
        var kick = Set<Int>()
        var missed: [InterruptController.OfferIntent] = []
        // A box that shows a staged offer's number had that write and every one staged before it made.
        var madeThrough = [Int: Int]()
        for (i, staged) in offers.enumerated() where staged.sequence != 0 {
            if mailbox.offer(vcpu: staged.intent.vcpu).sequence == staged.sequence { madeThrough[staged.intent.vcpu] = i }
        }
        var lastStaged = [Int: UInt16]()
        for staged in offers where staged.sequence != 0 { lastStaged[staged.intent.vcpu] = staged.sequence }
        for (i, staged) in offers.enumerated() where i > madeThrough[staged.intent.vcpu] ?? -1 {
            switch staged.intent {
            case .withdraw(let vcpu):
                mailbox.withdraw(vcpu: vcpu)
            case .post(let vcpu, let vector):
                if mailbox.post(vector, sequence: staged.sequence, vcpu: vcpu) { kick.insert(vcpu) } else { missed.append(staged.intent) }
            case .replace(let vcpu, let old, let new):
                if mailbox.replace(old, oldSequence: staged.replacedSequence, with: new, sequence: staged.sequence, vcpu: vcpu) {
                    kick.insert(vcpu)
                } else {
                    missed.append(staged.intent)
                    // The box still shows the old offer's number, which is what the controller's offer is now.
                    if lastStaged[vcpu] == staged.sequence { offerSequence[vcpu] = staged.replacedSequence }
                }
            }
        }
        for (vcpu, events, sequence) in self.events {
            if mailbox.eventSequence(vcpu: vcpu) != sequence { mailbox.signal(events, sequence: sequence, vcpu: vcpu) }
            kick.insert(vcpu)
        }
        offers.removeAll()
        self.events.removeAll()
        return (kick, missed)
    }
}

extension MailboxOutbox: Snapshotting {
    public func save(to writer: inout SnapshotWriter) {
        writer.u16(UInt16(vcpus))
        for s in offerSequence { writer.u16(s) }
        for s in eventSequence { writer.u16(s) }
        writer.u32(UInt32(offers.count))
        for staged in offers {
            switch staged.intent {
            case .withdraw(let vcpu): writer.u8(0); writer.u16(UInt16(vcpu)); writer.u8(0); writer.u8(0)
            case .post(let vcpu, let vector): writer.u8(1); writer.u16(UInt16(vcpu)); writer.u8(0); writer.u8(vector)
            case .replace(let vcpu, let old, let new): writer.u8(2); writer.u16(UInt16(vcpu)); writer.u8(old); writer.u8(new)
            }
            writer.u16(staged.sequence)
            writer.u16(staged.replacedSequence)
        }
        writer.u32(UInt32(events.count))
        for (vcpu, events, sequence) in events {
            writer.u16(UInt16(vcpu))
            writer.u8(UInt8(events.nmis))
            writer.bool(events.initialize)
            writer.bool(events.startup != nil)
            writer.u8(events.startup ?? 0)
            writer.u16(sequence)
        }
    }

    /// Refuses another vCPU count, writes for vCPUs that do not exist, vectors below 16, numbers the staging never
    /// gives (0 for an offer, a withdrawal with one), empty or repeated event entries; all or nothing.
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        let count = Int(try reader.u16())
        guard count == vcpus else { throw .invalid("mailbox outbox of \(count) vCPUs for \(vcpus)") }
        var offerSequence: [UInt16] = [], eventSequence: [UInt16] = []
        for _ in 0..<vcpus { offerSequence.append(try reader.u16()) }
        for _ in 0..<vcpus { eventSequence.append(try reader.u16()) }
        let offerCount = try reader.u32()
        guard UInt64(offerCount) * 9 <= UInt64(reader.remaining) else { throw .truncated }
        var offers: [StagedOffer] = []
        for _ in 0..<offerCount {
            let kind = try reader.u8(), vcpu = Int(try reader.u16()), first = try reader.u8(), second = try reader.u8()
            let sequence = try reader.u16(), replaced = try reader.u16()
            guard (0..<vcpus).contains(vcpu) else { throw .invalid("staged mailbox write for vCPU \(vcpu)") }
            let intent: InterruptController.OfferIntent
            switch kind {
            case 0 where first == 0 && second == 0 && sequence == 0 && replaced == 0: intent = .withdraw(vcpu: vcpu)
            case 1 where first == 0 && second >= 16 && sequence != 0: intent = .post(vcpu: vcpu, vector: second)
            case 2 where first >= 16 && second > first && sequence != 0: intent = .replace(vcpu: vcpu, old: first, new: second)
            default: throw .invalid("staged mailbox write kind \(kind) (\(first), \(second), #\(sequence), #\(replaced))")
            }
            offers.append(StagedOffer(intent: intent, sequence: sequence, replacedSequence: replaced))
        }
        let eventCount = try reader.u32()
        guard UInt64(eventCount) * 8 <= UInt64(reader.remaining) else { throw .truncated }
        var events: [(vcpu: Int, events: InterruptMailbox.Events, sequence: UInt16)] = []
        for _ in 0..<eventCount {
            let vcpu = Int(try reader.u16())
            let nmis = try reader.u8(), initialize = try reader.bool(), hasStartup = try reader.bool()
            let startup = try reader.u8(), sequence = try reader.u16()
            guard (0..<vcpus).contains(vcpu), !events.contains(where: { $0.vcpu == vcpu }) else {
                throw .invalid("staged events for vCPU \(vcpu)")
            }
            guard hasStartup || startup == 0 else { throw .invalid("absent start-up vector holds \(startup)") }
            guard nmis <= InterruptMailbox.Events.maxNMIs else { throw .invalid("\(nmis) NMIs staged for vCPU \(vcpu)") }
            let staged = InterruptMailbox.Events(nmis: Int(nmis), initialize: initialize, startup: hasStartup ? startup : nil)
            guard !staged.isEmpty, sequence != 0 else { throw .invalid("empty staged events for vCPU \(vcpu)") }
            events.append((vcpu, staged, sequence))
        }
        self.offerSequence = offerSequence
        self.eventSequence = eventSequence
        self.offers = offers
        self.events = events
    }
}
