/// An 8250/16550A UART as Linux's 8250 driver sees it: divisor latch, IER, IIR/FCR with 16-byte FIFOs,
/// LCR, MCR with loopback, LSR, MSR and the scratch register. Transmission is instantaneous, so THR is
/// always empty; received bytes come from `receive(_:)`. No syscalls: the owning process moves the bytes.
public final class Serial8250: PortDevice {
    public static let com1: UInt16 = 0x3f8
    public static let fifoDepth = 16
    public let portCount: UInt16 = 8

    // Register offsets.
    enum Reg {
        static let data: UInt16 = 0, ier: UInt16 = 1, iir: UInt16 = 2, lcr: UInt16 = 3
        static let mcr: UInt16 = 4, lsr: UInt16 = 5, msr: UInt16 = 6, scr: UInt16 = 7
    }
    public enum IER { public static let rdai: UInt8 = 0x01, thri: UInt8 = 0x02, rlsi: UInt8 = 0x04, msi: UInt8 = 0x08 }
    public enum IIR {
        public static let noInterrupt: UInt8 = 0x01, modemStatus: UInt8 = 0x00, thrEmpty: UInt8 = 0x02
        public static let receivedData: UInt8 = 0x04, lineStatus: UInt8 = 0x06, timeout: UInt8 = 0x0c
        public static let fifoEnabled: UInt8 = 0xc0
    }
    public enum LCR { public static let dlab: UInt8 = 0x80 }
    public enum MCR { public static let dtr: UInt8 = 0x01, rts: UInt8 = 0x02, out1: UInt8 = 0x04, out2: UInt8 = 0x08, loop: UInt8 = 0x10 }
    public enum LSR {
        public static let dataReady: UInt8 = 0x01, overrun: UInt8 = 0x02, thrEmpty: UInt8 = 0x20, transmitterEmpty: UInt8 = 0x40
    }
    public enum MSR {
        public static let dcts: UInt8 = 0x01, ddsr: UInt8 = 0x02, teri: UInt8 = 0x04, ddcd: UInt8 = 0x08
        public static let cts: UInt8 = 0x10, dsr: UInt8 = 0x20, ri: UInt8 = 0x40, dcd: UInt8 = 0x80
    }
    public enum FCR { public static let enable: UInt8 = 0x01, clearRX: UInt8 = 0x02, clearTX: UInt8 = 0x04 }

    public private(set) var divisor: UInt16 = 12  // 9600 baud, as firmware leaves it
    private var ier: UInt8 = 0
    private var lcr: UInt8 = 0x03
    private var mcr: UInt8 = MCR.out2
    private var scr: UInt8 = 0
    private var fifoControl: UInt8 = 0
    private var overrun = false
    private var msrDeltas: UInt8 = 0
    private var thrEmptyPending = false
    private var rx: [UInt8] = []
    private var rxStart = 0
    private let transmit: (UInt8) -> Void
    private let line: InterruptLine
    private var lineLevel = false

    /// `transmit` receives each byte the guest sends; `line` is the UART's interrupt line (IRQ 4 on COM1).
    public init(transmit: @escaping (UInt8) -> Void, line: InterruptLine = UnconnectedLine()) {
        self.transmit = transmit
        self.line = line
    }

    public var fifoEnabled: Bool { fifoControl & FCR.enable != 0 }
    private var rxCapacity: Int { fifoEnabled ? Self.fifoDepth : 1 }
    private var rxCount: Int { rx.count - rxStart }

    /// Free room in the receive FIFO; the process reads no more host input than this.
    public var receiveSpace: Int { rxCapacity - rxCount }

    /// A byte arriving on the serial line. Without room the byte is lost and LSR reports an overrun.
    public func receive(_ byte: UInt8) {
        if rxCount >= rxCapacity {
            overrun = true
        } else {
            rx.append(byte)
        }
        updateInterrupt()
    }

