import Glibc
import CLinux

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

    /// Starts `executable` with `arguments`. The child's fds 0, 1, 2 are `stdio`; `fds[i]` becomes fd 3+i;
    /// every other descriptor is closed. The child gets an empty signal mask and default signal actions, and
    /// `environment` (or this process's environment when nil).
    public static func spawn(
        executable: String, arguments: [String], stdio: (Int32, Int32, Int32), fds: [Int32],
        environment: [String]? = nil
    ) throws(SystemError) -> ChildProcess {
        // Move every source above the target range first so that no dup2 clobbers a later source.
        var staged: [Int32] = []
        defer { staged.forEach { close($0) } }
        for fd in [stdio.0, stdio.1, stdio.2] + fds {
            staged.append(try syscallRetrying("fcntl(F_DUPFD_CLOEXEC)") {
                vmm_fcntl_int(fd, F_DUPFD_CLOEXEC, 100 + Int32(fds.count))
            })
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, source) in staged.enumerated() {
            try checkReturn("posix_spawn_file_actions_adddup2",
                            posix_spawn_file_actions_adddup2(&actions, source, Int32(target)))
        }
        try checkReturn("posix_spawn_file_actions_addclosefrom_np", vmm_spawn_closefrom(&actions, Int32(3 + fds.count)))

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(VMM_POSIX_SPAWN_SETSIGMASK | VMM_POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        var cArgv = argv + [nil]
        var pid: pid_t = 0
        let r: Int32
        if let environment {
            let envp = environment.map { strdup($0) }
            defer { envp.forEach { free($0) } }
            var cEnv = envp + [nil]
            r = posix_spawn(&pid, executable, &actions, &attr, &cArgv, &cEnv)
        } else {
            r = posix_spawn(&pid, executable, &actions, &attr, &cArgv, environ)
        }
        try checkReturn("posix_spawn \(executable)", r)
        let pidfd = try syscallRetrying("pidfd_open") { vmm_pidfd_open(pid, 0) }
        return ChildProcess(pid: pid, pidfd: FileDescriptor(owning: pidfd))
    }

    private init(pid: pid_t, pidfd: consuming FileDescriptor) {
        self.pid = pid
        self.pidfd = pidfd
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

    /// Asks the kernel to SIGKILL this process when its parent dies, then checks the parent is still `expectedParent`.
    public static func dieWithParent(expectedParent: pid_t) throws(SystemError) -> Bool {
        _ = try syscallRetrying("prctl(PR_SET_PDEATHSIG)") { vmm_set_pdeathsig(SIGKILL) }
        return getppid() == expectedParent
    }
}

/// Restricts a process to the given CPUs (sched_setaffinity).
public func setCPUAffinity(pid: pid_t, cpus: [Int]) throws(SystemError) {
    let list = cpus.map { Int32($0) }
    _ = try syscallRetrying("sched_setaffinity") { vmm_set_affinity(pid, list, Int32(list.count)) }
}
