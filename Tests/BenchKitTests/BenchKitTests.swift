import XCTest
@testable import BenchKit

final class BenchKitTests: XCTestCase {
    func testParsesTheGuestTimingLine() {
        XCTAssertEqual(GuestTiming.parse("portloop: ready\ncycles=1234 iters=10\n"), GuestTiming(cycles: 1234, iterations: 10))
        XCTAssertNil(GuestTiming.parse("portloop: ready\n"))
        XCTAssertNil(GuestTiming.parse("cycles=12 iters=0\n"), "zero iterations cannot give a per-iteration time")
        XCTAssertNil(GuestTiming.parse("cycles=-1 iters=3\n"))
        XCTAssertEqual(GuestTiming(cycles: 3_000_000, iterations: 1000).nanosecondsPerIteration(tscKHz: 3_000_000), 1000)
    }

    func testParsesTheWindowLineAndTakesItsMedian() {
        let out = "portloop: ready\ncycles=9000 iters=3000\nwindow=1000 cycles=3000,9000,3300\n"
        let t = GuestTiming.parse(out)
        XCTAssertEqual(t?.window, 1000)
        XCTAssertEqual(t?.windows, [3000, 9000, 3300])
        // The median window (3300 cycles / 1000 iterations) at 1 GHz: 3.3 ns; the long window does not count.
        XCTAssertEqual(t?.steadyNanosecondsPerIteration(tscKHz: 1_000_000) ?? 0, 3.3, accuracy: 1e-9)
        XCTAssertEqual(t?.nanosecondsPerIteration(tscKHz: 1_000_000) ?? 0, 3.0, accuracy: 1e-9)
        XCTAssertNil(GuestTiming.parse("cycles=9000 iters=3000\n")?.steadyNanosecondsPerIteration(tscKHz: 1_000_000))
        let broken = GuestTiming.parse("cycles=9000 iters=3000\nwindow=1000 cycles=3000,x,3300\n")
        XCTAssertEqual(broken?.cycles, 9000, "a malformed window line leaves the total")
        XCTAssertNil(broken?.steadyNanosecondsPerIteration(tscKHz: 1_000_000))
    }

    func testParsesTheVirtioBenchLineAndConvertsToRequestsPerSecond() throws {
        let r = try XCTUnwrap(BlockBenchResult.parse("virtio: device 0\nvirtio-bench: mode=randread depth=32 count=1000 cycles=2000000 errors=0\n"))
        XCTAssertEqual(r, BlockBenchResult(mode: "randread", depth: 32, count: 1000, cycles: 2_000_000, errors: 0))
        XCTAssertEqual(r.requestsPerSecond(tscKHz: 2_000_000), 1_000_000, accuracy: 1e-6)  // 1 ms for 1000 requests
        XCTAssertNil(BlockBenchResult.parse("virtio-bench: mode=randread depth=1 count=0 cycles=5 errors=0"), "no requests")
        XCTAssertNil(BlockBenchResult.parse("virtio-bench: mode=seqread depth=1 count=5 errors=0"), "no cycles")
    }

    /// The host's pread loop must read what the guest reads: the same sectors, in range, in the same order.
    func testTheBlockPatternStaysInsideTheDiskAndWrapsSequentialReads() {
        var random = BlockPattern(mode: .randread, capacitySectors: 8192)
        let sectors = (0..<1000).map { _ in random.nextSector() }
        XCTAssertTrue(sectors.allSatisfy { $0 % 8 == 0 && $0 + 8 <= 8192 }, "4 KiB-aligned 4 KiB reads inside the disk")
        XCTAssertGreaterThan(Set(sectors).count, 500, "random, not stuck")
        var again = BlockPattern(mode: .randread, capacitySectors: 8192)
        XCTAssertEqual((0..<1000).map { _ in again.nextSector() }, sectors, "the same sequence every time, as the guest's")
        var sequential = BlockPattern(mode: .seqread, capacitySectors: 1024)
        XCTAssertEqual((0..<5).map { _ in sequential.nextSector() }, [0, 256, 512, 768, 0], "128 KiB steps, back to 0 at the end")
    }

