import CKVM
import System
import XCTest
@testable import Processes

final class VCPUStatisticsTests: XCTestCase {
    func testWritersCountPerVCPUAndTheReadOnlyMappingSumsThem() throws {
        let fd = try VCPUStatistics.create(vcpus: 3)
        let vcpuSide = try VCPUStatistics(attaching: fd.raw, vcpus: 3, writable: true)
        let supervisorSide = try VCPUStatistics(attaching: fd.raw, vcpus: 3, writable: false)
        let w0 = vcpuSide.writer(vcpu: 0), w2 = vcpuSide.writer(vcpu: 2)
        w0.ran(nanoseconds: 1_000, exit: UInt32(KVM_EXIT_IO), at: 9_000)
        w0.handled(UInt32(KVM_EXIT_IO), nanoseconds: 250)
        w0.ran(nanoseconds: 2_000, exit: UInt32(KVM_EXIT_HLT), at: 20_000)
        w0.handled(UInt32(KVM_EXIT_HLT), nanoseconds: 5_000_000)
        w2.ran(nanoseconds: 3_000, exit: UInt32(KVM_EXIT_IO), at: 8_000)
        w2.handled(UInt32(KVM_EXIT_IO), nanoseconds: 750)
        // A reason beyond the table counts as an entry, not by reason, and never writes outside the block.
        w2.ran(nanoseconds: 10, exit: 1000, at: 30_000)
        w2.handled(1000, nanoseconds: 10)

        let v0 = supervisorSide.read(vcpu: 0)
        XCTAssertEqual(v0.entries, 2)
        XCTAssertEqual(v0.runNanoseconds, 3_000)
        XCTAssertEqual(v0.byReason.map(\.name), ["io", "hlt"])
        XCTAssertEqual(v0.firstExitAt, 9_000, "the first exit's time, kept")
        XCTAssertEqual(supervisorSide.read(vcpu: 1), VCPUStatistics.Totals(), "vCPU 1 wrote nothing")
        XCTAssertEqual(supervisorSide.read(vcpu: 3), VCPUStatistics.Totals(), "out of range reads nothing")
        let all = supervisorSide.total()
        XCTAssertEqual(all.entries, 4)
        XCTAssertEqual(all.runNanoseconds, 6_010)
        XCTAssertEqual(all.firstExitAt, 8_000, "the earliest vCPU's first exit; one that never ran does not count")
        XCTAssertEqual(all.exits[Int(KVM_EXIT_IO)], 2)
        XCTAssertEqual(all.handlingNanoseconds[Int(KVM_EXIT_IO)], 1_000)
        XCTAssertEqual(all.summary, "KVM_RUN 4 entries, 0.0 ms; exits: io 2 (0.0 ms), hlt 1 (5.0 ms)")
    }

    func testReasonNamesFollowTheMetrics() {
        XCTAssertEqual(VCPUStatistics.name(ofReason: Int(KVM_EXIT_IRQ_WINDOW_OPEN)), "irq_window")
        XCTAssertEqual(VCPUStatistics.name(ofReason: Int(KVM_EXIT_INTR)), "kick")
        XCTAssertEqual(VCPUStatistics.name(ofReason: Int(KVM_EXIT_INTERNAL_ERROR)), "emulation")
        XCTAssertEqual(VCPUStatistics.name(ofReason: 63), "reason_63")
    }
}
