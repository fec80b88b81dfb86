import Config
import Foundation
import XCTest

/// "vmm.device_restart", "vmm.fault_injection" and `--inject-fault`: every mistake named by its field.
final class DeviceRestartConfigTests: XCTestCase {
    var kernel: String!

    override func setUpWithError() throws {
        kernel = NSTemporaryDirectory() + "vmm-kernel-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: kernel, contents: Data([0]))
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: kernel) }

    func parse(_ vmm: String, extra: String = "") throws -> VMConfig {
        try ConfigParser.parse(Array(#"{"boot-source": {"kernel_image_path": "\#(kernel!)"}, "vmm": {\#(vmm)}\#(extra)}"#.utf8))
    }

    func assertError(_ vmm: String, extra: String = "", _ expected: String, line: UInt = #line) {
        XCTAssertThrowsError(try parse(vmm, extra: extra), line: line) {
            XCTAssertEqual(($0 as? ConfigError)?.description, expected, line: line)
        }
    }

    func testDefaultsAndAFullSection() throws {
        let defaults = try parse("").vmm.deviceRestart
        XCTAssertEqual(defaults, VMConfig.DeviceRestart())
        XCTAssertTrue(defaults.standby)
        let c = try parse(#""device_restart": {"max_restarts": 5, "window_ms": 1000, "backoff_ms": 2, "max_backoff_ms": 8, "hang_timeout_ms": 50, "standby": false, "critical": ["irqchip", "virtio-blk0"]}"#,
                          extra: #", "drives": [{"drive_id": "d", "path_on_host": "\#(kernel!)", "is_root_device": false}]"#).vmm.deviceRestart
        XCTAssertEqual(c.maxRestarts, 5)
        XCTAssertEqual(c.windowMs, 1000)
        XCTAssertEqual(c.backoffMs, 2)
        XCTAssertEqual(c.maxBackoffMs, 8)
        XCTAssertEqual(c.hangTimeoutMs, 50)
        XCTAssertFalse(c.standby)
        XCTAssertEqual(c.critical, ["irqchip", "virtio-blk0"])
    }

    func testRestartMistakesAreNamed() {
        assertError(#""device_restart": {"max_backoff_ms": 5, "backoff_ms": 10}"#,
                    "vmm.device_restart.max_backoff_ms: 5 is below backoff_ms (10)")
        assertError(#""device_restart": {"critical": ["virtio-blk0"]}"#,
                    "vmm.device_restart.critical[0]: \"virtio-blk0\" is not a device process of this VM (pio, irqchip)")
        assertError(#""device_restart": {"hang_timeout_ms": 1}"#, "vmm.device_restart.hang_timeout_ms: 1 is out of range 10...600000")
        assertError(#""device_restart": {"restarts": 1}"#, "vmm.device_restart.restarts: unknown field")
    }

    func testFaults() throws {
        let faults = try parse(#""fault_injection": [{"device": "pio", "action": "stop", "after_ms": 10, "every_ms": 5, "count": 3}, {"device": "irqchip", "action": "crash", "after_requests": 100}]"#).vmm.faults
        XCTAssertEqual(faults.count, 2)
        XCTAssertEqual(faults[0].action, .stop)
        XCTAssertEqual(faults[0].everyMs, 5)
        XCTAssertEqual(faults[0].count, 3)
        XCTAssertEqual(faults[1].afterRequests, 100)
        assertError(#""fault_injection": [{"device": "pio", "action": "explode"}]"#,
                    "vmm.fault_injection[0].action: \"explode\" is not one of kill, stop, crash")
        assertError(#""fault_injection": [{"device": "virtio-rng0", "action": "kill"}]"#,
                    "vmm.fault_injection[0].device: \"virtio-rng0\" is not a device process of this VM (pio, irqchip)")
        XCTAssertNoThrow(try parse(#""fault_injection": [{"device": "virtio-rng0", "action": "kill"}]"#, extra: #", "entropy": {}"#))
        assertError(#""fault_injection": [{"action": "kill"}]"#,
                    "vmm.fault_injection[0].device: missing (the device process: pio, irqchip, virtio-blk0, ...)")
    }

    func testCommandLineFaults() throws {
        let f = try ConfigParser.fault(commandLine: "pio:kill,every_ms=50,count=100")
        XCTAssertEqual(f.device, "pio")
        XCTAssertEqual(f.action, .kill)
        XCTAssertEqual(f.everyMs, 50)
        XCTAssertEqual(f.count, 100)
        XCTAssertThrowsError(try ConfigParser.fault(commandLine: "pio")) {
            XCTAssertEqual(($0 as? ConfigError)?.description,
                           "--inject-fault pio: expected DEVICE:ACTION[,KEY=VALUE...], e.g. pio:kill,every_ms=50,count=100")
        }
        XCTAssertThrowsError(try ConfigParser.fault(commandLine: "pio:kill,every_ms=soon")) {
            XCTAssertEqual(($0 as? ConfigError)?.description, "--inject-fault pio:kill,every_ms=soon: \"every_ms=soon\" is not KEY=NUMBER")
        }
        XCTAssertThrowsError(try ConfigParser.fault(commandLine: "pio:kill,count=0")) {
            XCTAssertEqual(($0 as? ConfigError)?.description, "--inject-fault pio:kill,count=0.count: 0 is out of range 1...1000000")
        }
    }
}
