import XCTest
@testable import BenchKit

final class InterleavingTests: XCTestCase {
    func testParsesTheStartLine() {
        let t = GuestTiming.parse("portloop: timing\ncycles=600 iters=6\nwindow=2 cycles=200,200,200\nstart=123456\n")
        XCTAssertEqual(t?.start, 123_456)
        XCTAssertNil(GuestTiming.parse("cycles=600 iters=6\nwindow=2 cycles=200,200,200\n")?.start)
        XCTAssertNil(GuestTiming.parse("start=5\ncycles=600 iters=6\n")?.start, "a start line before the timing is not the guest's")
    }

    /// A guest whose windows of 10 accesses take 100 cycles in its first turn and 200 in its second, paused in
    /// between; its clock is 1,000,000 ahead of the host's.
    private func pausedGuest() -> (GuestTiming, [Interleaving.Turn]) {
        // Turn 0: host 1000-1500 (windows 1000-1100, ..., 1400-1500); paused 1500-3000, so the window that began at
        // 1500 ends at 3100; turn 1: 3000-3800 (windows 3100-3300, ..., 3700-3900: the last outlives the turn).
        let windows: [UInt64] = [100, 100, 100, 100, 100, 1600, 200, 200, 200, 200]
        let timing = GuestTiming(cycles: 3000, iterations: 100, window: 10, windows: windows)
        return (timing, [Interleaving.Turn(cycle: 4, start: 1000, end: 1500), Interleaving.Turn(cycle: 7, start: 3000, end: 3800)])
    }

    func testPlacesWindowsInTheTurnsTheyRanIn() {
        let (timing, turns) = pausedGuest()
        let figures = Interleaving.turnFigures(timing: timing, guestStart: 1_001_000, hostStart: 1000, turns: turns, slack: 0)
        // Per access: 10 cycles in cycle 4, 20 in cycle 7; the window across the pause and the one past the end of
        // turn 1 are in neither.
        XCTAssertEqual(figures, [4: 10, 7: 20])
    }

    func testSlackAbsorbsTheLineArrivingLate() {
        let (timing, turns) = pausedGuest()
        // The host saw the guest's line 30 cycles after the guest began: every window looks 30 cycles early against the
        // turns. Without slack the first window of turn 0 seems to start before it; with it, nothing is lost.
        let late = Interleaving.turnFigures(timing: timing, guestStart: 0, hostStart: 970, turns: turns, slack: 0, minimumWindows: 1)
        XCTAssertEqual(late, [4: 10, 7: 20])
        let strict = Interleaving.turnFigures(timing: timing, guestStart: 0, hostStart: 970, turns: turns, slack: 0, minimumWindows: 5)
        XCTAssertNil(strict[4], "turn 0 lost its first window to the offset without slack")
        let slack = Interleaving.turnFigures(timing: timing, guestStart: 0, hostStart: 970, turns: turns, slack: 50, minimumWindows: 5)
        XCTAssertEqual(slack[4], 10)
    }

    func testATurnWithTooFewWindowsHasNoFigure() {
        let (timing, turns) = pausedGuest()
        // Turn 1 held three whole windows (3100-3700).
        XCTAssertEqual(Interleaving.turnFigures(timing: timing, guestStart: 0, hostStart: 1000, turns: turns, slack: 0, minimumWindows: 4), [4: 10])
        XCTAssertEqual(Interleaving.turnFigures(timing: GuestTiming(cycles: 1, iterations: 1), guestStart: 0, hostStart: 0, turns: turns, slack: 0), [:],
                       "no windows, no figures")
    }

    func testPairsOnlyCyclesEveryRunnerHas() {
        let paired = Interleaving.commonCycles(["bare": [0: 1, 1: 2, 3: 4], "vmm": [1: 20, 2: 30, 3: 40]])
        XCTAssertEqual(paired["bare"], [2, 4])
        XCTAssertEqual(paired["vmm"], [20, 40])
    }

    func testTurnFiguresPairIntoRoundRatios() {
        // The report takes a row's ratio as the median of its per-cycle ratios (rounds in the same group).
        var report = Report(machine: [:], rows: [])
        report.rows.append(Row(name: "bare", unit: "ns", samples: Samples([2], rounds: [1, 2, 3], roundGroup: "g")))
        report.rows.append(Row(name: "vmm", unit: "ns", samples: Samples([2.2], rounds: [1.1, 2.4, 3.0], roundGroup: "g"), baseline: "bare", goal: 1.05))
        XCTAssertEqual(report.ratio(report.rows[1]) ?? 0, 1.1, accuracy: 1e-9)
        XCTAssertEqual(report.meetsGoal(report.rows[1]), false)
    }
}
