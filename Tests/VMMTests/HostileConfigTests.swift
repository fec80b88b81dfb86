import Foundation
import XCTest

/// Configs written by an attacker: the real vmm binary must refuse each one with status 2 and a message naming the
/// field, before it writes anything or starts a helper. None of these needs /dev/kvm.
final class HostileConfigTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "vmm-hostile-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// A file that passes the config's checks for a kernel (readable, regular) but is no image.
    func dummyKernel() -> String {
        let path = directory + "/kernel"
        FileManager.default.createFile(atPath: path, contents: Data([0x7f, 0x45, 0x4c, 0x46]))
        return path
    }

    func testALogPathThatIsASymbolicLinkIsRefusedAndItsTargetIsUntouched() throws {
        let victim = directory + "/victim", link = directory + "/vmm.log"
        try "precious\n".write(toFile: victim, atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: victim)
        let config = """
        {"boot-source": {"kernel_image_path": "\(dummyKernel())"}, "machine-config": {"mem_size_mib": 8},
         "logger": {"log_path": "\(link)", "level": "Debug"}}
        """
        let run = try Harness.run(config: config)
        XCTAssertEqual(run.wait(timeout: 20), 2, run.stderr)
        XCTAssertTrue(run.stderr.contains("logger.log_path") && run.stderr.contains("is a symbolic link"), run.stderr)
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "precious\n", "the link's target was written")
    }
}
