import Glibc
import XCTest
@testable import Channel
import System

/// A device process's one action once it has settled: run when it first blocks after the delay, the block cut
/// there if it would last longer, and never when something was ready first.
final class SettleActionTests: XCTestCase {
    private final class Counter: @unchecked Sendable {
        var runs = 0
        var at: UInt64 = 0
    }

    private func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(Glibc.pipe(&fds), 0)
        addTeardownBlock { close(fds[0]); close(fds[1]) }
        return (fds[0], fds[1])
    }

    func testRunsOnceWhenABlockReachesItsMomentAndTheCallersTimeoutKeepsItsMeaning() throws {
        let fds = try pipe()
        let counter = Counter()
        let action = SettleAction(afterNanoseconds: 30_000_000) { counter.runs += 1 }
        let start = monotonicNanoseconds()
        let ready = try SettleAction.wait([fds.read], timeoutMs: 120, settling: action)
        let waited = monotonicNanoseconds() - start
        XCTAssertEqual(counter.runs, 1)
        XCTAssertEqual(ready, [[]], "nothing became ready")
        XCTAssertGreaterThanOrEqual(waited, 115_000_000, "the whole timeout was waited, not only up to the action")
        _ = try SettleAction.wait([fds.read], timeoutMs: 10, settling: action)
        XCTAssertEqual(counter.runs, 1, "once")
    }

    func testABlockWithoutTimeoutIsCutAtTheMoment() throws {
        let fds = try pipe()
        let counter = Counter()
        let action = SettleAction(afterNanoseconds: 20_000_000) {
            counter.runs += 1
            counter.at = monotonicNanoseconds()
        }
        let start = monotonicNanoseconds()
        // The byte arrives long after the action's moment; an endless block returns only with it.
        let writer = try OSThread.start(name: "late-writer") {
            usleep(150_000)
            var byte: UInt8 = 1
            _ = write(fds.write, &byte, 1)
        }
        let ready = try SettleAction.wait([fds.read], timeoutMs: -1, settling: action)
        writer.join()
        XCTAssertEqual(counter.runs, 1)
        XCTAssertTrue(ready[0].contains(.readable))
        XCTAssertLessThan(counter.at - start, 120_000_000, "run at its moment, not when the byte came")
    }

    func testNotRunWhenSomethingIsReadyFirstOrTheTimeoutEndsBefore() throws {
        let fds = try pipe()
        let counter = Counter()
        let action = SettleAction(afterNanoseconds: 200_000_000) { counter.runs += 1 }
        var byte: UInt8 = 1
        XCTAssertEqual(write(fds.write, &byte, 1), 1)
        XCTAssertTrue(try SettleAction.wait([fds.read], timeoutMs: -1, settling: action)[0].contains(.readable))
        XCTAssertEqual(read(fds.read, &byte, 1), 1)
        _ = try SettleAction.wait([fds.read], timeoutMs: 20, settling: action)
        XCTAssertEqual(counter.runs, 0, "neither a ready descriptor nor a shorter timeout reaches the moment")
    }

    func testABusyProcessThatNeverBlocksRunsItOnAWait() {
        let counter = Counter()
        let action = SettleAction(afterNanoseconds: 0) { counter.runs += 1 }
        for _ in 0..<255 { action.pass() }
        XCTAssertEqual(counter.runs, 0, "the clock is looked at every 256th wait")
        action.pass()
        XCTAssertEqual(counter.runs, 1)
        for _ in 0..<1024 { action.pass() }
        XCTAssertEqual(counter.runs, 1, "once")
        let later = SettleAction(afterNanoseconds: 10_000_000_000) { counter.runs += 1 }
        for _ in 0..<1024 { later.pass() }
        XCTAssertEqual(counter.runs, 1, "not before it is due")
    }

    func testADueActionRunsBeforeTheBlock() throws {
        let fds = try pipe()
        let counter = Counter()
        let action = SettleAction(afterNanoseconds: 0) { counter.runs += 1 }
        _ = try SettleAction.wait([fds.read], timeoutMs: 5, settling: action)
        XCTAssertEqual(counter.runs, 1)
    }
}
