/// A device reached through port I/O. Offsets are relative to the device's first port.
public protocol PortDevice: AnyObject {
    /// Number of consecutive ports the device answers.
    var portCount: UInt16 { get }
    func read(offset: UInt16) -> UInt8
    func write(offset: UInt16, value: UInt8)
}

/// Routes port accesses to the devices of one process. Multi-byte accesses are split into byte accesses, as
/// the ISA bus does; ports nobody owns read as 0xff and ignore writes.
public final class PortBus {
    private var entries: [(base: UInt16, device: PortDevice)] = []

    public init() {}

    public enum AttachError: Error, Equatable { case overlap(UInt16) }

    public func attach(_ device: PortDevice, at base: UInt16) throws(AttachError) {
        let end = UInt32(base) + UInt32(device.portCount)
        for e in entries where UInt32(e.base) < end && UInt32(base) < UInt32(e.base) + UInt32(e.device.portCount) {
            throw .overlap(base)
        }
        entries.append((base, device))
    }

    /// The port ranges this bus answers, for routing tables elsewhere.
    public var ranges: [ClosedRange<UInt16>] {
        entries.map { $0.base...($0.base + $0.device.portCount - 1) }
    }

    private func owner(of port: UInt16) -> (PortDevice, UInt16)? {
        for e in entries where port >= e.base && UInt32(port) < UInt32(e.base) + UInt32(e.device.portCount) {
            return (e.device, port - e.base)
        }
        return nil
    }

    public func read(port: UInt16, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size {
            let p = port &+ UInt16(i)
            let byte = owner(of: p).map { $0.0.read(offset: $0.1) } ?? 0xff
            value |= UInt64(byte) << (8 * UInt64(i))
        }
        return value
    }

    public func write(port: UInt16, size: Int, value: UInt64) {
        for i in 0..<size {
            guard let (device, offset) = owner(of: port &+ UInt16(i)) else { continue }
            device.write(offset: offset, value: UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))))
        }
    }
}
