import CKVM
import Channel
import Devices
import IRQChipLink
import Emulator
import KVM
import Memory
import System

/// One vCPU's run loop: enter the guest, dispatch the exit through the handler table, repeat until a handler
/// says stop. Runs on its own dedicated thread. Device accesses go through `devices` (routing and ordering),
/// interrupts through `interrupts`; this type only decides what each exit means.
final class VCPURunner: @unchecked Sendable {
    enum Action { case resume, stop(ControlMessage.VCPUStop) }

    let vcpu: VCPU
    let devices: DeviceChannels
    let interrupts: InterruptInjector
    let fallback: EmulationFallback
    let group: VCPUGroup
    /// Where this vCPU is in its life: application processors start waiting for a start-up IPI.
    enum State { case running, waitingForStartup, parked }
    private var state: State
    private var tscDeadline: TSCDeadline
    var apicBase = APICBase()
    var windowStepper = WindowStepper()
    /// Whether this host needs it (HostQuirks.windowStepping).
    let windowStepping: Bool
    /// During a wait on the TPR: whether the vCPU is in long mode (nil: no such wait).
    var longModeWhileHeld: Bool?
    /// The fallback's MMU holds the paging context of the current run of steps.
    var stepContextFresh = false
    /// PVM-style hosts only (see SyscallFixup).
    let syscallFixup: SyscallFixup?
    /// The RIP of an emulation failure the fallback could not handle, already retried once.
    private var retriedRIP: UInt64?
    /// This vCPU's seat in the VM's spin census: held while in the guest, so that device processes spin only on
    /// CPUs the vCPUs leave free (and never on the CPU of a vCPU they preempted).
    let seat: SpinCensus.Seat
    /// When the held seat last asked which CPU this thread is on (`clock`'s ticks): at most once a millisecond
    /// while it stays held (see `Seat.hold`; a free seat asks whenever it is taken).
    private var cpuCheckedAt: UInt64 = 0
    static let cpuRecheckNanoseconds: UInt64 = 1_000_000
    /// `cpuRecheckNanoseconds` in `clock`'s ticks: compared on every entry, no conversion.
    private let cpuRecheckTicks: UInt64
    /// Entries, time in KVM_RUN, exits and VMM time by reason, in the region the supervisor reads.
    private let statistics: VCPUStatistics.Writer
    /// The exit being handled, and when KVM_RUN returned with it (`clock`'s ticks): its VMM time runs until the
    /// next entry.
    private var handling: (reason: UInt32, since: UInt64)?
    /// Times the exits for `statistics`.
    private let clock: CycleClock
    /// A timer expiry this vCPU took itself and injected at the last entry, for the irqchip to hear of at the exit.
    private var timerTakenToTell: UInt8?
    /// KVM's ring of the guest's coalesced writes (only for a VM of one vCPU): posted at every exit, before it is
    /// handled, as if each had exited in turn.
    var coalescedWrites: CoalescedWriteRing? { didSet { interrupts.coalescedWrites = coalescedWrites } }

    /// Dispatches an exit to its handler, in the spirit of KVM's kvm_vmx_exit_handlers; nil for a reason vmm
    /// does not handle. A switch, not a table of closures: no closure to fetch and retain on every exit.
    @inline(__always)
    private func handle(_ reason: UInt32) throws -> Action? {
        switch Int32(bitPattern: reason) {
        case KVM_EXIT_IO: return try handlePortIO()
        case KVM_EXIT_MMIO: return handleMMIO()
        case KVM_EXIT_HLT: return try handleHalt()
        case KVM_EXIT_DEBUG: return try handleDebug()
        case KVM_EXIT_X86_RDMSR: return try handleMSR(write: false)
        case KVM_EXIT_X86_WRMSR: return try handleMSR(write: true)
        case KVM_EXIT_INTR: return .resume
        case KVM_EXIT_IRQ_WINDOW_OPEN: return .resume  // the injection happens before the next entry
        case KVM_EXIT_SET_TPR: return .resume  // CR8 lowered: followed after every exit (followCR8)
        case KVM_EXIT_SHUTDOWN: return fatal(.tripleFault, "triple fault (KVM_EXIT_SHUTDOWN)")
        case KVM_EXIT_INTERNAL_ERROR: return try handleInternalError()
        case KVM_EXIT_FAIL_ENTRY:
            let reason = vmm_run_fail_entry_reason(vcpu.run)
            return fatal(.failedEntry(reason: reason), "KVM could not enter the guest (hardware reason 0x\(String(reason, radix: 16)))")
        case KVM_EXIT_SYSTEM_EVENT: return .stop(.systemEvent(type: vmm_run_system_event_type(vcpu.run)))
        default: return nil
        }
    }

