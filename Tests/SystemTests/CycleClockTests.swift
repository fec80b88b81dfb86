import Glibc
import XCTest
@testable import System

final class CycleClockTests: XCTestCase {
    func testTicksAndNanosecondsConvertAtTheGivenRate() {
        let clock = CycleClock(kHz: 2_596_152)  // this project's usual host
        XCTAssertEqual(clock.nanoseconds(2_596_152_000), 1_000_000_000, accuracy: 1)
        XCTAssertEqual(clock.ticks(nanoseconds: 1_000_000_000), 2_596_152_000, accuracy: 3)
        // An hour's ticks (a long HLT) neither overflow nor lose precision.
        XCTAssertEqual(clock.nanoseconds(3600 * 2_596_152_000), 3_600_000_000_000, accuracy: 2_000)
        XCTAssertEqual(CycleClock(kHz: 1_000_000).nanoseconds(12_345), 12_345)
        XCTAssertEqual(CycleClock(kHz: 1).ticks(nanoseconds: .max), UInt64.max / 1_000_000)
    }

    func testTheCounterKeepsTimeWithCLOCK_MONOTONIC() {
        // With the rate measured (kHz unknown), an interval in both clocks agrees within a few percent.
        let clock = CycleClock(kHz: 0)
        let (n0, t0) = (monotonicNanoseconds(), CycleClock.now())
        usleep(30_000)
        let (n1, t1) = (monotonicNanoseconds(), CycleClock.now())
        let byCounter = Double(clock.nanoseconds(t1 &- t0)), byClock = Double(n1 - n0)
        XCTAssertEqual(byCounter / byClock, 1, accuracy: 0.05, "\(byCounter) against \(byClock) ns")
    }
}
