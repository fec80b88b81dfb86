import CLinux
import Machine
import XCTest
@testable import Processes

final class ControlMessageTests: XCTestCase {
    static let all: [ControlMessage] = [
        .guestExit(status: 1), .guestExit(status: 511),
        .vcpuStopped(.halted), .vcpuStopped(.tripleFault), .vcpuStopped(.internalError(suberror: 1)),
        .vcpuStopped(.failedEntry(reason: 0x8000_0021)), .vcpuStopped(.unhandledExit(reason: 63)),
        .vcpuStopped(.systemEvent(type: 2)), .vcpuStopped(.setupFailed), .vcpuStopped(.runFailed),
        .seccompKilled(syscall: 257), .seccompLogged(syscall: 0),
        .guest(.reset), .guest(.panic), .guest(.booted), .vcpuPaused(true), .vcpuPaused(false),
    ]

    func testEveryMessageSurvivesItsRecord() {
        for m in Self.all {
            XCTAssertEqual(m.record.count, ControlMessage.recordSize)
            XCTAssertEqual(ControlMessage(record: m.record), m)
        }
        XCTAssertEqual(Set(Self.all.map { Array($0.record.prefix(4)) }).count, 13, "one kind per message shape")
    }

    /// The SIGSYS handler builds its record in C from the same definitions; what it sends must decode here.
    func testTheSIGSYSHandlersRecordsDecodeAsTheSwiftSideExpects() {
        for (nr, logged) in [(257, false), (2, true), (4095, false)] {
            var words = [UInt32](repeating: 0xdead_beef, count: 4)
            vmm_seccomp_record(Int32(nr), logged ? 1 : 0, &words)
            let bytes = words.flatMap { w in withUnsafeBytes(of: w.littleEndian, Array.init) }
            XCTAssertEqual(ControlMessage(record: bytes), logged ? .seccompLogged(syscall: Int32(nr)) : .seccompKilled(syscall: Int32(nr)))
            XCTAssertEqual(bytes, (logged ? ControlMessage.seccompLogged(syscall: Int32(nr)) : .seccompKilled(syscall: Int32(nr))).record)
        }
    }

    func testRecordsNoHelperWouldWriteAreRefused() {
        func record(_ kind: UInt32, _ arg: UInt32, _ value: UInt64 = 0) -> [UInt8] {
            withUnsafeBytes(of: kind.littleEndian, Array.init) + withUnsafeBytes(of: arg.littleEndian, Array.init)
                + withUnsafeBytes(of: value.littleEndian, Array.init)
        }
        XCTAssertNil(ControlMessage(record: record(0, 0)), "kind 0")
        XCTAssertNil(ControlMessage(record: record(99, 0)), "unknown kind")
        XCTAssertNil(ControlMessage(record: record(0x8000_0001, 0)), "a kind that is no Int32")
        XCTAssertNil(ControlMessage(record: record(UInt32(VMM_CONTROL_GUEST_EXIT), 2)), "even statuses are vmm's own")
        XCTAssertNil(ControlMessage(record: record(UInt32(VMM_CONTROL_GUEST_EXIT), 513)), "beyond (255 << 1) | 1")
        XCTAssertNil(ControlMessage(record: record(UInt32(VMM_CONTROL_SECCOMP_KILLED), 4096)), "no such syscall")
        XCTAssertNil(ControlMessage(record: record(UInt32(VMM_CONTROL_GUEST_EVENT), 4)), "no such guest event")
        XCTAssertNil(ControlMessage(record: record(UInt32(VMM_CONTROL_VCPU_PAUSED), 2)), "paused is 0 or 1")
        XCTAssertNil(ControlMessage(record: Array(record(UInt32(VMM_CONTROL_VCPU_HALTED), 0).prefix(15))), "short")
    }

    func testEachRoleMaySendOnlyItsOwnKinds() {
        for m in Self.all {
            let senders = Role.allCases.filter { m.mayBeSent(by: $0) }
            switch m {
            case .seccompKilled, .seccompLogged: XCTAssertEqual(senders, Role.allCases, "\(m)")
            case .vcpuStopped: XCTAssertEqual(senders, [.vcpu], "a device cannot claim the guest powered off: \(m)")
            case .vcpuPaused: XCTAssertEqual(senders, [.vcpu], "only the vcpu process answers a pause: \(m)")
            case .guestExit, .guest: XCTAssertEqual(senders, [.pio], "\(m)")
            }
        }
    }
}

final class ExitStatusTests: XCTestCase {
    func testVMMsOwnStatusesAreEvenAndDistinct() {
        let own: [ExitStatus] = [.poweredOff, .configError, .hostSetupFailed, .tripleFault, .unhandledExit, .helperDied,
                                 .runFailed, .guestReboot, .guestPanic, .guestExitOutOfRange(71)]
        XCTAssertEqual(Set(own.map(\.code)).count, own.count)
        XCTAssertTrue(own.allSatisfy { $0.code % 2 == 0 }, "odd statuses belong to the guest's debug-exit")
        XCTAssertEqual(ExitStatus.interrupted.code, 128 + 2)
        XCTAssertEqual(ExitStatus.terminated.code, 128 + 15)
        XCTAssertEqual(ExitStatus.guestExit(43).code, 43)
        XCTAssertTrue((0...63).allSatisfy { ($0 << 1) | 1 < 128 }, "every debug-exit status vmm passes through is below the signal range")
    }
}

final class TSCDeadlineTests: XCTestCase {
    func testAWriteBecomesNanosecondsFromNowAndAReadTheArmedDeadline() {
        var t = TSCDeadline(tscKHz: 2_000_000)  // 2 GHz: 2 ticks a nanosecond
        XCTAssertEqual(t.write(3_000, now: 1_000), 1_000)
        XCTAssertEqual(t.read(now: 2_999), 3_000)
        XCTAssertEqual(t.read(now: 3_000), 0, "0 once it has passed")
        XCTAssertEqual(t.write(500, now: 1_000), 0, "a deadline in the past is due at once")
        XCTAssertNil(t.write(0, now: 1_000), "a write of 0 disarms")
        XCTAssertEqual(t.read(now: 0), 0)
        XCTAssertEqual(t.write(UInt64.max, now: 0), UInt64.max >> 1, "far deadlines are clamped, never a trap")
    }
}