    public func read(offset: UInt16) -> UInt8 {
        let dlab = lcr & LCR.dlab != 0
        switch offset {
        case Reg.data:
            if dlab { return UInt8(truncatingIfNeeded: divisor) }
            guard rxCount > 0 else { return 0 }
            let byte = rx[rxStart]
            rxStart += 1
            if rxStart == rx.count { rx.removeAll(keepingCapacity: true); rxStart = 0 }
            updateInterrupt()
            return byte
        case Reg.ier:
            return dlab ? UInt8(truncatingIfNeeded: divisor >> 8) : ier
        case Reg.iir:
            let id = pendingInterrupt()
            if id == IIR.thrEmpty { thrEmptyPending = false; updateInterrupt() }
            return id | (fifoEnabled ? IIR.fifoEnabled : 0)
        case Reg.lcr:
            return lcr
        case Reg.mcr:
            return mcr
        case Reg.lsr:
            var lsr = LSR.thrEmpty | LSR.transmitterEmpty
            if rxCount > 0 { lsr |= LSR.dataReady }
            if overrun { lsr |= LSR.overrun; overrun = false; updateInterrupt() }
            return lsr
        case Reg.msr:
            let value = modemLines() | msrDeltas
            msrDeltas = 0
            updateInterrupt()
            return value
        case Reg.scr:
            return scr
        default:
            return 0xff
        }
    }

    /// Reads without a side effect: everything but RBR (takes a byte), IIR while it reports THR empty (clears that),
    /// LSR with an overrun to report and MSR with deltas (both clear what they report).
    public func peek(offset: UInt16) -> UInt8? {
        switch offset {
        case Reg.data: return lcr & LCR.dlab != 0 ? UInt8(truncatingIfNeeded: divisor) : nil
        case Reg.iir: return pendingInterrupt() == IIR.thrEmpty ? nil : read(offset: offset)
        case Reg.lsr: return overrun ? nil : read(offset: offset)
        case Reg.msr: return msrDeltas != 0 ? nil : read(offset: offset)
        default: return read(offset: offset)  // IER (or DLM), LCR, MCR, SCR: plain registers
        }
    }

    public func write(offset: UInt16, value: UInt8) {
        let dlab = lcr & LCR.dlab != 0
        switch offset {
        case Reg.data:
            if dlab { divisor = (divisor & 0xff00) | UInt16(value); return }
            if mcr & MCR.loop != 0 { receive(value) } else { transmit(value) }
            thrEmptyPending = true  // THR empties at once
            updateInterrupt()
        case Reg.ier:
            if dlab { divisor = (divisor & 0x00ff) | UInt16(value) << 8; return }
            let enablingTHRI = value & IER.thri != 0 && ier & IER.thri == 0
            ier = value & 0x0f
            if enablingTHRI { thrEmptyPending = true }  // an empty THR raises THRI as soon as it is enabled
            updateInterrupt()
        case Reg.iir:
            let wasEnabled = fifoEnabled
            fifoControl = value & 0xc9
            if value & FCR.clearRX != 0 || wasEnabled != fifoEnabled { rx.removeAll(); rxStart = 0 }
            updateInterrupt()
        case Reg.lcr:
            lcr = value
        case Reg.mcr:
            let before = modemLines()
            mcr = value & 0x1f
            let after = modemLines()
            let changed = before ^ after
            if changed & MSR.cts != 0 { msrDeltas |= MSR.dcts }
            if changed & MSR.dsr != 0 { msrDeltas |= MSR.ddsr }
            if changed & MSR.dcd != 0 { msrDeltas |= MSR.ddcd }
            if before & MSR.ri != 0 && after & MSR.ri == 0 { msrDeltas |= MSR.teri }
            updateInterrupt()
        case Reg.scr:
            scr = value
        default:
            break  // LSR and MSR are read-only
        }
    }

    /// Modem input lines: looped back from MCR in loopback mode, otherwise a connected terminal (CTS, DSR, DCD).
    private func modemLines() -> UInt8 {
        if mcr & MCR.loop != 0 {
            var lines: UInt8 = 0
            if mcr & MCR.rts != 0 { lines |= MSR.cts }
            if mcr & MCR.dtr != 0 { lines |= MSR.dsr }
            if mcr & MCR.out1 != 0 { lines |= MSR.ri }
            if mcr & MCR.out2 != 0 { lines |= MSR.dcd }
            return lines
        }
        return MSR.cts | MSR.dsr | MSR.dcd
    }

    /// The highest-priority pending interrupt, as IIR reports it.
    func pendingInterrupt() -> UInt8 {
        Self.pendingInterrupt(ier: ier, fifoControl: fifoControl, overrun: overrun, rxCount: rxCount,
                              thrEmptyPending: thrEmptyPending, msrDeltas: msrDeltas)
    }

