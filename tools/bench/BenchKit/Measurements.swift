import Foundation

/// What a timing guest printed: "cycles=C iters=N".
public struct GuestTiming: Equatable, Sendable {
    public let cycles: UInt64
    public let iterations: UInt64
    /// The guest's `window=` timings, when it was asked for them: iterations per window, and each window's cycles.
    public var window: UInt64 = 0
    public var windows: [UInt64] = []
    /// The guest TSC at which its timed accesses began ("start=T", printed with windows).
    public var start: UInt64?

    public init(cycles: UInt64, iterations: UInt64, window: UInt64 = 0, windows: [UInt64] = []) {
        self.cycles = cycles
        self.iterations = iterations
        self.window = window
        self.windows = windows
    }

    /// Finds the timing line (and the window line, if any) in a guest's console output; nil when the timing line
    /// is absent or malformed. A malformed window line counts as absent.
    public static func parse(_ output: String) -> GuestTiming? {
        var timing: GuestTiming?
        for line in output.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ")
            if timing != nil, fields.count == 1, fields[0].hasPrefix("start="), let t = UInt64(fields[0].dropFirst(6)) {
                timing?.start = t
            }
            guard fields.count == 2 else { continue }
            if timing == nil, fields[0].hasPrefix("cycles="), fields[1].hasPrefix("iters="),
               let c = UInt64(fields[0].dropFirst(7)), let n = UInt64(fields[1].dropFirst(6)), n > 0 {
                timing = GuestTiming(cycles: c, iterations: n)
            } else if timing != nil, fields[0].hasPrefix("window="), fields[1].hasPrefix("cycles="),
                      let w = UInt64(fields[0].dropFirst(7)), w > 0 {
                let parts = fields[1].dropFirst(7).split(separator: ",")
                let values = parts.compactMap { UInt64($0) }
                guard !values.isEmpty, values.count == parts.count else { continue }
                timing?.window = w
                timing?.windows = values
            }
        }
        return timing
    }

    /// Nanoseconds per iteration at a TSC of `tscKHz`.
    public func nanosecondsPerIteration(tscKHz: Int) -> Double {
        Double(cycles) * 1_000_000 / (Double(iterations) * Double(tscKHz))
    }

    /// The same from the median window: what an iteration costs when nothing interrupts it (a preemption or a
    /// host hiccup lengthens some windows, which the median leaves out; a cost every iteration pays moves it).
    /// nil without windows.
    public func steadyNanosecondsPerIteration(tscKHz: Int) -> Double? {
        guard window > 0, let median = Samples(windows.map { Double($0) }).median else { return nil }
        return median * 1_000_000 / (Double(window) * Double(tscKHz))
    }
}

/// What the interrupt-latency guest printed: "irqlat: samples=N delay=NS min=C total=C", and for its warm-up
/// samples (taken first) the same after "irqlat-warmup: ".
public struct InterruptLatency: Equatable, Sendable {
    public let samples: UInt64, delayNs: UInt64, minCycles: UInt64, totalCycles: UInt64

    /// `warmup`: the warm-up samples' line instead of the measured ones'.
    public static func parse(_ output: String, warmup: Bool = false) -> InterruptLatency? {
        let prefix = warmup ? "irqlat-warmup: " : "irqlat: "
        for line in output.split(whereSeparator: \.isNewline) where line.hasPrefix(prefix) {
            var f: [String: UInt64] = [:]
            for field in line.dropFirst(prefix.count).split(separator: " ") {
                let kv = field.split(separator: "=")
                if kv.count == 2, let v = UInt64(kv[1]) { f[String(kv[0])] = v }
            }
            guard let n = f["samples"], n > 0, let d = f["delay"], let mn = f["min"], let t = f["total"] else { continue }
            return InterruptLatency(samples: n, delayNs: d, minCycles: mn, totalCycles: t)
        }
        return nil
    }

    /// Microseconds from the timer's expiry to the guest handler's first instruction: mean and best.
    public func latencyMicroseconds(tscKHz: Int) -> (mean: Double, min: Double) {
        let perUs = Double(tscKHz) / 1000
        let delayUs = Double(delayNs) / 1000
        return (Double(totalCycles) / Double(samples) / perUs - delayUs, Double(minCycles) / perUs - delayUs)
    }
}

/// What the virtio-blk benchmark guest printed (Tests/Guests/virtio.c, `test=bench`):
/// "virtio-bench: mode=M depth=D count=N cycles=C errors=E".
public struct BlockBenchResult: Equatable, Sendable {
    public let mode: String
    public let depth: UInt64, count: UInt64, cycles: UInt64, errors: UInt64

