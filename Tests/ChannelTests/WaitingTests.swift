import Foundation
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

    func testNoSpinOnTheCPUAnotherSeatHolds() throws {
        let fd = try SpinCensus.create(cpus: 8, seats: 2)
        let census = try SpinCensus(attaching: fd.raw)
        let vcpu = census.seat(0), pio = census.seat(1)
        // A vCPU that entered the guest on this thread's CPU and was preempted by the device process (the
        // scheduler woke it there): spinning would only keep the vCPU off its CPU. Plenty of CPUs otherwise.
        // (Tried again if this thread moved to another CPU in between, which the answer would rightly follow.)
        func onOneCPU<T>(_ body: () -> T) -> T {
            while true {
                let cpu = vmm_current_cpu()
                vcpu.hold()
                let result = body()
                if vmm_current_cpu() == cpu { return result }
            }
        }
        XCTAssertFalse(onOneCPU { let spins = pio.trySpin(); pio.release(); return spins }, "the vCPU's CPU is this one")
        let (spun, took) = onOneCPU {
            var w = SpinWindow(maxNanoseconds: 1_000_000_000)
            let start = monotonicNanoseconds()
            return (spin(window: &w, census: pio, until: { false }), monotonicNanoseconds() - start)
        }
        XCTAssertFalse(spun)
        XCTAssertLessThan(took, 1_000_000_000 / 2, "it did not spin its window")
        vcpu.hold(cpu: Self.anotherCPU())
        XCTAssertTrue(pio.trySpin(), "the vCPU holds another CPU")
        pio.release()
        vcpu.hold(cpu: -1)
        XCTAssertTrue(pio.trySpin(), "a holder whose CPU is unknown counts, but matches no CPU")
        pio.release()
    }

    func testAHeldSeatAsksForItsCPUOnlyWhenFreeOrRechecking() throws {
        let fd = try SpinCensus.create(cpus: 8, seats: 1)
        let vcpu = try SpinCensus(attaching: fd.raw).seat(0)
        func word() -> Int64 { vcpu.word.pointee.load(ordering: .relaxed) }
        /// `body`'s seat word and this thread's CPU as a seat word, tried again if the thread moved meanwhile.
        func onOneCPU(_ body: () -> Void) -> (seat: Int64, here: Int64) {
            while true {
                let cpu = vmm_current_cpu()
                body()
                if vmm_current_cpu() == cpu { return (word(), Int64(cpu) + 1) }
            }
        }
        let elsewhere = Self.anotherCPU()
        vcpu.hold(cpu: elsewhere)  // held since an entry on another CPU; the thread has moved since
        XCTAssertEqual(onOneCPU { vcpu.hold(recheck: false) }.seat, Int64(elsewhere) + 1, "a held seat keeps its CPU")
        let rechecked = onOneCPU { vcpu.hold(recheck: true) }
        XCTAssertEqual(rechecked.seat, rechecked.here, "a recheck finds the CPU this thread is on")
        vcpu.release()
        XCTAssertEqual(word(), 0)
        let taken = onOneCPU { vcpu.release(); vcpu.hold(recheck: false) }
        XCTAssertEqual(taken.seat, taken.here, "a free seat always asks")
    }

    func testADeviceStepsAsideFromTheCPUAVCPUHolds() throws {
        let cpus = SpinCensus.availableCPUs()
        guard cpus >= 2 else { throw XCTSkip("SKIPPED: stepping aside needs two CPUs in this process's affinity mask, it has \(cpus)") }
        // On a thread of its own: the step narrows the calling thread's mask (and gives it back).
        final class Findings: @unchecked Sendable { var list: [String] = [] }  // written by the thread, read after it
        let findings = Findings()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            func fail(_ what: String) { findings.list.append(what) }
            defer { done.signal() }
            let fd = try! SpinCensus.create(cpus: cpus, seats: 2)
            let census = try! SpinCensus(attaching: fd.raw)
            let vcpu = census.seat(0), device = census.seat(1, stepsAside: true)
            // The vCPU holds the CPU this thread is on, as when a doorbell woke the device onto the vCPU's CPU.
            let held = vmm_current_cpu()
            vcpu.hold(cpu: held)
            if !device.trySpin() { fail("it blocked instead of moving to a free CPU") }
            if vmm_current_cpu() == held { fail("still on the vCPU's CPU \(held)") }
            device.release()
            if SpinCensus.availableCPUs() != cpus { fail("its CPU mask was not given back whole") }
            // Every CPU it may use held (the census told of more CPUs than the mask has): it blocks, and stays.
            if cpus == 2 {
                let fd8 = try! SpinCensus.create(cpus: 8, seats: 3)
                let crowded = try! SpinCensus(attaching: fd8.raw)
                let here = vmm_current_cpu()
                crowded.seat(0).hold(cpu: here)
                crowded.seat(1).hold(cpu: here == 0 ? 1 : 0)
                if crowded.seat(2, stepsAside: true).trySpin() { fail("it spun on a CPU a vCPU holds") }
                if SpinCensus.availableCPUs() != cpus { fail("a refused step changed its mask") }
            }
        }
        thread.start()
        done.wait()
        XCTAssertEqual(findings.list, [])
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
