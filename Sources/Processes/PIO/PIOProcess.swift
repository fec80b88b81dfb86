import Channel
import Devices
import Glibc
import IRQChipLink
import System

/// The port-I/O device process: COM1 (8250 UART), the i8042 (its reset line and keyboard), the CMOS RTC, the boot timer
/// and the debug-exit port, served from one channel in request order, so console bytes written before a
/// debug-exit are always out before the VM ends.
public enum PIOProcess {
    public static func main(specJSON: String) -> Int32 {
        HelperStartup.runDevice(PIOSpec.self, json: specJSON, role: .pio) { spec in
            // Single-threaded and forking nothing: no new processes at all for its uid.
            try HelperSandbox.enter(spec.sandbox, role: .pio, controlFD: spec.controlFD, processes: 0)
            if let takeover = spec.takeoverFD { try HelperStartup.awaitTakeover(takeover) }
            Log.debug("sandboxed; serving")
            try serve(spec)
        }
    }

    static func serve(_ spec: PIOSpec) throws {
        let region = try ChannelRegion(attaching: spec.channel.memoryFD, layout: spec.channel.layout)
        let policy = spec.waiting.policy(census: try spec.waiting.attachCensus(), stepsAside: true)
        var server = DeviceServer(region: region, deviceDoorbell: spec.channel.deviceDoorbellFD,
                                  responseDoorbells: spec.channel.responseDoorbellFDs, policy: policy)
        let rings = try ConsoleRings(fd: spec.console.memoryFD)
        let uartLine = try ChannelLine(spec.uartLine, policy: policy)
        let keyboardLine = try ChannelLine(InterruptLineSpec(channel: spec.uartLine.channel, lane: spec.keyboardLane),
                                           policy: policy)
        func makeDevices() throws -> PIODevices {
            try PIODevices(console: rings, newsDoorbell: spec.console.newsFD, uartLine: uartLine, keyboardLine: keyboardLine,
                           debugExit: spec.debugExit)
        }
        // A process started in place of a dead one resumes from its predecessor's last commit.
        var devices = try makeDevices()
        if let saved = server.makeRestartable(devices) {
            do {
                try devices.restore(saved)
                Log.info("resumed from the state the previous pio process committed")
            } catch {
                Log.warning("the previous pio process's state is unusable (\(error)); starting with fresh devices")
                devices = try makeDevices()
                _ = server.makeRestartable(devices)
            }
        }
        server.announceServing()
        server.settling = StartupCode.settleAction()
        let news = devices.news

        while true {
            while true {
                // A UART write needs room in the console stream; without it, what is there is committed (so the
                // supervisor can write it out) and the guest waits, as it would for a slow terminal.
                while !(try devices.outputHasRoom()) {
                    server.commit()
                    usleep(200)
                }
                guard let (lane, m) = server.next(malformed: { Log.warning("dropping a malformed request: \($0)") }) else { break }
                switch m.operation {
                case .portRead:
                    let value = m.address <= 0xffff ? devices.bus.read(port: UInt16(m.address), size: Int(m.size)) : ~0
                    try server.respond(lane: lane, to: m, data: value & m.widthMask)
                case .portWrite:
                    if m.address <= 0xffff { devices.bus.write(port: UInt16(m.address), size: Int(m.size), value: m.data) }
                case .mmioRead:
                    try server.respond(lane: lane, to: m, data: m.widthMask)
                case .sync:
                    server.commit(answering: lane)  // everything before it is final and visible to the supervisor
                    try server.respond(lane: lane, to: m, data: 0)
                default:
                    break  // nothing of the pio's is memory-mapped
                }
                // What the guest did, in order, until one of them ends the VM; nothing after that. Committed
                // first, so the console bytes before an ending are out before the supervisor hears of it.
                if spec.panicWatch && devices.sawPanic && !news.endingReported { news.events.append(.panic) }
                if (news.exitStatus != nil || !news.events.isEmpty) && !news.endingReported {
                    server.commit()
                    for event in news.events where !news.endingReported {
                        ControlMessage.guest(event).send(on: spec.controlFD)
                        news.endingReported = event != .booted
                    }
                    if let status = news.exitStatus, !news.endingReported {
                        ControlMessage.guestExit(status: status).send(on: spec.controlFD)
                        news.endingReported = true
                    }
                }
                news.events.removeAll()
                news.exitStatus = nil
            }

            // Input changes the UART and the keyboard on their own and raises their lines at once: the copy goes
            // first, so that the handler's reads (LSR, IIR, the i8042 status) come here until it is republished.
            server.withdrawReads()
            try devices.pullInput()
            // The vCPUs answer side-effect-free reads (the UART's LSR above all) from this copy until the next.
            server.publishReads(devices.bus.sideEffectFreeReads())
            let wantInput = devices.wantsInput
            let ready = try server.wait(extra: wantInput ? [spec.console.inputFD] : [])
            if wantInput, !ready[0].isEmpty {
                var count: UInt64 = 0
                _ = Glibc.read(spec.console.inputFD, &count, 8)
                // Taken at the top of the loop, after the requests that came meanwhile, with the copy withdrawn.
            }
        }
    }
}
