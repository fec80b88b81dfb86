import Channel
import Devices
import Glibc

/// The pio process's devices on one port bus, and everything about them that must outlive the process: register
/// state, the UART's receive FIFO, the keyboard's scancodes, what the panic watch has seen, and the positions in
/// the console's streams. The
/// whole of it is committed with the channel's positions (see `DeviceServer.commit`), so a successor process
/// restores it and handles again exactly the requests whose effects were not committed.
final class PIODevices: RestartableDevice {
    let bus = PortBus()
    let uart: Serial8250
    private let i8042: I8042
    private let rtc: CMOSRTC
    private let console: ConsoleSide
    /// What the guest did that the supervisor must hear about, in order (sent once the state including it is
    /// committed: at least once, and the supervisor takes the first).
    let news = GuestNews()

    /// A format tag, so that a successor never restores a different build's layout of this state.
    private static let snapshotVersion: UInt8 = 2

    init(console rings: ConsoleRings, newsDoorbell: Int32, uartLine: InterruptLine, keyboardLine: InterruptLine, debugExit: Bool) throws {
        let console = ConsoleSide(rings: rings, doorbell: newsDoorbell)
        let news = self.news
        self.console = console
        uart = Serial8250(transmit: console.transmit, line: uartLine)
        i8042 = I8042(line: keyboardLine) { news.events.append(.reset) }
        rtc = CMOSRTC { Int64(Self.wallClockSeconds()) }
        try bus.attach(uart, at: Serial8250.com1)
        if debugExit { try bus.attach(DebugExit { news.exitStatus = $0 }, at: DebugExit.defaultPort) }
        try bus.attach(i8042, at: I8042.dataPort)
        try bus.attach(rtc, at: CMOSRTC.defaultPort)
        try bus.attach(BootTimer {
            if !news.bootMarked { news.events.append(.booted) }
            news.bootMarked = true
        }, at: BootTimer.defaultPort)
    }

    /// Room for what one more request can transmit (a UART write sends at most one byte).
    func outputHasRoom() throws(ByteRingCorrupt) -> Bool { try console.output.space() > 0 }

    /// The console showed a complete kernel panic line.
    var sawPanic: Bool { console.sawPanic }

    /// Moves what arrived for the guest into the UART's receive FIFO and the keyboard's buffer, as much as each
    /// has room for (the rest waits in its stream).
    func pullInput() throws(ByteRingCorrupt) {
        let n = min(uart.receiveSpace, try console.input.available())
        if n > 0 { for byte in try console.input.take(max: n) { uart.receive(byte) } }
        let k = min(i8042.keyboardSpace, try console.keys.available())
        if k > 0 { for byte in try console.keys.take(max: k) { i8042.keyboardSend(byte) } }
    }

    /// Whether more input could be taken now: the pio waits for the supervisor's input doorbell only then.
    var wantsInput: Bool { uart.receiveSpace > 0 || i8042.keyboardSpace > 0 }

    // MARK: RestartableDevice

    func snapshot() -> [UInt8] {
        var w = SnapshotWriter()
        w.u8(Self.snapshotVersion)
        uart.save(to: &w)
        i8042.save(to: &w)
        rtc.save(to: &w)
        console.panicWatch.save(to: &w)
        w.bool(console.inPanicLine)
        w.bool(console.sawPanic)
        w.bool(news.bootMarked)
        w.bool(news.endingReported)
        w.u64(console.output.position)
        w.u64(console.input.position)
        w.u64(console.keys.position)
        return w.bytes
    }

    func didCommit() { console.publish() }

    /// Restores what a predecessor committed into these (fresh) devices. A record that fails part-way leaves them
    /// half-restored: the caller then starts over with fresh ones.
    func restore(_ bytes: [UInt8]) throws(SnapshotError) {
        var r = SnapshotReader(bytes)
        guard try r.u8() == Self.snapshotVersion else { throw .invalid("pio state of another format") }
        try uart.restore(from: &r)
        try i8042.restore(from: &r)
        try rtc.restore(from: &r)
        try console.panicWatch.restore(from: &r)
        console.inPanicLine = try r.bool()
        console.sawPanic = try r.bool()
        news.bootMarked = try r.bool()
        news.endingReported = try r.bool()
        let output = try r.u64(), input = try r.u64(), keys = try r.u64()
        try r.finish()
        console.output.resume(at: output)
        console.input.resume(at: input)
        console.keys.resume(at: keys)
        console.markPublished()
    }

    static func wallClockSeconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return ts.tv_sec
    }
}

/// The guest's events for the supervisor, gathered while requests are handled.
final class GuestNews {
    var events: [ControlMessage.GuestEvent] = []
    var exitStatus: Int32?
    var bootMarked = false
    /// An ending (exit, reset, panic) was reported: nothing after it is.
    var endingReported = false
}

/// The pio's ends of the console's streams, and the panic watch over what the guest transmits.
private final class ConsoleSide {
    var output: ByteRingWriter
    var input: ByteRingReader
    var keys: ByteRingReader
    private let doorbell: Int32
    private var published: (output: UInt64, input: UInt64, keys: UInt64)
    /// Watches for the line a Linux kernel prints when it panics (no pvpanic device without PCI or ACPI); it
    /// counts once complete, with its reason.
    var panicWatch = TextWatch("Kernel panic - not syncing")
    var inPanicLine = false
    var sawPanic = false

    init(rings: ConsoleRings, doorbell: Int32) {
        output = rings.outputWriter()
        input = rings.inputReader()
        keys = rings.keysReader()
        self.doorbell = doorbell
        published = (output.position, input.position, keys.position)
    }

    func transmit(_ byte: UInt8) {
        if inPanicLine && byte == UInt8(ascii: "\n") { sawPanic = true }
        if panicWatch.feed(byte) { inPanicLine = true }
        // The caller made sure of the room (PIODevices.outputHasRoom); a supervisor that corrupted its index
        // gets no more output.
        _ = try? output.append(CollectionOfOne(byte))
    }

    /// New output and freed input room become visible to the supervisor only once committed.
    func publish() {
        guard (output.position, input.position, keys.position) != published else { return }
        output.publish()
        input.publish()
        keys.publish()
        markPublished()
        var one: UInt64 = 1
        _ = Glibc.write(doorbell, &one, 8)
    }

    func markPublished() { published = (output.position, input.position, keys.position) }
}
