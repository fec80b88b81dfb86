import CKVM
import CLinux
import Channel
import IRQChipLink
import Glibc
import KVM
import Synchronization
import System

/// Gets interrupts from the irqchip's mailbox into the guest. Before each entry: KVM_INTERRUPT when the guest
/// can take one (ready_for_interrupt_injection and IF), otherwise an interrupt window. A listener thread turns
/// the irqchip's kick into a vCPU kick (immediate_exit, then a signal that makes KVM_RUN return), and keeps
/// kicking every millisecond while a vector waits for a window, since this host's KVM honours
/// request_interrupt_window late or not at all.
final class InterruptInjector: @unchecked Sendable {
    static let kickSignal = SIGUSR1

    let vcpu: VCPU
    let mailbox: InterruptMailbox
    let kickFD: Int32
    /// This vCPU's LAPIC timer, which the irqchip arms and reads: watched (never read) while the vCPU sleeps in HLT.
    let timerFD: Int32?
    /// This vCPU's mailbox (its index, which is also its APIC ID).
    let index: Int
    private let wake: EventFD
    /// Set by the vCPU thread itself; read by the listener and the pause thread (0: not started yet).
    private let vcpuThread = Atomic<UInt>(0)
    private let windowWanted = Atomic<Bool>(false)
    /// The vCPU thread is in `sleep(until:)`, watching the kick itself: the listener then only wakes it.
    private let sleeping = Atomic<Bool>(false)
    /// A requested vector waits on a TPR that a MOV to CR8 may lower without an exit: kick as for a window.
    let tprWatch = Atomic<Bool>(false)
    /// The vCPU left HLT because of a posted interrupt: it can take it now, whatever the exit said.
    private var wokenFromHalt = false
    /// Asked when this vCPU's timer expires while it waits in HLT: the timer's vector, if the irqchip's copy of the
    /// local APIC shows the CPU would take it at once (the runner's DeviceChannels answer).
    var timerVectorTakenAtOnce: (() -> UInt8?)?
    /// Tells the irqchip this vCPU stopped watching its timer without taking an expiry (the runner's DeviceChannels
    /// post MessageKind.timerWatchEnded).
    var timerWatchEnded: (() -> Void)?
    /// This vCPU's timer as the irqchip's copy of the local APIC shows it, once the copy is current (the runner's
    /// DeviceChannels answer).
    var timerCopy: (() -> LAPICMirror.TimerCopy?)?
    /// Wakes the devices the vCPU posted to (DeviceChannels.wakeDevicesAsleep), before this thread sleeps.
    var beforeSleeping: (() -> Void)?
    /// A timer expiry this vCPU read itself while halted (see MessageKind.timerTaken): injected at the next entry.
    private var claimedTimer: UInt8?
    /// The VMM completed the last exit's instruction itself (the emulation fallback: an IRET, an STI): the exit's
    /// ready_for_interrupt_injection describes the boundary before it, not the one the guest is at now.
    var instructionCompletedHere = false
    private var listener: OSThread?
    /// While a pause is requested a sleeping vCPU waits at the gate, and the listener stops its window kicks.
    var pauseGate: PauseGate?
    /// The API asked for a pause.
    var pauseRequested: Bool { pauseGate?.isRequested == true }
    /// The vCPU's seat in the VM's spin census: it waits on the spot for a timer's offer only on a free CPU.
    var seat: SpinCensus.Seat?

    init(vcpu: VCPU, mailbox: InterruptMailbox, kickFD: Int32, timerFD: Int32? = nil) throws {
        self.vcpu = vcpu
        self.mailbox = mailbox
        self.kickFD = kickFD
        self.timerFD = timerFD
        index = vcpu.id
        wake = try EventFD()
        _ = try syscallRetrying("sigaction(kick)") { vmm_install_kick_handler(Self.kickSignal) }
    }

    /// Called on the vCPU thread before its first entry; starts the listener.
    func attachToCurrentThread() throws {
        vcpuThread.store(vmm_thread_self(), ordering: .releasing)
        listener = try OSThread.start(name: "vcpu\(index)-irq", stackSize: 256 << 10) { [self] in listen() }
    }

