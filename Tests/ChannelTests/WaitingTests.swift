import XCTest
@testable import Channel
import CLinux
import System

/// The spin window's learning rule and the spin census, on their own.
final class WaitingTests: XCTestCase {
    func testWindowGrowsWhenALongerSpinWouldHaveCaughtTheWait() {
        var w = SpinWindow(maxNanoseconds: 200_000)
        XCTAssertEqual(w.nanoseconds, 10_000, "starts at the grow start")
        // Peers that answer every 45 us: each blocked wait within the bound doubles the window until it covers them.
        w.learn(waited: 45_000, caught: false)
        XCTAssertEqual(w.nanoseconds, 20_000)
        w.learn(waited: 45_000, caught: false)
        XCTAssertEqual(w.nanoseconds, 40_000)
        w.learn(waited: 45_000, caught: false)
        XCTAssertEqual(w.nanoseconds, 80_000)
        w.learn(waited: 45_000, caught: true)
        XCTAssertEqual(w.nanoseconds, 80_000, "a caught wait changes nothing")
        for _ in 0..<10 { w.learn(waited: 190_000, caught: false) }
        XCTAssertEqual(w.nanoseconds, 200_000, "never past the bound")
    }

    func testWindowShrinksToZeroWhenWaitsOutlastTheBound() {
        var w = SpinWindow(maxNanoseconds: 200_000)
        for _ in 0..<5 { w.learn(waited: 190_000, caught: false) }
        XCTAssertEqual(w.nanoseconds, 200_000)
        w.learn(waited: 5_000_000, caught: false)
        XCTAssertEqual(w.nanoseconds, 100_000)
        for _ in 0..<3 { w.learn(waited: 5_000_000, caught: false) }
        XCTAssertEqual(w.nanoseconds, 12_500)
        w.learn(waited: 5_000_000, caught: false)
        XCTAssertEqual(w.nanoseconds, 0, "below the grow start it stops spinning")
        w.learn(waited: 30_000, caught: false)
        XCTAssertEqual(w.nanoseconds, 10_000, "and starts again when a wait is short")
    }

    func testZeroBoundNeverSpins() {
        var w = SpinWindow(maxNanoseconds: 0)
        XCTAssertEqual(w.nanoseconds, 0)
        w.learn(waited: 1, caught: false)
        XCTAssertEqual(w.nanoseconds, 0)
        XCTAssertFalse(spin(window: &w, census: nil, until: { false }))
    }

    func testAPreemptedSpinStopsAndStopsSpinning() {
        var w = SpinWindow(maxNanoseconds: 2_000_000_000)
        for _ in 0..<20 { w.learn(waited: 1_500_000_000, caught: false) }
        XCTAssertGreaterThan(w.nanoseconds, 1_000_000_000)
        // A ready() that takes longer than the preemption gap looks, to the spinner, like losing its CPU.
        var calls = 0
        XCTAssertFalse(spin(window: &w, census: nil, until: { calls += 1; if calls == 40 { usleep(600_000) }; return false }))
        XCTAssertLessThanOrEqual(w.nanoseconds, 1_000_000_000, "a preempted spinner halves its window")
        XCTAssertLessThan(calls, 100)
    }

    func testCensusLetsOnlyAsManyHoldersAsCPUs() throws {
        let fd = try SpinCensus.create(cpus: 2, seats: 4)
        let a = try SpinCensus(attaching: fd.raw), b = try SpinCensus(attaching: fd.raw)
        let vcpu = a.seat(0), pio = b.seat(2), irqchip = b.seat(3)
        let elsewhere = Self.anotherCPU()
        vcpu.hold(cpu: elsewhere)  // in the guest, on a CPU this thread is not on
        XCTAssertTrue(pio.trySpin(), "one CPU left for one spinner")
        XCTAssertFalse(irqchip.trySpin(), "none for a second")
        pio.release()
        XCTAssertTrue(irqchip.trySpin())
        irqchip.release()
        // A process killed while it held its seat: its successor takes the seat and clears it.
        XCTAssertTrue(pio.trySpin())
        _ = b.seat(2)
        vcpu.hold(cpu: elsewhere)
        XCTAssertTrue(irqchip.trySpin(), "the dead spinner's seat was freed by its successor")
        irqchip.release()
    }

    func testAWaiterOnTheCPUAnotherSeatHoldsMovesToAFreeOne() throws {
        let cpus = SpinCensus.availableCPUs()
        try XCTSkipIf(cpus < 2, "SKIPPED: needs two CPUs in this thread's affinity mask")
        let fd = try SpinCensus.create(cpus: 64, seats: 2)
        let census = try SpinCensus(attaching: fd.raw)
        let vcpu = census.seat(0), pio = census.seat(1)
        // A vCPU that entered the guest on this thread's CPU (the scheduler woke the device process there): the
        // waiter moves to another CPU and spins there, rather than block and be woken onto the same CPU again.
        let held = vmm_current_cpu()
        vcpu.hold(cpu: held)
        XCTAssertTrue(pio.trySpin(), "a CPU is free")
        let now = vmm_current_cpu()
        pio.release()
        XCTAssertNotEqual(now, held, "it moved off the vCPU's CPU")
        XCTAssertEqual(SpinCensus.availableCPUs(), cpus, "its affinity mask is given back")
        vcpu.hold(cpu: Self.anotherCPU())
        XCTAssertTrue(pio.trySpin(), "the vCPU holds another CPU")
        pio.release()
        vcpu.hold(cpu: -1)
        XCTAssertTrue(pio.trySpin(), "a holder whose CPU is unknown counts, but matches no CPU")
        pio.release()
    }

    func testNoSpinOnAHeldCPUWhenEveryOtherIsHeldToo() throws {
        // Every CPU of this thread's mask (numbered 0..<n here) held by a vCPU, the census counting more CPUs than
        // that: nowhere to move, so the waiter blocks at once rather than spin on a vCPU's CPU.
        let cpus = SpinCensus.availableCPUs()
        let fd = try SpinCensus.create(cpus: 64, seats: cpus + 1)
        let census = try SpinCensus(attaching: fd.raw)
        let vcpus = (0..<cpus).map { census.seat($0) }
        let pio = census.seat(cpus)
        for (i, seat) in vcpus.enumerated() { seat.hold(cpu: Int32(i)) }
        XCTAssertFalse(pio.trySpin(), "every CPU is a vCPU's")
        var w = SpinWindow(maxNanoseconds: 1_000_000_000)
        let start = monotonicNanoseconds()
        XCTAssertFalse(spin(window: &w, census: pio, until: { false }))
        XCTAssertLessThan(monotonicNanoseconds() - start, 1_000_000_000 / 2, "it did not spin its window")
        XCTAssertEqual(SpinCensus.availableCPUs(), cpus, "its affinity mask is as it was")
    }

    /// A CPU number the calling thread is not running on.
    static func anotherCPU() -> Int32 { vmm_current_cpu() == 0 ? 1 : 0 }

    func testSpinStopsWhenTheCensusHasNoCPU() throws {
        let fd = try SpinCensus.create(cpus: 1, seats: 2)
        let census = try SpinCensus(attaching: fd.raw)
        census.seat(0).hold()
        var w = SpinWindow(maxNanoseconds: 1_000_000_000)
        let start = monotonicNanoseconds()
        XCTAssertFalse(spin(window: &w, census: census.seat(1), until: { false }))
        XCTAssertLessThan(monotonicNanoseconds() - start, 1_000_000_000 / 2, "it did not spin its window")
    }
}
