/// Exit loops measured in turns: every runner's guest runs at once, each paused (SIGSTOP) but for its turn of a few
/// tens of milliseconds, the runners taking turns in a fresh order every cycle. This host changes speed by up to
/// 1.5x every few hundred milliseconds (a 32-bit port loop's 20 ms windows read 31k, 41k and 47k cycles an exit
/// within one second), so runs taken in turn, seconds long, each meet their own mixture of speeds, and a ratio between
/// two of them is off by as much as the goal it is checked against; two turns of the same cycle, 50 ms apart, mostly
/// meet the same speed.
///
/// Each guest times windows of its accesses with its own TSC (the same clock as the host's, offset) and says when its
/// timed accesses begin; a window belongs to the turn it ran in entirely. A window that spans a pause (or the
/// runner's hiccup) cannot fit in one turn and is left out.
public enum Interleaving {
    /// One turn a runner had: the cycle it belongs to, and when it was resumed and paused again (host TSC).
    public struct Turn: Equatable, Sendable {
        public var cycle: Int
        public var start: UInt64
        public var end: UInt64
        public init(cycle: Int, start: UInt64, end: UInt64) {
            self.cycle = cycle
            self.start = start
            self.end = end
        }
    }

    /// A runner's guest timing placed in host time: its windows (`timing.windows`, `timing.window` accesses each)
    /// began at guest TSC `guestStart`, which the host saw at `hostStart` (when the guest's "timing" line arrived;
    /// the difference between the two clocks is their offset plus the line's way out, which `slack` absorbs).
    /// Per cycle, the cycles per access of the median window that ran inside that cycle's turn, for turns with at
    /// least `minimumWindows` of them.
    public static func turnFigures(timing: GuestTiming, guestStart: UInt64, hostStart: UInt64, turns: [Turn],
                                   slack: UInt64, minimumWindows: Int = 3) -> [Int: Double] {
        guard timing.window > 0, !turns.isEmpty else { return [:] }
        let sorted = turns.sorted { $0.start < $1.start }
        var byTurn = [[Double]](repeating: [], count: sorted.count)
        var begin = hostStart
        var t = 0
        for cycles in timing.windows {
            let end = begin &+ cycles
            defer { begin = end }
            // Turns are in time order and so are windows: the first turn that has not ended before this window did.
            while t < sorted.count && sorted[t].end &+ slack < end { t += 1 }
            guard t < sorted.count else { break }
            if begin &+ slack >= sorted[t].start { byTurn[t].append(Double(cycles) / Double(timing.window)) }
        }
        var out: [Int: Double] = [:]
        for (turn, values) in zip(sorted, byTurn) where values.count >= minimumWindows {
            out[turn.cycle] = Samples(values).median
        }
        return out
    }

    /// The figures of the cycles in which every runner has one, in cycle order, per runner: the pairs a ratio
    /// between two runners is taken from.
    public static func commonCycles(_ figures: [String: [Int: Double]]) -> [String: [Double]] {
        guard let first = figures.values.first else { return [:] }
        let cycles = first.keys.filter { cycle in figures.values.allSatisfy { $0[cycle] != nil } }.sorted()
        return figures.mapValues { f in cycles.map { f[$0]! } }
    }
}
