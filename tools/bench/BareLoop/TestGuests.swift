import Foundation

/// Builds the test guests (Tests/Guests/build.sh, the system compiler) into a directory: the benchmark and the
/// guest-level tests all get them this one way.
public enum TestGuests {
    public struct BuildFailed: Error, CustomStringConvertible {
        public let status: Int32
        public var description: String { "Tests/Guests/build.sh failed with status \(status)" }
    }

    /// Runs `<sourceRoot>/Tests/Guests/build.sh <directory>` and returns the directory.
    public static func build(sourceRoot: String, into directory: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = [sourceRoot + "/Tests/Guests/build.sh", directory]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw BuildFailed(status: p.terminationStatus) }
        return directory
    }
}
