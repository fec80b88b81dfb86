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
