/// A device reached through port I/O. Offsets are relative to the device's first port.
public protocol PortDevice: AnyObject {
    /// Number of consecutive ports the device answers.
    var portCount: UInt16 { get }
    func read(offset: UInt16) -> UInt8
    func write(offset: UInt16, value: UInt8)
    /// What `read(offset:)` would return now, if reading it has no side effect (nil otherwise): such reads may be
    /// answered from a published copy without asking the device (see `PortBus.sideEffectFreeReads`).
    func peek(offset: UInt16) -> UInt8?
}

extension PortDevice {
    /// By default every read may have a side effect.
    public func peek(offset: UInt16) -> UInt8? { nil }
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

    /// Every port whose read has no side effect now, with the value it reads.
    public func sideEffectFreeReads() -> [(port: UInt16, value: UInt8)] {
        var reads: [(port: UInt16, value: UInt8)] = []
        for e in entries {
            for offset in 0..<e.device.portCount {
                if let value = e.device.peek(offset: offset) { reads.append((e.base &+ offset, value)) }
            }
        }
        return reads
    }

    public func write(port: UInt16, size: Int, value: UInt64) {
        for i in 0..<size {
            guard let (device, offset) = owner(of: port &+ UInt16(i)) else { continue }
            device.write(offset: offset, value: UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))))
        }
    }
}