    public init(mode: String, depth: UInt64, count: UInt64, cycles: UInt64, errors: UInt64) {
        self.mode = mode
        self.depth = depth
        self.count = count
        self.cycles = cycles
        self.errors = errors
    }

    public static func parse(_ output: String) -> BlockBenchResult? {
        for line in output.split(whereSeparator: \.isNewline) where line.hasPrefix("virtio-bench: ") {
            var f: [String: Substring] = [:]
            for field in line.dropFirst(14).split(separator: " ") {
                let kv = field.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { f[String(kv[0])] = kv[1] }
            }
            guard let mode = f["mode"], let d = f["depth"].flatMap({ UInt64($0) }), let n = f["count"].flatMap({ UInt64($0) }),
                  let c = f["cycles"].flatMap({ UInt64($0) }), let e = f["errors"].flatMap({ UInt64($0) }), n > 0, c > 0 else { continue }
            return BlockBenchResult(mode: String(mode), depth: d, count: n, cycles: c, errors: e)
        }
        return nil
    }

    /// Completed requests per second at a TSC of `tscKHz`.
    public func requestsPerSecond(tscKHz: Int) -> Double {
        Double(count) * Double(tscKHz) * 1000 / Double(cycles)
    }
}

/// The virtio-blk benchmark's access pattern, exactly as the guest draws it (Tests/Guests/virtio.c `bench_sector`),
/// so the host's pread loop reads the same offsets in the same order.
public struct BlockPattern: Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        /// 4 KiB at 4 KiB-aligned offsets from xorshift64.
        case randread
        /// 128 KiB after 128 KiB from the start, back to 0 before running past the end.
        case seqread
    }

    public let mode: Mode
    /// The disk's size in 512-byte sectors.
    public let capacitySectors: UInt64
    private var rng: UInt64 = 0x9e37_79b9_7f4a_7c15
    private var next: UInt64 = 0

    public init(mode: Mode, capacitySectors: UInt64) {
        self.mode = mode
        self.capacitySectors = capacitySectors
    }

    public var requestBytes: Int { mode == .randread ? 4096 : 128 << 10 }

    /// The next request's first sector.
    public mutating func nextSector() -> UInt64 {
        switch mode {
        case .randread:
            var x = rng
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            rng = x
            let blocks = UInt64(UInt32(truncatingIfNeeded: capacitySectors >> 3))
            return (((x >> 32) &* blocks) >> 32) << 3
        case .seqread:
            let length = UInt64(requestBytes >> 9)
            var sector = next
            if sector + length > capacitySectors { sector = 0 }
            next = sector + length
            return sector
        }
    }
}

/// Repeated samples of one figure.
public struct Samples: Equatable, Sendable, Codable {
    /// One per repetition.
    public var values: [Double]
    /// Where a repetition runs in rounds (the exit loops): every round's figure, in the order they ran, and what
    /// ran beside it. Two figures with the same `roundGroup` ran their rounds side by side (each round runs every
    /// runner once, back to back), so their rounds pair up.
    public var rounds: [Double] = []
    public var roundGroup: String?
    public init(_ values: [Double] = [], rounds: [Double] = [], roundGroup: String? = nil) {
        self.values = values
        self.rounds = rounds
        self.roundGroup = roundGroup
    }

    public var min: Double? { values.min() }
    public var max: Double? { values.max() }
    public var median: Double? {
        guard !values.isEmpty else { return nil }
        let s = values.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}

/// One row of the report: a figure, its unit, its samples, and optionally a baseline and a goal on the ratio.
public struct Row: Sendable, Codable, Equatable {
    public var name: String
    public var unit: String
    public var samples: Samples
    /// Name of the row this one is compared with (ratio of medians, this / baseline).
    public var baseline: String?
    /// Highest acceptable value (of the ratio when there is a baseline, else of the median).
    public var goal: Double?
    public var note: String?

    public init(name: String, unit: String, samples: Samples, baseline: String? = nil, goal: Double? = nil, note: String? = nil) {
        self.name = name
        self.unit = unit
        self.samples = samples
        self.baseline = baseline
        self.goal = goal
        self.note = note
    }
}

/// The whole run: rows, ratios computed within it, and where it ran.
public struct Report: Sendable, Codable {
    public var machine: [String: String]
    public var rows: [Row]

    public init(machine: [String: String], rows: [Row]) {
        self.machine = machine
        self.rows = rows
    }

    /// This row against its baseline, from this run: the median of its per-round ratios where the two ran their
    /// rounds side by side (`roundRatios`), else the ratio of the two medians.
    public func ratio(_ row: Row) -> Double? {
        if let paired = roundRatios(row) { return Samples(paired).median }
        return ratioOfMedians(row)
    }

