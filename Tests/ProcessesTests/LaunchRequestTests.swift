import Machine
import XCTest
@testable import Processes

/// The launcher's request framing: what the supervisor sends is what the launcher and the blank read back, and a
/// malformed request is refused, not half-read.
final class LaunchRequestTests: XCTestCase {
    func testARequestReadsBackAsSent() {
        let request = LaunchRequest(role: .virtioBlock, namespaces: 0x7e02_0000, fdCount: 17,
                                    environment: ["SWIFT_BACKTRACE=enable=no", "PATH=/usr/bin:/bin", "EMPTY="],
                                    spec: #"{"logLevel":2,"driveID":"root \" disk"}"#)
        XCTAssertEqual(LaunchRequest(decoding: request.encoded()[...]), request)
        let bare = LaunchRequest(role: .pio, namespaces: 0, fdCount: 0, environment: [], spec: "")
        XCTAssertEqual(LaunchRequest(decoding: bare.encoded()[...]), bare)
    }

    func testMalformedRequestsAreRefused() {
        func decode(_ fields: [String]) -> LaunchRequest? { LaunchRequest(decoding: Array(fields.joined(separator: "\0").utf8)[...]) }
        XCTAssertNotNil(decode(["pio", "0", "3", "0", "{}"]))
        XCTAssertNil(decode(["shell", "0", "3", "0", "{}"]), "an unknown role")
        XCTAssertNil(decode(["pio", "-1", "3", "0", "{}"]), "namespaces not a number")
        XCTAssertNil(decode(["pio", "0", "5000", "0", "{}"]), "more descriptors than a process may take")
        XCTAssertNil(decode(["pio", "0", "3", "2", "A=1", "{}"]), "fewer environment entries than announced")
        XCTAssertNil(decode(["pio", "0", "3", "0", "{}", "extra"]), "a field too many")
        XCTAssertNil(decode(["pio", "0", "3"]), "too short")
        XCTAssertNil(LaunchRequest(decoding: Array("retire".utf8)[...]))
    }
}
