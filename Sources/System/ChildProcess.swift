import CLinux
import Glibc

/// A child process started with an exact set of file descriptors, watched through a pidfd.
public struct ChildProcess: ~Copyable, @unchecked Sendable {
    public let pid: pid_t
    public let pidfd: FileDescriptor

    /// How a child ended.
    public enum Outcome: Equatable, Sendable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        public var description: String {
            switch self {
            case .exited(let s): return "exited with status \(s)"
            case .signaled(let s): return "killed by signal \(s) (\(signalName(s)))"
            }
        }
    }

    /// Namespaces a child can be started in.
    public struct Namespaces: OptionSet, Sendable {
        public let rawValue: UInt
        public init(rawValue: UInt) { self.rawValue = rawValue }
        public static let mount = Namespaces(rawValue: UInt(CLONE_NEWNS))
        public static let pid = Namespaces(rawValue: UInt(CLONE_NEWPID))
        public static let ipc = Namespaces(rawValue: UInt(CLONE_NEWIPC))
        public static let uts = Namespaces(rawValue: UInt(CLONE_NEWUTS))
        public static let network = Namespaces(rawValue: UInt(CLONE_NEWNET))
        public static let user = Namespaces(rawValue: UInt(CLONE_NEWUSER))
        public static let all: Namespaces = [.mount, .pid, .ipc, .uts, .network]
    }

    /// Starts `executable` with `arguments`. The child's fds 0, 1, 2 are `stdio`; `fds[i]` becomes fd 3+i;
    /// every other descriptor is closed. The child starts in `namespaces`, with an empty signal mask and default
    /// signal actions, gets SIGKILL when this process dies, and gets `environment` (or this process's).
    public static func spawn(
        executable: String, arguments: [String], stdio: (Int32, Int32, Int32), fds: [Int32],
        environment: [String]? = nil, namespaces: Namespaces = []
    ) throws(SystemError) -> ChildProcess {
        let all = [stdio.0, stdio.1, stdio.2] + fds
        let argv = ([executable] + arguments).map { strdup($0) }
        let envp = (environment ?? ProcessInfo.environmentStrings()).map { strdup($0) }
        defer { (argv + envp).forEach { free($0) } }
        let cArgv = argv + [nil], cEnv = envp + [nil]
        let selfPidfd = vmm_pidfd_open(getpid(), 0)
        defer { if selfPidfd >= 0 { close(selfPidfd) } }
        var pidfd: Int32 = -1, error: Int32 = 0
        let pid = cArgv.withUnsafeBufferPointer { a in
            cEnv.withUnsafeBufferPointer { e in
                vmm_spawn(executable, a.baseAddress, e.baseAddress, all, Int32(all.count), namespaces.rawValue,
                          selfPidfd, &pidfd, &error)
            }
        }
        guard pid > 0 else { throw SystemError("spawn \(executable)", errno: error) }
        return ChildProcess(pid: pid, pidfd: FileDescriptor(owning: pidfd))
    }

    private init(pid: pid_t, pidfd: consuming FileDescriptor) {
        self.pid = pid
        self.pidfd = pidfd
    }

    /// A child of this process that another process started for it (the helper launcher forks helpers as this
    /// process's children) and handed over with its pidfd.
    public init(adopting pid: pid_t, pidfd: consuming FileDescriptor) {
        self.init(pid: pid, pidfd: pidfd)
    }

    public func kill(_ signal: Int32 = SIGKILL) {
        _ = vmm_pidfd_send_signal(pidfd.raw, signal)
    }

    /// Reaps the child if it has ended; nil while it still runs.
    public func reap(block: Bool) throws(SystemError) -> Outcome? {
        var status: Int32 = 0
        let r = try syscallRetrying("waitpid") { waitpid(pid, &status, block ? 0 : WNOHANG) }
        if r == 0 { return nil }
        return Self.decode(status)
    }

    static func decode(_ status: Int32) -> Outcome {
        let sig = status & 0x7f
        if sig == 0 { return .exited((status >> 8) & 0xff) }
        return .signaled(sig)
    }
}

/// The usual name of a signal, e.g. "SIGKILL".
public func signalName(_ signal: Int32) -> String {
    let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
        SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
        SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
        SIGCHLD: "SIGCHLD", SIGSYS: "SIGSYS", SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ",
    ]
    return names[signal] ?? "signal \(signal)"
}

/// Process-wide signal plumbing for the supervisor and its helpers.
public enum Signals {
    /// Blocks `signals` in the calling thread (threads created later inherit the mask) and returns a signalfd for them.
    public static func blockAndOpenSignalFD(_ signals: [Int32]) throws(SystemError) -> FileDescriptor {
        _ = try syscallRetrying("pthread_sigmask") { vmm_block_signals(signals, Int32(signals.count)) }
        var set = sigset_t()
        _ = vmm_sigset_of(&set, signals, Int32(signals.count))
        return FileDescriptor(owning: try syscallRetrying("signalfd") { vmm_signalfd(-1, &set, VMM_SFD_CLOEXEC) })
    }

    /// Reads one pending signal number from a signalfd.
    public static func read(from fd: borrowing FileDescriptor) throws(SystemError) -> Int32 {
        try syscallRetrying("read(signalfd)") { vmm_signalfd_read(fd.raw) }
    }

    public static func ignore(_ signals: [Int32]) {
        for s in signals { signal(s, SIG_IGN) }
    }

    /// Asks the kernel to SIGKILL this process when its parent dies.
    public static func dieWithParent() throws(SystemError) {
        _ = try syscallRetrying("prctl(PR_SET_PDEATHSIG)") { vmm_set_pdeathsig(SIGKILL) }
    }
}

/// Restricts a process (or a thread, by its id; 0: the calling thread) to the given CPUs (sched_setaffinity).
public func setCPUAffinity(pid: pid_t, cpus: [Int]) throws(SystemError) {
    let list = cpus.map { Int32($0) }
    _ = try syscallRetrying("sched_setaffinity") { vmm_set_affinity(pid, list, Int32(list.count)) }
}

/// The CPUs a process (or a thread; 0: the calling thread) may run on (sched_getaffinity).
public func cpuAffinity(pid: pid_t) throws(SystemError) -> [Int] {
    var cpus = [Int32](repeating: 0, count: 1024)
    let count = try syscallRetrying("sched_getaffinity") { vmm_get_affinity(pid, &cpus, Int32(cpus.count)) }
    return cpus.prefix(Int(count)).map(Int.init)
}

enum ProcessInfo {
    /// This process's environment as "NAME=value" strings.
    static func environmentStrings() -> [String] {
        var out: [String] = []
        var p = environ
        while let entry = p.pointee {
            out.append(String(cString: entry))
            p += 1
        }
        return out
    }
}
