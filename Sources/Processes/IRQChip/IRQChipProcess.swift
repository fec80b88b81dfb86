import CLinux
import Channel
import Devices
import Glibc
import IRQChipLink
import System

/// The irqchip process: one local APIC per vCPU and the IOAPIC. The vCPUs reach it over one channel whose lane
/// number is the vCPU (so a LAPIC access reaches that vCPU's APIC); devices drive their IOAPIC pins over a
/// second one. It fills the vCPUs' interrupt mailboxes and arms their timers. It is restartable: its state and
/// both channels' positions are committed together before any mailbox write they lead to (see `IRQChipState`).
public enum IRQChipProcess {
    public static func main(specJSON: String) -> Int32 {
        HelperStartup.runDevice(IRQChipSpec.self, json: specJSON, role: .irqchip) { spec in
            // Timers expire on time, not up to 50 us late (the default slack for normal threads).
            _ = vmm_prctl5(VMM_PR_SET_TIMERSLACK, 1, 0, 0, 0)
            // One timerfd per local APIC, made by the supervisor (the policy allows arming them, not making them):
            // the vCPU waiting in HLT watches its own too, and a successor arms the same ones.
            let timers = spec.timerFDs
            guard timers.count == spec.vcpuCount else {
                throw SystemError("role arguments: one timer per vCPU", errno: EINVAL)
            }
            try HelperSandbox.enter(spec.sandbox, role: .irqchip, controlFD: spec.controlFD, processes: 0)
            if let takeover = spec.takeoverFD { try HelperStartup.awaitTakeover(takeover) }
            Log.debug("sandboxed; serving")
            try serve(spec, timers: timers)
        }
    }

    /// How overdue a timer a vCPU watches itself may get before this process reads it anyway.
    static let timerLeftGraceNs: UInt64 = 20_000_000

