import CLinux
import Channel
import Devices
import Glibc
import IRQChipLink
import System

/// The irqchip process: one local APIC per vCPU and the IOAPIC. The vCPUs reach it over one channel whose lane
/// number is the vCPU (so a LAPIC access reaches that vCPU's APIC); devices drive their IOAPIC pins over a
/// second one. It fills the vCPUs' interrupt mailboxes and arms their timers.
public enum IRQChipProcess {
    public static func main(specJSON: String) -> Int32 {
        HelperStartup.runDevice(IRQChipSpec.self, json: specJSON, role: .irqchip) { spec in
            // Timers expire on time, not up to 50 us late (the default slack for normal threads).
            _ = vmm_prctl5(VMM_PR_SET_TIMERSLACK, 1, 0, 0, 0)
            // One timerfd per local APIC, made before the sandbox (its policy allows arming them, not making them).
            let timers = try (0..<spec.vcpuCount).map { _ in
                try syscallRetrying("timerfd_create") { vmm_timerfd_create() }
            }
            try HelperSandbox.enter(spec.sandbox, role: .irqchip, controlFD: spec.controlFD, processes: 0)
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
        let mailbox = try InterruptMailbox(attaching: spec.mailboxFD, vcpus: spec.vcpuCount)
        var expirations: UInt64 = 0
        /// Devices may drive their lines and nothing else.
        func drainLines() {
            while let (lane, m) = lines.next(malformed: { Log.warning("dropping a malformed line message: \($0)") }) {
                // A device drives its own pin, whatever pin its message names: the pin is the lane's.
                guard m.operation == .lineLevel, m.size == 1, m.data <= 1, spec.linePins.indices.contains(lane) else {
                    Log.warning("dropping a line message that is not a level: \(m.operation) on lane \(lane)")
                    continue
                }
                let pin = spec.linePins[lane]
                Log.debug("line \(pin) \(m.data != 0 ? "up" : "down")")
                chip.setLine(pin: pin, asserted: m.data != 0)
            }
            lines.commit()
        }
        /// Arms timers and offers what is deliverable: after each batch, and before answering a sync, so that a
        /// synchronous write (an IPI through the ICR) has its interrupt in the mailbox when the write completes.
        func publish() {
            for request in chip.takeTimerRequests() {
                _ = vmm_timerfd_set_absolute(timers[request.vcpu], request.at ?? 0)
            }
            var kick = Set(chip.updateOffers(mailbox))
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
                drainLines()  // device line changes first: they may precede this message causally (see WriteOrdering)
                let now = monotonicNanoseconds()
                switch m.operation {
                case .mmioRead:
                    // The APICs' registers are 32 bits wide: other widths read all-ones, whatever their size.
                    let value = m.size == 4 ? UInt64(chip.read(vcpu: lane, address: m.address, size: m.size, now: now)) : ~0
                    try server.respond(lane: lane, to: m, data: value & m.widthMask)
                case .mmioWrite:
                    chip.write(vcpu: lane, address: m.address, size: m.size, value: m.data, now: now)
                case .portRead:
                    try server.respond(lane: lane, to: m, data: m.widthMask)
                case .sync:
                    publish()
                    try server.respond(lane: lane, to: m, data: 0)
                case .interruptAck:
                    chip.acknowledged(vcpu: lane, vector: UInt8(truncatingIfNeeded: m.data))
                case .timerDeadline:
                    chip.setDeadline(vcpu: lane, nanosecondsFromNow: TimerDeadline.decode(m.data), now: now)
                default:
                    break  // vCPUs do not drive lines, and answers do not travel this way
                }
            }
            drainLines()
            publish()
            server.commit()
            _ = try DeviceServer.wait([server, lines], extra: timers)
        }
    }
}
