import BareLoop
import CKVM
import Foundation
import KVM
import XCTest

/// KVM's ring of coalesced writes, on real KVM: a guest's writes to a coalesced port do not exit, they wait in the
/// ring in order, and a write that finds the ring full exits as before; a read of the port still exits.
final class CoalescedWriteRingTests: XCTestCase {
    func testWritesToACoalescedPortWaitInTheRingAndAFullRingExits() throws {
        if access("/dev/kvm", R_OK | W_OK) != 0 {
            FileHandle.standardError.write(Data("SKIPPED: /dev/kvm is not usable here; this test needs real KVM\n".utf8))
            throw XCTSkip("SKIPPED: /dev/kvm is not usable here")
        }
        let kernel = Array(try Data(contentsOf: URL(fileURLWithPath: try GuestPageFaultTests.guestDirectory.get() + "/portloop.elf")))
        let writes = 1_000
        let bare = try BareVM(kernel: kernel, cmdline: "window=100 iters=\(writes) op=out port=1023")
        guard let ring = bare.vcpu.coalescedWriteRing() else {
            FileHandle.standardError.write(Data("SKIPPED: this host's KVM has no coalesced port writes\n".utf8))
            throw XCTSkip("SKIPPED: no KVM_CAP_COALESCED_PIO")
        }
        try bare.vcpu.vm.coalesceWrites(at: 1023, size: 1, port: true)
        XCTAssertTrue(ring.isEmpty)

        var queued = 0, exited = 0, fullRings = 0
        loop: while true {
            let reason = try bare.vcpu.runOnce()
            var drained = 0
            ring.drain { write in
                XCTAssertEqual(write, CoalescedWriteRing.Write(address: 1023, size: 1, value: 0, port: true))
                drained += 1
            }
            queued += drained
            XCTAssertTrue(ring.isEmpty)
            switch Int32(reason) {
            case KVM_EXIT_IO:
                let io = vmm_run_io(bare.vcpu.run)
                let data = bare.vcpu.ioData
                if io.direction == UInt8(KVM_EXIT_IO_IN) {
                    data.storeBytes(of: io.port == 0x3fd ? UInt8(0x60) : 0xff, as: UInt8.self)  // the UART's LSR: ready
                } else if io.port == 1023 {
                    // KVM queued what it could; this write found the ring full (one slot stays free).
                    XCTAssertEqual(UInt32(drained), VMM_KVM_COALESCED_MMIO_MAX - 1)
                    exited += 1
                    fullRings += 1
                } else if io.port == 0xf4 {
                    break loop
                }
            case KVM_EXIT_HLT: break loop
            default: XCTFail("exit reason \(reason)")
            }
        }
        XCTAssertEqual(queued + exited, writes, "every write, once")
        XCTAssertEqual(fullRings, writes / Int(VMM_KVM_COALESCED_MMIO_MAX))
        XCTAssertEqual(queued, writes - fullRings, "only the writes that found the ring full exited")
    }
}
