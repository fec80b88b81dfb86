import Glibc
import System

/// The id one VM's helpers run as when vmm runs as root and the config names no shared one: the first id of
/// `vmm.sandbox.id_range` that no other VM holds and no host account or group uses, used as both uid and gid. It is
/// held by an exclusive lock on `/run/vmm/ids/ID` for as long as the supervisor lives (the kernel releases the lock
/// when the process goes, however it ends), so two VMs never share an id: one VM's compromised helper cannot signal,
/// trace or share a process limit with another VM's.
final class HelperIDLease {
    let id: UInt32
    private let lock: FileDescriptor

    static let directory = "/run/vmm/ids"

    private init(id: UInt32, lock: consuming FileDescriptor) {
        self.id = id
        self.lock = lock
    }

    struct Exhausted: Error, CustomStringConvertible { let description: String }

    /// Ids of a range that no host account or group uses, in order, at most the given number, and the id the search
    /// stopped before.
    typealias UnusedIDs = (Range<UInt32>, Int) -> (ids: [UInt32], next: UInt32)

    /// `UnusedIDs` looked up in this process (which then keeps the NSS modules the lookups load).
    static func unusedIDsHere(_ range: Range<UInt32>, limit: Int) -> (ids: [UInt32], next: UInt32) {
        var ids: [UInt32] = []
        var id = range.lowerBound
        while id < range.upperBound && ids.count < limit {
            if getpwuid(id) == nil && getgrgid(id) == nil { ids.append(id) }
            id += 1
        }
        return (ids, id)
    }

    static func acquire(from range: Range<UInt32>, directory: String = directory,
                        unusedIDs: UnusedIDs = unusedIDsHere(_:limit:)) throws -> HelperIDLease {
        try makeDirectory(directory)
        var start = range.lowerBound
        // One id first (each lookup can cost 0.1 ms with NSS modules that ask a daemon); more at a time once the
        // first turns out to be held by another VM.
        var limit = 1
        while start < range.upperBound {
            let (ids, next) = unusedIDs(start..<range.upperBound, limit)
            limit = 16
            for id in ids {
                // No links followed, nothing but a regular file of root's: the directory is root's own, mode 0700.
                let file = try FileDescriptor.open("\(directory)/\(id)", O_RDWR | O_CREAT | O_NOFOLLOW, mode: 0o600)
                if flock(file.raw, LOCK_EX | LOCK_NB) == 0 { return HelperIDLease(id: id, lock: file) }
                guard errno == EWOULDBLOCK else { throw SystemError("flock(\(directory)/\(id))", errno: errno) }
            }
            start = max(next, start + 1)
        }
        throw Exhausted(description: "vmm.sandbox.id_range: every id of \(range.lowerBound)..<\(range.upperBound) is held by another VM or used by a host account")
    }

    /// /run/vmm/ids, made root-only; one that exists must be a directory of root's that others cannot write.
    private static func makeDirectory(_ path: String) throws {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/"
            prefix += String(part)  // not `+ part`: a generic append, unspecialised, that scans every conformance
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { throw SystemError("mkdir(\(prefix))", errno: errno) }
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { throw SystemError("lstat(\(path))", errno: errno) }
        guard st.st_mode & S_IFMT == S_IFDIR, st.st_uid == 0, st.st_mode & 0o022 == 0 else {
            throw Exhausted(description: "\(path) must be a directory of root's that no one else can write")
        }
    }
}

extension HelperIDLease {
    /// A lease being acquired on a thread of its own: the host's account lookups (a child of the launcher that loads
    /// the NSS modules: 3-5 ms here) run while the supervisor prepares the VM, instead of before it. Only the helpers'
    /// specs need the id.
    final class Pending {
        private final class Outcome: @unchecked Sendable {
            /// Written by the thread, read after joining it.
            var lease: Result<HelperIDLease, any Error>?
        }
        private let outcome = Outcome()
        private var thread: OSThread?

        init(from range: Range<UInt32>, unusedIDs: @escaping UnusedIDs) throws(SystemError) {
            let outcome = self.outcome
            thread = try OSThread.start(name: "vmm-ids", stackSize: 256 << 10) {
                outcome.lease = Result { try HelperIDLease.acquire(from: range, unusedIDs: unusedIDs) }
            }
        }

        /// The lease, once acquired; throws what acquiring it threw.
        func wait() throws -> HelperIDLease {
            thread?.join()
            thread = nil
            guard let lease = outcome.lease else { throw Exhausted(description: "the id lookup's thread ended without an answer") }
            return try lease.get()
        }

        deinit { thread?.join() }
    }
}
