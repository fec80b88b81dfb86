/// Why a snapshot could not be restored. Every malformed input ends here rather than in a trap: the bytes come
/// from shared memory that a compromised predecessor process could have written.
public enum SnapshotError: Error, Equatable, CustomStringConvertible {
    /// The snapshot ended before a field did.
    case truncated
    /// A field holds a value the device could never have been in.
    case invalid(String)
    /// Bytes were left over after the last field (the snapshot is not the one this reader expected).
    case trailingBytes

    public var description: String {
        switch self {
        case .truncated: return "snapshot truncated"
        case .invalid(let what): return "invalid snapshot: \(what)"
        case .trailingBytes: return "snapshot has trailing bytes"
        }
    }
}

/// Accumulates a device's state as little-endian bytes. The format has no self-description: reader and writer
/// agree field by field, and the reader validates each one.
public struct SnapshotWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func u8(_ value: UInt8) { bytes.append(value) }

    public mutating func u16(_ value: UInt16) { append(value, count: 2) }

    public mutating func u32(_ value: UInt32) { append(value, count: 4) }

    public mutating func u64(_ value: UInt64) { append(value, count: 8) }

    public mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }

    /// A byte string with a u32 length prefix. Longer than 4 GiB cannot be meant: refused at the writer, whose
    /// input is our own state, not a peer's.
    public mutating func bytes(_ value: [UInt8]) {
        precondition(value.count <= Int(UInt32.max), "snapshot byte string too long")
        u32(UInt32(value.count))
        bytes.append(contentsOf: value)
    }

    private mutating func append<T: FixedWidthInteger>(_ value: T, count: Int) {
        for i in 0..<count { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }
}

/// Reads a snapshot written by `SnapshotWriter`. Every read checks the remaining length first, so hostile or
/// truncated input throws instead of trapping.
public struct SnapshotReader: Sendable {
    private let data: [UInt8]
    private var position = 0

    public init(_ bytes: [UInt8]) { data = bytes }

    /// Bytes not yet read.
    public var remaining: Int { data.count - position }

    public mutating func u8() throws(SnapshotError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated }
        defer { position += 1 }
        return data[position]
    }

    public mutating func u16() throws(SnapshotError) -> UInt16 { try integer(count: 2) }

    public mutating func u32() throws(SnapshotError) -> UInt32 { try integer(count: 4) }

    public mutating func u64() throws(SnapshotError) -> UInt64 { try integer(count: 8) }

    /// Only 0 and 1: any other byte means the snapshot is not what we wrote.
    public mutating func bool() throws(SnapshotError) -> Bool {
        switch try u8() {
        case 0: return false
        case 1: return true
        case let other: throw .invalid("boolean byte \(other)")
        }
    }

    /// A length-prefixed byte string of at most `max` bytes; the bound is checked before anything is copied, so a
    /// forged length cannot make us allocate or read beyond what the device can hold.
    public mutating func bytes(max: Int) throws(SnapshotError) -> [UInt8] {
        let length = try u32()
        guard UInt64(length) <= UInt64(Swift.max(max, 0)) else {
            throw .invalid("byte string of \(length) bytes, at most \(max) allowed")
        }
        let count = Int(length)
        guard remaining >= count else { throw .truncated }
        defer { position += count }
        return Array(data[position..<position + count])
    }

    /// Throws unless every byte was read: a snapshot longer than its fields is not one this reader understands.
    public func finish() throws(SnapshotError) {
        guard remaining == 0 else { throw .trailingBytes }
    }

    private mutating func integer<T: FixedWidthInteger>(count: Int) throws(SnapshotError) -> T {
        guard remaining >= count else { throw .truncated }
        var value: T = 0
        for i in 0..<count { value |= T(data[position + i]) << (8 * i) }
        position += count
        return value
    }
}

/// A device whose state can be saved and restored, so that a device process restarted by the supervisor resumes
/// from the state its predecessor last committed and the guest loses nothing.
///
/// `restore` must validate everything it reads: the bytes come from shared memory that a compromised predecessor
/// could have written, so a bad snapshot is an error, never a trap. It must also be all-or-nothing: decode into
/// locals, validate, and only then assign, so a failed restore leaves the device exactly as it was. Only state
/// is saved, never wiring (transmit sinks, interrupt lines, clocks): the successor brings its own.
public protocol Snapshotting: AnyObject {
    func save(to writer: inout SnapshotWriter)
    func restore(from reader: inout SnapshotReader) throws(SnapshotError)
}

extension Snapshotting {
    /// The device's state as one snapshot.
    public func snapshot() -> [UInt8] {
        var writer = SnapshotWriter()
        save(to: &writer)
        return writer.bytes
    }

    /// Restores from a snapshot holding exactly this device's fields. Trailing bytes are only seen after the
    /// fields were applied, so the device is put back as it was before throwing: all-or-nothing, like `restore`
    /// (a device that re-asserts its interrupt line on restore says its old level again last).
    public func restore(snapshot bytes: [UInt8]) throws(SnapshotError) {
        let before = snapshot()
        var reader = SnapshotReader(bytes)
        try restore(from: &reader)
        do throws(SnapshotError) {
            try reader.finish()
        } catch {
            var back = SnapshotReader(before)
            // Our own state just saved: it restores unless the device's save and restore disagree, a bug the
            // round-trip tests catch.
            try? restore(from: &back)
            throw error
        }
    }
}
