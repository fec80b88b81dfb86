import Config
import FoundationEssentials
import Glibc
import System

/// Injects the configured faults into device processes (`vmm.fault_injection`, `vmm run --inject-fault`) and
/// measures what each one cost: how long until the supervisor noticed, until a new process ran, and until the
/// device handled the guest's next request. Reported at the end, readable and as JSON.
final class FaultInjector {
    /// One injected fault, with times in CLOCK_MONOTONIC nanoseconds.
    final class Record {
        let device: String
        let action: VMConfig.Fault.Action
        let injectedAt: UInt64
        var detectedAt: UInt64?
        var restartedAt: UInt64?
        var resumedAt: UInt64?
        /// Requests the guest had waiting on the device when the new process started.
        var waitingAtRestart = 0
        /// Nothing came of it within `missedAfterNanoseconds` (the process had not set up its crash handler).
        var missed = false
        init(device: String, action: VMConfig.Fault.Action, injectedAt: UInt64) {
            self.device = device
            self.action = action
            self.injectedAt = injectedAt
        }
    }

    private final class Plan {
        let fault: VMConfig.Fault
        let slot: Supervisor.Slot
        var remaining: Int
        var nextAt: UInt64?
        var requestsBaseline: UInt64 = 0
        init(_ fault: VMConfig.Fault, slot: Supervisor.Slot, startedAt: UInt64) {
            self.fault = fault
            self.slot = slot
            remaining = fault.count
            nextAt = fault.afterRequests == nil ? startedAt + UInt64(fault.afterMs) * 1_000_000 : nil
        }
    }

    private let plans: [Plan]
    private(set) var records: [Record] = []

    init(_ faults: [VMConfig.Fault], slots: [Supervisor.Slot], startedAt: UInt64) {
        plans = faults.compactMap { fault in
            slots.first { $0.name == fault.device }.map { Plan(fault, slot: $0, startedAt: startedAt) }
        }
    }

    /// When the next fault is due (request-count faults are looked at on every watch tick).
    func nextDue(now: UInt64) -> UInt64? {
        var due: UInt64?
        for plan in plans where plan.remaining > 0 {
            let at = plan.nextAt ?? now + Supervisor.watchTickNanoseconds
            due = min(due ?? .max, at)
        }
        return due
    }

    /// A fault that has not been noticed after this long is counted as missed, so the next ones still come.
    static let missedAfterNanoseconds: UInt64 = 2_000_000_000

    func injectDue(now: UInt64) {
        for r in records where !r.missed && r.detectedAt == nil && now &- r.injectedAt > Self.missedAfterNanoseconds { r.missed = true }
        for plan in plans where plan.remaining > 0 {
            let slot = plan.slot
            // Only into a process that is serving (it handled a request) and not still recovering from the last fault.
            guard !slot.broken, slot.helper.ended == nil, slot.restartDue == nil, !recovering(slot),
                  slot.channels.contains(where: { $0.handledRequests() > 0 }) else { continue }
            if let requests = plan.fault.afterRequests {
                let handled = slot.channels.reduce(0) { $0 &+ $1.handledRequests() }
                if plan.requestsBaseline == 0 { plan.requestsBaseline = max(1, handled) }
                guard handled &- plan.requestsBaseline >= UInt64(requests) else { continue }
                plan.requestsBaseline = handled
            } else {
                guard let at = plan.nextAt, at <= now else { continue }
                plan.nextAt = plan.fault.everyMs.map { now + UInt64($0) * 1_000_000 }
                if plan.nextAt == nil && plan.remaining > 1 { plan.nextAt = now }  // count without a period: back to back
            }
            plan.remaining -= 1
            let signal: Int32
            switch plan.fault.action {
            case .kill: signal = SIGKILL
            case .stop: signal = SIGSTOP
            case .crash: signal = SIGUSR1  // its handler crashes the process for real (see vmm_install_crash_handler)
            }
            records.append(Record(device: slot.name, action: plan.fault.action, injectedAt: monotonicNanoseconds()))
            slot.helper.process.kill(signal)
            Log.debug("fault injected: \(plan.fault.action.rawValue) \(slot.name) (pid \(slot.helper.process.pid))")
        }
    }

