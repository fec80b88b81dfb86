/// QEMU's isa-debug-exit: a write of V asks to end the VM with exit status (V << 1) | 1.
/// Only the first byte of a wider write is taken, since the bus splits accesses into bytes.
public final class DebugExit: PortDevice {
    public static let defaultPort: UInt16 = 0xf4
    public let portCount: UInt16 = 1
    private let onExit: (Int32) -> Void

    /// `onExit` receives the status the VMM should exit with.
    public init(onExit: @escaping (Int32) -> Void) { self.onExit = onExit }

    public func read(offset: UInt16) -> UInt8 { 0 }

    public func write(offset: UInt16, value: UInt8) {
        onExit((Int32(value) << 1) | 1)
    }
}
