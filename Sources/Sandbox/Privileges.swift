import CCap
import CLinux
import Glibc

/// Leaves a process with nothing: an unprivileged uid and gid, no supplementary groups, every capability set
/// cleared (bounding and ambient included), no new privileges, and small resource limits.
public enum Privileges {
    public struct Error: Swift.Error, CustomStringConvertible { public let description: String }

    /// `uid`/`gid` nil: keep the current ids (a helper in a user namespace has no other id to switch to).
    public static func drop(uid: UInt32?, gid: UInt32?) throws(Error) {
        // The bounding set first: dropping from it needs CAP_SETPCAP, which goes with the uid change.
        for cap in 0..<Int(cap_max_bits()) {
            if vmm_prctl5(VMM_PR_CAPBSET_DROP, UInt(cap), 0, 0, 0) != 0 && errno != EINVAL {
                throw Error(description: "PR_CAPBSET_DROP \(cap): \(String(cString: strerror(errno)))")
            }
        }
        if vmm_prctl5(VMM_PR_CAP_AMBIENT, UInt(VMM_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0) != 0 { throw fail("PR_CAP_AMBIENT_CLEAR_ALL") }
        if let uid, let gid {
            if setgroups(0, nil) != 0 { throw fail("setgroups") }
            if vmm_setresgid(gid) != 0 { throw fail("setresgid(\(gid))") }
            if vmm_setresuid(uid) != 0 { throw fail("setresuid(\(uid))") }
        }
        guard let empty = cap_init() else { throw fail("cap_init") }
        defer { cap_free(UnsafeMutableRawPointer(empty)) }
        if cap_set_proc(empty) != 0 { throw fail("cap_set_proc") }
        if vmm_prctl5(VMM_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 { throw fail("PR_SET_NO_NEW_PRIVS") }
    }

    /// Resource limits for a helper: `openFiles` descriptors, no core dumps, when `processes` is set at most that
    /// many processes for the helper's uid, and when `addressSpace` is set at most that many bytes of address space
    /// (a compromised helper cannot take the host's memory). (No file-size limit: a helper can open no file, and
    /// the console or stderr it was given may be a regular file.)
    public static func limit(openFiles: UInt64, processes: UInt64?, addressSpace: UInt64? = nil) throws(Error) {
        func set(_ resource: Int32, _ value: UInt64, _ name: String) throws(Error) {
            if vmm_set_rlimit(resource, value) != 0 { throw fail("setrlimit(\(name))") }
        }
        try set(VMM_RLIMIT_NOFILE, openFiles, "RLIMIT_NOFILE")
        try set(VMM_RLIMIT_CORE, 0, "RLIMIT_CORE")
        if let processes { try set(VMM_RLIMIT_NPROC, processes, "RLIMIT_NPROC") }
        if let addressSpace { try set(VMM_RLIMIT_AS, addressSpace, "RLIMIT_AS") }
    }

    static func fail(_ what: String) -> Error { Error(description: "\(what): \(String(cString: strerror(errno)))") }
}

/// Puts a process that was started in new namespaces into an empty, read-only root: a private mount tree, a
/// tiny tmpfs made the root with pivot_root, the old root detached.
public enum Jail {
    /// The process is in its empty root already: a helper forked by the launcher enters it before it is told its
    /// role (see HelperLauncher), and then only names its host.
    nonisolated(unsafe) public private(set) static var entered = false

    public static func enterEmptyRoot(hostname: String) throws(Privileges.Error) {
        if !entered { try enterEmptyRoot() }
        if sethostname(hostname, hostname.utf8.count) != 0 { throw Privileges.fail("sethostname") }
    }

    /// The empty root without the host's name: nothing of the host's file system is reachable afterwards.
    public static func enterEmptyRoot() throws(Privileges.Error) {
        if mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil) != 0 { throw Privileges.fail("mount(/, MS_PRIVATE)") }
        // Any directory serves as the mount point: the mount is visible in this namespace only.
        if mount("vmm-empty-root", "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), "size=4k,nr_inodes=4,mode=0555") != 0 {
            throw Privileges.fail("mount(tmpfs)")
        }
        if chdir("/tmp") != 0 { throw Privileges.fail("chdir") }
        if vmm_pivot_root(".", ".") != 0 { throw Privileges.fail("pivot_root") }
        if umount2(".", Int32(MNT_DETACH)) != 0 { throw Privileges.fail("umount2(old root)") }
        if chdir("/") != 0 { throw Privileges.fail("chdir(/)") }
        let flags = UInt(MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if mount(nil, "/", nil, flags, nil) != 0 { throw Privileges.fail("remount / read-only") }
        entered = true
    }
}
