import XCTest
@testable import Processes

/// The vCPU's own TPR copy, which gates injection (SDM vol. 3, 11.8.3.1: a vector is delivered only when its
/// priority class is above the processor priority's).
final class TaskPriorityTests: XCTestCase {
    func testHoldsBackVectorsNotAboveItsClassAndSaysWhenItWentDown() {
        var tpr = TaskPriority()
        XCTAssertFalse(tpr.holdsBack(0x20), "TPR 0 holds nothing back")
        XCTAssertFalse(tpr.set(0x55), "raised")
        XCTAssertTrue(tpr.holdsBack(0x51), "same class")
        XCTAssertTrue(tpr.holdsBack(0x5f))
        XCTAssertFalse(tpr.holdsBack(0x60))
        XCTAssertEqual(tpr.priorityClass, 5, "CR8")
        XCTAssertFalse(tpr.set(0x50), "the sub-class went down, the class did not")
        XCTAssertTrue(tpr.set(0x4f))
        XCTAssertFalse(tpr.holdsBack(0x51))
        XCTAssertFalse(tpr.set(0xf0))
        XCTAssertTrue(tpr.holdsBack(0xff), "TPR 0xf0 holds back every vector")
    }
}
