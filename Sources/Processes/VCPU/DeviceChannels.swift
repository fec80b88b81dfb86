import Channel
import Devices
import IRQChipLink
import System
import Machine
import Virtio

/// One vCPU's lanes of every device channel, and the rules that order its accesses: the routes say which channel
/// serves a port or an address and how a write there is ordered; posted writes are tracked until something
/// settles them. A device that fails is the supervisor's business: the guest reads all-ones, the vCPU goes on.
///
/// A class, used by its vCPU thread only: the runner asks it something on every exit, and a struct held by the
/// runner (a class) was copied out for each such question, retaining and releasing everything it holds.
final class DeviceChannels {
    /// Each channel's lane, kept in place: an element of an array was copied out (retaining everything a
    /// DeviceClient holds) for every non-mutating question, such as a port read's `mirroredPortRead`.
    private let clients: UnsafeMutableBufferPointer<DeviceClient>
    private let servers: [Server]
    private let router: AccessRouter
    /// The irqchip's channel, for the vCPU's own messages to it (acknowledgements, TSC deadlines).
    let irqchip: Int
    private var posted = PostedWrites()
    /// Channels posted to whose device may still need waking (bit per channel; see `wakeDevicesAsleep`).
    private var wakeChecksDue: UInt64 = 0
    private var complainedAbout: Set<Int> = []
    /// Per channel, the base of its virtio-mmio window (nil for other devices): a virtio device given up on still
    /// answers some registers (see `VirtioMMIOTransport.brokenDeviceRead`).
    private let virtioWindows: [UInt64?]
    /// This vCPU's local APIC registers as the irqchip publishes them: reads are answered from here when the copy
    /// is current (see LAPICMirror).
    private let lapicMirror: LAPICMirror?
    /// Local APIC reads answered from the mirror, and those that had to ask the irqchip.
    private(set) var mirrorReads = 0, irqchipReads = 0
    /// Port reads answered from the device's published reads (see ReadMirror).
    private(set) var mirroredPortReads = 0
    /// TPR writes that waited for the irqchip (they lowered the TPR below a requested vector), and EOIs.
    private(set) var tprWaits = 0, eoiWaits = 0
    /// The TPR's class as this vCPU last wrote it (the runner resets it with the APIC).
    var taskPriorityClass: UInt8 = 0
    /// The vector this vCPU injected last (an older irqchip copy may still show it requested).
    private var lastAcknowledged: UInt8?
    /// Where this vCPU's local APIC page is, as IA32_APIC_BASE says (nil: disabled there). The routes know the
    /// APIC at its default page; accesses to the page where it is now are sent there, and the default page is
    /// nobody's while the APIC is elsewhere or disabled. (Only pages KVM exits on can be the APIC's: one moved onto
    /// guest RAM is RAM.)
    private(set) var apicPage: UInt64? = LocalAPIC.defaultBase

    init(clients: [DeviceClient], servers: [Server], routes: AccessRoutes, lapicMirror: LAPICMirror? = nil) {
        self.lapicMirror = lapicMirror
        precondition(clients.count == servers.count && clients.count <= AccessRouter.maxChannels)
        self.clients = .allocate(capacity: clients.count)
        _ = self.clients.initialize(from: clients)
        self.servers = servers
        router = AccessRouter(routes, channels: clients.count)
        irqchip = servers.firstIndex { $0.role == .irqchip } ?? -1
        virtioWindows = servers.indices.map { c in
            servers[c].role.isVirtio ? routes.mmio.first { $0.channel == c }?.base : nil
        }
    }

    deinit {
        clients.deinitialize()
        clients.deallocate()
    }

    // MARK: guest accesses

    /// Ports nobody owns read as all-ones.
    @inline(__always)
    func portRead(_ port: UInt16, size: Int) -> UInt64 {
        guard let channel = router.channel(forPort: port) else { return ~0 }
        if let value = clients[channel].mirroredPortRead(port, size: size) {
            posted.answered(by: channel)  // the copy includes everything this vCPU sent there
            mirroredPortReads += 1
            return value
        }
        return call(channel, .portRead, address: UInt64(port), size: size)
    }

