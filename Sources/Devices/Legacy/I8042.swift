/// The i8042 keyboard controller as far as a guest without a keyboard needs it: the status and command port
/// (0x64) and the data port (0x60), the controller self-test and interface tests, the command byte, the output
/// port, and the CPU reset line, whose pulse (command 0xFE, or an output-port write clearing bit 0) is how Linux
/// reboots with `reboot=k`. No keyboard or mouse is attached: their ports are disabled and send nothing.
public final class I8042: PortDevice {
    public static let dataPort: UInt16 = 0x60
    public static let commandPort: UInt16 = 0x64
    /// 0x60 ... 0x64; 0x61-0x63 (the PC's system control port and old PIT mirrors) are not the controller's
    /// and read as 0xff.
    public let portCount: UInt16 = 5

    enum Status { static let outputFull: UInt8 = 0x01, system: UInt8 = 0x04, command: UInt8 = 0x08 }
    private var commandByte: UInt8 = 0x30  // both ports disabled, no interrupts; the system flag is in status
    private var outputPort: UInt8 = 0x01    // bit 0: the CPU reset line, high (not in reset)
    private var output: UInt8?
    private var lastWasCommand = false
    /// A command that takes a data byte next (0x60 write command byte, 0xD1 write output port, 0xD2-0xD4 echo).
    private var pendingCommand: UInt8?
    private let onReset: () -> Void

    /// `onReset` runs when the guest pulses the CPU reset line.
    public init(onReset: @escaping () -> Void) { self.onReset = onReset }

    public func read(offset: UInt16) -> UInt8 {
        switch offset {
        case 0:
            defer { output = nil }
            return output ?? 0
        case 4:
            return Status.system | (output != nil ? Status.outputFull : 0) | (lastWasCommand ? Status.command : 0)
        default:
            return 0xff
        }
    }

    public func write(offset: UInt16, value: UInt8) {
        switch offset {
        case 0:
            lastWasCommand = false
            guard let command = pendingCommand else { return }  // to the keyboard: none is attached
            pendingCommand = nil
            switch command {
            case 0x60: commandByte = value
            case 0xd1: setOutputPort(value)
            case 0xd2, 0xd3: output = value  // write keyboard / aux output buffer: echoed back
            default: break
            }
        case 4:
            lastWasCommand = true
            command(value)
        default:
            break
        }
    }

    private func command(_ c: UInt8) {
        switch c {
        case 0x20: output = commandByte
        case 0x60, 0xd1, 0xd2, 0xd3, 0xd4: pendingCommand = c
        case 0xa7: commandByte |= 0x20   // disable aux
        case 0xa8: commandByte &= ~0x20  // enable aux
        case 0xa9: output = 0xff         // test aux port: no device behind it
        case 0xaa: output = 0x55         // controller self-test passed
        case 0xab: output = 0x00         // keyboard interface test passed
        case 0xad: commandByte |= 0x10   // disable keyboard
        case 0xae: commandByte &= ~0x10  // enable keyboard
        case 0xc0: output = 0x00         // read input port
        case 0xd0: output = outputPort
        case 0xf0...0xff:
            // Pulse output-port lines low; bit 0 is the CPU reset.
            if c & 1 == 0 { onReset() }
        default: break
        }
    }

    private func setOutputPort(_ value: UInt8) {
        outputPort = value
        if value & 1 == 0 { onReset() }
    }
}

extension I8042: Snapshotting {
    /// The commands that wait for a data byte; `pendingCommand` can hold nothing else.
    private static let dataCommands: Set<UInt8> = [0x60, 0xd1, 0xd2, 0xd3, 0xd4]

    /// An optional byte is a presence flag and the byte (zero when absent), so every snapshot has one length.
    public func save(to writer: inout SnapshotWriter) {
        writer.u8(commandByte)
        writer.u8(outputPort)
        writer.bool(output != nil)
        writer.u8(output ?? 0)
        writer.bool(lastWasCommand)
        writer.bool(pendingCommand != nil)
        writer.u8(pendingCommand ?? 0)
    }

    /// Restoring never pulses the reset line, even with output-port bit 0 low: the predecessor already did.
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        let commandByte = try reader.u8()
        let outputPort = try reader.u8()
        let output = try Self.optionalByte(&reader, "output buffer")
        let lastWasCommand = try reader.bool()
        let pendingCommand = try Self.optionalByte(&reader, "pending command")
        if let pendingCommand, !Self.dataCommands.contains(pendingCommand) {
            throw .invalid("i8042 pending command 0x\(String(pendingCommand, radix: 16)) takes no data byte")
        }

        self.commandByte = commandByte
        self.outputPort = outputPort
        self.output = output
        self.lastWasCommand = lastWasCommand
        self.pendingCommand = pendingCommand
    }

    private static func optionalByte(_ reader: inout SnapshotReader, _ what: String) throws(SnapshotError) -> UInt8? {
        let present = try reader.bool()
        let value = try reader.u8()
        // An absent byte is written as zero: anything else is not a snapshot we wrote.
        guard present || value == 0 else { throw .invalid("i8042 absent \(what) holds 0x\(String(value, radix: 16))") }
        return present ? value : nil
    }
}