    private func open(_ slot: Supervisor.Slot) -> Record? {
        records.last { $0.device == slot.name && $0.resumedAt == nil && !$0.missed }
    }

    private func recovering(_ slot: Supervisor.Slot) -> Bool { open(slot) != nil }

    /// Some device is still recovering from a fault (its recovery time is being measured).
    var recovering: Bool { records.contains { $0.resumedAt == nil && !$0.missed } }

    func detected(_ slot: Supervisor.Slot, at time: UInt64) {
        if let r = open(slot), r.detectedAt == nil { r.detectedAt = time }
    }

    func restarted(_ slot: Supervisor.Slot, at time: UInt64) {
        guard let r = open(slot) else { return }
        r.restartedAt = time
        r.waitingAtRestart = slot.channels.reduce(0) { $0 + $1.unhandledRequests().all }
    }

    /// The device handled a request: the first one after a restart ends that fault's recovery.
    func progressed(_ slot: Supervisor.Slot, at time: UInt64) {
        if let r = open(slot), r.restartedAt != nil { r.resumedAt = time }
    }

    // MARK: the report

    struct Entry: Codable {
        var device: String
        var action: String
        var injectedMs: Double
        var detectionMs: Double?
        var restartMs: Double?
        var recoveryMs: Double?
        var waitingRequestsAtRestart: Int
    }

    struct Summary: Codable {
        var faults: Int
        var restarted: Int
        var missed: Int
        var detectionMedianMs: Double?, detectionP99Ms: Double?
        var recoveryMedianMs: Double?, recoveryP99Ms: Double?
    }

    struct Report: Codable {
        var summary: Summary
        var faults: [Entry]
    }

    func makeReport() -> Report {
        let first = records.first?.injectedAt ?? 0
        func ms(_ from: UInt64, _ to: UInt64?) -> Double? { to.map { Double($0 &- from) / 1e6 } }
        let entries = records.map { r in
            Entry(device: r.device, action: r.action.rawValue, injectedMs: Double(r.injectedAt - first) / 1e6,
                  detectionMs: ms(r.injectedAt, r.detectedAt), restartMs: r.detectedAt.flatMap { ms($0, r.restartedAt) },
                  recoveryMs: ms(r.injectedAt, r.resumedAt), waitingRequestsAtRestart: r.waitingAtRestart)
        }
        func percentile(_ values: [Double], _ p: Double) -> Double? {
            guard !values.isEmpty else { return nil }
            let sorted = values.sorted()
            return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
        }
        let detection = entries.compactMap(\.detectionMs), recovery = entries.compactMap(\.recoveryMs)
        return Report(summary: Summary(faults: entries.count, restarted: entries.filter { $0.restartMs != nil }.count,
                                       missed: records.filter(\.missed).count,
                                       detectionMedianMs: percentile(detection, 0.5), detectionP99Ms: percentile(detection, 0.99),
                                       recoveryMedianMs: percentile(recovery, 0.5), recoveryP99Ms: percentile(recovery, 0.99)),
                      faults: entries)
    }

    /// Says what the faults cost; writes the JSON report to `path` too when given.
    func report(to path: String?) {
        guard !records.isEmpty else { return }
        let r = makeReport()
        func f(_ v: Double?) -> String { v.map { "\(($0 * 10).rounded() / 10)" } ?? "-" }
        Log.report("fault injection: \(r.summary.faults) faults, \(r.summary.restarted) restarts; detection median \(f(r.summary.detectionMedianMs)) ms, p99 \(f(r.summary.detectionP99Ms)) ms; recovery (fault to the device's next handled request) median \(f(r.summary.recoveryMedianMs)) ms, p99 \(f(r.summary.recoveryP99Ms)) ms")
        guard let path else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        do {
            let data = try encoder.encode(r)
            let file = try FileDescriptor.openOutput(path, .truncate)
            try FileDescriptor.writeAll(file.raw, Array(data) + [UInt8(ascii: "\n")])
        } catch {
            Log.report("fault report: cannot write \(path): \(error)")
        }
    }
}