    func testInterruptLatencyArithmetic() throws {
        let l = try XCTUnwrap(InterruptLatency.parse("noise\nirqlat: samples=4 delay=200000 min=600000 total=3200000\n"))
        let us = l.latencyMicroseconds(tscKHz: 2_000_000)  // 2000 cycles per microsecond
        XCTAssertEqual(us.mean, 200, accuracy: 1e-9)  // 800000 cycles = 400 us, minus the 200 us delay
        XCTAssertEqual(us.min, 100, accuracy: 1e-9)
        XCTAssertNil(InterruptLatency.parse("irqlat: samples=0 delay=1 min=1 total=1"))
    }

    /// The warm-up samples' line and the measured samples' line are told apart whichever comes first.
    func testInterruptLatencyWarmupLineIsKeptApart() throws {
        let output = "irqlat-warmup: samples=2 delay=200000 min=900000 total=2000000\nirqlat: samples=4 delay=200000 min=600000 total=3200000\n"
        XCTAssertEqual(InterruptLatency.parse(output)?.totalCycles, 3_200_000)
        XCTAssertEqual(InterruptLatency.parse(output, warmup: true)?.samples, 2)
        XCTAssertNil(InterruptLatency.parse("irqlat: samples=4 delay=200000 min=600000 total=3200000", warmup: true))
    }

    func testMinMedianAndRatio() {
        XCTAssertEqual(Samples([5, 1, 3]).median, 3)
        XCTAssertEqual(Samples([4, 1, 3, 2]).median, 2.5)
        XCTAssertEqual(Samples([4, 1, 3, 2]).min, 1)
        XCTAssertNil(Samples().median)
        let report = Report(machine: [:], rows: [
            Row(name: "bare", unit: "ns", samples: Samples([100, 110, 90])),
            Row(name: "vmm", unit: "ns", samples: Samples([105, 120, 108]), baseline: "bare", goal: 1.10),
            Row(name: "slow", unit: "ns", samples: Samples([200]), baseline: "bare", goal: 1.10),
            Row(name: "startup", unit: "ms", samples: Samples([12, 14]), goal: 15),
            Row(name: "orphan", unit: "ns", samples: Samples([1]), baseline: "missing", goal: 2),
        ])
        XCTAssertEqual(report.ratio(report.rows[1])!, 108.0 / 100.0, accuracy: 1e-9)
        XCTAssertEqual(report.meetsGoal(report.rows[1]), true)
        XCTAssertEqual(report.meetsGoal(report.rows[2]), false)
        XCTAssertEqual(report.meetsGoal(report.rows[3]), true)
        XCTAssertNil(report.meetsGoal(report.rows[4]))
        XCTAssertNil(report.meetsGoal(report.rows[0]))
        let table = report.table()
        XCTAssertTrue(table.contains("1.08x"), table)
        XCTAssertTrue(table.contains("MISSED"), table)
        // Per repetition: 105/100, 120/110, 108/90; none for a row with fewer samples than its baseline.
        let paired = report.pairedRatios(report.rows[1])!
        XCTAssertEqual(paired.count, 3)
        XCTAssertEqual(paired[1], 120.0 / 110.0, accuracy: 1e-9)
        XCTAssertEqual(paired[2], 1.2, accuracy: 1e-9)
        XCTAssertNil(report.pairedRatios(report.rows[2]))
        XCTAssertTrue(table.contains("(each repetition 1.050-1.200x)"), table)
        XCTAssertNoThrow(try report.json())
    }

