import Glibc
import XCTest
@testable import System

/// Shared memory keeps the size it was made with: no process that holds it can shrink it under the others' mappings
/// (their accesses past the new end would die with SIGBUS) or grow it, nor lift the seals.
final class MemFDTests: XCTestCase {
    func testTheSizeIsSealed() throws {
        let fd = try MemFD.create(name: "sealed", size: 8192)
        XCTAssertEqual(try MemFD.seals(fd.raw), MemFD.sealShrink | MemFD.sealGrow | MemFD.sealSeal)
        for size in [0, 4096, 16384] {
            XCTAssertEqual(ftruncate(fd.raw, off_t(size)), -1, "size \(size)")
            XCTAssertEqual(errno, EPERM)
        }
        XCTAssertEqual(fcntl(fd.raw, MemFD.addSeals, Int32(8)), -1, "no more seals can be added or removed")  // F_SEAL_WRITE
        var st = stat()
        XCTAssertEqual(fstat(fd.raw, &st), 0)
        XCTAssertEqual(st.st_size, 8192)
    }
}
