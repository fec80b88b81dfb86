import Glibc
import CLinux

/// An owned file descriptor, closed when dropped. `take()` hands ownership to the caller.
public struct FileDescriptor: ~Copyable, @unchecked Sendable {
    public let raw: Int32

    /// Takes ownership of `raw`.
    public init(owning raw: Int32) { self.raw = raw }

    /// A descriptor in a class, for keeping several in a collection or handing one to an owner list.
    public final class Box: @unchecked Sendable {
        public let fd: FileDescriptor
        public init(_ fd: consuming FileDescriptor) { self.fd = fd }
        public var raw: Int32 { fd.raw }
    }

    deinit { if raw >= 0 { close(raw) } }

    /// Gives up ownership without closing.
    public consuming func take() -> Int32 {
        let r = raw
        discard self
        return r
    }

    /// Opens a path (O_CLOEXEC is always added).
    public static func open(_ path: String, _ flags: Int32, mode: Int32 = 0o644) throws(SystemError) -> FileDescriptor {
        let fd = try syscallRetrying("open \(path)") { vmm_open(path, flags | VMM_O_CLOEXEC, mode) }
        return FileDescriptor(owning: fd)
    }

    public func duplicate(atLeast minimum: Int32 = 3) throws(SystemError) -> FileDescriptor {
        try Self.duplicate(raw, atLeast: minimum)
    }

    /// An owned close-on-exec copy of a descriptor owned elsewhere (e.g. stdout).
    public static func duplicate(_ raw: Int32, atLeast minimum: Int32 = 3) throws(SystemError) -> FileDescriptor {
        FileDescriptor(owning: try syscallRetrying("fcntl(F_DUPFD_CLOEXEC)") { vmm_fcntl_int(raw, F_DUPFD_CLOEXEC, minimum) })
    }

    /// Reads up to `count` bytes; 0 means end of file.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int) throws(SystemError) -> Int {
        try syscallRetrying("read") { Glibc.read(raw, buffer, count) }
    }

    /// Writes all of the buffer.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let base = buffer.baseAddress! + done
            let left = buffer.count - done
            done += try syscallRetrying("write") { Glibc.write(raw, base, left) }
        }
    }

    public func writeAll(_ bytes: [UInt8]) throws(SystemError) {
        try Self.writeAll(raw, bytes)
    }

    /// Writes all of `bytes` to a descriptor owned elsewhere.
    public static func writeAll(_ raw: Int32, _ bytes: [UInt8]) throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { b in Glibc.write(raw, b.baseAddress! + done, b.count - done) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError("write", errno: Glibc.errno)
            }
            done += n
        }
    }

    public func setNonBlocking(_ on: Bool) throws(SystemError) {
        let flags = try syscallRetrying("fcntl(F_GETFL)") { vmm_fcntl_int(raw, F_GETFL, 0) }
        let new = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        _ = try syscallRetrying("fcntl(F_SETFL)") { vmm_fcntl_int(raw, F_SETFL, new) }
    }

    /// Size of the file behind the descriptor.
    public func size() throws(SystemError) -> Int {
        var st = stat()
        _ = try syscallRetrying("fstat") { fstat(raw, &st) }
        return Int(st.st_size)
    }

    public func truncate(to size: Int) throws(SystemError) {
        _ = try syscallRetrying("ftruncate") { ftruncate(raw, off_t(size)) }
    }

    /// The most `readText` reads: far more than a policy or a kernel's pseudo-file holds.
    public static let textLimit = 16 << 20

    /// The contents of a text file, read to its end (so that files whose size says nothing, in procfs and cgroupfs,
    /// read whole too); nil when it cannot be read or holds more than `textLimit` bytes.
    public static func readText(_ path: String) -> String? {
        guard let fd = try? open(path, O_RDONLY) else { return nil }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let got = chunk.withUnsafeMutableBytes { Glibc.read(fd.raw, $0.baseAddress!, $0.count) }
            if got < 0 && Glibc.errno == EINTR { continue }
            if got < 0 { return nil }
            if got == 0 { break }
            out += chunk[..<got]
            if out.count > textLimit { return nil }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Reads the whole file from offset 0.
    public func readAll() throws(SystemError) -> [UInt8] {
        try readAll(count: try size())
    }

    /// Reads the whole file from offset 0, refusing (EFBIG) before anything is allocated or read when it is
    /// larger than `limit` bytes: the file's size is not to decide how much memory vmm takes.
    public func readAll(atMost limit: Int) throws(SystemError) -> [UInt8] {
        let n = try size()
        guard n <= limit else { throw SystemError("read: the file has \(n) bytes, more than the limit of \(limit)", errno: EFBIG) }
        return try readAll(count: n)
    }

    /// Reads at most `n` bytes from offset 0 (fewer when the file is shorter by then).
    private func readAll(count n: Int) throws(SystemError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var done = 0
        while done < n {
            let got = out.withUnsafeMutableBytes { b in pread(raw, b.baseAddress! + done, n - done, off_t(done)) }
            if got < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError("pread", errno: Glibc.errno)
            }
            if got == 0 { break }
            done += got
        }
        if done < n { out.removeSubrange(done...) }
        return out
    }
}

/// Which of a set of descriptors are ready; a thin wrapper over poll(2).
public enum Poll {
    public struct Event: OptionSet, Sendable {
        public let rawValue: Int16
        public init(rawValue: Int16) { self.rawValue = rawValue }
        public static let readable = Event(rawValue: Int16(POLLIN))
        public static let hangup = Event(rawValue: Int16(POLLHUP))
        public static let error = Event(rawValue: Int16(POLLERR))
    }

    /// Waits until one of `fds` is readable (or hung up); returns the readiness per fd. `timeoutMs` < 0 waits forever.
    public static func wait(_ fds: [Int32], timeoutMs: Int32) throws(SystemError) -> [Event] {
        try wait(fds, call: "poll") { poll($0, nfds_t($1), timeoutMs) }
    }

    /// The same with a timeout in nanoseconds (ppoll), for waits shorter than a millisecond.
    public static func wait(_ fds: [Int32], timeoutNanoseconds: UInt64) throws(SystemError) -> [Event] {
        try wait(fds, call: "ppoll") { vmm_poll_ns($0, UInt($1), timeoutNanoseconds) }
    }

    /// Polls `fds` for reading with `poll` (the descriptors, their count), again after EINTR.
    private static func wait(_ fds: [Int32], call: String,
                             _ poll: (UnsafeMutablePointer<pollfd>?, Int) -> Int32) throws(SystemError) -> [Event] {
        var pfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let n = pfds.count
        var r: Int32
        repeat {
            r = pfds.withUnsafeMutableBufferPointer { poll($0.baseAddress, n) }
        } while r < 0 && Glibc.errno == EINTR
        if r < 0 { throw SystemError(call, errno: Glibc.errno) }
        if r == 0 { return Array(repeating: [], count: n) }
        return pfds.map { Event(rawValue: $0.revents) }
    }

    /// Descriptors to wait on, added in groups: each group's readiness is read back by the range `add` gave it,
    /// not by offsets the caller works out from the groups before it.
    public struct List {
        public private(set) var fds: [Int32] = []
        public init() {}

        @discardableResult
        public mutating func add(_ group: [Int32]) -> Range<Int> {
            fds += group
            return (fds.count - group.count)..<fds.count
        }

        public func wait(timeoutMs: Int32) throws(SystemError) -> [Event] { try Poll.wait(fds, timeoutMs: timeoutMs) }
    }
}