    /// Rows that ran their rounds side by side are compared round by round (the host's drift moves both figures of
    /// a round together): the ratio is the median of the per-round ratios.
    func testRatiosPairByRound() {
        let bareRounds: [Double] = [100, 100, 120, 120, 100, 100]
        let vmmRounds = zip(bareRounds, [1.02, 1.01, 1.05, 1.02, 1.00, 1.02]).map { $0 * $1 }
        func row(_ name: String, _ rounds: [Double], group: String? = "loop", baseline: String? = nil) -> Row {
            let values = stride(from: 0, to: rounds.count, by: 2).map { (rounds[$0] + rounds[$0 + 1]) / 2 }
            return Row(name: name, unit: "ns", samples: Samples(values, rounds: rounds, roundGroup: group), baseline: baseline, goal: 1.03)
        }
        let report = Report(machine: [:], rows: [
            row("bare", bareRounds),
            row("vmm", vmmRounds, baseline: "bare"),
            // Rounds of another loop (another time) do not pair: the ratio falls back to the medians.
            row("other loop", [110, 110, 130, 130, 100, 100], group: "another loop", baseline: "bare"),
            // Nor do rounds of a different count.
            row("fewer", [102, 102, 122, 122], baseline: "bare"),
        ])
        let rounds = report.roundRatios(report.rows[1])!
        XCTAssertEqual(rounds.count, 6)
        XCTAssertEqual(rounds[2], 1.05, accuracy: 1e-9)
        XCTAssertEqual(report.ratio(report.rows[1])!, 1.02, accuracy: 1e-9)
        XCTAssertEqual(report.meetsGoal(report.rows[1]), true)
        XCTAssertNil(report.roundRatios(report.rows[2]))
        XCTAssertEqual(report.ratio(report.rows[2])!, 110.0 / 100.0, accuracy: 1e-9)
        XCTAssertNil(report.roundRatios(report.rows[3]))
        XCTAssertTrue(report.table().contains("(6 rounds 1.000-1.050x; ratio of medians 1.015x)"), report.table())
        XCTAssertNoThrow(try report.json())
    }

    /// The phases of each KVM_RUN round trip from a tracefs text: the vCPU's thread is the one with KVM's FPU
    /// events (a task name may hold dashes and spaces); other threads, other syscalls and a round trip missing an
    /// event are left out.
    func testExitPhasesFromATrace() {
        let trace = """
        # tracer: nop
        #           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
                   vcpu0-11601   [001] ..... 1000: sys_enter: NR 16 (13, ae80, 0, 0, 0, 0)
                   vcpu0-11601   [001] b.... 1100: kvm_fpu: load
               vmm-pio x-11605   [000] ..... 1150: sys_enter: NR 16 (5, 1, 0, 0, 0, 0)
                   vcpu0-11601   [001] ..... 1500: kvm_fpu: unload
                   vcpu0-11601   [001] ..... 1550: sys_exit: NR 16 = 0
                   vcpu0-11601   [001] ..... 1600: sys_enter: NR 7 (3, 1, 0, 0, 0, 0)
                   vcpu0-11601   [001] ..... 1700: sys_enter: NR 16 (13, ae80, 0, 0, 0, 0)
                   vcpu0-11601   [001] b.... 1820: kvm_fpu: load
                   vcpu0-11601   [000] ..... 2240: kvm_fpu: unload
                   vcpu0-11601   [000] ..... 2290: sys_exit: NR 16 = 0
                   vcpu0-11601   [000] ..... 2400: sys_enter: NR 16 (13, ae80, 0, 0, 0, 0)
                   vcpu0-11601   [000] ..... 2900: sys_exit: NR 16 = -4
                   vcpu0-11601   [000] ..... 3000: sys_enter: NR 16 (13, ae80, 0, 0, 0, 0)
        """
        let phases = ExitPhases.parse(trace)!
        // Two complete round trips (1000 -> 1700, 1700 -> 2400); the one from 2400 had no FPU switch (interrupted).
        XCTAssertEqual(phases.exits, 2)
        XCTAssertEqual(phases.medianCycles[.entering], 110)
        XCTAssertEqual(phases.medianCycles[.guest], 410)
        XCTAssertEqual(phases.medianCycles[.leaving], 50)
        XCTAssertEqual(phases.medianCycles[.between], 130)
        XCTAssertEqual(phases.medianCycles[.whole], 700)
        XCTAssertEqual(phases.meanCycles, 700)
        XCTAssertEqual(phases.cpus, [1: 6, 0: 5])
        XCTAssertNil(ExitPhases.parse("# nothing traced\n"))
    }

