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
    /// The logger's `show_level` and `show_log_origin` (nil: vmm's own format, `[role] level: message`). Given,
    /// lines start as Firecracker's do: `[vmm:role:LEVEL:file:line] message`, with the level and origin as asked.
    nonisolated(unsafe) public static var showLevel: Bool?
    nonisolated(unsafe) public static var showOrigin: Bool?

    public static func error(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) { write(.error, message(), file, line) }
    public static func warning(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) { write(.warning, message(), file, line) }
    public static func info(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) { write(.info, message(), file, line) }
    public static func debug(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) { write(.debug, message(), file, line) }

    /// The format settings travel to helpers in their environment (every role's spec stays as it is).
    public static var formatEnvironment: [String] {
        var out: [String] = []
        if let showLevel { out.append("VMM_LOG_SHOW_LEVEL=\(showLevel ? 1 : 0)") }
        if let showOrigin { out.append("VMM_LOG_SHOW_ORIGIN=\(showOrigin ? 1 : 0)") }
        return out
    }

    /// A helper takes the format the supervisor passed in its environment.
    public static func takeFormatFromEnvironment() {
        func flag(_ name: String) -> Bool? { getenv(name).map { String(cString: $0) == "1" } }
        showLevel = flag("VMM_LOG_SHOW_LEVEL")
        showOrigin = flag("VMM_LOG_SHOW_ORIGIN")
    }

    /// Always printed: the outcome a user must see (why the VM ended).
    public static func report(_ message: String) {
        emit("vmm: \(message)\n")
    }

    private static func write(_ l: Level, _ message: String, _ file: StaticString, _ line: UInt) {
        guard l <= level, l != .off else { return }
        // Debug lines carry CLOCK_MONOTONIC (shared by all processes), so start-up phases line up across roles.
        var stamp = ""
        if level >= .debug {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            stamp = " t=\(Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000).\(String(Int(ts.tv_nsec) / 1000 % 1000 + 1000).dropFirst())ms"
        }
        guard showLevel != nil || showOrigin != nil else {
            emit("[\(role)]\(stamp) \(l): \(message)\n")
            return
        }
        let level = showLevel == true ? ":\(String(describing: l).uppercased())" : ""
        let origin = showOrigin == true ? ":\(file):\(line)" : ""
        emit("[vmm:\(role)\(level)\(origin)]\(stamp) \(message)\n")
    }

    private static func emit(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}
