import Foundation

/// Where the exits of one KVM_RUN loop go, read from the kernel's own tracepoints: `raw_syscalls:sys_enter` and
/// `sys_exit` of the KVM_RUN ioctl and `kvm:kvm_fpu` (KVM loads the guest's FPU state just before it enters the guest
/// and puts it back once it leaves the ioctl's run loop), timed by the TSC (trace_clock x86-tsc). Every figure is a
/// median over the traced exits, in TSC cycles, so a preemption or a host hiccup moves none of them, and the kernel's
/// part of an exit can be told apart from the VMM's own.
public struct ExitPhases: Equatable, Sendable {
    public enum Phase: String, CaseIterable, Sendable {
        /// The ioctl's entry to the guest FPU's load: KVM_RUN's set-up (vcpu_load, pending requests).
        case entering = "entering KVM_RUN"
        /// FPU load to unload: the guest runs, exits, and KVM handles the exit (instruction emulation, the I/O's
        /// decoding) until it must return to the VMM.
        case guest = "guest and KVM's exit handling"
        /// The unload to the ioctl's return.
        case leaving = "leaving KVM_RUN"
        /// The ioctl's return to the next KVM_RUN's entry: the VMM's own handling of the exit, plus the kernel's
        /// return to user mode and its syscall entry (a seccomp filter runs there).
        case between = "between KVM_RUNs"
        /// One ioctl's entry to the next's.
        case whole = "whole exit"
    }

    /// Median cycles per phase.
    public var medianCycles: [Phase: Double]
    /// Mean cycles of a whole exit: its distance above the median is what the slow exits add (the benchmark's
    /// exit rows are means).
    public var meanCycles: Double = 0
    /// Complete exits traced.
    public var exits: Int
    /// The vCPU thread's traced events per CPU it ran on.
    public var cpus: [Int: Int] = [:]

    /// The KVM_RUN ioctl's number in `raw_syscalls` (x86-64 `ioctl`).
    static let ioctl = "NR 16 "

    /// Reads a tracefs `trace` text; the thread with the most `kvm_fpu` events is the vCPU's. nil without a
    /// complete exit.
    public static func parse(_ trace: String) -> ExitPhases? {
        enum Kind { case enter, load, unload, exit }
        var events: [(tid: Int, cpu: Int, kind: Kind, cycles: UInt64)] = []
        var fpuEvents: [Int: Int] = [:]
        for line in trace.split(separator: "\n") where !line.hasPrefix("#") {
            guard let event = TraceLine(line) else { continue }
            let kind: Kind
            switch event.name {
            case "sys_enter" where event.arguments.hasPrefix(ioctl): kind = .enter
            case "sys_exit" where event.arguments.hasPrefix(ioctl): kind = .exit
            case "kvm_fpu" where event.arguments.hasPrefix("load"): kind = .load
            case "kvm_fpu" where event.arguments.hasPrefix("unload"): kind = .unload
            default: continue
            }
            if kind == .load || kind == .unload { fpuEvents[event.tid, default: 0] += 1 }
            events.append((event.tid, event.cpu, kind, event.cycles))
        }
        guard let vcpu = fpuEvents.max(by: { $0.value < $1.value })?.key else { return nil }
        var phases: [Phase: [Double]] = [:]
        // One exit: enter, load, unload, exit, then the next enter. Anything out of that order (an ioctl that
        // failed, a lost event) starts over at the next enter.
        var enter: UInt64?, load: UInt64?, unload: UInt64?, exit: UInt64?
        var cpus: [Int: Int] = [:]
        for e in events where e.tid == vcpu {
            cpus[e.cpu, default: 0] += 1
            switch e.kind {
            case .enter:
                if let enter, let load, let unload, let exit, enter <= load, load <= unload, unload <= exit, exit <= e.cycles {
                    phases[.entering, default: []].append(Double(load - enter))
                    phases[.guest, default: []].append(Double(unload - load))
                    phases[.leaving, default: []].append(Double(exit - unload))
                    phases[.between, default: []].append(Double(e.cycles - exit))
                    phases[.whole, default: []].append(Double(e.cycles - enter))
                }
                (enter, load, unload, exit) = (e.cycles, nil, nil, nil)
            case .load: if enter != nil && load == nil { load = e.cycles }
            case .unload: if load != nil && unload == nil { unload = e.cycles }
            case .exit: if unload != nil && exit == nil { exit = e.cycles }
            }
        }
        guard let whole = phases[.whole], !whole.isEmpty else { return nil }
        return ExitPhases(medianCycles: phases.compactMapValues { Samples($0).median },
                          meanCycles: whole.reduce(0, +) / Double(whole.count), exits: whole.count, cpus: cpus)
    }
}

extension ExitPhases {
    /// A traced run's median entering phase and whole exit, in one unit.
    public struct Run: Equatable, Sendable {
        public let entering: Double
        public let whole: Double
        public init(entering: Double, whole: Double) {
            self.entering = entering
            self.whole = whole
        }
    }

    /// Each runner's whole exits from the runs that met the host in its fast state: those whose entering phase is
    /// within `tolerance` of the fastest entering phase of any runner of the loop. Entering KVM_RUN is the same
    /// kernel code for every runner (the bare loop and vmm take the same time there to within 1-2%), and this host's
    /// slow state makes every phase 1.2-1.4x at once, so that phase tells which runs it met.
    public static func fastState(_ runs: [String: [Run]], tolerance: Double = 0.1) -> [String: [Double]] {
        guard let fastest = runs.values.joined().map(\.entering).min(), fastest > 0 else { return [:] }
        return runs.mapValues { list in list.filter { $0.entering <= fastest * (1 + tolerance) }.map(\.whole) }
    }
}

/// One line of a tracefs `trace`: "TASK-TID [CPU] FLAGS TIMESTAMP: EVENT: ARGUMENTS" (a task's name may hold spaces
/// and dashes; its thread id follows the last dash before the CPU).
struct TraceLine {
    let tid: Int
    let cpu: Int
    let cycles: UInt64
    let name: Substring
    let arguments: Substring

    init?(_ line: Substring) {
        guard let close = line.range(of: "] "), let open = line[..<close.lowerBound].lastIndex(of: "["),
              let dash = line[..<open].lastIndex(of: "-"),
              let tid = Int(line[line.index(after: dash)..<open].trimmingCharacters(in: .whitespaces)),
              let cpu = Int(line[line.index(after: open)..<close.lowerBound]) else { return nil }
        let rest = line[close.upperBound...].split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        // FLAGS, "TIMESTAMP:", "EVENT: ARGUMENTS"
        guard rest.count == 3, rest[1].hasSuffix(":"), let cycles = UInt64(rest[1].dropLast()),
              let colon = rest[2].firstIndex(of: ":") else { return nil }
        self.tid = tid
        self.cpu = cpu
        self.cycles = cycles
        name = rest[2][..<colon]
        arguments = rest[2][rest[2].index(after: colon)...].drop { $0 == " " }
    }
}
