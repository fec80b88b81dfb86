/// Finds a fixed text in a byte stream fed one byte at a time (the pattern must not start with a repeat of its
/// first byte, which keeps the restart simple).
public struct TextWatch: Sendable {
    private let pattern: [UInt8]
    private var matched = 0

    public init(_ text: String) { pattern = Array(text.utf8) }

    /// True when `byte` completes the pattern.
    public mutating func feed(_ byte: UInt8) -> Bool {
        if byte == pattern[matched] {
            matched += 1
            if matched == pattern.count { matched = 0; return true }
        } else {
            matched = byte == pattern[0] ? 1 : 0
        }
        return false
    }
}

extension TextWatch {
    /// How much of the pattern has been seen, for a restarted process to keep watching a stream mid-pattern.
    /// The pattern itself is the successor's configuration, not state. (A struct, so not `Snapshotting`.)
    public func save(to writer: inout SnapshotWriter) {
        writer.u32(UInt32(matched))
    }

    /// Refuses a count that does not fit the pattern (`feed` would index past it).
    public mutating func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        let matched = try reader.u32()
        guard matched < pattern.count else {
            throw .invalid("text watch matched \(matched) of a \(pattern.count)-byte pattern")
        }
        self.matched = Int(matched)
    }
}
