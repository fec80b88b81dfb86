import XCTest
@testable import Processes

/// When the vCPU single-steps for an interrupt window, and what it makes of IA32_APIC_BASE as KVM reports it.
final class WindowStepperTests: XCTestCase {
    func testStepsWhileAVectorWaitsWithinABudgetThatOtherExitsRenew() {
        var stepper = WindowStepper()
        XCTAssertNil(stepper.change(wanted: false), "nothing waits: guest debugging stays as it is")
        XCTAssertEqual(stepper.change(wanted: true), true, "a vector waits: step")
        XCTAssertNil(stepper.change(wanted: true), "already stepping")
        for _ in 0..<(WindowStepper.budget - 1) {
            stepper.stepped()
            XCTAssertNil(stepper.change(wanted: true))
        }
        stepper.stepped()
        XCTAssertEqual(stepper.change(wanted: true), false, "budget spent: back to the millisecond kicks")
        XCTAssertNil(stepper.change(wanted: true), "no more steps until the guest exits otherwise")
        stepper.exitedOtherwise()
        XCTAssertEqual(stepper.change(wanted: true), true, "an exit of another kind renews the budget")
        stepper.stepped()
        XCTAssertEqual(stepper.change(wanted: false), false, "injected: stop stepping")
        XCTAssertEqual(stepper.steps, WindowStepper.budget + 1)
    }

    func testAPICBaseChangesAreThePageAndTheEnableBitOnly() {
        var base = APICBase()
        XCTAssertNil(base.change(reported: 0xfee0_0900), "the BSP flag is not a change")
        XCTAssertNil(base.change(reported: 0xfee0_0800))
        XCTAssertEqual(base.change(reported: 0xfee0_0100), 0xfee0_0100, "disabled")
        XCTAssertNil(base.change(reported: 0xfee0_0000))
        XCTAssertEqual(base.change(reported: 0xfed0_0900), 0xfed0_0900, "enabled at another page")
        XCTAssertEqual(base.change(reported: 0xfee0_0900), 0xfee0_0900)
    }
}
