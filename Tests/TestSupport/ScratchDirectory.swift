import Foundation

/// A directory of this test process's own under the temporary directory (built guests, config files), removed when
/// the process exits: thousands of test runs must not leave thousands of files behind.
public enum ScratchDirectory {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var made: [String] = []

    /// `<tmp>/<name>-<pid>`, created on first use and removed at exit.
    public static func forThisProcess(_ name: String) throws -> String {
        let path = NSTemporaryDirectory() + "\(name)-\(getpid())"
        lock.lock()
        defer { lock.unlock() }
        if !made.contains(path) {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            if made.isEmpty { atexit { ScratchDirectory.removeAll() } }
            made.append(path)
        }
        return path
    }

    private static func removeAll() {
        lock.lock()
        defer { lock.unlock() }
        for path in made { try? FileManager.default.removeItem(atPath: path) }
        made = []
    }
}