    /// Ratio of this row's median to its baseline's median.
    public func ratioOfMedians(_ row: Row) -> Double? {
        guard let b = row.baseline, let base = rows.first(where: { $0.name == b })?.samples.median, base > 0,
              let m = row.samples.median else { return nil }
        return m / base
    }

    /// This row's figure over its baseline's from the same round, one ratio per round: the two ran back to back,
    /// so each ratio meets one stretch of the host's drift (which moves a figure by several percent over tens of
    /// seconds here) where the medians of the two rows may come from different repetitions. nil unless both rows
    /// ran the same rounds side by side (the same round group and count, at least two).
    public func roundRatios(_ row: Row) -> [Double]? {
        guard let b = row.baseline, let base = rows.first(where: { $0.name == b })?.samples,
              let group = row.samples.roundGroup, base.roundGroup == group,
              base.rounds.count >= 2, base.rounds.count == row.samples.rounds.count, base.rounds.allSatisfy({ $0 > 0 }) else { return nil }
        return zip(row.samples.rounds, base.rounds).map { $0 / $1 }
    }

    /// This row's sample over its baseline's from the same repetition, one ratio per repetition (the runners of a
    /// repetition run back to back, so these ratios leave out the host's drift between repetitions): nil unless
    /// both rows have a sample from every repetition (a failed run would pair samples of different repetitions).
    public func pairedRatios(_ row: Row) -> [Double]? {
        guard let b = row.baseline, let base = rows.first(where: { $0.name == b })?.samples.values,
              base.count >= 2, base.count == row.samples.values.count, base.allSatisfy({ $0 > 0 }) else { return nil }
        return zip(row.samples.values, base).map { $0 / $1 }
    }

    /// True, false, or nil when there is no goal or no figure.
    public func meetsGoal(_ row: Row) -> Bool? {
        guard let goal = row.goal else { return nil }
        if row.baseline != nil { return ratio(row).map { $0 <= goal } }
        return row.samples.median.map { $0 <= goal }
    }

    public func table() -> String {
        func f(_ v: Double?) -> String { v.map { String(format: $0 >= 100 ? "%.0f" : "%.2f", $0) } ?? "-" }
        func line(_ c: [String]) -> String {
            pad(c[0], 52) + pad(c[1], 10, right: true) + " " + pad(c[2], 10, right: true) + " " + pad(c[3], 10, right: true)
                + "  " + pad(c[4], 8) + pad(c[5], 8, right: true) + "  " + c[6]
        }
        // min and max show the spread of the samples; ratios and goals use the medians (of the per-round ratios
        // where there are rounds). A goal's row also shows the range of its per-round (or per-repetition) ratios,
        // which says how close to the goal a verdict was.
        var lines = [line(["figure", "min", "median", "max", "unit", "ratio", "goal"])]
        for r in rows {
            let ratioText = ratio(r).map { String(format: $0 < 0.1 ? "%.3fx" : "%.2fx", $0) } ?? ""
            var goalText = ""
            if let g = r.goal {
                let what = r.baseline != nil ? "<= \(String(format: "%.2f", g))x \(r.baseline!)" : "<= \(f(g)) \(r.unit)"
                goalText = "\(what): " + (meetsGoal(r).map { $0 ? "met" : "MISSED" } ?? "no data")
                if let rounds = roundRatios(r), let lo = rounds.min(), let hi = rounds.max(), let m = ratioOfMedians(r) {
                    goalText += String(format: " (%d rounds %.3f-%.3fx; ratio of medians %.3fx)", rounds.count, lo, hi, m)
                } else if let paired = pairedRatios(r), let lo = paired.min(), let hi = paired.max() {
                    goalText += String(format: " (each repetition %.3f-%.3fx)", lo, hi)
                }
            }
            if let n = r.note { goalText += goalText.isEmpty ? n : "  (\(n))" }
            lines.append(line([r.name, f(r.samples.min), f(r.samples.median), f(r.samples.max), r.unit, ratioText, goalText]))
        }
        return lines.joined(separator: "\n")
    }

    private func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return right ? fill + s : s + fill
    }

    public func json() throws -> Data {
        struct Out: Codable { var machine: [String: String]; var rows: [Entry] }
        struct Entry: Codable {
            var name: String, unit: String, samples: [Double], min: Double?, median: Double?, max: Double?
            var baseline: String?, ratio: Double?, ratioOfMedians: Double?, pairedRatios: [Double]?, rounds: [Double]?
            var roundRatios: [Double]?, goal: Double?, goalMet: Bool?, note: String?
        }
        let out = Out(machine: machine, rows: rows.map {
            Entry(name: $0.name, unit: $0.unit, samples: $0.samples.values, min: $0.samples.min, median: $0.samples.median, max: $0.samples.max,
                  baseline: $0.baseline, ratio: ratio($0), ratioOfMedians: ratioOfMedians($0), pairedRatios: pairedRatios($0),
                  rounds: $0.samples.rounds.isEmpty ? nil : $0.samples.rounds, roundRatios: roundRatios($0), goal: $0.goal,
                  goalMet: meetsGoal($0), note: $0.note)
        })
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(out)
    }
}

