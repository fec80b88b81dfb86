import Foundation
import Glibc
import XCTest
@testable import Processes

/// A VM's helper id: the first id of the range that the lookup calls unused and no other VM holds, however many
/// rounds of lookup that takes.
final class HelperIDLeaseTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        // The lease directory must be root's own (the lease refuses any other).
        guard geteuid() == 0 else { throw XCTSkip("SKIPPED: the lease directory must belong to root") }
        directory = NSTemporaryDirectory() + "vmm-id-lease-\(getpid())-\(UUID().uuidString.prefix(8))"
    }

    override func tearDown() {
        if !directory.isEmpty { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// A lookup that calls every id unused but hands them out `batch` at a time.
    private func inBatches(of batch: UInt32) -> HelperIDLease.UnusedIDs {
        { range, limit in
            let end = min(range.upperBound, range.lowerBound + min(batch, UInt32(limit)))
            return (Array(range.lowerBound..<end), end)
        }
    }

    func testTheFirstUnusedIDThatNoOtherVMHoldsIsLeased() throws {
        let first = try HelperIDLease.acquire(from: 100..<110, directory: directory, unusedIDs: inBatches(of: 1))
        XCTAssertEqual(first.id, 100)
        // Held: the next VM gets the next id, in a later round of the lookup.
        let second = try HelperIDLease.acquire(from: 100..<110, directory: directory, unusedIDs: inBatches(of: 1))
        XCTAssertEqual(second.id, 101)
        // Ids the lookup leaves out (a host account's) are skipped.
        let third = try HelperIDLease.acquire(from: 100..<110, directory: directory) { range, _ in
            (range.filter { $0 != 102 && $0 != 103 }, range.upperBound)
        }
        XCTAssertEqual(third.id, 104)
        withExtendedLifetime((first, second)) {}
    }

    func testARangeWithNoFreeIDIsRefusedWithItsBounds() throws {
        let held = try HelperIDLease.acquire(from: 7..<8, directory: directory, unusedIDs: inBatches(of: 4))
        XCTAssertThrowsError(try HelperIDLease.acquire(from: 7..<8, directory: directory, unusedIDs: inBatches(of: 4))) {
            XCTAssertTrue("\($0)".contains("every id of 7..<8 is held by another VM or used by a host account"), "\($0)")
        }
        // A lookup that finds nothing at all, and one that makes no progress, end too.
        XCTAssertThrowsError(try HelperIDLease.acquire(from: 20..<30, directory: directory) { range, _ in ([], range.upperBound) })
        XCTAssertThrowsError(try HelperIDLease.acquire(from: 20..<30, directory: directory) { range, _ in ([], range.lowerBound) })
        withExtendedLifetime(held) {}
    }
}