    /// Writes to ports nobody owns go nowhere.
    @inline(__always)
    func portWrite(_ port: UInt16, size: Int, value: UInt64) {
        guard let channel = router.channel(forPort: port) else { return }
        post(channel, .portWrite, address: UInt64(port), size: size, value: value)
    }

    /// The offset of `address` in this vCPU's local APIC page, if it is there.
    func lapicOffset(_ address: UInt64) -> UInt64? {
        guard let page = apicPage, address & ~0xfff == page else { return nil }
        return address & 0xfff
    }

    /// `address` as the routes know it (see `apicPage`); nil: nobody's.
    private func routed(_ address: UInt64) -> UInt64? {
        if let offset = lapicOffset(address) { return LocalAPIC.defaultBase + offset }
        return address & ~0xfff == LocalAPIC.defaultBase ? nil : address
    }

    /// The guest's IA32_APIC_BASE changed to `value`: the APIC's page follows at once, the irqchip hears of it.
    func setAPICBase(_ value: UInt64) {
        apicPage = value & APICBase.globalEnable != 0 ? value & APICBase.pageMask : nil
        guard irqchip >= 0 else { return }
        post(irqchip, .apicBase, address: 0, size: 8, value: value)
    }

    /// MMIO nobody owns reads as all-ones, as a bus with nothing behind the address.
    func mmioRead(_ guestAddress: UInt64, size: Int) -> UInt64 {
        guard let address = routed(guestAddress), let channel = router.mmioChannel(address) else { return ~0 }
        if let base = virtioWindows[channel], address >= base, clients[channel].region.deviceStatus == .broken {
            if complainedAbout.insert(channel).inserted {
                Log.warning("the \(servers[channel]) process was given up on; its Status reads DEVICE_NEEDS_RESET")
            }
            return VirtioMMIOTransport.brokenDeviceRead(offset: address - base, size: size)
        }
        if channel == irqchip, address & ~0xfff == LocalAPIC.defaultBase, let lapicMirror {
            // The irqchip serving (a restarting or broken one answers nothing from a copy) and the copy current:
            // everything this vCPU sent it is in the copy, so the answer is the one a round trip would give.
            if size == 4, clients[irqchip].region.deviceStatus == .serving,
               let value = lapicMirror.read(offset: address & 0xfff, sentPosition: clients[irqchip].sentPosition, now: monotonicNanoseconds) {
                posted.answered(by: irqchip)
                mirrorReads += 1
                return UInt64(value)
            }
            irqchipReads += 1
        }
        return call(channel, .mmioRead, address: address, size: size)
    }

    func mmioWrite(_ guestAddress: UInt64, size: Int, value: UInt64) {
        guard let address = routed(guestAddress), let route = router.mmio(address) else { return }
        // Most writes are posted and nothing else comes with them (an IOAPIC's register select, most LAPIC
        // registers): straight to the ring, the rest out of line (a 64-bit guest's exit refetches every code line
        // the vCPU runs, see InterruptInjector.beforeEntry).
        if route.writes == .posted && address != Self.timerInitialCount && address != Self.eoi {
            post(route.channel, .mmioWrite, address: address, size: size, value: value)
            return
        }
        orderedMMIOWrite(address, route: route, size: size, value: value)
    }

    /// The routed addresses of the two LAPIC registers whose writes do more than their post (computed, so that they
    /// fold to constants: a stored static would be a lazy global, initialised through a call on the hot path).
    private static var timerInitialCount: UInt64 { LocalAPIC.defaultBase + LocalAPIC.Register.initialCount }
    private static var eoi: UInt64 { LocalAPIC.defaultBase + LocalAPIC.Register.eoi }