    private func listen() {
        var pfd = pollfd(fd: kickFD, events: Int16(POLLIN), revents: 0)
        var value: UInt64 = 0
        while true {
            let wanted = (windowWanted.load(ordering: .relaxed) || tprWatch.load(ordering: .relaxed))
                && !pauseRequested
            let r = poll(&pfd, 1, wanted ? 1 : coalescedWrites != nil ? Self.coalescedCheckMilliseconds : -1)
            var stuck = false
            if let ring = coalescedWrites {
                let position = ring.position
                stuck = position != nil && position == heldWrites
                heldWrites = stuck ? nil : position
            }
            if r > 0 {
                _ = Glibc.read(kickFD, &value, 8)
                // A sleeping vCPU thread wakes on the kick too, unless this read took it: a wake-up is all it needs.
                // Kicked the full way it would find immediate_exit set or the signal pending once it goes on, and
                // give up its next KVM_RUN (an exit and an entry more for the interrupt it is about to inject).
                if sleeping.load(ordering: .sequentiallyConsistent) {
                    try? wake.signal()
                    continue
                }
            }
            if r > 0 || wanted || stuck { kick() }
        }
    }

    /// KVM's ring of the guest's coalesced writes, which the runner posts at every exit. A guest that writes and then
    /// runs on without an exit (Linux after a panic spins with interrupts off, its message in the ring) would keep
    /// them there: the listener looks every `coalescedCheckMilliseconds` (an idle vCPU's listener then wakes 50 times
    /// a second) and kicks the vCPU out when the ring still holds what it held at its last look.
    var coalescedWrites: CoalescedWriteRing?
    static let coalescedCheckMilliseconds: Int32 = 20
    /// The ring's position at the listener's last look, when it held writes.
    private var heldWrites: UInt64?

    /// Makes the vCPU thread leave KVM_RUN (or not enter it) and wakes it from a HLT wait.
    func kick() {
        vcpu.run.pointee.immediate_exit = 1
        try? wake.signal()
        let thread = vcpuThread.load(ordering: .acquiring)
        if thread != 0 { _ = vmm_thread_signal(thread, Self.kickSignal) }
    }

    /// What `beforeEntry` injected, for the irqchip to hear of.
    enum Injection: Equatable {
        /// The irqchip's offer: acknowledge it.
        case offered(UInt8)
        /// The timer's expiry the vCPU took itself: report it (MessageKind.timerTaken).
        case timer(UInt8)
    }

    /// Before KVM_RUN: injects the posted vector (or the timer's, taken while halted) if the guest can take it now;
    /// returns what it injected so the caller can tell the irqchip.
    ///
    /// Inlined into the run loop for the common case, nothing claimed and nothing offered; the rest is a call. After an
    /// exit of a 64-bit guest on these hosts every line of code the vCPU runs is fetched again (about 50 cycles a line,
    /// 65 more a page): the call alone, with its frame and its epilogue a page away, was seven lines.
    @inline(__always)
    func beforeEntry() throws -> Injection? {
        let run = vcpu.run
        run.pointee.immediate_exit = 0  // before the check: a kick after it makes the next KVM_RUN return at once
        guard claimedTimer != nil || mailbox.pendingVector(vcpu: index) != nil else { return enterWithoutInjecting(nil) }
        return try offerBeforeEntry()
    }

    /// Nothing to inject at this entry: no window requested; `pending`, an offer the guest cannot take yet, is timed.
    @inline(__always)
    private func enterWithoutInjecting(_ pending: UInt8?) -> Injection? {
        vcpu.run.pointee.request_interrupt_window = 0
        windowWanted.store(false, ordering: .relaxed)
        noteUntakenOffer(pending, halted: false)
        return nil
    }

    /// `beforeEntry` when a timer expiry is claimed or a vector offered.
    @inline(never)
    private func offerBeforeEntry() throws -> Injection? {
        let run = vcpu.run
        if let vector = claimedTimer {
            // Right after the HLT it woke from: the CPU takes it at this boundary (the copy said nothing outranks it).
            claimedTimer = nil
            wokenFromHalt = false
            instructionCompletedHere = false
            Log.debug("inject the timer's 0x\(String(vector, radix: 16))")
            try inject(vector)
            return .timer(vector)
        }
        let pending = mailbox.pendingVector(vcpu: index)
        guard apicEnabled, let offered = pending else { return enterWithoutInjecting(pending) }
        if taskPriority.holdsBack(offered) {
            noteUntakenOffer(offered, halted: false)
            // It waits for the TPR to drop. A TPR register write exits, but a MOV to CR8 does not on this host's
            // KVM (no KVM_EXIT_SET_TPR): the runner sees the new CR8 at the next exit, so keep kicking as for a
            // window, which bounds the wait to about a millisecond.
            run.pointee.request_interrupt_window = 0
            windowWanted.store(true, ordering: .relaxed)
            return nil
        }
        // kvm_run.if_flag is not reliable on these hosts (it has said 1 with RFLAGS.IF clear): read RFLAGS, which
        // costs one GET_REGS and only while a vector waits.
        let canTake = try wokenFromHalt
            || (instructionCompletedHere ? boundaryAllowsInterrupt()
                : run.pointee.ready_for_interrupt_injection != 0 && vcpu.regs().rflags & 0x200 != 0)
        wokenFromHalt = false
        instructionCompletedHere = false
        if canTake, let vector = mailbox.take(vcpu: index) {
            Log.debug("inject 0x\(String(vector, radix: 16))")
            try inject(vector)
            offerWaitingSince = nil
            offerWaitReported = false
            return .offered(vector)
        }
        noteUntakenOffer(offered, halted: false)
        run.pointee.request_interrupt_window = 1
        windowWanted.store(true, ordering: .relaxed)
        return nil
    }

