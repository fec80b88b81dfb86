import Glibc
import XCTest
@testable import System

/// A process gives back its code mappings and goes on running: the code it runs next maps again on first use.
final class ProgramCodeTests: XCTestCase {
    /// KiB of program code this process maps (executable file mappings, the vDSO left out).
    private func mappedCodeKiB() throws -> Int {
        let smaps = try XCTUnwrap(FileDescriptor.readText("/proc/self/smaps"))
        var total = 0
        var executable = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 5, first.allSatisfy({ $0.isHexDigit || $0 == "-" }) {
                executable = fields[1].contains("x") && fields.count >= 6 && fields[5].hasPrefix("/")
            } else if executable, fields.first == "Rss:", let kib = Int(fields[1]) {
                total += kib
            }
        }
        return total
    }

    func testReleasingUnmapsTheCodeThatIsNotRunAgain() throws {
        _ = try mappedCodeKiB()  // the reading code is mapped before and after alike
        let before = try mappedCodeKiB()
        try ProgramCode.releaseMappings()
        let after = try mappedCodeKiB()
        // The test runner ran XCTest, Foundation and every test so far: megabytes; reading smaps needs far less.
        XCTAssertGreaterThan(before, 2048, "code mapped before: \(before) KiB")
        XCTAssertLessThan(after, before / 2, "code mapped: \(before) KiB before, \(after) KiB after")
        // Code not run since comes back when it runs.
        XCTAssertEqual(String(describing: [3, 1, 2].sorted()), "[1, 2, 3]")
        XCTAssertGreaterThan(try mappedCodeKiB(), 0)
    }
}
