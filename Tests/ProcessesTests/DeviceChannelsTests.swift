import Channel
import IRQChipLink
import Machine
import Synchronization
import System
import XCTest
@testable import Processes

/// The vcpu process's ordering rules, on real channels served by device threads: what reaches which device, and
/// in which order, for posted, synchronous and EOI-like writes.
final class DeviceChannelsTests: XCTestCase {
    /// What the devices saw, in one order across them.
    final class RequestLog: Sendable {
        let entries = Mutex<[(String, MessageKind, UInt64)]>([])
        func append(_ e: (String, MessageKind, UInt64)) { entries.withLock { $0.append(e) } }
        func take() -> [(String, MessageKind, UInt64)] { entries.withLock { l in defer { l.removeAll() }; return l } }
    }

    /// A device on its own thread that answers reads and syncs and logs every request with a global order.
    final class RecordingDevice: @unchecked Sendable {
        let name: String
        let memory: FileDescriptor.Box
        let doorbell: EventFD.Box
        let response: EventFD.Box
        let layout = ChannelLayout(lanes: 1, capacity: 16)
        let log: RequestLog
        private let stopped = Atomic<Bool>(false)
        private var thread: OSThread?

        init(name: String, log: RequestLog) throws {
            self.name = name
            self.log = log
            memory = FileDescriptor.Box(try ChannelRegion.create(layout: layout, name: name))
            doorbell = EventFD.Box(try EventFD())
            response = EventFD.Box(try EventFD())
        }

        func client() throws -> DeviceClient {
            DeviceClient(region: try ChannelRegion(attaching: memory.raw, layout: layout), lane: 0, deviceDoorbell: doorbell.raw,
                         responseDoorbell: response.raw, policy: WaitPolicy(maxSpinMicroseconds: 0), timeoutMs: 5000)
        }

        func start() throws {
            let region = try ChannelRegion(attaching: memory.raw, layout: layout)
            thread = try OSThread.start(name: name) { [self] in
                var server = DeviceServer(region: region, deviceDoorbell: doorbell.raw, responseDoorbells: [response.raw],
                                          policy: WaitPolicy(maxSpinMicroseconds: 0))
                while !stopped.load(ordering: .relaxed) {
                    while let (lane, m) = server.next(malformed: { _ in }) {
                        log.append((name, m.operation, m.address))
                        if m.operation.needsResponse { try? server.respond(lane: lane, to: m, data: 0x42) }
                    }
                    _ = try? server.wait(extra: [], timeoutMs: 5)
                }
            }
        }

        func stop() {
            stopped.store(true, ordering: .relaxed)
            thread?.join()
        }
    }

