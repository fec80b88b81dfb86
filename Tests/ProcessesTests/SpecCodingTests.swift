import FoundationEssentials
import Machine
import X86
import XCTest
@testable import Processes

/// The role specs' wire form (SpecCoding): what the supervisor writes is what a helper reads back, in the same JSON
/// that Foundation's coders read and write for the same types, and a spec that does not fit its type is refused
/// with the member's path.
final class SpecCodingTests: XCTestCase {
    private let channel = ChannelSpec(memoryFD: 3, lanes: 2, capacity: 64, stateSize: 4096, deviceDoorbellFD: 4, responseDoorbellFDs: [5, 6])
    private let waiting = WaitingSpec(maxSpinMicroseconds: 300, censusFD: 9, seat: 3)

    private func sandbox(_ uid: UInt32?) -> SandboxSpec {
        SandboxSpec(policyName: "virtio-blk.policy", policyText: "# why\nread: 1\t# \"quoted\" \\ and ünïcode\n\u{1}",
                    mode: .kill, uid: uid, gid: uid, faultSyscall: nil, crashOnSignal: true, addressSpaceLimit: .max)
    }

    private var virtio: VirtioSpec {
        VirtioSpec(channel: channel, windowBase: 0xd000_0000, line: InterruptLineSpec(channel: channel, lane: 1), ramFD: 7,
                   memSizeMiB: 128, queueNotifyFDs: [10, 11], controlFD: 12,
                   block: BlockDeviceSpec(imageFD: 13, driveID: "root \"disk\"", readOnly: true, writeback: false, updatesFD: -1, replaced: false),
                   network: nil, vsock: VsockDeviceSpec(listenerFD: 14, brokerFD: 15, guestCID: .max), takeoverFD: nil,
                   testCommitDelayMicroseconds: 0, testQueueDelayMicroseconds: nil, waiting: waiting, logLevel: 2, sandbox: sandbox(64000))
    }

    private var vcpu: VCPUSpec {
        get throws {
            let layout = try MachineLayout.with(virtio: [.virtioBlock])
            return VCPUSpec(kvmFD: 3, ramFD: 4, memSizeMiB: 256, controlFD: 5, vcpuCount: 2,
                            entry: EntryState(mode: .long64, rip: 0x100_0000, gdtBase: 0x500),
                            cpuid: [CPUIDRuleSpec(leaf: 1, subleaf: 0, register: "ecx", clear: 1 << 13, set: 0)], trackDirtyPages: false,
                            channels: [channel], servers: layout.servers, routes: layout.routes, mailboxFD: 6, kickFDs: [7, 8],
                            timerFDs: [9, 10], statisticsFD: 11, queueNotifications: [QueueNotificationSpec(fd: 12, address: 0xd000_0050, queue: 0)],
                            pauseFD: nil, waiting: waiting, deviceTimeoutMs: 500, logLevel: 3, sandbox: sandbox(nil))
        }
    }

    /// Our text read back and written again is the same text; Foundation's decoder reads our text, and what its
    /// encoder writes of that value we read back to the same text: the two agree on every member.
    private func assertRoundTrips<Spec: RoleSpec>(_ spec: Spec, file: StaticString = #filePath, line: UInt = #line) throws {
        let text = try spec.encoded()
        XCTAssertEqual(try Spec.decode(text).encoded(), text, file: file, line: line)
        let viaFoundation = try JSONDecoder().decode(Spec.self, from: Data(text.utf8))
        let foundationText = String(decoding: try JSONEncoder().encode(viaFoundation), as: UTF8.self)
        XCTAssertEqual(try Spec.decode(foundationText).encoded(), text, file: file, line: line)
    }

    func testSpecsReadBackAsWritten() throws {
        try assertRoundTrips(virtio)
        // The routes' exceptions (dictionaries) are written in their offsets' order: the same text every time.
        try assertRoundTrips(try vcpu)
        var other = virtio
        other.block = nil
        other.network = NetworkDeviceSpec(tapFD: 16, ifaceID: "eth0", mac: [2, 0, 0, 0, 0, 1], tapOffloads: 0x1f)
        other.takeoverFD = 17
        try assertRoundTrips(other)
        let decoded = try VirtioSpec.decode(try virtio.encoded())
        XCTAssertEqual(decoded.vsock?.guestCID, .max)
        XCTAssertEqual(decoded.block?.driveID, "root \"disk\"")
        XCTAssertEqual(decoded.sandbox.policyText, sandbox(nil).policyText)
        XCTAssertEqual(decoded.sandbox.addressSpaceLimit, .max)
        XCTAssertNil(decoded.network)
        XCTAssertNil(decoded.testQueueDelayMicroseconds)
        XCTAssertEqual(decoded.testCommitDelayMicroseconds, 0)
    }

    /// The built-in policy goes by its name: its text, sent in every spec before, stayed in each helper's heap.
    func testTheBuiltinPolicyIsNotSent() throws {
        var spec = virtio
        spec.sandbox.policyText = nil
        let json = try spec.encoded()
        XCTAssertFalse(json.contains("policyText"), json)
        XCTAssertFalse(json.contains("read: 1"), json)
        XCTAssertNil(try VirtioSpec.decode(json).sandbox.policyText)
    }

    func testASpecThatDoesNotFitIsRefusedWithItsPath() throws {
        let text = try virtio.encoded()
        func refusal<Spec: RoleSpec>(_ edited: String, as _: Spec.Type = VirtioSpec.self) -> String {
            do { _ = try Spec.decode(edited); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertEqual(refusal(text.replacing(#""ramFD":7"#, with: #""ramFD":4294967296"#)),
                       "ramFD: 4294967296 does not fit Int32")
        XCTAssertEqual(refusal(text.replacing(#""lanes":2"#, with: #""lanes":"2""#)),
                       "channel.lanes: expected a number, found a string")
        XCTAssertEqual(refusal(text.replacing(#""queueNotifyFDs":[10,11]"#, with: #""queueNotifyFDs":[10,null]"#)),
                       "queueNotifyFDs.1: expected a number, found null")
        XCTAssertEqual(refusal(text.replacing(#""memSizeMiB":128,"#, with: "")), "memSizeMiB: missing")
        XCTAssertTrue(refusal(String(text.dropLast())).hasPrefix("spec: invalid JSON"), refusal(String(text.dropLast())))
        // An MMIO range's exceptions are offset and ordering in turn: an offset alone is refused.
        let routes = try vcpu.encoded()
        XCTAssertTrue(routes.contains(#"768,"synchronous"]"#), routes)
        let torn = refusal(routes.replacing(#"768,"synchronous"]"#, with: "768]"), as: VCPUSpec.self)
        XCTAssertTrue(torn.contains("offset 768 has no ordering"), torn)
        let badMode = refusal(text.replacing(#""mode":"kill""#, with: #""mode":"off""#))
        XCTAssertTrue(badMode.contains("invalid") && badMode.contains("off"), badMode)
    }
}
