import XCTest
import Devices
@testable import Machine

final class MachineLayoutTests: XCTestCase {
    let layout = MachineLayout.standard

    func testDeviceRolesInChannelOrder() {
        XCTAssertEqual(layout.servers, [Server(.pio), Server(.irqchip)], "the vcpu process's channel i is servers[i]")
    }

    func testStandardPortsGoToThePIOProcess() {
        let router = AccessRouter(layout.routes)
        let pio = layout.servers.firstIndex(of: Server(.pio))
        for port: UInt16 in [0x3f8, 0x3ff, 0xf4, 0x60, 0x64, 0x70, 0x71, 0x3f0] {
            XCTAssertEqual(router.channel(forPort: port), pio, "port 0x\(String(port, radix: 16))")
        }
        for port: UInt16 in [0x3f7, 0x400, 0x20, 0x21, 0x40, 0xcf8, 0xcfc, 0x61, 0x72, 0xffff] {
            XCTAssertNil(router.channel(forPort: port), "nobody owns 0x\(String(port, radix: 16)): it floats")
        }
    }

    func testAPICWindowsGoToTheIRQChipWithTheirWriteOrdering() throws {
        let router = AccessRouter(layout.routes)
        let irqchip = try XCTUnwrap(layout.servers.firstIndex(of: Server(.irqchip)))
        let eoi = try XCTUnwrap(router.mmio(LocalAPIC.defaultBase + LocalAPIC.Register.eoi))
        XCTAssertEqual(eoi.channel, irqchip)
        XCTAssertEqual(eoi.writes, .afterPostedWritesElsewhere, "an EOI must not overtake a device's line change")
        XCTAssertEqual(router.mmio(LocalAPIC.defaultBase + LocalAPIC.Register.icrLow)?.writes, .synchronous,
                       "an IPI is pending when its ICR write completes")
        XCTAssertEqual(router.mmio(LocalAPIC.defaultBase + 0x80)?.writes, .posted, "TPR and the rest are posted")
        XCTAssertEqual(router.mmio(IOAPIC.defaultBase + 0x10)?.writes, .synchronous, "an unmask cannot be overtaken")
        XCTAssertEqual(router.mmio(IOAPIC.defaultBase + 0x40)?.writes, .synchronous, "nor an EOI")
        XCTAssertEqual(router.mmio(IOAPIC.defaultBase)?.writes, .posted, "selecting a register is ordered by the ring")
        XCTAssertEqual(router.mmio(IOAPIC.defaultBase + 0xfff)?.channel, irqchip)
        XCTAssertEqual(router.mmioChannel(IOAPIC.defaultBase + 0xfff), irqchip, "a read's lookup agrees")
        XCTAssertNil(router.mmioChannel(IOAPIC.defaultBase + 0x1000))
        XCTAssertNil(router.mmio(IOAPIC.defaultBase + 0x1000))
        XCTAssertNil(router.mmio(LocalAPIC.defaultBase - 1))
        XCTAssertNil(router.mmio(0xd000_0000))
    }

    /// KVM queues writes only where they are posted anyway: COM1's registers and the IOAPIC's register select.
    func testCoalescedWritesAreCOM1sAndTheIOAPICsRegisterSelectOnly() throws {
        XCTAssertEqual(layout.routes.coalesced, [CoalescedZone(address: 0x3f8, size: 8, port: true),
                                                 CoalescedZone(address: IOAPIC.defaultBase, size: 4, port: false)])
        var l = try MachineLayout(devices: [.init(name: "a", server: Server(.pio), ports: 0x100...0x107)])
        let window = MachineLayout.MMIOWindow(base: 0x1000, size: 0x1000, writes: .synchronous, exceptions: [0x10: .posted])
        for bad in [CoalescedZone(address: 0x100, size: 8, port: true),  // a's ports, not b's
                    CoalescedZone(address: 0x1000, size: 4, port: false),  // a synchronous register
                    CoalescedZone(address: 0x1ffe, size: 4, port: false),  // past the window
                    CoalescedZone(address: 0x1010, size: 0, port: false)] {
            XCTAssertThrowsError(try l.add(.init(name: "b", server: Server(.irqchip), ports: 0x200...0x201, mmio: window, coalescedWrites: [bad])),
                                 "\(bad)") {
                XCTAssertEqual($0 as? MachineLayout.LayoutError, .coalescedNotPosted("b"))
            }
        }
        try l.add(.init(name: "b", server: Server(.irqchip), ports: 0x200...0x201, mmio: window,
                        coalescedWrites: [CoalescedZone(address: 0x200, size: 2, port: true), CoalescedZone(address: 0x1010, size: 4, port: false)]))
        XCTAssertEqual(l.routes.coalesced.count, 2)
    }

