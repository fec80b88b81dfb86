import XCTest
@testable import Sandbox
@testable import SeccompPolicy

/// The policies vmm enforces are the ones in Policies/, built in when vmm is built.
final class BuiltinPoliciesTests: XCTestCase {
    static let policiesDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Policies").path

    func testTheBuiltInTextsAreExactlyThePolicyFiles() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.policiesDirectory).filter { $0.hasSuffix(".policy") }.sorted()
        XCTAssertEqual(BuiltinPolicies.fileNames, names, "every file in Policies/ is built in, and nothing else")
        XCTAssertTrue(names.contains("common.policy") && names.contains("vcpu.policy"), "\(names)")
        for name in names {
            let file = try String(contentsOfFile: Self.policiesDirectory + "/" + name, encoding: .utf8)
            XCTAssertEqual(BuiltinPolicies.text(of: name), file, "\(name) differs from the built-in text")
        }
    }

    func testARolePolicyIsLoadedFromTheBuiltInTextsWithItsIncludes() throws {
        let text = try BuiltinPolicies.load(file: "pio.policy", directory: nil) { path in
            XCTFail("read \(path): the built-in policies need no file")
            return nil
        }
        XCTAssertTrue(text.contains("#@file common.policy 0"), "common.policy included")
        XCTAssertTrue(text.hasPrefix("#@file pio.policy 0"))
        XCTAssertThrowsError(try BuiltinPolicies.load(file: "nosuchrole.policy", directory: nil) { _ in nil }) {
            XCTAssertTrue("\($0)".contains("(built into vmm)/nosuchrole.policy: cannot read"), "\($0)")
        }
    }

    func testAnExplicitDirectoryIsReadThroughTheReader() throws {
        var read: [String] = []
        let text = try BuiltinPolicies.load(file: "pio.policy", directory: "/dev/policies") { path in
            read.append(path)
            return path.hasSuffix("pio.policy") ? "@include common.policy\n" : "read: 1 # why\n"
        }
        XCTAssertEqual(read, ["/dev/policies/pio.policy", "/dev/policies/common.policy"])
        XCTAssertTrue(text.contains("read: 1 # why"))
    }
}
