/// Firecracker's boot-timer convention on a port: the guest writes 123 to 0x3f0 when it has booted (our
/// initramfs's /init does it), and the VMM reports the time since it started.
public final class BootTimer: PortDevice {
    public static let defaultPort: UInt16 = 0x3f0
    public static let magic: UInt8 = 123
    public let portCount: UInt16 = 1
    private let onBooted: () -> Void

    public init(onBooted: @escaping () -> Void) { self.onBooted = onBooted }

    public func read(offset: UInt16) -> UInt8 { 0xff }

    public func write(offset: UInt16, value: UInt8) {
        if value == Self.magic { onBooted() }
    }
}
