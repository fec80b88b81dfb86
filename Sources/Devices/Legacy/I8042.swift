/// The i8042 keyboard controller with a keyboard that only types what the VMM sends it (Firecracker's
/// `SendCtrlAltDel`): the status and command port (0x64) and the data port (0x60), the controller self-test and
/// interface tests, the command byte, the output port, the CPU reset line, whose pulse (command 0xFE, or an
/// output-port write clearing bit 0) is how Linux reboots with `reboot=k`, and the keyboard's scancodes, which
/// raise IRQ 1 when the command byte enables the keyboard interrupt. No mouse is attached.
///
/// Scancodes are set 2, what a PS/2 keyboard sends: the controller does not translate them to set 1 (the command
/// byte's XLATE bit starts clear and is not acted on), and Linux, seeing XLATE clear, reads set 2 too.
public final class I8042: PortDevice {
    public static let dataPort: UInt16 = 0x60
    public static let commandPort: UInt16 = 0x64
    /// 0x60 ... 0x64; 0x61-0x63 (the PC's system control port and old PIT mirrors) are not the controller's
    /// and read as 0xff.
    public let portCount: UInt16 = 5
    /// Scancodes the keyboard holds for the controller (Firecracker's buffer is as long); more wait with the sender.
    public static let keyboardBufferSize = 16
    /// Ctrl, Alt and Delete pressed and released, in scancode set 2 (make codes as Firecracker's i8042 sends them:
    /// 0x14, 0x11, 0xE0 0x71; then the break codes, so the guest does not see the keys held forever).
    public static let ctrlAltDel: [UInt8] = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]

    enum Status { static let outputFull: UInt8 = 0x01, system: UInt8 = 0x04, command: UInt8 = 0x08, unlocked: UInt8 = 0x10 }
    enum CommandByte { static let keyboardInterrupt: UInt8 = 0x01, keyboardDisabled: UInt8 = 0x10 }
    private var commandByte: UInt8 = 0x30  // both ports disabled, no interrupts; the system flag is in status
    private var outputPort: UInt8 = 0x01    // bit 0: the CPU reset line, high (not in reset)
    private var output: UInt8?
    /// The byte in the output buffer came from the keyboard (a scancode or an answer to a keyboard command):
    /// only those raise IRQ 1, as in Firecracker, so a controller command's answer is never taken by the guest's
    /// interrupt handler instead of the code that polls for it.
    private var outputFromKeyboard = false
    private var keyboard: [UInt8] = []
    private var lastWasCommand = false
    /// A command that takes a data byte next (0x60 write command byte, 0xD1 write output port, 0xD2-0xD4 echo).
    private var pendingCommand: UInt8?
    private let onReset: () -> Void
    private let line: InterruptLine
    private var lineLevel = false

    /// `onReset` runs when the guest pulses the CPU reset line; `line` is the keyboard's interrupt line (ISA IRQ 1).
    public init(line: InterruptLine = UnconnectedLine(), onReset: @escaping () -> Void) {
        self.line = line
        self.onReset = onReset
    }

    /// Room for more scancodes in the keyboard's buffer. A keyboard byte in the output buffer still counts: a
    /// controller command's answer can push it back into the buffer, which must then still hold it.
    public var keyboardSpace: Int { max(0, Self.keyboardBufferSize - keyboard.count - (outputFromKeyboard ? 1 : 0)) }

    /// The keyboard sends `byte`; without room it is dropped (the caller checks `keyboardSpace`).
    public func keyboardSend(_ byte: UInt8) {
        guard keyboardSpace > 0 else { return }
        keyboard.append(byte)
        deliver()
    }

    public func read(offset: UInt16) -> UInt8 {
        switch offset {
        case 0:
            defer {
                output = nil
                outputFromKeyboard = false
                // Down, then up again if another scancode follows at once: a new edge per byte, which the
                // edge-triggered IOAPIC pin needs to interrupt again (Firecracker signals its eventfd per byte).
                updateLine()
                deliver()
            }
            return output ?? 0
        case 4:
            return Status.system | Status.unlocked | (output != nil ? Status.outputFull : 0) | (lastWasCommand ? Status.command : 0)
        default:
            return 0xff
        }
    }

    /// The status port reads without a side effect; the data port takes the byte.
    public func peek(offset: UInt16) -> UInt8? { offset == 4 ? read(offset: offset) : nil }

    public func write(offset: UInt16, value: UInt8) {
        switch offset {
        case 0:
            lastWasCommand = false
            if let command = pendingCommand {
                pendingCommand = nil
                switch command {
                case 0x60: commandByte = value
                case 0xd1: setOutputPort(value)
                case 0xd2, 0xd3: answer(value)  // write keyboard / aux output buffer: echoed back
                default: break
                }
            } else {
                keyboardCommand(value)
            }
        case 4:
            lastWasCommand = true
            command(value)
        default:
            break
        }
        updateLine()
        deliver()
    }

    private func command(_ c: UInt8) {
        switch c {
        case 0x20: answer(commandByte)
        case 0x60, 0xd1, 0xd2, 0xd3, 0xd4: pendingCommand = c
        case 0xa7: commandByte |= 0x20   // disable aux
        case 0xa8: commandByte &= ~0x20  // enable aux
        case 0xa9: answer(0xff)          // test aux port: no device behind it
        case 0xaa: answer(0x55)          // controller self-test passed
        case 0xab: answer(0x00)          // keyboard interface test passed
        case 0xad: commandByte |= CommandByte.keyboardDisabled
        case 0xae: commandByte &= ~CommandByte.keyboardDisabled
        case 0xc0: answer(0x00)          // read input port
        case 0xd0: answer(outputPort)
        case 0xf0...0xff:
            // Pulse output-port lines low; bit 0 is the CPU reset.
            if c & 1 == 0 { onReset() }
        default: break
        }
    }

    /// A byte written to the data port with no controller command waiting goes to the keyboard, which
    /// acknowledges everything (0xFA), as Firecracker's does; a reset also reports its self-test passed (0xAA).
    /// The answers queue behind what the keyboard already holds.
    private func keyboardCommand(_ value: UInt8) {
        for byte: UInt8 in value == 0xff ? [0xfa, 0xaa] : [0xfa] where keyboardSpace > 0 { keyboard.append(byte) }
    }

    /// The controller's own answer takes the output buffer; a scancode that was waiting there goes back to the
    /// front of the keyboard's buffer, so no key is lost to a command.
    private func answer(_ value: UInt8) {
        if let waiting = output, outputFromKeyboard { keyboard.insert(waiting, at: 0) }
        output = value
        outputFromKeyboard = false
    }

    /// Moves the keyboard's next byte into an empty output buffer while the keyboard is enabled.
    private func deliver() {
        guard output == nil, !keyboard.isEmpty, commandByte & CommandByte.keyboardDisabled == 0 else { return }
        output = keyboard.removeFirst()
        outputFromKeyboard = true
        updateLine()
    }

    /// IRQ 1: a keyboard byte waits and the command byte enables the keyboard interrupt.
    private static func lineLevel(commandByte: UInt8, keyboardByteWaiting: Bool) -> Bool {
        keyboardByteWaiting && commandByte & CommandByte.keyboardInterrupt != 0
    }

    private func updateLine() {
        let level = Self.lineLevel(commandByte: commandByte, keyboardByteWaiting: output != nil && outputFromKeyboard)
        guard level != lineLevel else { return }
        lineLevel = level
        line.set(level)
    }

    private func setOutputPort(_ value: UInt8) {
        outputPort = value
        if value & 1 == 0 { onReset() }
    }
}