    func testWritesAreOrderedAsTheirWindowsSay() throws {
        let log = RequestLog()
        let pio = try RecordingDevice(name: "pio", log: log)
        let chip = try RecordingDevice(name: "irqchip", log: log)
        try pio.start()
        try chip.start()
        defer { pio.stop(); chip.stop() }
        let routes = AccessRoutes(
            ports: [.init(first: 0x3f8, last: 0x3ff, channel: 0)],
            mmio: [.init(base: 0xfee0_0000, size: 0x1000, channel: 1, writes: .posted,
                         exceptions: [0xb0: .afterPostedWritesElsewhere, 0x300: .synchronous])])
        let devices = DeviceChannels(clients: [try pio.client(), try chip.client()], servers: [Server(.pio), Server(.irqchip)], routes: routes)
        func drained() -> [(String, MessageKind, UInt64)] {
            devices.settleAll()
            return log.take()
        }

        // Each device's own requests in order (settleAll ends every round with one sync to each).
        func seen(_ l: [(String, MessageKind, UInt64)], by device: String) -> [String] {
            l.filter { $0.0 == device }.map { "\($0.1) \(String($0.2, radix: 16))" }
        }

        // A device's write, then an EOI: the device is synced before the EOI is posted.
        devices.portWrite(0x3f9, size: 1, value: 0)
        devices.mmioWrite(0xfee0_00b0, size: 4, value: 0)
        // When mmioWrite returns the EOI is only posted, but the pio's sync must already have been answered (a device
        // logs a request before it answers it): the log holds the pio's write and sync at this point, whatever the
        // irqchip thread has got to. (Reading the order across the two device threads later would race.)
        let atEOI = log.entries.withLock { $0 }
        XCTAssertEqual(seen(atEOI, by: "pio"), ["portWrite 3f9", "sync 0"], "the device answered its sync before the EOI went out")
        var l = drained()
        XCTAssertEqual(seen(l, by: "pio"), ["portWrite 3f9", "sync 0", "sync 0"])
        XCTAssertEqual(seen(l, by: "irqchip"), ["mmioWrite fee000b0", "sync 0"])
        let firstPIOSync = l.firstIndex { $0.0 == "pio" && $0.1 == .sync }
        let eoi = l.firstIndex { $0.0 == "irqchip" && $0.1 == .mmioWrite }
        XCTAssertLessThan(firstPIOSync ?? .max, eoi ?? -1, "the pio logged its sync before the irqchip got the EOI")

        // Nothing posted elsewhere: the EOI goes straight out.
        devices.mmioWrite(0xfee0_00b0, size: 4, value: 0)
        l = drained()
        XCTAssertEqual(seen(l, by: "pio"), ["sync 0"], "only settleAll's sync")
        XCTAssertEqual(seen(l, by: "irqchip"), ["mmioWrite fee000b0", "sync 0"])

        // A read settles its own device: the EOI after it needs no sync.
        devices.portWrite(0x3f9, size: 1, value: 0)
        XCTAssertEqual(devices.portRead(0x3fd, size: 1), 0x42)
        devices.mmioWrite(0xfee0_00b0, size: 4, value: 0)
        l = drained()
        XCTAssertEqual(seen(l, by: "pio"), ["portWrite 3f9", "portRead 3fd", "sync 0"])

        // A synchronous write waits for its own device (the sync comes right after it); a posted one does not.
        devices.mmioWrite(0xfee0_0300, size: 4, value: 0)
        devices.mmioWrite(0xfee0_0080, size: 4, value: 0)
        l = drained()
        XCTAssertEqual(seen(l, by: "irqchip"), ["mmioWrite fee00300", "sync 0", "mmioWrite fee00080", "sync 0"])
        XCTAssertEqual(seen(l, by: "pio"), ["sync 0"])

        // What nobody owns floats: all-ones, and no device hears of it.
        XCTAssertEqual(devices.portRead(0x80, size: 1), ~0)
        XCTAssertEqual(devices.mmioRead(0xd000_0000, size: 4), ~0)
        devices.portWrite(0x80, size: 1, value: 0)
        XCTAssertEqual(drained().filter { $0.1 != .sync }.count, 0)
    }

    func testTheAPICPageFollowsTheBaseMSRAndTPRWritesAreToldTheIRQChip() throws {
        let log = RequestLog()
        let chip = try RecordingDevice(name: "irqchip", log: log)
        try chip.start()
        defer { chip.stop() }
        let routes = AccessRoutes(ports: [], mmio: [.init(base: 0xfee0_0000, size: 0x1000, channel: 0, writes: .posted)])
        let devices = DeviceChannels(clients: [try chip.client()], servers: [Server(.irqchip)], routes: routes)
        func drained() -> [String] {
            devices.settleAll()
            return log.take().filter { $0.1 != .sync }.map { "\($0.1) \(String($0.2, radix: 16))" }
        }

        XCTAssertEqual(devices.lapicOffset(0xfee0_0080), 0x80)
        // Moved: the new page is the APIC's (sent as its default page, which the irqchip knows), the old one nobody's.
        devices.setAPICBase(0xfed0_0900)
        XCTAssertNil(devices.lapicOffset(0xfee0_0080))
        XCTAssertEqual(devices.lapicOffset(0xfed0_0080), 0x80)
        XCTAssertEqual(devices.mmioRead(0xfee0_0020, size: 4), ~0, "the old page floats")
        devices.mmioWrite(0xfee0_0300, size: 4, value: 0x40000)
        XCTAssertEqual(devices.mmioRead(0xfed0_0020, size: 4), 0x42)
        devices.mmioWrite(0xfed0_0300, size: 4, value: 0x40000)
        XCTAssertEqual(drained(), ["\(MessageKind.apicBase) 0", "mmioRead fee00020", "mmioWrite fee00300"])
        // Disabled: no page at all.
        devices.setAPICBase(0xfee0_0100)
        XCTAssertNil(devices.lapicOffset(0xfee0_0080))
        XCTAssertEqual(devices.mmioRead(0xfee0_0020, size: 4), ~0)
        XCTAssertEqual(drained(), ["\(MessageKind.apicBase) 0"])
        // A TPR write is posted as a register write (with no copy to ask, a lowering waits for the irqchip).
        devices.setAPICBase(0xfee0_0900)
        devices.writeTPR(0x20, lowered: false)
        XCTAssertEqual(devices.tprWaits, 0)
        devices.writeTPR(0x10, lowered: true)
        XCTAssertEqual(devices.tprWaits, 1)
        XCTAssertEqual(drained(), ["\(MessageKind.apicBase) 0", "mmioWrite fee00080", "mmioWrite fee00080"])
    }
}
