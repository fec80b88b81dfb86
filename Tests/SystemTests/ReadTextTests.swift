import System
import XCTest

/// `FileDescriptor.readText` reads procfs files, whose size reads 0, to their end.
final class ReadTextTests: XCTestCase {
    func testAProcessesSmapsIsReadWhole() throws {
        // Every mapping of /proc/self/maps has its entry (and its Pss line) in smaps read whole: this test process has
        // far more than fit in the first 4 KiB, where String(contentsOfFile:) stops (the benchmark's PSS reads it so).
        let maps = try XCTUnwrap(FileDescriptor.readText("/proc/self/maps")).split(separator: "\n")
        let smaps = try XCTUnwrap(FileDescriptor.readText("/proc/self/smaps"))
        XCTAssertGreaterThan(smaps.utf8.count, 4096)
        XCTAssertGreaterThanOrEqual(smaps.split(separator: "\n").filter { $0.hasPrefix("Pss:") }.count, maps.count - 5,
                                    "mappings may come and go between the reads")
    }
}
