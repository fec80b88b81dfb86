import Channel
import Devices
import Glibc
import IRQChipLink
import System

/// The port-I/O device process: COM1 (8250 UART), the i8042 (for its reset line), the CMOS RTC, the boot timer
/// and the debug-exit port, served from one channel in request order, so console bytes written before a
/// debug-exit are always out before the VM ends.
public enum PIOProcess {
    public static func main(specJSON: String) -> Int32 {
        HelperStartup.runDevice(PIOSpec.self, json: specJSON, role: .pio) { spec in
            // Single-threaded and forking nothing: no new processes at all for its uid.
            try HelperSandbox.enter(spec.sandbox, role: .pio, controlFD: spec.controlFD, processes: 0)
            Log.debug("sandboxed; serving")
            try serve(spec)
        }
    }

    /// Bytes for the console, written once per batch of requests rather than once per byte; also watched for
    /// the line a Linux kernel prints when it panics (no pvpanic device without PCI or ACPI).
    final class ConsoleOutput {
        let fd: Int32?
        var pending: [UInt8] = []
        var failed = false
        private var panicWatch = TextWatch("Kernel panic - not syncing")
        private var inPanicLine = false
        /// The panic line is complete (with its reason), so the report can carry it.
        private(set) var sawPanic = false
        init(fd: Int32?) { self.fd = fd }

        func append(_ byte: UInt8) {
            if inPanicLine && byte == UInt8(ascii: "\n") { sawPanic = true }
            if panicWatch.feed(byte) { inPanicLine = true }
            if fd != nil { pending.append(byte) }
        }

        func flush() {
            guard let fd, !pending.isEmpty else { return }
            defer { pending.removeAll(keepingCapacity: true) }
            guard !failed else { return }
            do { try FileDescriptor.writeAll(fd, pending) } catch {
                failed = true
                Log.warning("console output failed, dropping it from now on: \(error)")
            }
        }
    }

    static func serve(_ spec: PIOSpec) throws {
        let region = try ChannelRegion(attaching: spec.channel.memoryFD, layout: spec.channel.layout)
        var server = DeviceServer(region: region, deviceDoorbell: spec.channel.deviceDoorbellFD,
                                  responseDoorbells: spec.channel.responseDoorbellFDs,
                                  policy: WaitPolicy(spinMicroseconds: spec.spinMicroseconds))
        let console = ConsoleOutput(fd: spec.consoleOutFD)
        var exitStatus: Int32?
        var exitReported = false
        var events: [ControlMessage.GuestEvent] = []
        let line = try ChannelLine(spec.uartLine, policy: WaitPolicy(spinMicroseconds: spec.spinMicroseconds))
        let uart = Serial8250(transmit: console.append, line: line)
        let bus = PortBus()
        try bus.attach(uart, at: Serial8250.com1)
        if spec.debugExit { try bus.attach(DebugExit { exitStatus = $0 }, at: DebugExit.defaultPort) }
        try bus.attach(I8042 { events.append(.reset) }, at: I8042.dataPort)
        try bus.attach(CMOSRTC { Int64(wallClockSeconds()) }, at: CMOSRTC.defaultPort)
        // The boot marker is news once; a guest that writes it again and again gets no more lines in vmm's log.
        var bootMarked = false
        try bus.attach(BootTimer {
            if !bootMarked { events.append(.booted) }
            bootMarked = true
        }, at: BootTimer.defaultPort)

        var input = spec.consoleInFD
        var inputBuffer = [UInt8](repeating: 0, count: Serial8250.fifoDepth)

        while true {
            while let (lane, m) = server.next(malformed: { Log.warning("dropping a malformed request: \($0)") }) {
                switch m.operation {
                case .portRead:
                    let value = m.address <= 0xffff ? bus.read(port: UInt16(m.address), size: Int(m.size)) : ~0
                    try server.respond(lane: lane, to: m, data: value & m.widthMask)
                case .portWrite:
                    if m.address <= 0xffff { bus.write(port: UInt16(m.address), size: Int(m.size), value: m.data) }
                case .mmioRead:
                    try server.respond(lane: lane, to: m, data: m.widthMask)
                case .sync:
                    console.flush()
                    try server.respond(lane: lane, to: m, data: 0)
                default:
                    break  // nothing of the pio's is memory-mapped
                }
                // What the guest did, in order, until one of them ends the VM; nothing after that.
                if spec.panicWatch && console.sawPanic { events.append(.panic) }
                if (exitStatus != nil || !events.isEmpty) && !exitReported {
                    console.flush()
                    for event in events where !exitReported {
                        ControlMessage.guest(event).send(on: spec.controlFD)
                        exitReported = event != .booted
                    }
                    if let status = exitStatus, !exitReported {
                        ControlMessage.guestExit(status: status).send(on: spec.controlFD)
                        exitReported = true
                    }
                }
                events.removeAll()
            }
            console.flush()

            let wantInput = input != nil && uart.receiveSpace > 0
            let ready = try server.wait(extra: wantInput ? [input!] : [])
            if wantInput, let fd = input, !ready[0].isEmpty {
                let n = Glibc.read(fd, &inputBuffer, uart.receiveSpace)
                if n > 0 {
                    for b in inputBuffer[0..<n] { uart.receive(b) }
                } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                    input = nil  // end of input
                }
            }
        }
    }

    static func wallClockSeconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return ts.tv_sec
    }
}