    private func inject(_ vector: UInt8) throws {
        var irq = kvm_interrupt(irq: UInt32(vector))
        _ = try syscallRetrying("KVM_INTERRUPT") { vmm_ioctl_ptr(vcpu.fd.raw, VMM_KVM_INTERRUPT, &irq) }
        vcpu.run.pointee.request_interrupt_window = 0
        windowWanted.store(false, ordering: .relaxed)
    }

    /// INIT reset the local APIC, whose timer a claimed expiry belonged to.
    func dropClaimedTimer() { claimedTimer = nil }

    /// The vCPU's task priority, which it keeps itself (see TaskPriority); the runner sets it on TPR and CR8
    /// writes and INIT.
    var taskPriority = TaskPriority()
    /// IA32_APIC_BASE's global enable: a vCPU without its APIC takes no vector (the irqchip withdraws its offer).
    var apicEnabled = true

    /// An offered vector the TPR lets through (one the irqchip offered before a raise it has not seen yet may not).
    var hasDeliverable: Bool {
        guard apicEnabled, let vector = mailbox.pendingVector(vcpu: index) else { return false }
        return !taskPriority.holdsBack(vector)
    }

    /// A vector waits for an interrupt window or for the TPR to drop (the last entry's decision).
    var wantsWindow: Bool { windowWanted.load(ordering: .relaxed) }

    /// Since when the irqchip's offer has waited in the mailbox untaken, and whether that was reported.
    private var offerWaitingSince: UInt64?
    private var offerWaitReported = false
    /// An offer untaken this long is reported once (a guest rarely keeps IF clear or its TPR up for seconds while a
    /// vector waits): the warning says what holds it back, which is what a hung guest's lost wake-up needs.
    static let stuckOfferNanoseconds: UInt64 = 3_000_000_000

    /// Called where the vCPU looked at the mailbox (finding `offered`) without injecting: times the wait, warns once
    /// when it is long.
    @inline(__always)
    private func noteUntakenOffer(_ offered: UInt8?, halted: Bool) {
        guard let offered else {
            offerWaitingSince = nil
            offerWaitReported = false
            return
        }
        let now = monotonicNanoseconds()
        guard let since = offerWaitingSince else { offerWaitingSince = now; return }
        guard !offerWaitReported, now &- since > Self.stuckOfferNanoseconds else { return }
        offerWaitReported = true
        let rflags = (try? vcpu.regs().rflags).map { "0x" + String($0, radix: 16) } ?? "unreadable"
        Log.warning("vCPU \(index): vector 0x\(String(offered, radix: 16)) offered \((now &- since) / 1_000_000) ms ago is "
                    + "not taken: \(halted ? "halted" : "running"), TPR 0x\(String(taskPriority.value, radix: 16)), "
                    + "APIC \(apicEnabled ? "enabled" : "disabled"), RFLAGS \(rflags), window wanted \(wantsWindow), "
                    + "TPR watched \(tprWatch.load(ordering: .relaxed))")
    }

    /// Whether the guest can take an interrupt where it is now, from its registers and event state: IF set, no
    /// STI or MOV SS shadow, no event being injected already.
    private func boundaryAllowsInterrupt() throws -> Bool {
        guard try vcpu.regs().rflags & 0x200 != 0 else { return false }
        let events = try vcpu.events()
        return events.interrupt.shadow == 0 && !events.deliveryUnderway
    }

    /// NMI, INIT or a start-up IPI waits for this vCPU.
    var hasEvents: Bool { mailbox.hasEvents(vcpu: index) }

