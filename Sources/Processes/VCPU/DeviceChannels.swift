import Channel
import Devices
import IRQChipLink
import System
import Machine
import Virtio

/// One vCPU's lanes of every device channel, and the rules that order its accesses: the routes say which channel
/// serves a port or an address and how a write there is ordered; posted writes are tracked until something
/// settles them. A device that fails is the supervisor's business: the guest reads all-ones, the vCPU goes on.
struct DeviceChannels {
    private var clients: [DeviceClient]
    private let servers: [Server]
    private let router: AccessRouter
    /// The irqchip's channel, for the vCPU's own messages to it (acknowledgements, TSC deadlines).
    let irqchip: Int
    private var posted = PostedWrites()
    private var complainedAbout: Set<Int> = []
    /// Per channel, the base of its virtio-mmio window (nil for other devices): a virtio device given up on still
    /// answers some registers (see `VirtioMMIOTransport.brokenDeviceRead`).
    private let virtioWindows: [UInt64?]
    /// This vCPU's local APIC registers as the irqchip publishes them: reads are answered from here when the copy
    /// is current (see LAPICMirror).
    private let lapicMirror: LAPICMirror?
    /// Local APIC reads answered from the mirror, and those that had to ask the irqchip.
    private(set) var mirrorReads = 0, irqchipReads = 0

    init(clients: [DeviceClient], servers: [Server], routes: AccessRoutes, lapicMirror: LAPICMirror? = nil) {
        self.lapicMirror = lapicMirror
        precondition(clients.count == servers.count && clients.count <= AccessRouter.maxChannels)
        self.clients = clients
        self.servers = servers
        router = AccessRouter(routes)
        irqchip = servers.firstIndex { $0.role == .irqchip } ?? -1
        virtioWindows = servers.indices.map { c in
            servers[c].role.isVirtio ? routes.mmio.first { $0.channel == c }?.base : nil
        }
    }

    // MARK: guest accesses

    /// Ports nobody owns read as all-ones.
    @inline(__always)
    mutating func portRead(_ port: UInt16, size: Int) -> UInt64 {
        guard let channel = router.channel(forPort: port) else { return ~0 }
        return call(channel, .portRead, address: UInt64(port), size: size)
    }

    /// Writes to ports nobody owns go nowhere.
    @inline(__always)
    mutating func portWrite(_ port: UInt16, size: Int, value: UInt64) {
        guard let channel = router.channel(forPort: port) else { return }
        post(channel, .portWrite, address: UInt64(port), size: size, value: value)
    }

    /// MMIO nobody owns reads as all-ones, as a bus with nothing behind the address.
    mutating func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
        guard let route = router.mmio(address) else { return ~0 }
        if let base = virtioWindows[route.channel], address >= base, clients[route.channel].region.deviceStatus == .broken {
            if complainedAbout.insert(route.channel).inserted {
                Log.warning("the \(servers[route.channel]) process was given up on; its Status reads DEVICE_NEEDS_RESET")
            }
            return VirtioMMIOTransport.brokenDeviceRead(offset: address - base, size: size)
        }
        if route.channel == irqchip, address & ~0xfff == LocalAPIC.defaultBase, let lapicMirror {
            // The irqchip serving (a restarting or broken one answers nothing from a copy) and the copy current:
            // everything this vCPU sent it is in the copy, so the answer is the one a round trip would give.
            if size == 4, clients[irqchip].region.deviceStatus == .serving,
               let value = lapicMirror.read(offset: address & 0xfff, sentPosition: clients[irqchip].sentPosition, now: monotonicNanoseconds()) {
                posted.answered(by: irqchip)
                mirrorReads += 1
                return UInt64(value)
            }
            irqchipReads += 1
        }
        return call(route.channel, .mmioRead, address: address, size: size)
    }

    mutating func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
        guard let route = router.mmio(address) else { return }
        if address == LocalAPIC.defaultBase + LocalAPIC.Register.initialCount, route.channel == irqchip {
            // The timer counts from the guest's write, not from when the irqchip takes it.
            post(irqchip, .timestamp, address: 0, size: 8, value: monotonicNanoseconds())
        }
        if route.writes == .afterPostedWritesElsewhere {
            // The other devices answer a sync once their earlier writes are applied; the irqchip reads device
            // lines before vCPU messages, so their line changes are then ahead of this write.
            for other in posted.toSettle(before: route.channel) { _ = call(other, .sync, address: 0, size: 0) }
        }
        post(route.channel, .mmioWrite, address: address, size: size, value: value)
        if route.writes == .synchronous { _ = call(route.channel, .sync, address: 0, size: 0) }
    }

    // MARK: the vCPU's own messages

    mutating func acknowledgeInterrupt(_ vector: UInt8) {
        post(irqchip, .interruptAck, address: 0, size: 1, value: UInt64(vector))
    }

    mutating func setTimerDeadline(at: UInt64?) {
        post(irqchip, .timerDeadline, address: 0, size: 8, value: TimerDeadline.encode(at: at))
    }

    /// Waits until every device has applied everything this vCPU sent it (before the VM stops).
    mutating func settleAll() {
        for channel in clients.indices { _ = call(channel, .sync, address: 0, size: 0) }
    }

    // MARK: the channel

    @inline(__always)
    private mutating func call(_ channel: Int, _ op: MessageKind, address: UInt64, size: Int) -> UInt64 {
        posted.answered(by: channel)  // answered in order: every earlier write to it is applied
        do { return try clients[channel].call(op, size: UInt8(size), address: address, data: 0) } catch {
            complain(channel, error)
            return ~0
        }
    }

    @inline(__always)
    private mutating func post(_ channel: Int, _ op: MessageKind, address: UInt64, size: Int, value: UInt64) {
        posted.posted(to: channel)
        do { try clients[channel].post(op, size: UInt8(size), address: address, data: value) } catch { complain(channel, error) }
    }

    private mutating func complain(_ channel: Int, _ error: Error) {
        if complainedAbout.insert(channel).inserted {
            Log.warning("the \(servers[channel]) process failed: \(error); its reads return all-ones")
        }
    }
}