    /// The same from explicit register values, so a restore can check a snapshot before adopting it.
    private static func pendingInterrupt(ier: UInt8, fifoControl: UInt8, overrun: Bool, rxCount: Int,
                                         thrEmptyPending: Bool, msrDeltas: UInt8) -> UInt8 {
        let rxTrigger = fifoControl & FCR.enable != 0 ? [1, 4, 8, 14][Int(fifoControl >> 6)] : 1
        if ier & IER.rlsi != 0 && overrun { return IIR.lineStatus }
        if ier & IER.rdai != 0 && rxCount > 0 { return rxCount >= rxTrigger ? IIR.receivedData : IIR.timeout }
        if ier & IER.thri != 0 && thrEmptyPending { return IIR.thrEmpty }
        if ier & IER.msi != 0 && msrDeltas != 0 { return IIR.modemStatus }
        return IIR.noInterrupt
    }

    /// On a PC the UART's interrupt reaches the bus only through OUT2 (outside loopback).
    private static func lineLevel(interrupt: UInt8, mcr: UInt8) -> Bool {
        interrupt != IIR.noInterrupt && mcr & MCR.out2 != 0 && mcr & MCR.loop == 0
    }

    private func updateInterrupt() {
        let level = Self.lineLevel(interrupt: pendingInterrupt(), mcr: mcr)
        if level != lineLevel {
            lineLevel = level
            line.set(level)
        }
    }
}

extension Serial8250: Snapshotting {
    /// Every register, the pending-interrupt latches and the unread received bytes; the transmit sink and the
    /// interrupt line are the process's wiring, not state.
    public func save(to writer: inout SnapshotWriter) {
        writer.u16(divisor)
        writer.u8(ier)
        writer.u8(lcr)
        writer.u8(mcr)
        writer.u8(scr)
        writer.u8(fifoControl)
        writer.bool(overrun)
        writer.u8(msrDeltas)
        writer.bool(thrEmptyPending)
        writer.bool(lineLevel)
        writer.bytes(Array(rx[rxStart...]))
    }

    /// Restores the registers and received bytes, then re-asserts the interrupt line at the restored level:
    /// the predecessor may have died between changing its level and the irqchip hearing of it, so the successor
    /// says it again (`set` is idempotent). Values a guest could never have produced (bits the write paths mask
    /// off, more bytes than the FIFO holds, a line level its registers do not explain) are refused.
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        let divisor = try reader.u16()
        let ier = try reader.u8()
        let lcr = try reader.u8()
        let mcr = try reader.u8()
        let scr = try reader.u8()
        let fifoControl = try reader.u8()
        let overrun = try reader.bool()
        let msrDeltas = try reader.u8()
        let thrEmptyPending = try reader.bool()
        let lineLevel = try reader.bool()
        let received = try reader.bytes(max: Self.fifoDepth)

        guard ier & ~0x0f == 0 else { throw .invalid("UART IER 0x\(String(ier, radix: 16))") }
        guard mcr & ~0x1f == 0 else { throw .invalid("UART MCR 0x\(String(mcr, radix: 16))") }
        guard fifoControl & ~0xc9 == 0 else { throw .invalid("UART FCR 0x\(String(fifoControl, radix: 16))") }
        guard msrDeltas & ~0x0f == 0 else { throw .invalid("UART MSR deltas 0x\(String(msrDeltas, radix: 16))") }
        let capacity = fifoControl & FCR.enable != 0 ? Self.fifoDepth : 1
        guard received.count <= capacity else {
            throw .invalid("UART holds \(received.count) received bytes, its FIFO \(capacity)")
        }

        // The level always follows the registers (every change of them ends in updateInterrupt): a snapshot where
        // it does not would leave the line stuck against what IIR reports.
        let interrupt = Self.pendingInterrupt(ier: ier, fifoControl: fifoControl, overrun: overrun,
                                              rxCount: received.count, thrEmptyPending: thrEmptyPending,
                                              msrDeltas: msrDeltas)
        guard lineLevel == Self.lineLevel(interrupt: interrupt, mcr: mcr) else {
            throw .invalid("UART line level \(lineLevel) disagrees with its registers")
        }

        // Everything is checked; only now does the device change.
        self.divisor = divisor
        self.ier = ier
        self.lcr = lcr
        self.mcr = mcr
        self.scr = scr
        self.fifoControl = fifoControl
        self.overrun = overrun
        self.msrDeltas = msrDeltas
        self.thrEmptyPending = thrEmptyPending
        rx = received
        rxStart = 0
        self.lineLevel = lineLevel
        line.set(lineLevel)
    }
}
