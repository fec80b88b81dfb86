import CLinux
import Channel
import Devices
import Glibc
import System

/// The irqchip process: one local APIC per vCPU and the IOAPIC. The vCPUs reach it over one channel whose lane
/// number is the vCPU (so a LAPIC access reaches that vCPU's APIC); devices drive their IOAPIC pins over a
/// second one. It fills the vCPUs' interrupt mailboxes and arms their timers.
public enum IRQChipProcess {
    public static func main(specJSON: String) -> Int32 {
        HelperStartup.runDevice(IRQChipSpec.self, json: specJSON, role: "irqchip") { spec in
            // Timers expire on time, not up to 50 us late (the default slack for normal threads).
            _ = vmm_prctl5(VMM_PR_SET_TIMERSLACK, 1, 0, 0, 0)
            // One timerfd per local APIC, made before the sandbox (its policy allows arming them, not making them).
            let timers = try (0..<spec.vcpuCount).map { _ in
                try syscallRetrying("timerfd_create") { vmm_timerfd_create() }
            }
            try HelperSandbox.enter(spec.sandbox, role: "irqchip", controlFD: spec.controlFD, processes: 0)
            Log.debug("sandboxed; serving")
            try serve(spec, timers: timers)
        }
    }

    static func serve(_ spec: IRQChipSpec, timers: [Int32]) throws {
        let region = try ChannelRegion(attaching: spec.channel.memoryFD, layout: spec.channel.layout)
        var server = DeviceServer(region: region, deviceDoorbell: spec.channel.deviceDoorbellFD,
                                  responseDoorbells: spec.channel.responseDoorbellFDs,
                                  policy: WaitPolicy(spinMicroseconds: spec.spinMicroseconds))
        var lines = DeviceServer(region: try ChannelRegion(attaching: spec.lines.memoryFD, layout: spec.lines.layout),
                                 deviceDoorbell: spec.lines.deviceDoorbellFD, responseDoorbells: spec.lines.responseDoorbellFDs,
                                 policy: WaitPolicy(spinMicroseconds: spec.spinMicroseconds))
        let chip = InterruptController(vcpuCount: spec.vcpuCount)
        let mailbox = InterruptMailbox(region: region, vcpus: spec.vcpuCount)
        var expirations: UInt64 = 0
        /// Devices may drive their lines and nothing else.
        func drainLines() {
            while let (_, m) = lines.next(malformed: { Log.warning("dropping a malformed line message: \($0)") }) {
                if m.operation == .lineLevel { chip.setLine(pin: Int(truncatingIfNeeded: m.address), asserted: m.data != 0) }
            }
            lines.commit()
        }
        /// Arms timers and offers what is deliverable: after each batch, and before answering a sync, so that a
        /// synchronous write (an IPI through the ICR) has its interrupt in the mailbox when the write completes.
        func publish() {
            for request in chip.takeTimerRequests() {
                _ = vmm_timerfd_set_absolute(timers[request.vcpu], request.at ?? 0)
            }
            var kick = Set(chip.updateMailboxes(mailbox))
            for (vcpu, event) in chip.takeCPUEvents() {
                switch event {
                case .nmi: mailbox.signal(.init(nmi: true), vcpu: vcpu)
                case .initialize: mailbox.signal(.init(initialize: true), vcpu: vcpu)
                case .startup(let vector): mailbox.signal(.init(startup: vector), vcpu: vcpu)
                }
                kick.insert(vcpu)
            }
            for vcpu in kick {
                var one: UInt64 = 1
                _ = Glibc.write(spec.kickFDs[vcpu], &one, 8)
            }
        }
        while true {
            // Timers that fired, then everything the vCPUs sent, then the mailboxes.
            for (i, fd) in timers.enumerated() where Glibc.read(fd, &expirations, 8) == 8 {
                chip.timerExpired(vcpu: i, now: monotonicNanoseconds())
            }
            while let (lane, m) = server.next(malformed: { Log.warning("dropping a malformed request: \($0)") }) {
                drainLines()  // device line changes first: they may precede this message causally (see settleDevicesBeforeEOI)
                let now = monotonicNanoseconds()
                switch m.operation {
                case .mmioRead:
                    try server.respond(lane: lane, to: m, data: UInt64(chip.read(vcpu: lane, address: m.address, size: m.size, now: now)))
                case .mmioWrite:
                    chip.write(vcpu: lane, address: m.address, size: m.size, value: m.data, now: now)
                case .portRead:
                    try server.respond(lane: lane, to: m, data: ~0 & ((1 << (UInt64(m.size) * 8)) &- 1))
                case .sync:
                    publish()
                    try server.respond(lane: lane, to: m, data: 0)
                case .interruptAck:
                    chip.acknowledged(vcpu: lane, vector: UInt8(truncatingIfNeeded: m.data))
                case .timerDeadline:
                    chip.setDeadline(vcpu: lane, nanosecondsFromNow: m.data, now: now)
                case .portWrite, .response, .lineLevel:
                    break
                }
            }
            drainLines()
            publish()
            server.commit()
            _ = try DeviceServer.wait([server, lines], extra: timers)
        }
    }
}