    init(vcpu: VCPU, memory: GuestMemory, devices: DeviceChannels, interrupts: InterruptInjector, group: VCPUGroup,
         bootstrap: Bool, syscallFixup: Bool, windowStepping: Bool = false, seat: SpinCensus.Seat, statistics: VCPUStatistics.Writer) throws {
        self.vcpu = vcpu
        self.seat = seat
        interrupts.seat = seat
        self.statistics = statistics
        self.devices = devices
        self.interrupts = interrupts
        self.group = group
        state = bootstrap ? .running : .waitingForStartup
        fallback = try EmulationFallback(vcpu: vcpu, memory: memory)
        let tscKHz = vcpu.tscKHz()
        tscDeadline = TSCDeadline(tscKHz: tscKHz)
        clock = CycleClock(kHz: tscKHz)
        cpuRecheckTicks = clock.ticks(nanoseconds: Self.cpuRecheckNanoseconds)
        self.syscallFixup = syscallFixup ? SyscallFixup(vcpu: vcpu, fallback: fallback, clock: clock) : nil
        self.windowStepping = windowStepping
        // Asked on this vCPU's own thread, from its HLT wait.
        interrupts.timerVectorTakenAtOnce = { [unowned self] in self.devices.timerVectorTakenAtOnce() }
        interrupts.timerWatchEnded = { [unowned self] in self.devices.timerWatchEnded() }
        interrupts.timerCopy = { [unowned self] in self.devices.timerCopy() }
        interrupts.beforeSleeping = { [unowned self] in self.devices.wakeDevicesAsleep() }
    }

    /// Runs the guest until it stops, then finishes every device's posted writes (so the console is complete and
    /// a debug-exit that came first is seen first), whatever the stop; returns why.
    func run() -> ControlMessage.VCPUStop {
        let why = runUntilStop()
        seat.release()  // still held if KVM_RUN failed
        postCoalescedWrites()  // a stop that did not come from an exit (KVM_RUN failed) may leave some
        finishHandling(at: CycleClock.now())
        if let vector = timerTakenToTell { devices.timerTaken(vector) }
        devices.settleAll()
        return why
    }

    /// Holds the seat for the entry, asking for this thread's CPU again once a millisecond has passed since it last
    /// did (the exit's time stands for now: the clock is read next for the entry).
    @inline(__always)
    private func holdSeat() {
        // Unsigned: a counter that went back (a thread moved between CPUs out of step) rechecks at once.
        guard let since = handling?.since, _slowPath(since &- cpuCheckedAt > cpuRecheckTicks) else {
            seat.hold(recheck: false)
            return
        }
        cpuCheckedAt = since
        seat.hold(recheck: true)
    }

    /// The exit being handled is done at `now` (`clock`'s ticks): its time goes to its reason.
    @inline(__always)
    private func finishHandling(at now: UInt64) {
        guard let h = handling else { return }
        statistics.handled(h.reason, nanoseconds: clock.nanoseconds(from: h.since, to: now))
        handling = nil
    }

