import Devices
import XCTest

/// Every forged snapshot in `cases` is refused with its error, and so is every truncation of the device's own
/// `before`; none of them changes the device (its snapshot is still `before` after each).
public func assertRefusesForgeries(_ device: some Snapshotting, before: [UInt8], _ cases: [(String, [UInt8], SnapshotError)],
                            file: StaticString = #filePath, line: UInt = #line) {
    for (name, bytes, error) in cases {
        XCTAssertThrowsError(try device.restore(snapshot: bytes), name, file: file, line: line) {
            XCTAssertEqual($0 as? SnapshotError, error, name, file: file, line: line)
        }
        XCTAssertEqual(device.snapshot(), before, "\(name): the device is unchanged", file: file, line: line)
    }
    for length in 0..<before.count {
        XCTAssertThrowsError(try device.restore(snapshot: Array(before[..<length])), file: file, line: line) {
            XCTAssertEqual($0 as? SnapshotError, .truncated, "prefix of \(length) bytes", file: file, line: line)
        }
    }
    XCTAssertEqual(device.snapshot(), before, file: file, line: line)
}