    func takeEvents() -> InterruptMailbox.Events { mailbox.takeEvents(vcpu: index) }

    /// Sleeps until the irqchip signals an event (NMI, INIT, start-up IPI): a parked vCPU, or one waiting for SIPI.
    func waitForEvent() throws {
        try sleep(until: { hasEvents })
    }

    /// The most a vCPU woken by its timer's expiry waits on the spot for the irqchip's offer.
    static let timerOfferWaitNanoseconds: UInt64 = 200_000
    /// How long it waits, learnt as every waiter's window is (`SpinWindow`): on a host where the spinning takes the
    /// CPU the irqchip needs to make the offer, the offer keeps coming only after the spin, and the window closes.
    private var offerWindow = SpinWindow(maxNanoseconds: timerOfferWaitNanoseconds)
    /// While halted: timer expiries that woke this thread, those it took itself, and of the others those whose
    /// offer the spin caught (the rest came a wake-up later). For the exit summary.
    private(set) var timerWakes = 0, timersTakenHere = 0, offersCaught = 0
    /// Timers this thread re-armed on its own CPU before sleeping (see `moveTimerHere`).
    private(set) var timersMovedHere = 0
    /// A timer due sooner than this is left where it is: the re-arm would not pay for itself.
    static let timerMoveMinimumNanoseconds: UInt64 = 20_000
    /// While the irqchip has not caught up with this vCPU's last writes (the HLT comes right after the write that
    /// armed the timer), the thread looks again this often, this many times.
    static let timerMoveRetryNanoseconds: UInt64 = 20_000, timerMoveTries = 50

    /// Waits on the irqchip's kick itself as well as on the listener's wake-up, so that whichever thread sees the
    /// kick first, no hop is added. And on this vCPU's LAPIC timer: halted in HLT (`claimingTimer`), the thread
    /// watches the timerfd and the irqchip leaves it alone meanwhile (InterruptMailbox.leaveTimer), so the expiry
    /// wakes this thread only; when the irqchip's copy of the APIC shows the CPU would take the timer's vector at
    /// once, the thread takes the expiry itself and injects it at the next entry (one wake-up from expiry to
    /// handler). Otherwise it hands the expiry back (MessageKind.timerWatchEnded wakes the irqchip, which reads it)
    /// and waits on the spot for the irqchip's offer. Outside HLT the timer is watched, never read: its expiry wakes
    /// the irqchip and this thread at the same time, and the thread waits on the spot for the offer.
    private func sleep(until ready: () -> Bool, claimingTimer: Bool = false) throws {
        // Sequentially consistent: a listener that saw the flag set read the kick before the vCPU thread's next
        // look at the mailbox (in `ready` or `beforeEntry`), so that look finds the offer the kick was for.
        sleeping.store(true, ordering: .sequentiallyConsistent)
        defer { sleeping.store(false, ordering: .sequentiallyConsistent) }
        seat?.release()  // held through the exit that brought it here (VCPURunner): this thread leaves its CPU
        beforeSleeping?()  // a device posted to just before a HLT must not sleep through it
        var value: UInt64 = 0
        var watchTimer = timerFD != nil
        /// The irqchip leaves the timer to this thread (InterruptMailbox.leaveTimer).
        var timerLeftHere = false
        /// Gives the timer back to the irqchip. `taken`: this thread read the expiry, and the timerTaken it posts
        /// at the next entry is the irqchip's wake-up; otherwise the irqchip may be asleep without the timerfd in
        /// its wait, and is woken.
        func giveTimerBack(taken: Bool) {
            guard timerLeftHere else { return }
            mailbox.leaveTimer(false, vcpu: index)
            timerLeftHere = false
            if !taken { timerWatchEnded?() }
        }
        defer { giveTimerBack(taken: claimedTimer != nil) }
        /// Tries left to move the timer here (`moveTimerHere`); 0: done, or not to be done.
        var timerMoveTriesLeft = 0
        /// When the timer's expiry woke this thread and the spin did not see the offer.
        var timerMissed: UInt64?
        defer { if let timerMissed { offerWindow.learn(waited: monotonicNanoseconds() - timerMissed, caught: false) } }
        while !ready() {
            noteUntakenOffer(mailbox.pendingVector(vcpu: index), halted: true)
            if let gate = pauseGate, gate.isRequested {
                giveTimerBack(taken: false)  // a pause may be long: the irqchip takes the expiries meanwhile
                gate.wait()
            }
            let timerWatched = watchTimer
            if claimingTimer, timerWatched, !timerLeftHere, timerVectorTakenAtOnce != nil {
                mailbox.leaveTimer(true, vcpu: index)
                timerLeftHere = true
                timerMoveTriesLeft = Self.timerMoveTries
            }
            if timerLeftHere && timerMoveTriesLeft > 0 {
                timerMoveTriesLeft = moveTimerHere() ? 0 : timerMoveTriesLeft - 1
            }
            let woke = try Poll.wait([kickFD, wake.raw] + (timerWatched ? [timerFD!] : []),
                                     timeoutNanoseconds: timerMoveTriesLeft > 0 ? Self.timerMoveRetryNanoseconds : 100_000_000)
            if !woke[0].isEmpty {
                _ = Glibc.read(kickFD, &value, 8)
                watchTimer = timerFD != nil
            }
            if !woke[1].isEmpty { _ = Glibc.read(wake.raw, &value, 8) }
            if timerWatched, !woke[2].isEmpty {
                timerWakes += 1
                // The CPU would take the timer's vector at once: take the expiry here (whoever reads the timerfd
                // first has it) and inject at the next entry, without waiting for the irqchip to wake and offer it.
                if claimingTimer, !hasEvents, mailbox.pendingVector(vcpu: index) == nil, apicEnabled,
                   let vector = timerVectorTakenAtOnce?(), !taskPriority.holdsBack(vector),
                   Glibc.read(timerFD!, &value, 8) == 8 {
                    claimedTimer = vector
                    timersTakenHere += 1
                    continue
                }
                giveTimerBack(taken: false)
                let expired = monotonicNanoseconds()
                // Yielding every 10 us: the irqchip, woken by the same expiry, may be waiting for this very CPU.
                if spin(window: &offerWindow, census: seat, until: ready, extra: { sched_yield(); return false }) {
                    offersCaught += 1
                } else {
                    timerMissed = expired
                    watchTimer = false
                }
            }
        }
    }