    func testCOM1RaisesISAIRQ4() {
        XCTAssertEqual(layout.irq(of: "com1"), 4)
        XCTAssertNil(layout.irq(of: "rtc"))
        XCTAssertEqual(layout.irq(of: "i8042-data"), 1)
    }

    func testOverlappingDevicesAreRefused() throws {
        var l = try MachineLayout(devices: [.init(name: "a", server: Server(.pio), ports: 0x100...0x107, irq: 5)])
        XCTAssertThrowsError(try l.add(.init(name: "b", server: Server(.pio), ports: 0x107...0x108))) {
            XCTAssertEqual($0 as? MachineLayout.LayoutError, .overlap("a", "b"))
        }
        XCTAssertThrowsError(try l.add(.init(name: "c", server: Server(.irqchip), irq: 5))) {
            XCTAssertEqual($0 as? MachineLayout.LayoutError, .pinTaken(5, "a", "c"))
        }
        try l.add(.init(name: "w", server: Server(.irqchip), mmio: .init(base: 0x1000, size: 0x1000, writes: .posted)))
        XCTAssertThrowsError(try l.add(.init(name: "x", server: Server(.irqchip), mmio: .init(base: 0x1fff, size: 1, writes: .posted))))
        try l.add(.init(name: "y", server: Server(.irqchip), mmio: .init(base: 0x2000, size: 0x1000, writes: .posted)))
        XCTAssertEqual(l.devices.map(\.name), ["a", "w", "y"])
    }

    func testVirtioDevicesGetAWindowAPinAndAProcessEach() throws {
        let l = try MachineLayout.with(virtio: [.virtioBlock, .virtioBlock, .virtioRNG])
        XCTAssertEqual(l.virtioDevices.map(\.name), ["virtio-blk0", "virtio-blk1", "virtio-rng0"])
        XCTAssertEqual(l.virtioDevices.map { $0.mmio?.base }, [0xd000_0000, 0xd000_1000, 0xd000_2000])
        XCTAssertEqual(l.virtioDevices.map(\.irq), [5, 6, 7])
        XCTAssertEqual(l.servers.map(\.description), ["pio", "irqchip", "virtio-blk0", "virtio-blk1", "virtio-rng0"])
        XCTAssertEqual(l.virtioCommandLine,
                       "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7")
        XCTAssertEqual(l.interruptLines.map(\.pin), [4, 1, 5, 6, 7], "COM1's and the keyboard's lanes first, then one per virtio device")
        XCTAssertEqual(l.interruptLines.map(\.server.description), ["pio", "pio", "virtio-blk0", "virtio-blk1", "virtio-rng0"])
        XCTAssertEqual(l.interruptLane(of: "i8042-data"), 1)
        XCTAssertEqual(l.interruptLane(of: "virtio-blk1"), 3)
        let router = AccessRouter(l.routes)
        XCTAssertEqual(router.mmio(0xd000_1050)?.channel, 3, "virtio-blk1's QueueNotify reaches its own channel")
        XCTAssertEqual(router.mmio(0xd000_1050)?.writes, .posted)
        XCTAssertEqual(router.mmio(0xd000_1064)?.writes, .synchronous, "InterruptACK waits for the device")
        XCTAssertNil(router.mmio(0xd000_3000))
        XCTAssertThrowsError(try MachineLayout.with(virtio: Array(repeating: .virtioBlock, count: 20))) {
            XCTAssertEqual($0 as? MachineLayout.LayoutError, .outOfPins("virtio-blk19"))
        }
    }