    /// A write with a side effect to start (the LAPIC timer's initial count), an ordering to keep, or an EOI.
    @inline(never)
    private func orderedMMIOWrite(_ address: UInt64, route: (channel: Int, writes: WriteOrdering), size: Int, value: UInt64) {
        if address == Self.timerInitialCount, route.channel == irqchip {
            // The timer counts from the guest's write, not from when the irqchip takes it.
            post(irqchip, .timestamp, address: 0, size: 8, value: monotonicNanoseconds())
        }
        if route.writes == .afterPostedWritesElsewhere {
            // The other devices answer a sync once their earlier writes are applied; the irqchip reads device
            // lines before vCPU messages, so their line changes are then ahead of this write.
            for other in posted.toSettle(before: route.channel) { _ = call(other, .sync, address: 0, size: 0) }
        }
        let unblocks = route.channel == irqchip && address == Self.eoi
            && eoiUnblocksARequest()
        post(route.channel, .mmioWrite, address: address, size: size, value: value)
        if route.writes == .synchronous { _ = call(route.channel, .sync, address: 0, size: 0) }
        if unblocks {
            // An EOI lowers the processor priority: a requested vector it unblocks is taken at the handler's IRET
            // on the CPU, so the irqchip must have offered it before the guest goes on (as for a TPR lowering).
            _ = call(irqchip, .sync, address: 0, size: 0)
            eoiWaits += 1
        }
    }

    /// A TPR write (the xAPIC register, or CR8 in 64-bit mode), as the 32-bit register value. Posted, except when
    /// it lowers the priority class while the irqchip's copy shows a requested vector above the new class (or
    /// there is no copy to tell): then the vCPU waits until the irqchip has applied it, which offers that vector,
    /// so that the vector is taken before the guest's next instruction, as on the CPU. Raising it stays posted:
    /// the vCPU holds back what the new TPR blocks itself (see `TaskPriority`).
    func writeTPR(_ value: UInt8, lowered: Bool) {
        guard irqchip >= 0 else { return }
        taskPriorityClass = value >> 4
        post(irqchip, .mmioWrite, address: LocalAPIC.defaultBase + LocalAPIC.Register.tpr, size: 4, value: UInt64(value))
        if lowered, lapicMirror?.requestsAbove(priorityClass: value >> 4) ?? true {
            _ = call(irqchip, .sync, address: 0, size: 0)
            tprWaits += 1
        }
    }

    /// Whether an EOI now may make a requested vector deliverable. From an irqchip copy that includes everything
    /// this vCPU sent: the highest request's class is above both the TPR's and that of what stays in service after
    /// the EOI, and not above the vector it ends (which held it back). From an older copy (the irqchip has not
    /// handled the last acknowledgement yet): a request other than the vector acknowledged last, above the TPR.
    private func eoiUnblocksARequest() -> Bool {
        guard let lapicMirror, irqchip >= 0 else { return false }
        if let (irr, isr) = lapicMirror.vectorSets(sentPosition: clients[irqchip].sentPosition) {
            guard let requested = irr.highest, let ending = isr.highest else { return false }
            var staying = isr
            staying.remove(ending)
            let after = max(taskPriorityClass, (staying.highest ?? 0) >> 4)
            return requested >> 4 > after && requested >> 4 <= ending >> 4
        }
        guard var (irr, _) = lapicMirror.vectorSets(sentPosition: nil) else { return false }
        if let acknowledged = lastAcknowledged { irr.remove(acknowledged) }
        return (irr.highest ?? 0) >> 4 > taskPriorityClass
    }

    /// Whether the TPR holds back every vector the irqchip's copy shows requested, and there is one: a vCPU in
    /// long mode may lower it with a MOV to CR8, which does not exit here (see WindowStepper).
    @inline(__always)
    var tprHoldsARequest: Bool {
        guard taskPriorityClass > 0, let lapicMirror else { return false }
        return lapicMirror.requestsAbove(priorityClass: 0) == true
            && lapicMirror.requestsAbove(priorityClass: taskPriorityClass) == false
    }

    // MARK: the vCPU's own messages