    /// Re-arms this vCPU's timerfd, left to this thread while it is halted, at the same time from this thread's CPU.
    /// A timer expires on the CPU that armed it, which is the irqchip's, and the wake-up of this thread from there
    /// found this thread's CPU idle: the scheduler moved the thread over, or woke its CPU from afar, either way
    /// ~13 us of every timer interrupt here (irqlatency, median 46-50 us against 33 us with every process on one
    /// CPU). Only while the irqchip has handled everything this vCPU sent it: then the timerfd holds exactly the
    /// time its copy says, and nothing but this thread touches the timerfd until it hands the timer back
    /// (InterruptMailbox.leaveTimer), or an INIT from another vCPU resets the APIC; an expiry that then comes is
    /// handed back as any other this thread does not take, and the irqchip finds no timer armed.
    ///
    /// True once settled (moved, or nothing to move); false: the irqchip's copy is not current yet, ask again.
    private func moveTimerHere() -> Bool {
        guard let timerFD, let timerCopy else { return true }
        guard let copy = timerCopy() else { return false }
        guard case .armed(let at) = copy, at > monotonicNanoseconds() &+ Self.timerMoveMinimumNanoseconds else { return true }
        if vmm_timerfd_set_absolute(timerFD, at) == 0 { timersMovedHere += 1 }
        return true
    }

    /// Injects an NMI (KVM queues it until the guest can take one).
    func injectNMI() throws {
        _ = try syscallRetrying("KVM_NMI") { vmm_ioctl_val(vcpu.fd.raw, VMM_KVM_NMI, 0) }
    }

    /// HLT with interrupts enabled: sleeps until the irqchip posts a vector or an event.
    func waitForInterrupt() throws {
        Log.debug("HLT: waiting for an interrupt")
        // The HLT has completed, so an STI shadow it sat in (`sti; hlt`) is over, though KVM still reports it and
        // would refuse the injection: clear it, and inject before the next instruction as a CPU leaving HLT does.
        // Done before the wait (the vCPU does not run meanwhile), so the wake-up pays for no ioctl but the injection.
        var events = try vcpu.events()
        if events.interrupt.shadow != 0 {
            events.interrupt.shadow = 0
            try vcpu.setEvents(events, flags: UInt32(KVM_VCPUEVENT_VALID_SHADOW))
        }
        try sleep(until: { claimedTimer != nil || hasDeliverable || hasEvents }, claimingTimer: true)
        wokenFromHalt = claimedTimer != nil || hasDeliverable
    }
}
