import BareLoop
import BenchKit
import Foundation
import XCTest

/// The benchmark's floor for a posted write (BareVM.runPosting): every write the guest makes reaches the device
/// thread, with and without the spin census, and the guest's window timings come back whole.
final class BarePostingLoopTests: XCTestCase {
    func testEveryWriteReachesTheDeviceThreadAndTheWindowsAreTimed() throws {
        try Harness.requireKVM()
        let kernel = Array(try Data(contentsOf: URL(fileURLWithPath: try Harness.guest("portloop.elf"))))
        for census in [false, true] {
            let result = try BareVM(kernel: kernel, cmdline: "window=1000 iters=20500 op=out port=1023").runPosting(census: census)
            let output = String(decoding: result.output, as: UTF8.self)
            XCTAssertEqual(result.exitStatus, 1, output)  // debug-exit with 0
            XCTAssertEqual(result.posted, 20_500, "census \(census): every port-1023 write, and nothing else, was taken")
            let timing = try XCTUnwrap(GuestTiming.parse(output), output)
            XCTAssertEqual(timing.iterations, 20_500)
            XCTAssertEqual(timing.window, 1000)
            XCTAssertEqual(timing.windows.count, 20, "whole windows only")
            XCTAssertLessThanOrEqual(timing.windows.reduce(0, +), timing.cycles)
            XCTAssertNotNil(timing.steadyNanosecondsPerIteration(tscKHz: result.tscKHz))
        }
    }
}