extension I8042: Snapshotting {
    /// The commands that wait for a data byte; `pendingCommand` can hold nothing else.
    private static let dataCommands: Set<UInt8> = [0x60, 0xd1, 0xd2, 0xd3, 0xd4]

    /// An optional byte is a presence flag and the byte (zero when absent), so every snapshot has one length; the
    /// keyboard's buffer is length-prefixed.
    public func save(to writer: inout SnapshotWriter) {
        writer.u8(commandByte)
        writer.u8(outputPort)
        writer.bool(output != nil)
        writer.u8(output ?? 0)
        writer.bool(lastWasCommand)
        writer.bool(pendingCommand != nil)
        writer.u8(pendingCommand ?? 0)
        writer.bool(outputFromKeyboard)
        writer.bytes(keyboard)
        writer.bool(lineLevel)
    }

    /// Restoring never pulses the reset line, even with output-port bit 0 low: the predecessor already did. The
    /// interrupt line is said again at the restored level (the successor's line starts unknown).
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        let commandByte = try reader.u8()
        let outputPort = try reader.u8()
        let output = try Self.optionalByte(&reader, "output buffer")
        let lastWasCommand = try reader.bool()
        let pendingCommand = try Self.optionalByte(&reader, "pending command")
        if let pendingCommand, !Self.dataCommands.contains(pendingCommand) {
            throw .invalid("i8042 pending command 0x\(String(pendingCommand, radix: 16)) takes no data byte")
        }
        let outputFromKeyboard = try reader.bool()
        if outputFromKeyboard && output == nil { throw .invalid("i8042 keyboard byte in an empty output buffer") }
        let keyboard = try reader.bytes(max: Self.keyboardBufferSize)
        if keyboard.count + (outputFromKeyboard ? 1 : 0) > Self.keyboardBufferSize {
            throw .invalid("i8042 keyboard holds \(keyboard.count + 1) bytes, at most \(Self.keyboardBufferSize)")
        }
        // The device always moves a waiting scancode into an empty buffer while the keyboard is enabled.
        if output == nil, !keyboard.isEmpty, commandByte & CommandByte.keyboardDisabled == 0 {
            throw .invalid("i8042 scancodes waiting behind an empty output buffer")
        }
        let lineLevel = try reader.bool()
        guard lineLevel == Self.lineLevel(commandByte: commandByte, keyboardByteWaiting: outputFromKeyboard) else {
            throw .invalid("i8042 interrupt line \(lineLevel ? "high" : "low") against its registers")
        }

        self.commandByte = commandByte
        self.outputPort = outputPort
        self.output = output
        self.lastWasCommand = lastWasCommand
        self.pendingCommand = pendingCommand
        self.outputFromKeyboard = outputFromKeyboard
        self.keyboard = keyboard
        self.lineLevel = lineLevel
        line.set(lineLevel)
    }

    private static func optionalByte(_ reader: inout SnapshotReader, _ what: String) throws(SnapshotError) -> UInt8? {
        let present = try reader.bool()
        let value = try reader.u8()
        // An absent byte is written as zero: anything else is not a snapshot we wrote.
        guard present || value == 0 else { throw .invalid("i8042 absent \(what) holds 0x\(String(value, radix: 16))") }
        return present ? value : nil
    }
}
