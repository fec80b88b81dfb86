import CKVM
import Glibc
import Synchronization
import System

/// Per-vCPU run statistics in a shared memory region of their own: the supervisor creates the memfd and maps it
/// read-only, the vcpu process maps it writable. Each vCPU thread is the only writer of its block (relaxed atomic
/// stores of 64-bit words, no read-modify-write needed), the supervisor reads whenever it reports (the metrics
/// line, the summary at the end of the run). Nothing here is a syscall on the vCPU's path: two reads of the time
/// stamp counter per exit (CycleClock), in nanoseconds by the time they are stored.
///
/// Per vCPU (a block of `stride` bytes): KVM_RUN entries, nanoseconds inside KVM_RUN, when (CLOCK_MONOTONIC) its
/// first KVM_RUN returned (the guest had run its first instructions: start-up ends there), the writes KVM coalesced
/// for it (made without an exit, posted at the next one: see CoalescedWriteRing), then per KVM exit reason
/// (0..<`reasons`) the exits and the nanoseconds the VMM spent on them: from KVM_RUN's return to the next entry
/// (the handler, and the interrupt injection before re-entering). So the two kinds of time add up to the vCPU's
/// wall time, less the time it was paused by the API. An HLT's time includes the wait for the interrupt that
/// ends it, and a vCPU parked by HLT with interrupts off counts the wait until it is woken there too.
///
/// The supervisor treats what it reads as hostile: it only ever reads inside the mapping it sized itself, and
/// the numbers are only added up (wrapping) and printed.
public final class VCPUStatistics: @unchecked Sendable {
    /// KVM exit reasons with a slot; a larger reason is not counted by reason (the vCPU stops on it anyway).
    public static let reasons = 64
    static let headerWords = 4
    static let stride = ((headerWords + 2 * reasons) * 8 + 63) & ~63

    static func byteSize(vcpus: Int) -> Int { (vcpus * stride + 4095) & ~4095 }

    private let mapping: MappedRegion
    public let vcpus: Int

    /// The supervisor's new, zeroed memfd for `vcpus` vCPUs.
    public static func create(vcpus: Int) throws(SystemError) -> FileDescriptor {
        try MemFD.create(name: "vcpu-statistics", size: byteSize(vcpus: vcpus))
    }

    /// Maps the region: writable in the vcpu process, read-only in the supervisor.
    public init(attaching fd: Int32, vcpus: Int, writable: Bool) throws(SystemError) {
        precondition(vcpus >= 1)
        mapping = try MappedRegion(fd: fd, size: Self.byteSize(vcpus: vcpus), prot: writable ? PROT_READ | PROT_WRITE : PROT_READ)
        self.vcpus = vcpus
    }

