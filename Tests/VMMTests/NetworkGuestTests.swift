import Foundation
import XCTest

/// virtio-net end to end on a real tap, driven by a small test guest (Tests/Guests/virtionet.c) at CPL0: UDP both
/// ways through mergeable receive buffers, hostile transmit chains, a receive chain the device cannot write. No
/// Linux: each run takes about a second.
final class NetworkGuestTests: GuestTestCase {
    /// The answer the host peer gives every datagram: 1000 bytes that depend on the request's length.
    static func answer(_ request: Data) -> Data { Data((0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7 + request.count) }) }

    static func fnv(_ data: Data) -> String {
        var h: UInt32 = 2_166_136_261
        for b in data { h = (h ^ UInt32(b)) &* 16_777_619 }
        return "0x" + String(repeating: "0", count: 8) + String(format: "%08x", h)
    }

    private func config(_ tap: TestTap, port: UInt16, hostDevName: String? = nil, extra: String = "") throws -> String {
        """
        {"boot-source": {"kernel_image_path": "\(try Harness.guest("virtionet.elf"))",
                         "boot_args": "ip=\(tap.guestAddress) host=\(tap.hostAddress) hostmac=\(tap.hostMAC) port=\(port)"},
         "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
         "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "\(hostDevName ?? tap.name)", "guest_mac": "\(tap.guestMAC)"\(extra)}],
         "vmm": {"serial": {"output": "stdout", "input": "none"}}}
        """
    }

    private func runUDPScenario(options: [String] = []) throws {
        let tap = try TestTap()
        let peer = try UDPPeer(address: tap.hostAddress, answer: Self.answer)
        let run = try Harness.run(config: try config(tap, port: peer.port), options: options)
        XCTAssertEqual(run.wait(timeout: 120), 1, run.stdout + run.stderr)
        let answer = Self.fnv(Self.answer(Data("pingN".utf8)))
        // Features: CSUM, GUEST_CSUM, MAC, GUEST_TSO4/6, HOST_TSO4/6, MRG_RXBUF, STATUS, INDIRECT_DESC, EVENT_IDX
        // (the low half: a tap here supports checksum and TSO offloads).
        XCTAssertEqual(run.stdout, """
            virtio-net: features=0x00000000300199a3 mac=\(tap.guestMAC) status=1
            virtio-net: ping1 -> len=1000 buffers=5 fnv=\(answer)
            virtio-net: hostile tx -> header-only used=0 oversized used=0 status=0x000000000000000f
            virtio-net: ping2 -> len=1000 buffers=5 fnv=\(answer)
            virtio-net: rx chain without writable space -> NEEDS_RESET

            """)
        // The hostile frames never reached the host as datagrams; the three pings did, in order.
        XCTAssertEqual(peer.received.map { String(decoding: $0, as: UTF8.self) }, ["ping1", "ping2", "ping3"])
        XCTAssertFalse(run.stderr.contains("policy denies"), run.stderr)
        XCTAssertEqual(run.stderr, "", "nothing above the default log level (warning)")
    }

    func testUDPBothWaysThroughMergeableBuffersAndHostileChains() throws {
        try runUDPScenario()
    }

    func testSeccompLogModeReportsNoDenial() throws {
        try runUDPScenario(options: ["--seccomp-log"])
    }

    /// vmm attaches to an existing tap: a missing one, a tun, or a tap another VM holds is an error naming the
    /// field, before anything starts.
    func testTapErrorsNameTheField() throws {
        let tap = try TestTap()
        let missing = try Harness.run(config: try config(tap, port: 9, hostDevName: "vmmnosuchtap"))
        XCTAssertEqual(missing.wait(timeout: 20), 4, missing.stderr)
        XCTAssertTrue(missing.stderr.contains(#"network-interfaces[0].host_dev_name: there is no network interface "vmmnosuchtap""#), missing.stderr)

        let tun = try TestTap(mode: "tun")
        let wrongKind = try Harness.run(config: try config(tap, port: 9, hostDevName: tun.name))
        XCTAssertEqual(wrongKind.wait(timeout: 20), 4, wrongKind.stderr)
        XCTAssertTrue(wrongKind.stderr.contains("network-interfaces[0].host_dev_name: \(tun.name): TUNSETIFF: not a tap device"), wrongKind.stderr)

        let first = try Harness.run(config: try config(tap, port: 9).replacingOccurrences(of: "virtionet.elf", with: "portloop.elf")
            .replacingOccurrences(of: "ip=\(tap.guestAddress)", with: "iters=100000000000 ip=\(tap.guestAddress)"))
        XCTAssertTrue(first.waitForOutput("portloop: ready"), first.stderr)
        defer {
            kill(first.process.processIdentifier, SIGINT)
            XCTAssertEqual(first.wait(timeout: 20), 130, first.stderr)
        }
        let second = try Harness.run(config: try config(tap, port: 9))
        XCTAssertEqual(second.wait(timeout: 20), 4, second.stderr)
        XCTAssertTrue(second.stderr.contains("network-interfaces[0].host_dev_name: \(tap.name): another VM or program has the tap open"), second.stderr)
    }
}