/// The LAPICs and the IOAPIC of one VM, and the routing between them (IOAPIC messages and IPIs to LAPICs,
/// level-triggered EOIs back to the IOAPIC). No syscalls: the process around it moves the bytes and the time.
final class InterruptController {
    let lapics: [LocalAPIC]
    let ioapic: IOAPIC
    /// Per vCPU: the vector in its mailbox or taken and not yet acknowledged; nothing new is posted meanwhile.
    private var posted: [UInt8?]
    /// vCPUs reset by INIT whose mailbox vector must be taken back before anything new is posted.
    private var withdrawn: Set<Int> = []
    private var timerRequests: [(vcpu: Int, at: UInt64?)] = []
    private var cpuEvents: [(vcpu: Int, event: CPUEvent)] = []

    init(vcpuCount: Int) {
        lapics = (0..<vcpuCount).map { LocalAPIC(apicID: UInt8($0)) }
        ioapic = IOAPIC(id: UInt8(vcpuCount))  // the ID the MP table gives it, after the CPUs' APIC IDs
        posted = Array(repeating: nil, count: vcpuCount)
    }

    /// A device drives an IOAPIC pin.
    func setLine(pin: Int, asserted: Bool) {
        Log.debug("line \(pin) \(asserted ? "up" : "down")")
        deliver(ioapic.setPin(pin, asserted))
    }

    func timerExpired(vcpu: Int, now: UInt64) {
        handle(lapics[vcpu].timerExpired(now: now), from: vcpu)
    }

    /// IA32_TSC_DEADLINE, converted by the vCPU to a delay (Message.disarmed: a write of 0).
    func setDeadline(vcpu: Int, nanosecondsFromNow delay: UInt64, now: UInt64) {
        guard lapics.indices.contains(vcpu) else { return }
        let at = delay == Message.disarmed ? 0 : max(1, now &+ delay)
        handle(lapics[vcpu].setDeadline(at, now: now), from: vcpu)
    }

    /// The vCPU injected `vector`: it is in service now.
    func acknowledged(vcpu: Int, vector: UInt8) {
        Log.debug("ack vcpu\(vcpu) vector 0x\(String(vector, radix: 16)) (offered \(posted[vcpu].map { String($0, radix: 16) } ?? "-"))")
        guard lapics.indices.contains(vcpu), posted[vcpu] == vector else { return }  // not what was offered: ignore
        lapics[vcpu].acknowledge(vector)
        posted[vcpu] = nil
    }

    /// NMIs, INITs and start-up IPIs for the vcpu process (through the mailboxes' event words).
    func takeCPUEvents() -> [(vcpu: Int, event: CPUEvent)] {
        defer { cpuEvents.removeAll() }
        return cpuEvents
    }

    /// Timer arming the process must do (at nil: disarm).
    func takeTimerRequests() -> [(vcpu: Int, at: UInt64?)] {
        defer { timerRequests.removeAll() }
        return timerRequests
    }

