import Glibc
import Machine
import Sandbox
import SeccompPolicy
import System

/// Watching a running VM: the first decisive event (a signal, a helper's report or death), then settling the
/// devices, then the report and vmm's exit status.
extension Supervisor {
    /// How a run ended, and what to tell the user about it once the devices have settled.
    struct Ending {
        let status: ExitStatus
        let message: String?
        /// Said at `Info` level only (a guest that chose its exit status is not news).
        var quiet = false
    }

    /// Waits for the first decisive event (replacing device processes that die or hang meanwhile), lets every
    /// device finish what the guest already asked of it, writes out the console, reports the event and returns how
    /// the run ended.
    func watch(_ slots: [Slot], console: ConsolePump) throws -> ExitStatus {
        let faults = FaultInjector(config.vmm.faults, slots: slots, startedAt: monotonicNanoseconds())
        let ending = try firstDecisiveEvent(slots, console: console, faults: faults)
        // What the guest wrote before the ending is committed already: out with it now, the rest after the settle.
        console.drainOutput()
        settleDevices(slots.map(\.helper))
        console.drainOutput()
        reportFinalStatistics(slots)
        if let message = ending.message {
            if ending.quiet { Log.info(message) } else { Log.report(message) }
        }
        faults.report(to: config.vmm.faultReportPath)
        return ending.status
    }

    /// How often device progress is looked at while it matters to the millisecond: request-count faults, and a
    /// restarted device until it handles its first request (the recovery time the fault report gives).
    static let watchTickNanoseconds: UInt64 = 1_000_000

    /// How often it is looked at otherwise, for hangs: a fifth of `hang_timeout_ms`, at least 10 ms (an idle VM
    /// should not wake its supervisor hundreds of times a second).
    var hangTickNanoseconds: UInt64 { max(10_000_000, UInt64(config.vmm.deviceRestart.hangTimeoutMs) * 200_000) }