    /// The timer's vector, if the irqchip's copy of this vCPU's local APIC, current with everything the vCPU sent,
    /// shows the CPU would take it at once (see LAPICMirror.timerVectorTakenAtOnce).
    func timerVectorTakenAtOnce() -> UInt8? {
        guard let lapicMirror, irqchip >= 0 else { return nil }
        return lapicMirror.timerVectorTakenAtOnce(sentPosition: clients[irqchip].sentPosition)
    }

    /// This vCPU's timer as the irqchip's copy shows it, once that includes everything this vCPU sent it; nil: not
    /// yet (or no copy).
    func timerCopy() -> LAPICMirror.TimerCopy? {
        guard let lapicMirror, irqchip >= 0 else { return nil }
        return lapicMirror.timer(sentPosition: clients[irqchip].sentPosition)
    }

    /// The vCPU took its timer's expiry itself and injected `vector` (MessageKind.timerTaken).
    func timerTaken(_ vector: UInt8) {
        lastAcknowledged = vector
        post(irqchip, .timerTaken, address: 0, size: 1, value: UInt64(vector))
    }

    /// The vCPU stopped watching its timer without taking an expiry (MessageKind.timerWatchEnded).
    func timerWatchEnded() {
        guard irqchip >= 0 else { return }
        post(irqchip, .timerWatchEnded, address: 0, size: 1, value: 0)
    }

    func acknowledgeInterrupt(_ vector: UInt8) {
        lastAcknowledged = vector
        post(irqchip, .interruptAck, address: 0, size: 1, value: UInt64(vector))
    }

    func setTimerDeadline(at: UInt64?) {
        post(irqchip, .timerDeadline, address: 0, size: 8, value: TimerDeadline.encode(at: at))
    }

    /// Waits until every device has applied everything this vCPU sent it (before the VM stops).
    func settleAll() {
        for channel in clients.indices { _ = call(channel, .sync, address: 0, size: 0) }
    }

    // MARK: the channel

    @inline(__always)
    private func call(_ channel: Int, _ op: MessageKind, address: UInt64, size: Int) -> UInt64 {
        wakeDevicesAsleep()  // the call may wait: nothing posted elsewhere waits with it
        posted.answered(by: channel)  // answered in order: every earlier write to it is applied
        do { return try clients[channel].call(op, size: UInt8(size), address: address, data: 0) } catch {
            complain(channel, error)
            return ~0
        }
    }

    @inline(__always)
    private func post(_ channel: Int, _ op: MessageKind, address: UInt64, size: Int, value: UInt64) {
        posted.posted(to: channel)
        do {
            // The irqchip is told at once: its messages (timer arming, EOIs, acknowledgements) are what the next
            // interrupt waits on, and a doorbell left to just before the entry wakes it onto this CPU then and
            // holds the entry back (timer latency here: best 28 -> 33 us when its doorbells were deferred too).
            if channel == irqchip {
                try clients[channel].post(op, size: UInt8(size), address: address, data: value)
            } else {
                try clients[channel].postDeferringWake(op, size: UInt8(size), address: address, data: value)
                wakeChecksDue |= 1 << UInt64(channel)
            }
        } catch { complain(channel, error) }
    }

    /// Wakes each device a post went to that fell asleep before it saw the post (DeviceClient.wakeIfAsleep). Owed
    /// before the vCPU enters the guest or waits for anything; cheap when nothing was posted since.
    @inline(__always)
    func wakeDevicesAsleep() {
        while wakeChecksDue != 0 {
            let channel = wakeChecksDue.trailingZeroBitCount
            wakeChecksDue &= wakeChecksDue - 1
            do { try clients[channel].wakeIfAsleep() } catch { complain(channel, error) }
        }
    }

    /// Out of line: its message would otherwise sit among the hot lines of every access that calls it.
    @inline(never)
    private func complain(_ channel: Int, _ error: Error) {
        if complainedAbout.insert(channel).inserted {
            Log.warning("the \(servers[channel]) process failed: \(error); its reads return all-ones")
        }
    }
}