    func testRoutesSurviveTheTripToTheVCPUProcess() throws {
        let encoded = try JSONEncoder().encode(layout.routes)
        XCTAssertEqual(try JSONDecoder().decode(AccessRoutes.self, from: encoded), layout.routes)
    }
}

final class AccessRouterTests: XCTestCase {
    func testRoutesThatMakeNoSenseFloat() {
        let router = AccessRouter(AccessRoutes(
            ports: [.init(first: 0x10, last: 0x0f, channel: 0),          // empty
                    .init(first: 0x20, last: 0x20, channel: 64),         // a channel the table cannot hold
                    .init(first: 0x30, last: 0x30, channel: -1),
                    .init(first: 0xfffe, last: 0xffff, channel: 2)],
            mmio: [.init(base: 0x1000, size: 0, channel: 0, writes: .posted),
                   .init(base: UInt64.max - 10, size: 100, channel: 0, writes: .posted),  // wraps
                   .init(base: 0x5000, size: 0x10, channel: 99, writes: .posted),
                   .init(base: 0x9000, size: 0x10, channel: 3, writes: .synchronous, exceptions: [4: .posted])]))
        XCTAssertNil(router.channel(forPort: 0x10))
        XCTAssertNil(router.channel(forPort: 0x0f))
        XCTAssertNil(router.channel(forPort: 0x20))
        XCTAssertNil(router.channel(forPort: 0x30))
        XCTAssertEqual(router.channel(forPort: 0xffff), 2)
        XCTAssertNil(router.mmio(0x1000))
        XCTAssertNil(router.mmio(UInt64.max - 5))
        XCTAssertNil(router.mmio(0x5000))
        XCTAssertEqual(router.mmio(0x9000)?.channel, 3)
        XCTAssertEqual(router.mmio(0x9000)?.writes, .synchronous)
        XCTAssertEqual(router.mmio(0x9004)?.writes, .posted, "a listed offset has its own ordering")
        XCTAssertNil(router.mmio(0x9010))
    }
}

final class PostedWritesTests: XCTestCase {
    func testAnAnswerSettlesOnlyItsOwnChannel() {
        var p = PostedWrites()
        XCTAssertEqual(p.all, [])
        p.posted(to: 0)
        p.posted(to: 3)
        p.posted(to: 63)
        XCTAssertEqual(p.all, [0, 3, 63])
        XCTAssertEqual(p.toSettle(before: 3), [0, 63], "the target keeps its own order on its ring")
        p.answered(by: 0)
        XCTAssertEqual(p.toSettle(before: 1), [3, 63])
        p.answered(by: 3)
        p.answered(by: 63)
        XCTAssertEqual(p.toSettle(before: 1), [])
    }
}

final class RoleTests: XCTestCase {
    func testNamesAreWhatPolicyFilesAndPsShow() {
        XCTAssertEqual(Role.allCases.map(\.policyFile), ["vcpu.policy", "pio.policy", "irqchip.policy", "virtio-blk.policy", "virtio-net.policy",
                                                          "virtio-vsock.policy", "virtio-rng.policy"])
        XCTAssertEqual(Role.virtioVsock.processName, "vmm-vsock")
        XCTAssertEqual(Role.pio.processName, "vmm-pio")
        XCTAssertTrue(Role.allCases.allSatisfy { $0.processName.utf8.count <= 15 }, "the kernel keeps 15 characters of a name")
        XCTAssertEqual(Role(rawValue: "irqchip"), .irqchip)
        XCTAssertNil(Role(rawValue: "supervisor"))
    }
}