    static func serve(_ spec: IRQChipSpec, timers: [Int32]) throws {
        let region = try ChannelRegion(attaching: spec.channel.memoryFD, layout: spec.channel.layout)
        let policy = spec.waiting.policy(census: try spec.waiting.attachCensus(), stepsAside: true)
        var server = DeviceServer(region: region, deviceDoorbell: spec.channel.deviceDoorbellFD,
                                  responseDoorbells: spec.channel.responseDoorbellFDs, policy: policy)
        var lines = DeviceServer(region: try ChannelRegion(attaching: spec.lines.memoryFD, layout: spec.lines.layout),
                                 deviceDoorbell: spec.lines.deviceDoorbellFD, responseDoorbells: spec.lines.responseDoorbellFDs,
                                 policy: policy)
        // One spin window for both channels: the process waits on them together.
        var window = server.window
        /// Per vCPU, the time its next write happened at, when it said (see MessageKind.timestamp).
        var stamps = [UInt64?](repeating: nil, count: spec.vcpuCount)
        let mailbox = try InterruptMailbox(attaching: spec.mailboxFD, vcpus: spec.vcpuCount)

        // A process started in place of a dead one resumes from its predecessor's last commit.
        var state = IRQChipState(vcpus: spec.vcpuCount, lines: spec.lines.lanes)
        var resumed = false
        if let saved = server.makeRestartable(state) {
            do {
                try state.restore(saved)
                lines.resume(at: state.linesPositions)
                resumed = true
                Log.info("resumed from the state the previous irqchip process committed")
            } catch {
                Log.warning("the previous irqchip process's state is unusable (\(error)); starting with fresh APICs")
                state = IRQChipState(vcpus: spec.vcpuCount, lines: spec.lines.lanes)
                _ = server.makeRestartable(state)
            }
        }
        let chip = state.chip, outbox = state.outbox
        if !resumed { outbox.continueNumbering(from: mailbox) }
        server.announceServing()
        server.settling = StartupCode.settleAction()
        lines.announceServing()
        var expirations: UInt64 = 0
        /// When a timer left to its halted vCPU (InterruptMailbox.leaveTimer) is overdue enough for this process to
        /// read it anyway: `timerLeftGraceNs` after its armed time (the model's, which is what the timerfd holds);
        /// nil when the timer is this process's to serve now, or disarmed.
        func graceEnd(_ vcpu: Int) -> UInt64? {
            guard mailbox.timerLeftToVCPU(vcpu), let at = chip.lapics[vcpu].timerArmedAt else { return nil }
            return at &+ Self.timerLeftGraceNs
        }
        /// Whether this process reads and waits on `vcpu`'s timerfd now: not while the vCPU watches it itself,
        /// unless the grace ran out (a vCPU that stopped watching without saying so must not stop its timer).
        func servesTimer(_ vcpu: Int, now: UInt64) -> Bool {
            !mailbox.timerLeftToVCPU(vcpu) || graceEnd(vcpu).map { now > $0 } ?? false
        }

        /// Records the state with both channels' positions in one step, then lets the peers see them consumed.
        func commit(answering lane: Int? = nil) {
            state.linesPositions = lines.positions
            server.commit(answering: lane)
            lines.commit()
        }
        func kick(_ vcpus: some Sequence<Int>) {
            for vcpu in vcpus {
                var one: UInt64 = 1
                _ = Glibc.write(spec.kickFDs[vcpu], &one, 8)
            }
        }
        /// Makes the committed mailbox writes; a swap the vCPU beat leaves the controller expecting the old vector.
        func deliver() {
            let (kicked, missed) = outbox.deliver(to: mailbox)
            for intent in missed { chip.offerMissed(intent) }
            kick(kicked)
        }
        /// Devices may drive their lines and nothing else. `holding`: the lane of a vCPU request taken and not yet
        /// handled, which a commit here must leave uncommitted.
        func drainLines(holding vcpuLane: Int? = nil) {
            while true {
                guard let (lane, m) = lines.next(malformed: { Log.warning("dropping a malformed line message: \($0)") }) else {
                    // At the batch limit the lines wait for a commit; the state is whole between messages.
                    guard lines.uncommitted >= lines.batchLimit else { return }
                    commit(answering: vcpuLane)
                    continue
                }
                // A device drives its own pin, whatever pin its message names: the pin is the lane's.
                guard m.operation == .lineLevel, m.size == 1, m.data <= 1, spec.linePins.indices.contains(lane) else {
                    Log.warning("dropping a line message that is not a level: \(m.operation) on lane \(lane)")
                    continue
                }
                let pin = spec.linePins[lane]
                Log.debug("line \(pin) \(m.data != 0 ? "up" : "down")")
                chip.setLine(pin: pin, asserted: m.data != 0)
            }
        }
        /// Arms timers and offers what is deliverable: after each batch, and before answering a sync, so that a
        /// synchronous write (an IPI through the ICR) has its interrupt in the mailbox when the write completes.
        /// The offers and events are decided and committed first, then made.
        func publish(answering lane: Int? = nil) {
            for request in chip.takeTimerRequests() {
                _ = vmm_timerfd_set_absolute(timers[request.vcpu], request.at ?? 0)
            }
            // The supervisor's hang watch: a timer this late means this process stopped serving.
            let due = chip.earliestTimer ?? 0
            if region.dueBy != due { region.dueBy = due }
            outbox.stage(chip.planOffers(), events: chip.takeCPUEvents())
            commit(answering: lane)
            deliver()
            // After the commit: a successor restores the state these copies show.
            let handled = server.positions
            for vcpu in 0..<spec.vcpuCount {
                mailbox.mirror(vcpu: vcpu).publish(chip.lapics[vcpu], handledPosition: handled[vcpu])
            }
        }

        if resumed {
            // What the predecessor committed and may not have written; its timers were its own.
            deliver()
            chip.rearmTimers()
            kick(0..<spec.vcpuCount)
        }
        while true {
            // Timers that fired, then everything the vCPUs sent, then the mailboxes.
            let awake = monotonicNanoseconds()
            for (i, fd) in timers.enumerated() where servesTimer(i, now: awake) && Glibc.read(fd, &expirations, 8) == 8 {
                chip.timerExpired(vcpu: i, now: monotonicNanoseconds())
            }
            while let (lane, m) = server.next(malformed: { Log.warning("dropping a malformed request: \($0)") }) {
                drainLines(holding: lane)  // device line changes first: they may precede this message causally (see WriteOrdering)
                let now = monotonicNanoseconds()
                // A stamp is for the message right after it, whatever that is.
                let stamp = stamps.indices.contains(lane) && m.operation != .timestamp ? stamps[lane] : nil
                if stamp != nil { stamps[lane] = nil }
                switch m.operation {
                case .mmioRead:
                    // The APICs' registers are 32 bits wide: other widths read all-ones, whatever their size.
                    let value = m.size == 4 ? UInt64(chip.read(vcpu: lane, address: m.address, size: m.size, now: now)) : ~0
                    try server.respond(lane: lane, to: m, data: value & m.widthMask)
                case .mmioWrite:
                    // A write the vCPU stamped happened at its stamp (the timer's start), not now.
                    let at = stamp.map { TimerDeadline.plausible($0, now: now) } ?? now
                    chip.write(vcpu: lane, address: m.address, size: m.size, value: m.data, now: at)
                case .timestamp:
                    if stamps.indices.contains(lane) { stamps[lane] = m.data }
                case .portRead:
                    try server.respond(lane: lane, to: m, data: m.widthMask)
                case .sync:
                    publish(answering: lane)
                    try server.respond(lane: lane, to: m, data: 0)
                case .interruptAck:
                    chip.acknowledged(vcpu: lane, vector: UInt8(truncatingIfNeeded: m.data))
                case .timerDeadline:
                    chip.setDeadline(vcpu: lane, at: TimerDeadline.decode(m.data), now: now)
                case .apicBase:
                    chip.setAPICBase(vcpu: lane, value: m.data)
                case .timerTaken:
                    chip.timerTaken(vcpu: lane, vector: UInt8(truncatingIfNeeded: m.data), now: now)
                case .timerWatchEnded:
                    break  // the wake-up was the point: the loop reads and waits on that timerfd again
                default:
                    break  // vCPUs do not drive lines, and answers do not travel this way
                }
            }
            drainLines()
            publish()
            // Timers a halted vCPU watches are its own; their grace running out is this wait's deadline.
            let now = monotonicNanoseconds()
            let served = timers.indices.filter { servesTimer($0, now: now) }
            let graceEnds = timers.indices.filter { !served.contains($0) }.compactMap(graceEnd).min()
            let timeoutMs = graceEnds.map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + 1) } ?? -1
            _ = try DeviceServer.wait([server, lines], extra: served.map { timers[$0] }, timeoutMs: timeoutMs, window: &window)
        }
    }
}
