import Channel
import System

/// The console's byte streams between the pio process and the supervisor, in one shared memfd: what the
/// guest's UART transmits (pio → supervisor, which writes it to `vmm.serial.output`), what arrives for it
/// (supervisor, reading stdin → pio), and the scancodes the keyboard behind the i8042 types (supervisor, on the
/// API's `SendCtrlAltDel` → pio). The process that parses the guest's writes does not own the console's file
/// descriptors, so it can be killed and replaced at any instruction without a console byte lost or written twice:
/// its position in each stream is part of the state it commits (see `DeviceServer.commit`).
final class ConsoleRings {
    static let output = ByteRingLayout(capacity: 1 << 16)
    static let input = ByteRingLayout(capacity: 1 << 12)
    static let keys = ByteRingLayout(capacity: 256)
    static let inputOffset = (output.byteSize + 4095) & ~4095
    static let keysOffset = (inputOffset + input.byteSize + 4095) & ~4095
    static let byteSize = (keysOffset + keys.byteSize + 4095) & ~4095

    private let mapping: MappedRegion

    /// The supervisor's new, zeroed memfd for them.
    static func create() throws(SystemError) -> FileDescriptor {
        try MemFD.create(name: "console", size: byteSize)
    }

    init(fd: Int32) throws(SystemError) {
        mapping = try MappedRegion(fd: fd, size: Self.byteSize)
    }

    func outputWriter() -> ByteRingWriter { ByteRingWriter(base: mapping.base, layout: Self.output) }
    func outputReader() -> ByteRingReader { ByteRingReader(base: mapping.base, layout: Self.output) }
    func inputWriter() -> ByteRingWriter { ByteRingWriter(base: mapping.base + Self.inputOffset, layout: Self.input) }
    func inputReader() -> ByteRingReader { ByteRingReader(base: mapping.base + Self.inputOffset, layout: Self.input) }
    func keysWriter() -> ByteRingWriter { ByteRingWriter(base: mapping.base + Self.keysOffset, layout: Self.keys) }
    func keysReader() -> ByteRingReader { ByteRingReader(base: mapping.base + Self.keysOffset, layout: Self.keys) }
}

/// The console as the pio process gets it: the shared memory, and two doorbells: `news`, rung by the pio when it
/// published output or consumed input; `input`, rung by the supervisor when it published input or keys.
struct ConsoleSpec: Codable {
    var memoryFD: Int32
    var newsFD: Int32
    var inputFD: Int32
}