    func testFastStateKeepsTheRunsWhoseEnteringPhaseIsNearTheFastest() {
        let runs: [String: [ExitPhases.Run]] = [
            "bare": [.init(entering: 4700, whole: 12100), .init(entering: 6600, whole: 17000), .init(entering: 4750, whole: 12150)],
            "vmm": [.init(entering: 6500, whole: 16800), .init(entering: 4720, whole: 12300), .init(entering: 5100, whole: 12400)],
        ]
        let fast = ExitPhases.fastState(runs)
        XCTAssertEqual(fast["bare"], [12100, 12150], "the slow run left out")
        XCTAssertEqual(fast["vmm"], [12300, 12400], "5100 is within 10% of 4700, 6500 is not")
        XCTAssertEqual(ExitPhases.fastState(runs, tolerance: 0.05)["vmm"], [12300])
        XCTAssertEqual(ExitPhases.fastState([:]), [:])
    }

    func testPSSLeavesOutGuestRAM() {
        let smaps = """
        55d0c0a00000-55d0c0b00000 r-xp 00000000 fe:01 123  /usr/bin/vmm
        Size:               1024 kB
        Pss:                 300 kB
        7f0000000000-7f0004000000 rw-s 00000000 00:01 5    /memfd:guest-ram (deleted)
        Size:              65536 kB
        Pss:                2048 kB
        7f1000000000-7f1000021000 rw-p 00000000 00:00 0
        Size:                132 kB
        Pss:                  40 kB
        """
        let m = Memory.parseSmaps(smaps)
        XCTAssertEqual(m.count, 3)
        XCTAssertEqual(Memory.pssExcludingGuestRAM(m, ramKiB: 65536, ramName: "memfd:guest-ram"), 340)
    }
}

final class RunStatisticsTests: XCTestCase {
    func testParsesTheSupervisorsLine() throws {
        let log = "[vmm] t=1.0ms info: something\n[vmm] t=2.0ms info: vcpu statistics (all vCPUs): KVM_RUN 7715 entries, 154.0 ms; exits: io 7715 (94.4 ms), hlt 1 (5.0 ms)\n"
        let s = try XCTUnwrap(RunStatistics.parse(log))
        XCTAssertEqual(s.entries, 7715)
        XCTAssertEqual(s.runMilliseconds, 154.0)
        XCTAssertEqual(s.byReason.map(\.name), ["io", "hlt"])
        XCTAssertEqual(s.byReason.map(\.exits), [7715, 1])
        XCTAssertEqual(s.byReason.map(\.milliseconds), [94.4, 5.0])
        XCTAssertNil(RunStatistics.parse("no such line"))
        XCTAssertEqual(RunStatistics.parse("vcpu statistics (all vCPUs): KVM_RUN 0 entries, 0.0 ms; exits: none")?.byReason.count, 0)
    }
}

final class FirstExitTests: XCTestCase {
    func testReadsTheSupervisorsStampOfTheFirstExit() {
        let log = "[vmm] info: vcpu statistics (all vCPUs): KVM_RUN 4 entries, 0.1 ms; exits: io 3 (0.0 ms), hlt 1 (0.0 ms)\n"
            + "[vmm] info: the guest's first exit came 8.31 ms after the supervisor started (first_exit_monotonic_ns=14105512327520)\n"
        XCTAssertEqual(FirstExit.monotonicNanoseconds(in: log), 14_105_512_327_520)
        XCTAssertNil(FirstExit.monotonicNanoseconds(in: "[vmm] info: vcpu statistics (all vCPUs): KVM_RUN 0 entries"))
        XCTAssertNil(FirstExit.monotonicNanoseconds(in: "first_exit_monotonic_ns=)"), "no number, no stamp")
    }
}