    private func firstDecisiveEvent(_ slots: [Slot], console: ConsolePump, faults: FaultInjector) throws -> Ending {
        // When the code that read the config and started the VM is unmapped (see StartupCode): 250 ms in, by when
        // the standbys (started 30 ms after their devices) are up; again that long after a restart.
        var startupCodeDue: UInt64? = monotonicNanoseconds() + StartupCode.settleNanoseconds
        while true {
            let helpers = slots.map(\.helper)
            // Devices' messages are read before the vCPU's: the vCPU reports a stop only after a sync with every
            // device, so a debug-exit that came first is already in its device's pipe and must win over the stop.
            let readingOrder = helpers.filter { $0.role != .vcpu } + helpers.filter { $0.role == .vcpu }
            // A closed control pipe stays readable forever: it is left out, and the pidfd tells the rest. A helper
            // already reaped (a broken device, or one waiting for its back-off) is not watched.
            let open = helpers.filter { !$0.controlClosed }
            let live = slots.filter { $0.helper.ended == nil }
            let standbys = slots.compactMap(\.standby)
            var waitList = Poll.List()
            let signal = waitList.add([signals.raw])
            waitList.add(open.map { $0.control.raw })  // read below in readingOrder, whatever woke the loop
            let ended = waitList.add(live.map { $0.helper.process.pidfd.raw })
            let standbysEnded = waitList.add(standbys.map { $0.process.pidfd.raw })
            waitList.add(api.control.map { [$0.pollFD] } ?? [])  // served below on every pass
            let placed = waitList.add(cgroupSetup.map { [$0.done.raw] } ?? [])
            let consoleReady = waitList.add(console.pollFDs)
            let now = monotonicNanoseconds()
            var wake = faults.nextDue(now: now)
            if let due = apiWake { wake = min(wake ?? .max, due) }
            if let due = startupCodeDue { wake = min(wake ?? .max, due) }
            if slots.contains(where: { $0.restartable && !$0.broken }) {
                wake = min(wake ?? .max, now + (faults.recovering ? Self.watchTickNanoseconds : hangTickNanoseconds))
            }
            for slot in slots {
                if let due = slot.restartDue { wake = min(wake ?? .max, due) }
                if slot.standby == nil, let due = slot.standbyDue { wake = min(wake ?? .max, due) }
            }
            let timeoutMs = wake.map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + ($0 > now ? 1 : 0)) } ?? -1
            let ready = try waitList.wait(timeoutMs: timeoutMs)
            if !ready[signal].allSatisfy(\.isEmpty) {
                let sig = try Signals.read(from: signals)
                return Ending(status: sig == SIGINT ? .interrupted : .terminated, message: "\(signalName(sig)) received; stopping the VM")
            }
            // Control messages first: a helper that reported and then exited is not a crash.
            for h in readingOrder {
                if let ending = try readControl(h) { return ending }
            }
            for (slot, event) in zip(live, ready[ended]) where !event.isEmpty {
                let h = slot.helper
                h.ended = try h.process.reap(block: true)
                for other in readingOrder { if let ending = try readControl(other) { return ending } }
                let what = "\(h.name) process (pid \(h.process.pid)) \(h.ended.map(\.description) ?? "ended")"
                guard slot.restartable else {
                    return Ending(status: .helperDied, message: "\(what) while the guest was running")
                }
                if let ending = failed(slot, what, faults: faults) { return ending }
                startupCodeDue = monotonicNanoseconds() + StartupCode.settleNanoseconds
            }
            for (standby, event) in zip(standbys, ready[standbysEnded]) where !event.isEmpty {
                standbyDied(standby, in: slots)
            }
            if !ready[placed].allSatisfy(\.isEmpty) {
                if let failure = finishCgroupSetup() { return Ending(status: .hostSetupFailed, message: failure) }
            }
            console.pump(ready: Array(ready[consoleReady]))
            serveAPI(slots, console: console)
            let after = monotonicNanoseconds()
            apiTimers(slots, now: after)
            watchForHangs(slots, now: after, faults: faults)
            if let due = startupCodeDue, due <= after {
                StartupCode.release()
                startupCodeDue = nil
            }
            for slot in slots {
                if let due = slot.restartDue, due <= after {
                    try restart(slot, faults: faults)
                    startupCodeDue = after + StartupCode.settleNanoseconds
                }
                if slot.standby == nil && slot.wantsStandby && config.vmm.deviceRestart.standby && slot.standbyDue.map({ $0 <= after }) != false {
                    startStandby(slot)
                }
            }
            faults.injectDue(now: after)
        }
    }

    // MARK: restarts

    /// A restartable device process died (or was killed as hung): its channels say so at once, so the vCPU waits
    /// for the successor instead of timing out; the successor is started now, or after the back-off when the
    /// device failed before in this window; past the budget the device is given up on.
    private func failed(_ slot: Slot, _ what: String, faults: FaultInjector) -> Ending? {
        let now = monotonicNanoseconds()
        let policy = config.vmm.deviceRestart
        faults.detected(slot, at: now)
        slot.stalledSince = nil
        slot.failures = slot.failures.filter { now - $0 < UInt64(policy.windowMs) * 1_000_000 }
        if slot.failures.count >= policy.maxRestarts {
            slot.broken = true
            slot.wantsStandby = false
            if let standby = slot.standby {
                standby.process.kill(SIGKILL)
                standby.ended = try? standby.process.reap(block: true)
                slot.standby = nil
            }
            for c in slot.channels { c.deviceStatus = .broken }
            slot.wakeClients()
            let message = "\(what); it failed \(slot.failures.count + 1) times within \(policy.windowMs) ms (vmm.device_restart.max_restarts \(policy.maxRestarts)): given up on"
            if policy.critical.contains(slot.name) {
                slot.lineWhenBroken()
                return Ending(status: .helperDied, message: message + ", and it is critical (vmm.device_restart.critical); stopping the VM")
            }
            // Said before the line is driven, so that the irqchip's log of the line's changes comes after it.
            Log.report(message + "; the VM goes on without it (its reads give all-ones, its writes are dropped)")
            slot.lineWhenBroken()
            return nil
        }
        for c in slot.channels { c.deviceStatus = .restarting }
        let backoff = slot.failures.isEmpty ? 0 : min(policy.maxBackoffMs, policy.backoffMs << min(slot.failures.count - 1, 20))
        slot.failures.append(now)
        slot.restartDue = now + UInt64(backoff) * 1_000_000
        Log.info("\(what); starting a new one\(backoff > 0 ? " in \(backoff) ms" : "")")
        return nil
    }

    /// The standby takes over if there is one (a wake-up), otherwise a new process is started.
    private func restart(_ slot: Slot, faults: FaultInjector) throws {
        guard let launch = slot.launch else { return }
        slot.restartDue = nil
        let old = slot.helper
        if let standby = slot.standby, standby.ended == nil, let takeover = standby.takeover {
            slot.standby = nil
            do { try takeover.eventFD.signal() } catch {
                throw HostSetupError(description: "waking the standby \(old.name) process failed: \(error)")
            }
            slot.helper = standby
            // The next standby starts a little later: a process start right now would take CPU from the takeover.
            slot.standbyDue = monotonicNanoseconds() + Self.standbyDelayNanoseconds
        } else {
            do { slot.helper = try launch(false) } catch {
                throw HostSetupError(description: "restarting the \(old.name) process failed: \(error)")
            }
        }
        slot.restarts += 1
        // The channels say restarting until the new process has restored its state and says it serves.
        for c in slot.channels { c.restarts &+= 1 }
        slot.lastHandled = slot.channels.reduce(0) { $0 &+ $1.handledRequests() }
        faults.restarted(slot, at: monotonicNanoseconds())
        Log.info("\(slot.name) process restarted (pid \(slot.helper.process.pid), restart \(slot.restarts))")
    }

    /// A standby that died (it runs nothing a guest controls, so this is rare: a host problem, an outside kill) is
    /// replaced; after `maxStandbyDeaths` the device does without one.
    private func standbyDied(_ standby: Helper, in slots: [Slot]) {
        standby.ended = try? standby.process.reap(block: true)
        guard let slot = slots.first(where: { $0.standby === standby }) else { return }
        slot.standby = nil
        slot.standbyDeaths += 1
        Log.info("standby \(slot.name) process (pid \(standby.process.pid)) \(standby.ended.map(\.description) ?? "ended")")
        if slot.standbyDeaths >= Self.maxStandbyDeaths {
            slot.wantsStandby = false
            Log.report("the standby \(slot.name) process died \(slot.standbyDeaths) times; restarts of \(slot.name) start a new process instead")
        }
    }

    static let maxStandbyDeaths = 3
    /// At the latest: it starts as soon as the process that took over has handled a request.
    static let standbyDelayNanoseconds: UInt64 = 30_000_000

    private func startStandby(_ slot: Slot) {
        guard let launch = slot.launch, !slot.broken else { return }
        slot.standbyDue = nil
        do { slot.standby = try launch(true) } catch {
            slot.wantsStandby = false
            Log.report("cannot start a standby \(slot.name) process (\(error)); its restarts start a new process instead")
        }
    }

    /// A device with requests waiting (on its rings, a queue notification unread, or work it took and says it has in
    /// hand) that makes no progress for
    /// `hang_timeout_ms` is hung (stopped, looping, deadlocked): it is killed, and its death restarts it like any
    /// other.
    private func watchForHangs(_ slots: [Slot], now: UInt64, faults: FaultInjector) {
        let limit = UInt64(config.vmm.deviceRestart.hangTimeoutMs) * 1_000_000
        for slot in slots where slot.restartable && !slot.broken && slot.helper.ended == nil {
            let handled = slot.channels.reduce(0) { $0 &+ $1.handledRequests() }
            let waiting = slot.channels.contains { $0.hasOverdueWork(now: now) || $0.deviceBusy } || notificationWaiting(slot)
            if handled != slot.lastHandled {
                faults.progressed(slot, at: now)
                // The process that took over serves: its successor-in-waiting may start now without delaying it.
                if slot.standby == nil, slot.standbyDue != nil { slot.standbyDue = now }
            }
            if handled != slot.lastHandled || !waiting {
                slot.lastHandled = handled
                slot.stalledSince = nil
                continue
            }
            guard let since = slot.stalledSince else {
                slot.stalledSince = now
                continue
            }
            if now - since >= limit {
                Log.report("\(slot.name) process (pid \(slot.helper.process.pid)) is hung: its work has waited \((now - since) / 1_000_000) ms; killing it")
                for c in slot.channels { c.deviceStatus = .restarting }
                slot.helper.process.kill(SIGKILL)
                slot.stalledSince = nil
            }
        }
    }

    /// Whether a notification waits unread for the device's process (a virtio device reads its queues' eventfds
    /// on every pass of its loop, so one left readable for `hang_timeout_ms` while nothing progresses is a hang,
    /// also for a guest that only uses the queues).
    private func notificationWaiting(_ slot: Slot) -> Bool {
        guard !slot.notifications.isEmpty, let ready = try? Poll.wait(slot.notifications, timeoutMs: 0) else { return false }
        return ready.contains { $0.contains(.readable) }
    }

    /// At most this many records are taken from one helper per wake-up, so a helper that floods its pipe cannot
    /// keep the supervisor from its other helpers and signals.
    static let recordsPerWakeUp = 64

    /// Reads what a helper has sent, in a bounded loop; returns the ending the first decisive record decides.
    /// Records a role may not send, or that are malformed, end the VM: the helper is broken or compromised.
    private func readControl(_ h: Helper) throws -> Ending? {
        guard !h.controlClosed else { return nil }
        var record = [UInt8](repeating: 0, count: ControlMessage.recordSize)
        for _ in 0..<Self.recordsPerWakeUp {
            let n = Glibc.read(h.control.raw, &record, record.count)
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { return nil }
                return Ending(status: .runFailed, message: "reading the \(h.name) process's control pipe failed: errno \(errno)")
            }
            if n == 0 {
                h.controlClosed = true  // the helper is gone or going: its pidfd will say how
                return nil
            }
            guard n == record.count, let message = ControlMessage(record: record), message.mayBeSent(by: h.role) else {
                return Ending(status: .helperDied, message: "\(h.name) process sent a control record it may not send; stopping the VM")
            }
            switch message {
            case .seccompLogged(let nr):
                Log.report("\(h.name) process made a call its policy denies: syscall \(SeccompFilter.name(of: nr)) (log mode: it failed with ENOSYS)")
            case .seccompKilled(let nr):
                // The process is dying by SIGSYS; its pidfd says when. Never block on a peer's word. A restartable
                // device is replaced like after any other crash.
                let message = "\(h.name) process killed by seccomp: syscall \(SeccompFilter.name(of: nr))"
                guard h.restartable else { return Ending(status: .helperDied, message: message) }
                Log.report(message)
            case .vcpuPaused(let paused):
                pauseAnswered(paused)
            case .guest(.booted):
                let ms = Double(monotonicNanoseconds() - startedAt) / 1e6
                api.guestBootedMs = Int(ms)
                Log.report("guest boot completed (boot-timer port 0x3f0) \(Int(ms)) ms after vmm started")
            case .guestExit, .guest(.reset), .guest(.panic), .vcpuStopped:
                return ending(for: message)
            }
        }
        return nil
    }

    private func ending(for message: ControlMessage) -> Ending {
        switch message {
        case .guestExit(let status) where status > 127:
            let value = UInt8(truncatingIfNeeded: status >> 1)
            return Ending(status: .guestExitOutOfRange(value),
                          message: "guest wrote \(value) to the debug-exit port; values above 63 would give statuses that read as signals, so vmm exits with 18")
        case .guestExit(let status):
            return Ending(status: .guestExit(status), message: "guest requested exit through the debug-exit port: status \(status)", quiet: true)
        case .seccompKilled, .seccompLogged, .guest(.booted), .vcpuPaused:
            return Ending(status: .helperDied, message: nil)  // handled in readControl
        case .guest(.reset):
            return Ending(status: .guestReboot, message: "guest reset the CPU (i8042 reset line): it asked for a reboot; stopping the VM")
        case .guest(.panic):
            return Ending(status: .guestPanic, message: "guest kernel panic (seen on its console); stopping the VM")
        case .vcpuStopped(let stop):
            switch stop {
            case .halted:
                return Ending(status: .poweredOff, message: "guest powered off: every vCPU halted with interrupts off")
            case .tripleFault:
                return Ending(status: .tripleFault, message: "guest triple fault; register dump above")
            case .internalError, .failedEntry, .unhandledExit:
                return Ending(status: .unhandledExit, message: "the vCPU stopped on an exit it cannot handle; register dump above")
            case .systemEvent(let type):
                return Ending(status: type == 1 ? .poweredOff : .unhandledExit, message: "guest requested a system event (type \(type))")
            case .setupFailed:
                return Ending(status: .hostSetupFailed, message: nil)  // the vcpu process said why
            case .runFailed:
                return Ending(status: .runFailed, message: "the vcpu process failed while the guest was running; see above")
            }
        }
    }

    /// Before vmm reports how the run ended, everything the guest did must have taken effect, whatever ended it:
    /// the vcpu process is stopped (nothing new can be posted), then each device has `device_timeout_ms` to
    /// handle what is still on its rings (a console byte, a register write). What a dead or hung device never
    /// handled is counted and said, never dropped in silence.
    private func settleDevices(_ helpers: [Helper]) {
        for h in helpers where h.role == .vcpu && h.ended == nil {
            h.process.kill(SIGKILL)
            h.ended = try? h.process.reap(block: true)
        }
        let devices = helpers.filter { !$0.channels.isEmpty }
        func unhandled(_ h: Helper) -> (all: Int, postedWrites: Int) {
            h.channels.map { $0.unhandledRequests() }.reduce((0, 0)) { ($0.0 + $1.all, $0.1 + $1.postedWrites) }
        }
        let deadline = monotonicNanoseconds() + UInt64(config.vmm.deviceTimeoutMs) * 1_000_000
        while true {
            for h in devices where h.ended == nil { h.ended = try? h.process.reap(block: false) }
            let busy = devices.filter { $0.ended == nil && unhandled($0).all > 0 }
            if busy.isEmpty || monotonicNanoseconds() >= deadline { break }
            _ = try? Poll.wait(busy.map { $0.process.pidfd.raw }, timeoutMs: 1)
        }
        for h in devices {
            let lost = unhandled(h).postedWrites
            guard lost > 0 else { continue }
            let why = h.ended.map { "the process \($0.description)" } ?? "it did not handle them within \(config.vmm.deviceTimeoutMs) ms"
            Log.report("\(lost) posted write\(lost == 1 ? "" : "s") to the \(h.name) process never took effect: \(why)")
        }
    }
}
