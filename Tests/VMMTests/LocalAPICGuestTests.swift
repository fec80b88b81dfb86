import Foundation
import XCTest

/// The local APIC's base MSR, software disable, destinations and timer modes end to end (issue 16, item 6): the
/// `apicbase` guest on one vCPU, `smp shorthands=1` on two.
final class LocalAPICGuestTests: GuestTestCase {
    func testAPICBaseDisableReenableRelocateSVRShorthandsAndTimerModesOnOneVCPU() throws {
        // KVM applies the WRMSR (and the CPUID APIC bit) itself; the vcpu process follows kvm_run.apic_base: a
        // disabled APIC has no page and the irqchip resets it, a moved one answers at its new page only.
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("apicbase.elf"), args: ""))
        XCTAssertEqual(run.wait(timeout: 60), 1, run.stderr)
        XCTAssertEqual(run.stdout, "apicbase: msr=1 x2apic=1 off=1 reset=1 moved=1 back=1 svr=1 short=1,1,0,1,1,0 timer=1\n")
    }

    func testDestinationShorthandsAndBroadcastsWithTwoVCPUs() throws {
        // all including self, all excluding self, physical 0xff, logical 0xff, self, logical ID 2: BSP then AP.
        let run = try Harness.run(config: Harness.config(kernel: try Harness.guest("smp.elf"), args: "shorthands=1", vcpus: 2))
        XCTAssertEqual(run.wait(timeout: 60), 1, run.stderr)
        XCTAssertTrue(run.stdout.hasSuffix("smp: shorthands=11,01,11,11,10,01\n"), run.stdout)
    }
}