    private func runUntilStop() -> ControlMessage.VCPUStop {
        do { try interrupts.attachToCurrentThread() } catch { return stopWithDump(.runFailed, "interrupt listener: \(error)") }
        if state != .running { _ = group.park() }
        while true {
            do {
                if _slowPath(state != .running || interrupts.hasEvents || interrupts.pauseRequested) {
                    guard try attendBeforeEntry() else { continue }
                }
                switch try interrupts.beforeEntry() {
                case .offered(let vector): devices.acknowledgeInterrupt(vector)
                case .timer(let vector):
                    // Told at the next exit: the message's doorbell may wake the irqchip onto this CPU, which
                    // would hold back the entry. Nothing the irqchip does meanwhile depends on it before then: the
                    // guest's accesses to its APIC, and the next injection, come after an exit.
                    timerTakenToTell = vector
                case nil: break
                }
                try syscallFixup?.refreshIfDue(now: handling?.since ?? CycleClock.now())
                try updateWindowStepping()
                // The seat first: a device the doorbells below wake onto this CPU then sees it taken and does not
                // spin here. The doorbells last: by now the posts' cache lines are mostly over (RingProducer.push).
                holdSeat()
                devices.wakeDevicesAsleep()
                let entered = CycleClock.now()
                finishHandling(at: entered)
                let reason = try vcpu.runOnce()
                // The seat stays held through the exit's handling, which runs on this CPU as the guest did: every
                // wait that blocks releases it first (the pause's here, InterruptInjector's sleep for a HLT or a
                // stopped vCPU, a read's in DeviceClient, and a spin gives it back when it ends), since a device
                // that saw it held while this thread slept would not spin for it (kept through a HLT, it once made
                // timer interrupts slower: mean 49 -> 64 us in the latency guest). An exit that only posts then
                // writes no seat.
                if let vector = timerTakenToTell {
                    devices.timerTaken(vector)
                    timerTakenToTell = nil
                }
                let exited = CycleClock.now()
                statistics.ran(nanoseconds: clock.nanoseconds(from: entered, to: exited), exit: reason, at: monotonicNanoseconds())
                handling = (reason, exited)
                // A kick (KVM_EXIT_INTR) is no progress of the guest's: a HLT that stepping stopped before is still
                // ahead, and must not be stepped.
                if reason != UInt32(KVM_EXIT_DEBUG) && reason != UInt32(KVM_EXIT_INTR) {
                    windowStepper.exitedOtherwise()
                    stepContextFresh = false
                }
                // The writes the guest made before this exit's access, in order: the access must come after them.
                if let ring = coalescedWrites, !ring.isEmpty { postCoalescedWrites() }
                followAPICBase()
                followCR8()
                if reason != UInt32(KVM_EXIT_INTERNAL_ERROR) { retriedRIP = nil }  // the guest moved on
                guard let action = try handle(reason) else {
                    return stopWithDump(.unhandledExit(reason: reason), "unhandled exit reason \(reason)")
                }
                if case .stop(let why) = action { return why }
            } catch {
                return stopWithDump(.runFailed, "vCPU failed: \(error)")
            }
        }
    }

    /// Posts the writes KVM queued in its coalesced ring to their devices, oldest first, as their exits would have.
    @inline(never)
    private func postCoalescedWrites() {
        var count: UInt64 = 0
        defer { if count > 0 { statistics.coalesced(count) } }
        coalescedWrites?.drain { write in
            count += 1
            if write.port {
                devices.portWrite(UInt16(truncatingIfNeeded: write.address), size: write.size, value: write.value)
            } else {
                devices.mmioWrite(write.address, size: write.size, value: write.value)
            }
        }
    }

    /// Before an entry, what a running vCPU seldom meets: waits while it is not running, applies NMI, INIT and
    /// start-up IPIs, and holds it at a pause (the API's PATCH /vm) outside KVM_RUN until the resume. Returns
    /// whether to enter now (false: look again). Out of line: the run loop's common case stays on few code lines.
    @inline(never)
    private func attendBeforeEntry() throws -> Bool {
        if state != .running && !interrupts.hasEvents { try interrupts.waitForEvent() }
        if interrupts.hasEvents { try apply(interrupts.takeEvents()) }
        if state != .running { return false }
        if let gate = interrupts.pauseGate, gate.isRequested {
            finishHandling(at: CycleClock.now())  // paused time is no exit's
            devices.wakeDevicesAsleep()
            seat.release()
            gate.wait()
            return false
        }
        return true
    }

    /// INIT resets the vCPU into waiting for a start-up IPI (which a running vCPU ignores); NMIs wake a parked
    /// vCPU and are injected into a running one (a vCPU waiting for SIPI blocks them).
    private func apply(_ events: InterruptMailbox.Events) throws {
        if events.initialize {
            Log.debug("INIT")
            // INIT resets the local APIC, TPR included (the irqchip resets its model).
            interrupts.taskPriority = TaskPriority()
            interrupts.dropClaimedTimer()
            devices.taskPriorityClass = 0
            vcpu.run.pointee.cr8 = 0
            if state != .waitingForStartup {
                if state == .running { _ = group.park() }
                state = .waitingForStartup
            }
        }
        if let vector = events.startup, state == .waitingForStartup {
            Log.debug("start-up IPI, vector 0x\(String(vector, radix: 16))")
            try vcpu.applyStartup(vector: vector)
            group.unpark()
            state = .running
        }
        if events.nmis > 0 && state != .waitingForStartup {
            if state == .parked { group.unpark(); state = .running }
            // One KVM_NMI each: KVM keeps two pending while NMIs are not blocked (it injects one and latches the
            // other for after its IRET) and one while they are, which is the CPU's rule.
            for _ in 0..<events.nmis { try interrupts.injectNMI() }
        }
    }

    // MARK: handlers

    @inline(__always)
    func handlePortIO() throws -> Action {
        let io = vmm_run_io(vcpu.run)
        let size = Int(io.size)
        guard size == 1 || size == 2 || size == 4 else { return unhandledPortSize(size) }
        let data = vcpu.ioData
        if io.count == 1 {  // all but string I/O (INS, OUTS): no loop, and its code stays short
            portAccess(io, size: size, at: data)
            return .resume
        }
        for i in 0..<Int(io.count) { portAccess(io, size: size, at: data + i * size) }
        return .resume
    }

