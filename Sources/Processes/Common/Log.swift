import Glibc

/// Diagnostics to stderr (or the logger's file), prefixed with the role, filtered by level.
public enum Log {
    public enum Level: Int, Sendable, Comparable {
        case off = 0, error, warning, info, debug, trace
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }

    nonisolated(unsafe) public static var level: Level = .warning
    nonisolated(unsafe) public static var role = "vmm"
    nonisolated(unsafe) public static var fd: Int32 = 2

    public static func error(_ message: @autoclosure () -> String) { write(.error, message()) }
    public static func warning(_ message: @autoclosure () -> String) { write(.warning, message()) }
    public static func info(_ message: @autoclosure () -> String) { write(.info, message()) }
    public static func debug(_ message: @autoclosure () -> String) { write(.debug, message()) }

    /// Always printed: the outcome a user must see (why the VM ended).
    public static func report(_ message: String) {
        emit("vmm: \(message)\n")
    }

    private static func write(_ l: Level, _ message: String) {
        guard l <= level, l != .off else { return }
        // Debug lines carry CLOCK_MONOTONIC (shared by all processes), so start-up phases line up across roles.
        var stamp = ""
        if level >= .debug {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            stamp = " t=\(Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000).\(String(Int(ts.tv_nsec) / 1000 % 1000 + 1000).dropFirst())ms"
        }
        emit("[\(role)]\(stamp) \(l): \(message)\n")
    }

    private static func emit(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}