    private func word(_ vcpu: Int, _ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (mapping.base + vcpu * Self.stride + index * 8).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// vCPU `vcpu`'s writer, for its thread only.
    func writer(vcpu: Int) -> Writer {
        precondition(vcpu >= 0 && vcpu < vcpus)
        return Writer(base: word(vcpu, 0))
    }

    /// One vCPU's block as its thread writes it. Single writer: a load and a store per word, both relaxed.
    struct Writer {
        let base: UnsafeMutablePointer<Atomic<UInt64>>

        private func add(_ index: Int, _ value: UInt64) {
            let w = base + index
            w.pointee.store(w.pointee.load(ordering: .relaxed) &+ value, ordering: .relaxed)
        }

        /// One KVM_RUN that took `nanoseconds` and returned with `reason` at `exited` (CLOCK_MONOTONIC, only read
        /// at the first).
        @inline(__always)
        func ran(nanoseconds: UInt64, exit reason: UInt32, at exited: @autoclosure () -> UInt64) {
            if base.pointee.load(ordering: .relaxed) == 0 { (base + 2).pointee.store(exited(), ordering: .relaxed) }
            add(0, 1)
            add(1, nanoseconds)
            if reason < UInt32(VCPUStatistics.reasons) { add(VCPUStatistics.headerWords + 2 * Int(reason), 1) }
        }

        /// `count` more writes came through KVM's coalesced ring.
        func coalesced(_ count: UInt64) { add(3, count) }

        /// The VMM spent `nanoseconds` on an exit with `reason`.
        @inline(__always)
        func handled(_ reason: UInt32, nanoseconds: UInt64) {
            guard reason < UInt32(VCPUStatistics.reasons) else { return }
            add(VCPUStatistics.headerWords + 2 * Int(reason) + 1, nanoseconds)
        }
    }

    /// What one vCPU (or all of them, summed) did.
    public struct Totals: Equatable, Sendable {
        public var entries: UInt64 = 0
        public var runNanoseconds: UInt64 = 0
        /// When (CLOCK_MONOTONIC ns) the first KVM_RUN returned (the earliest of the vCPUs' in a sum); 0: none yet.
        public var firstExitAt: UInt64 = 0
        /// Writes the guest made without an exit, which KVM queued (CoalescedWriteRing).
        public var coalescedWrites: UInt64 = 0
        /// Per KVM exit reason: exits, nanoseconds in the VMM.
        public var exits = [UInt64](repeating: 0, count: VCPUStatistics.reasons)
        public var handlingNanoseconds = [UInt64](repeating: 0, count: VCPUStatistics.reasons)

        public init() {}

        /// `list` summed (wrapping): a total consistent with the blocks it was made from.
        public static func sum(_ list: [Totals]) -> Totals {
            var t = Totals()
            for other in list { t.add(other) }
            return t
        }

        mutating func add(_ other: Totals) {
            entries &+= other.entries
            runNanoseconds &+= other.runNanoseconds
            coalescedWrites &+= other.coalescedWrites
            if other.firstExitAt != 0 && (firstExitAt == 0 || other.firstExitAt < firstExitAt) { firstExitAt = other.firstExitAt }
            for r in 0..<VCPUStatistics.reasons {
                exits[r] &+= other.exits[r]
                handlingNanoseconds[r] &+= other.handlingNanoseconds[r]
            }
        }

        /// The reasons with exits, by name, in reason order.
        public var byReason: [(name: String, exits: UInt64, nanoseconds: UInt64)] {
            (0..<VCPUStatistics.reasons).filter { exits[$0] != 0 || handlingNanoseconds[$0] != 0 }.map {
                (VCPUStatistics.name(ofReason: $0), exits[$0], handlingNanoseconds[$0])
            }
        }

        /// One line: entries and time in KVM_RUN, then exits and VMM time per reason, then the coalesced writes.
        public var summary: String {
            let reasons = byReason.map { "\($0.name) \($0.exits) (\(Self.milliseconds($0.nanoseconds)) ms)" }
            return "KVM_RUN \(entries) entries, \(Self.milliseconds(runNanoseconds)) ms; exits: "
                + (reasons.isEmpty ? "none" : reasons.joined(separator: ", "))
                + (coalescedWrites > 0 ? "; writes coalesced without an exit: \(coalescedWrites)" : "")
        }

        static func milliseconds(_ ns: UInt64) -> String {
            let tenths = ns / 100_000
            return "\(tenths / 10).\(tenths % 10)"
        }
    }

    /// vCPU `vcpu`'s block as it is now (each word read once, relaxed: a report, not a transaction).
    public func read(vcpu: Int) -> Totals {
        guard vcpu >= 0 && vcpu < vcpus else { return Totals() }
        var t = Totals()
        t.entries = word(vcpu, 0).pointee.load(ordering: .relaxed)
        t.runNanoseconds = word(vcpu, 1).pointee.load(ordering: .relaxed)
        t.firstExitAt = word(vcpu, 2).pointee.load(ordering: .relaxed)
        t.coalescedWrites = word(vcpu, 3).pointee.load(ordering: .relaxed)
        for r in 0..<Self.reasons {
            t.exits[r] = word(vcpu, Self.headerWords + 2 * r).pointee.load(ordering: .relaxed)
            t.handlingNanoseconds[r] = word(vcpu, Self.headerWords + 2 * r + 1).pointee.load(ordering: .relaxed)
        }
        return t
    }

    /// Every vCPU's block, read once each.
    public func readAll() -> [Totals] { (0..<vcpus).map { read(vcpu: $0) } }

    /// Every vCPU summed.
    public func total() -> Totals { Totals.sum(readAll()) }

    /// The names the metrics and the logs use for KVM exit reasons; others are `reason_N`.
    public static func name(ofReason reason: Int) -> String {
        switch Int32(reason) {
        case KVM_EXIT_IO: return "io"
        case KVM_EXIT_MMIO: return "mmio"
        case KVM_EXIT_HLT: return "hlt"
        case KVM_EXIT_INTR: return "kick"
        case KVM_EXIT_IRQ_WINDOW_OPEN: return "irq_window"
        case KVM_EXIT_DEBUG: return "debug"
        case KVM_EXIT_INTERNAL_ERROR: return "emulation"
        case KVM_EXIT_X86_RDMSR: return "rdmsr"
        case KVM_EXIT_X86_WRMSR: return "wrmsr"
        case KVM_EXIT_SHUTDOWN: return "shutdown"
        case KVM_EXIT_FAIL_ENTRY: return "fail_entry"
        case KVM_EXIT_SYSTEM_EVENT: return "system_event"
        default: return "reason_\(reason)"
        }
    }
}