    /// One element of a port exit: a read stored at `element`, or the write of what is there.
    @inline(__always)
    private func portAccess(_ io: vmm_io_exit, size: Int, at element: UnsafeMutableRawPointer) {
        if io.direction == UInt8(KVM_EXIT_IO_IN) {
            store(devices.portRead(io.port, size: size), to: element, size: size)
        } else {
            devices.portWrite(io.port, size: size, value: load(element, size: size))
        }
    }

    /// Out of line: its message's code would otherwise sit among the port handler's hot lines.
    @inline(never)
    private func unhandledPortSize(_ size: Int) -> Action {
        fatal(.unhandledExit(reason: UInt32(KVM_EXIT_IO)), "port access of size \(size)")
    }

    /// An MMIO access goes to the device whose window holds it (see DeviceChannels for what nobody owns).
    func handleMMIO() -> Action {
        let run = vcpu.run
        let address = vmm_run_mmio_addr(run)
        let len = Int(vmm_run_mmio_len(run))
        guard let data = vmm_run_mmio_data(run), len == 1 || len == 2 || len == 4 || len == 8 else { return .resume }
        let bytes = UnsafeMutableRawPointer(data)
        if vmm_run_mmio_is_write(run) != 0 {
            let value = load(bytes, size: len)
            if len == 4 && devices.lapicOffset(address) == LocalAPIC.Register.tpr {
                setTaskPriority(UInt8(truncatingIfNeeded: value))
            } else {
                devices.mmioWrite(address, size: len, value: value)
            }
        } else {
            store(devices.mmioRead(address, size: len), to: bytes, size: len)
        }
        return .resume
    }

    /// HLT with interrupts enabled waits for the irqchip. With IF clear only an NMI or INIT can wake the vCPU:
    /// it parks. Once every vCPU is parked the guest has stopped itself.
    func handleHalt() throws -> Action {
        // kvm_run.if_flag can be stale on these hosts; RFLAGS is the authority (one GET_REGS, only on HLT).
        if try vcpu.run.pointee.if_flag != 0 || vcpu.regs().rflags & 0x200 != 0 {
            try interrupts.waitForInterrupt()
            return .resume
        }
        // Under single-step this host may report a HLT's exit late, after the vector that woke it was injected:
        // RIP is then in the handler, not after a HLT. That HLT is over: go on rather than park.
        if windowStepping, try !rightAfterHalt() { return .resume }
        guard group.park() else {
            Log.debug("HLT with interrupts off: parked")
            state = .parked
            return .resume
        }
        return .stop(.halted)
    }

    /// MSRs routed to userspace (only IA32_TSC_DEADLINE, see VirtualMachine.routeMSRsToUserspace). Anything
    /// else that arrives here raises #GP in the guest, as an MSR the CPU does not have.
    func handleMSR(write isWrite: Bool) throws -> Action {
        let run = vcpu.run
        guard vmm_run_msr_index(run) == TSCDeadline.msrIndex else {
            vmm_run_msr_complete(run, 0, 1)
            return .resume
        }
        let now = try vcpu.msr(TSCDeadline.tscMSR)
        if isWrite {
            let delay = tscDeadline.write(vmm_run_msr_data(run), now: now)
            devices.setTimerDeadline(at: delay.map { monotonicNanoseconds() &+ $0 })
            vmm_run_msr_complete(run, vmm_run_msr_data(run), 0)
        } else {
            vmm_run_msr_complete(run, tscDeadline.read(now: now), 0)
        }
        return .resume
    }

    /// A debug exit is a window step (WindowStepper), or the SYSCALL fix-up's breakpoint or step; nothing else
    /// arms guest debugging.
    func handleDebug() throws -> Action {
        // The fix-up's first: a step that lands on its breakpoint's address is at the page-fault entry all the same.
        if try syscallFixup?.handleDebugExit() == true { return .resume }
        if windowStepper.stepping {
            windowStepper.stepped()  // the boundary is looked at before the next entry
            // This host reports a stepped HLT's own exit entries later, in whatever runs next (an interrupt
            // handler, with IF clear: it would look like a power-off). So a HLT is not stepped: it exits as HLT and
            // the wait for an interrupt takes over.
            if try nextInstructionIsHalt() { windowStepper.stopBefore() }
            return .resume
        }
        return fatal(.unhandledExit(reason: UInt32(KVM_EXIT_DEBUG)),
                     "debug exit at 0x\(String(vmm_run_debug_pc(vcpu.run), radix: 16)) that no breakpoint of ours explains")
    }