/// Proportional set size from /proc/PID/smaps, in KiB, leaving out the mappings `exclude` picks (guest RAM).
public enum Memory {
    public struct Mapping: Equatable { public var name: String; public var sizeKiB: Int; public var pssKiB: Int }

    public static func parseSmaps(_ text: String) -> [Mapping] {
        var out: [Mapping] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let first = fields.first else { continue }
            if first.contains("-"), first.allSatisfy({ $0.isHexDigit || $0 == "-" }) {
                out.append(Mapping(name: fields.count > 5 ? fields[5...].joined(separator: " ") : "", sizeKiB: 0, pssKiB: 0))
            } else if first == "Size:", fields.count > 1, let v = Int(fields[1]), !out.isEmpty {
                out[out.count - 1].sizeKiB = v
            } else if first == "Pss:", fields.count > 1, let v = Int(fields[1]), !out.isEmpty {
                out[out.count - 1].pssKiB = v
            }
        }
        return out
    }

    /// PSS of all mappings except guest RAM: the mapping named `ramName`, or else any mapping at least as large
    /// as guest RAM (QEMU's anonymous RAM block).
    public static func pssExcludingGuestRAM(_ mappings: [Mapping], ramKiB: Int, ramName: String) -> Int {
        mappings.filter { !($0.name.contains(ramName) || $0.sizeKiB >= ramKiB) }.reduce(0) { $0 + $1.pssKiB }
    }
}

/// The supervisor's end-of-run statistics line (`vmm run --log-level info`):
/// "vcpu statistics (all vCPUs): KVM_RUN N entries, X ms; exits: io N (X ms), hlt N (X ms), ...".
public struct RunStatistics: Equatable, Sendable {
    public var entries: UInt64
    public var runMilliseconds: Double
    /// Per exit reason: exits and the VMM's time handling them (from KVM_RUN's return to the next entry).
    public var byReason: [(name: String, exits: UInt64, milliseconds: Double)]

    public static func == (a: Self, b: Self) -> Bool {
        a.entries == b.entries && a.runMilliseconds == b.runMilliseconds
            && a.byReason.map(\.name) == b.byReason.map(\.name) && a.byReason.map(\.exits) == b.byReason.map(\.exits)
            && a.byReason.map(\.milliseconds) == b.byReason.map(\.milliseconds)
    }

    public static func parse(_ log: String) -> RunStatistics? {
        guard let line = log.split(whereSeparator: \.isNewline).last(where: { $0.contains("vcpu statistics (all vCPUs): KVM_RUN ") }),
              let start = line.range(of: "KVM_RUN ") else { return nil }
        let rest = line[start.upperBound...]
        let halves = rest.split(separator: ";", maxSplits: 1)
        let head = halves[0].split(separator: " ")  // N entries, X ms
        guard head.count >= 4, let entries = UInt64(head[0]), let run = Double(head[2]) else { return nil }
        var reasons: [(String, UInt64, Double)] = []
        if halves.count == 2, let colon = halves[1].range(of: "exits: ") {
            for part in halves[1][colon.upperBound...].split(separator: ",") {
                let f = part.split(separator: " ")  // name N (X ms)
                guard f.count >= 4, let n = UInt64(f[1]), let ms = Double(f[2].dropFirst()) else { continue }
                reasons.append((String(f[0]), n, ms))
            }
        }
        return RunStatistics(entries: entries, runMilliseconds: run, byReason: reasons)
    }
}

/// When the guest's first KVM exit came, from the supervisor's line at `--log-level info`:
/// "the guest's first exit came X ms after the supervisor started (first_exit_monotonic_ns=N)". N is CLOCK_MONOTONIC,
/// so a runner that noted the clock when it spawned vmm gets spawn to the guest's first instruction exactly.
public enum FirstExit {
    public static func monotonicNanoseconds(in log: String) -> UInt64? {
        let key = "first_exit_monotonic_ns="
        guard let line = log.split(whereSeparator: \.isNewline).last(where: { $0.contains(key) }),
              let start = line.range(of: key) else { return nil }
        return UInt64(line[start.upperBound...].prefix { $0.isNumber })
    }
}