    /// Offers each vCPU its highest deliverable vector; returns the vCPUs whose mailbox got something new.
    func updateMailboxes(_ mailbox: InterruptMailbox) -> [Int] {
        var kicked: [Int] = []
        for i in withdrawn { mailbox.withdraw(vcpu: i) }
        withdrawn.removeAll()
        for i in lapics.indices {
            guard let want = lapics[i].deliverableVector else { continue }
            if let current = posted[i] {
                // A higher vector may overtake one that has not been taken yet.
                if want > current && mailbox.replace(current, with: want, vcpu: i) {
                    posted[i] = want
                    lapics[i].offered = want
                    kicked.append(i)
                }
            } else if mailbox.post(want, vcpu: i) {
                Log.debug("offer vcpu\(i) vector 0x\(String(want, radix: 16))")
                posted[i] = want
                lapics[i].offered = want
                kicked.append(i)
            }
        }
        return kicked
    }

    /// A 32-bit register access in either page; other sizes and addresses read as all-ones / are ignored.
    func read(vcpu: Int, address: UInt64, size: UInt8, now: UInt64) -> UInt32 {
        guard size == 4, lapics.indices.contains(vcpu) else { return ~0 }
        if address & ~0xfff == LocalAPIC.defaultBase { return lapics[vcpu].read(offset: address & 0xfff, now: now) }
        if address & ~0xfff == IOAPIC.defaultBase { return ioapic.read(offset: address & 0xfff) }
        return ~0
    }

    func write(vcpu: Int, address: UInt64, size: UInt8, value: UInt64, now: UInt64) {
        guard size == 4, lapics.indices.contains(vcpu) else { return }
        let v = UInt32(truncatingIfNeeded: value)
        if address & ~0xfff == LocalAPIC.defaultBase {
            handle(lapics[vcpu].write(offset: address & 0xfff, value: v, now: now), from: vcpu)
        } else if address & ~0xfff == IOAPIC.defaultBase {
            deliver(ioapic.write(offset: address & 0xfff, value: v))
        }
    }

    func handle(_ effects: [APICEffect], from vcpu: Int) {
        for e in effects {
            switch e {
            case .endOfInterrupt(let vector): deliver(ioapic.endOfInterrupt(vector: vector))
            case .interprocessorInterrupt(let m, let shorthand):
                switch shorthand {
                case 1: dispatch(m, to: [vcpu])
                case 2: dispatch(m, to: Array(lapics.indices))
                case 3: dispatch(m, to: lapics.indices.filter { $0 != vcpu })
                default: dispatch(m, to: lapics.indices.filter { lapics[$0].isDestination(of: m) })
                }
            case .armTimer(let at): timerRequests.append((vcpu, at))
            case .cancelTimer: timerRequests.append((vcpu, nil))
            }
        }
    }

    /// IOAPIC messages to the LAPICs they name.
    func deliver(_ messages: [InterruptMessage]) {
        for m in messages { dispatch(m, to: lapics.indices.filter { lapics[$0].isDestination(of: m) }) }
    }

    /// One message to its destination CPUs: a fixed vector into IRR (lowest priority: the first of them), an NMI,
    /// INIT (which also resets the LAPIC and withdraws what was offered) or a start-up IPI to the vcpu process.
    private func dispatch(_ m: InterruptMessage, to targets: [Int]) {
        switch m.deliveryMode {
        case .fixed:
            for t in targets { lapics[t].accept(vector: m.vector, levelTriggered: m.levelTriggered) }
        case .lowestPriority:
            if let t = targets.first { lapics[t].accept(vector: m.vector, levelTriggered: m.levelTriggered) }
        case .nmi:
            cpuEvents += targets.map { ($0, .nmi) }
        case .initialize:
            for t in targets {
                lapics[t].reset()
                posted[t] = nil
                withdrawn.insert(t)
                timerRequests.append((t, nil))
                cpuEvents.append((t, .initialize))
            }
        case .startup:
            cpuEvents += targets.map { ($0, .startup(vector: m.vector)) }
        case .smi, .external:
            break  // no SMM, no 8259 behind LINT0
        }
    }
}