    /// Exit counts by reason (from the statistics region), for the report at the end of a run.
    func exitSummary(_ totals: VCPUStatistics.Totals) -> String {
        var parts = totals.byReason.filter { $0.exits > 0 }.map { "\($0.name) \($0.exits)" }
        if let f = syscallFixup {
            parts.append("(syscall fix-ups \(f.fixes), page faults stepped over \(f.stepsOver))")
        }
        if devices.tprWaits + devices.eoiWaits > 0 {
            parts.append("(TPR lowerings and EOIs that waited for the irqchip: \(devices.tprWaits), \(devices.eoiWaits))")
        }
        if interrupts.timerWakes > 0 {
            parts.append("(halted, woken by the timer: \(interrupts.timerWakes), took the expiry itself \(interrupts.timersTakenHere), "
                         + "caught the irqchip's offer on the spot \(interrupts.offersCaught); timers moved to this CPU \(interrupts.timersMovedHere))")
        }
        if windowStepper.steps > 0 { parts.append("(instructions stepped for interrupt windows: \(windowStepper.steps))") }
        if devices.mirrorReads + devices.irqchipReads > 0 {
            parts.append("(LAPIC reads: \(devices.mirrorReads) from the irqchip's copy, \(devices.irqchipReads) asked)")
        }
        if devices.mirroredPortReads > 0 { parts.append("(port reads answered from the device's copy: \(devices.mirroredPortReads))") }
        return "vcpu\(vcpu.id) exits: " + (parts.isEmpty ? "none" : parts.joined(separator: ", "))
    }

    func handleInternalError() throws -> Action {
        let sub = vmm_run_internal_suberror(vcpu.run)
        if sub == UInt32(KVM_INTERNAL_ERROR_EMULATION) {
            // KVM's emulator gave up: the userspace fallback may know the instruction.
            switch try fallback.handle() {
            case .handled(let what):
                Log.debug("emulation fallback: \(what)")
                interrupts.instructionCompletedHere = true
                return .resume
            case .unhandled(let why):
                // Another vCPU may have rewritten the instruction since KVM gave up on it (Linux patches kernel
                // text through INT3 while other CPUs run it): run it again once before calling it unhandled.
                let rip = try vcpu.regs().rip
                if rip != retriedRIP {
                    retriedRIP = rip
                    Log.debug("emulation fallback: \(why); retrying once, the instruction may have been rewritten")
                    return .resume
                }
                return fatal(.internalError(suberror: sub), "KVM instruction emulation failed and the fallback cannot handle it: \(why)")
            case .tripleFault(let why):
                // Delivery failed as the CPU's would have: shutdown, reported like KVM's own triple fault.
                return fatal(.tripleFault, "triple fault (emulation fallback: \(why))")
            }
        }
        let n = vmm_run_internal_ndata(vcpu.run)
        let data = (0..<min(n, 16)).map { "0x" + String(vmm_run_internal_data(vcpu.run, $0), radix: 16) }
        let what = sub == UInt32(KVM_INTERNAL_ERROR_EMULATION) ? "instruction emulation failed" : "internal error, suberror \(sub)"
        return fatal(.internalError(suberror: sub), "KVM \(what) (data: \(data.joined(separator: " ")))")
    }

    func fatal(_ why: ControlMessage.VCPUStop, _ headline: String) -> Action {
        .stop(stopWithDump(why, headline))
    }

    private func stopWithDump(_ why: ControlMessage.VCPUStop, _ headline: String) -> ControlMessage.VCPUStop {
        Log.report(CrashDump.render(vcpu: vcpu, mmu: fallback.mmu, headline: headline))
        return why
    }

    // MARK: the exit data

    /// The 1-, 2-, 4- or 8-byte value at `p` (the guest's and the host's byte order are both little-endian).
    @inline(__always)
    private func load(_ p: UnsafeMutableRawPointer, size: Int) -> UInt64 {
        switch size {
        case 1: return UInt64(p.load(as: UInt8.self))
        case 2: return UInt64(p.loadUnaligned(as: UInt16.self))
        case 4: return UInt64(p.loadUnaligned(as: UInt32.self))
        default: return p.loadUnaligned(as: UInt64.self)
        }
    }

    @inline(__always)
    private func store(_ v: UInt64, to p: UnsafeMutableRawPointer, size: Int) {
        switch size {
        case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
        case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: v), as: UInt16.self)
        case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: v), as: UInt32.self)
        default: p.storeBytes(of: v, as: UInt64.self)
        }
    }
}
