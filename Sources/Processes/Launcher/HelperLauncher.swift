import CLinux
import Glibc
import Machine
import Sandbox
import Synchronization
import System

/// The helper launcher (a "zygote", as Android and Chromium call theirs): a copy of vmm forked at its start, before
/// it reads a config, maps guest memory, opens a device or starts a thread, which forks every helper on request.
///
/// A forked helper skips exec, dynamic loading and the Swift runtime's start (about 7 ms of CPU each here, most of
/// a helper's way to serving, and on two CPUs the helpers' starts delay one another) and shares the launcher's
/// pages, its loaded runtime among them, instead of building a copy of its own. It is forked as the supervisor's
/// child (CLONE_PARENT), gets the same descriptors, namespaces, environment and command line an exec'd helper gets,
/// and the supervisor watches and reaps it as it would an exec'd one. From the launcher's memory it inherits the
/// state of vmm at its start: its arguments and the runtime's, nothing of the VM.
///
/// The price: every forked helper has the launcher's address-space layout and stack canary, so one helper's memory
/// tells where things are in the others (an exec'd helper gets a fresh layout). `vmm.sandbox.helper_start: "exec"`
/// buys that back for the milliseconds.
public final class HelperLauncher: @unchecked Sendable {
    private let socket: FileDescriptor
    private let pid: pid_t
    /// One request and its reply at a time: a restart (watch loop) and an API request may launch at once.
    private let exchange = Mutex(())

    private init(socket: consuming FileDescriptor, pid: pid_t) {
        self.socket = socket
        self.pid = pid
    }

    nonisolated(unsafe) private static var early: HelperLauncher?

    /// Starts the launcher first thing in `main`, so that it has blanks ready by the time the supervisor has read
    /// its config and prepared the VM (a few milliseconds on the other CPU).
    public static func startEarly() { early = start() }

    /// The launcher `startEarly` started, for the supervisor to own (dropped, it ends with its blanks).
    public static func takeEarly() -> HelperLauncher? {
        defer { early = nil }
        return early
    }

    /// Forks the launcher; nil (helpers are then exec'd) when this process has threads already, since a fork copies
    /// only the calling thread and the others' locks with it, or when the fork fails.
    public static func start() -> HelperLauncher? {
        guard threadCount() == 1 else {
            Log.debug("helper launcher: vmm has threads already; helpers will be exec'd")
            return nil
        }
        var pair: [Int32] = [-1, -1]
        guard vmm_seqpacket_pair(&pair) == 0 else { return nil }
        let supervisor = vmm_pidfd_open(getpid(), 0)
        let child = fork()
        if child == 0 {
            close(pair[0])
            serve(socket: pair[1], supervisorPidfd: supervisor)
        }
        close(pair[1])
        if supervisor >= 0 { close(supervisor) }
        guard child > 0 else {
            close(pair[0])
            return nil
        }
        return HelperLauncher(socket: FileDescriptor(owning: pair[0]), pid: child)
    }

    /// Ends the launcher and reaps it and the blanks it had ready (this process's children).
    deinit {
        var pids = [pid_t](repeating: 0, count: Self.poolSize + 1)
        var none: Int32 = -1, count: Int32 = 0
        if Self.retireMessage.withUnsafeBytes({ vmm_send_with_fds(socket.raw, $0.baseAddress, $0.count, [], 0) }) > 0 {
            let n = pids.withUnsafeMutableBytes { vmm_receive_with_fds(socket.raw, $0.baseAddress, $0.count, &none, 1, &count, 0) }
            for pid in pids.prefix(max(0, n) / MemoryLayout<pid_t>.size) where pid > 0 {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            }
        }
        _ = Glibc.shutdown(socket.raw, Int32(SHUT_RDWR))
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    /// Starts `role` with `spec` as a forked helper, with exactly `stdio` and `fds` (as 0, 1, 2, 3, ...) in
    /// `namespaces`, as vmm_spawn would exec it. Throws `.launcherGone` when the launcher cannot be reached (the
    /// caller may exec instead), or the child's failure to start.
    public func launch(role: Role, spec: String, environment: [String], stdio: (Int32, Int32, Int32), fds: [Int32],
                       namespaces: ChildProcess.Namespaces) throws(LaunchError) -> ChildProcess {
        let all = [stdio.0, stdio.1, stdio.2] + fds
        let request = LaunchRequest(role: role, namespaces: namespaces.rawValue, fdCount: all.count, environment: environment, spec: spec)
        return try exchange.withLock { _ throws(LaunchError) -> ChildProcess in
            guard Self.forward(request.encoded(), all, to: socket.raw) else {
                throw .launcherGone(SystemError("send to the helper launcher", errno: errno))
            }
            var reply = (Int32(0), Int32(0))
            var pidfd: Int32 = -1, count: Int32 = 0
            let n = withUnsafeMutableBytes(of: &reply) { vmm_receive_with_fds(socket.raw, $0.baseAddress, $0.count, &pidfd, 1, &count, 0) }
            guard n == 8, count == 1, reply.0 > 0 else {
                if count == 1 { close(pidfd) }
                throw .launcherGone(SystemError("reply from the helper launcher", errno: n < 0 ? errno : EPROTO))
            }
            let process = ChildProcess(adopting: reply.0, pidfd: FileDescriptor(owning: pidfd))
            if reply.1 != 0 {
                // It failed before running the helper; it is this process's child to reap.
                _ = try? process.reap(block: true)
                if reply.1 == Self.blankDied { throw .launcherGone(SystemError("a forked helper died before it started", errno: ECHILD)) }
                throw .startFailed(SystemError("start \(role.rawValue)", errno: reply.1))
            }
            return process
        }
    }

    /// Up to `limit` ids of `range`, in order, that no host account or group uses (getpwuid and getgrgid, so NSS
    /// sources too), and the id the search stopped before. A child the launcher forks for the purpose looks them up:
    /// the NSS modules those calls load (libnss_systemd here: 0.3 MiB of mappings) go with it, where in the supervisor
    /// they stayed for the VM's life. Throws `.launcherGone` when the launcher cannot answer.
    public func unusedIDs(in range: Range<UInt32>, limit: Int) throws(LaunchError) -> (ids: [UInt32], next: UInt32) {
        try exchange.withLock { _ throws(LaunchError) -> (ids: [UInt32], next: UInt32) in
            let request = Self.idsMessage + [range.lowerBound, range.upperBound, UInt32(limit)].flatMap { withUnsafeBytes(of: $0.littleEndian) { Array($0) } }
            guard request.withUnsafeBytes({ vmm_send_with_fds(socket.raw, $0.baseAddress, $0.count, [], 0) }) == request.count else {
                throw .launcherGone(SystemError("send to the helper launcher", errno: errno))
            }
            var words = [UInt32](repeating: 0, count: 2 + limit)
            var none: Int32 = -1, count: Int32 = 0
            let n = words.withUnsafeMutableBytes { vmm_receive_with_fds(socket.raw, $0.baseAddress, $0.count, &none, 1, &count, 0) }
            if count == 1 { close(none) }
            // [0, next, ids...]: found; [errno]: the child could not be forked.
            guard n >= 8, n % 4 == 0, words[0] == 0, words[1] > range.lowerBound, words[1] <= range.upperBound else {
                throw .launcherGone(SystemError("unused ids from the helper launcher", errno: n < 0 ? errno : n == 4 ? Int32(words[0]) : EPROTO))
            }
            return (Array(words[2..<n / 4]), words[1])
        }
    }

    /// Why a launch failed.
    public enum LaunchError: Error, CustomStringConvertible {
        /// The launcher is unreachable (dead, or it answered nonsense): exec the helper instead.
        case launcherGone(SystemError)
        /// The helper's own start failed (its namespaces, its descriptors), as it would have exec'd.
        case startFailed(SystemError)

        public var description: String {
            switch self {
            case .launcherGone(let e): return "helper launcher: \(e)"
            case .startFailed(let e): return "\(e)"
            }
        }
    }

    static let descriptorsPerMessage = 250
    static let retireMessage = Array("retire".utf8)
    /// A request for unused ids: this, then the range's bounds and the limit (UInt32 each, little-endian).
    static let idsMessage = Array("unused-ids".utf8)
    /// The reply's error when the blank given the request had died (not an errno).
    static let blankDied: Int32 = -1

    private static func threadCount() -> Int {
        guard let dir = opendir("/proc/self/task") else { return 0 }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            if entry.pointee.d_name.0 != UInt8(ascii: ".") { count += 1 }
        }
        return count
    }
}

/// One launch: the role, the namespaces' clone flags, how many descriptors follow, the environment and the spec,
/// as NUL-separated fields (none of them can contain a NUL).
struct LaunchRequest: Equatable {
    var role: Role
    var namespaces: UInt
    var fdCount: Int
    var environment: [String]
    var spec: String

    func encoded() -> [UInt8] {
        let fields = [role.rawValue, String(namespaces), String(fdCount), String(environment.count)] + environment + [spec]
        return Array(fields.joined(separator: "\0").utf8)
    }
}

/// Kept out of the type so that it keeps its memberwise initializer.
extension LaunchRequest {
    init?(decoding bytes: ArraySlice<UInt8>) {
        let fields = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard fields.count >= 5, let role = Role(rawValue: fields[0]), let namespaces = UInt(fields[1]),
              let fdCount = Int(fields[2]), (0...4096).contains(fdCount), let envCount = Int(fields[3]),
              envCount >= 0, fields.count == 5 + envCount else { return nil }
        self.init(role: role, namespaces: namespaces, fdCount: fdCount, environment: Array(fields[4..<(4 + envCount)]),
                  spec: fields[4 + envCount])
    }
}

extension HelperLauncher {
    /// A helper forked ahead of need: in its namespaces, with its ids, waiting on `socket` for its role, spec and
    /// descriptors. The clone into new namespaces (the network namespace most) takes 1-3 ms here; made ahead, while
    /// the supervisor reads its config and prepares the VM, it is off the way to the guest's first instruction.
    private struct Blank {
        let pid: pid_t
        let pidfd: Int32
        let socket: Int32
    }

    /// How many blanks the launcher may have ready: a VM's first three helpers (vcpu, pio, irqchip) and one device.
    static let poolSize = 4
    /// How many it makes again once a VM has started: one, for the next restart's standby or a hot-plugged device (a
    /// second at once gets one forked for it). Each blank kept is about 80 KiB of the VM's PSS.
    static let runningPoolSize = 1
    /// How long the launcher waits after a request before it forks blanks again.
    static let refillDelayNanoseconds: UInt64 = 50_000_000

    private enum Chore {
        case blank
        /// Decode a spec of `role` as its helper does (see HelperStartup.rehearse).
        case rehearse(Role, spec: String)
    }

    /// The launcher's life: keep blanks ready, hand each request to one, until the supervisor closes its end.
    private static func serve(socket: Int32, supervisorPidfd: Int32) -> Never {
        role("launcher")
        Signals.ignore([SIGINT, SIGQUIT, SIGTSTP, SIGPIPE])  // the terminal's signals are the supervisor's
        _ = vmm_set_pdeathsig(SIGKILL)
        // Keep nothing of vmm's but the socket and stderr (for a message): stdin and stdout to /dev/null, so that
        // a pipe on vmm's stdout ends when vmm and its helpers do, not when the launcher notices.
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        if null >= 0 { _ = dup2(null, 0); _ = dup2(null, 1); close(null) }
        let keep = [socket, supervisorPidfd].filter { $0 >= 0 }.sorted()
        var next: Int32 = 3
        for fd in keep {
            if fd > next { _ = vmm_close_range(UInt32(next), UInt32(fd - 1), 0) }
            next = fd + 1
        }
        _ = vmm_close_range(UInt32(next), UInt32.max, 0)

        let namespaces = ChildProcess.Namespaces.forHelpers.rawValue
        var pool: [Blank] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: messageCapacity, alignment: 8)
        // While the supervisor reads its config and prepares the VM: a blank for each of the first three helpers. No
        // more: on two CPUs, every other millisecond of work now delays the supervisor and those helpers. The fourth
        // blank comes once the VM runs.
        var chores: [Chore] = [.blank, .blank, .blank]
        var lastRequest: UInt64?
        var releasedAfter: UInt64?
        var rehearsed: Set<Role> = []
        /// Does the next chore; false when none is left.
        func doChore() -> Bool {
            guard let chore = chores.first else { return false }
            chores.removeFirst()
            switch chore {
            case .blank:
                if pool.count < poolSize, let blank = pooledBlank(namespaces: namespaces, supervisorPidfd: supervisorPidfd) { pool.append(blank) }
            case .rehearse(let role, let spec):
                HelperStartup.rehearse(role, spec: spec)
            }
            return true
        }
        while true {
            // One chore at a time while no request waits. Blanks are made again only once no request came for a
            // while: the helpers just handed out are starting on the same CPUs.
            while (try? Poll.wait([socket], timeoutMs: 0))?.first?.isEmpty != false {
                if doChore() { continue }
                guard pool.count < runningPoolSize, let last = lastRequest else { break }
                if case let quiet = refillDelayNanoseconds, monotonicNanoseconds() - last < quiet {
                    let left = Int32((quiet - (monotonicNanoseconds() - last)) / 1_000_000) + 1
                    if (try? Poll.wait([socket], timeoutMs: left))?.first?.isEmpty == false { break }
                    continue
                }
                guard let blank = pooledBlank(namespaces: namespaces, supervisorPidfd: supervisorPidfd) else { break }
                pool.append(blank)
            }
            // Nothing left to do until the next request (a restart): the code that forked and prepared the helpers
            // is unmapped, once after each request (see StartupCode).
            if let last = lastRequest, releasedAfter != last, chores.isEmpty, pool.count >= runningPoolSize {
                StartupCode.release()
                releasedAfter = last
            }
            guard let (header, fds) = receiveRequest(socket, buffer) else { _exit(0) }  // the supervisor is gone
            if header.elementsEqual(retireMessage) {
                // The supervisor execs its helpers after all (or is done): it reaps the blanks, its children.
                for blank in pool { close(blank.socket); close(blank.pidfd) }
                var pids = pool.map(\.pid)
                _ = pids.withUnsafeMutableBytes { vmm_send_with_fds(socket, $0.baseAddress, $0.count, [], 0) }
                _exit(0)
            }
            if header.starts(with: idsMessage) {
                answerUnusedIDs(header.dropFirst(idsMessage.count), socket: socket, whileWaiting: doChore)
                fds.forEach { _ = close($0) }
                continue
            }
            guard let request = LaunchRequest(decoding: header) else {
                fds.forEach { _ = close($0) }
                reply(socket, pid: -1, error: EPROTO, pidfd: -1)
                continue
            }
            lastRequest = monotonicNanoseconds()
            defer { fds.forEach { _ = close($0) } }
            let blank: Blank
            if !pool.isEmpty && request.namespaces == namespaces {
                blank = pool.removeFirst()
            } else {
                // None ready: one forked now, and waited for, so that its failure to start is the request's.
                switch forkBlank(namespaces: request.namespaces, supervisorPidfd: supervisorPidfd, waitReady: true) {
                case .ready(let started):
                    blank = started
                case .failed(let pid, let pidfd, let error):
                    reply(socket, pid: pid, error: error, pidfd: pidfd)
                    if pidfd >= 0 { close(pidfd) }
                    continue
                }
            }
            if forward(header, fds, to: blank.socket) {
                reply(socket, pid: blank.pid, error: 0, pidfd: blank.pidfd)
                if rehearsed.insert(request.role).inserted { chores.append(.rehearse(request.role, spec: request.spec)) }
            } else {
                // It died before it was told its role (it says why on stderr): named to the supervisor, whose child
                // it is, to reap, and which then execs its helpers instead.
                _ = vmm_pidfd_send_signal(blank.pidfd, SIGKILL)
                reply(socket, pid: blank.pid, error: blankDied, pidfd: blank.pidfd)
            }
            close(blank.socket)
            close(blank.pidfd)
        }
    }

    /// Looks up unused ids (see `unusedIDs(in:limit:)`) in a child forked for it (the launcher has one thread: the
    /// child may call anything), which answers on `socket` itself. Meanwhile the launcher does its chores
    /// (`whileWaiting`, false when none is left; the lookups take 2-5 ms here, the first VM's start asks for them, and
    /// its first helpers wait for the blanks those chores make), then waits for the child to end.
    private static func answerUnusedIDs(_ arguments: ArraySlice<UInt8>, socket: Int32, whileWaiting: () -> Bool) {
        let words = stride(from: arguments.startIndex, to: arguments.endIndex - 3, by: 4).map { i in
            arguments[i..<i + 4].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        }
        func send(_ reply: [UInt32]) {
            _ = reply.withUnsafeBytes { vmm_send_with_fds(socket, $0.baseAddress, $0.count, [], 0) }
        }
        guard words.count == 3, words[0] < words[1], (1...4096).contains(words[2]) else { return send([UInt32(EINVAL)]) }
        let child = fork()
        if child == 0 {
            let (ids, next) = HelperIDLease.unusedIDsHere(words[0]..<words[1], limit: Int(words[2]))
            send([0, next] + ids)
            _exit(0)
        }
        guard child > 0 else { return send([UInt32(errno)]) }
        var status: Int32 = 0
        while waitpid(child, &status, WNOHANG) == 0 && whileWaiting() {}
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        // A child that died before it answered (it should not) leaves the supervisor without a reply: say so.
        if !(status & 0x7f == 0 && (status >> 8) & 0xff == 0) { send([UInt32(ECHILD)]) }
    }

    /// The largest request: a spec is far below this (an exec'd helper's argument may not pass 128 KiB).
    static let messageCapacity = 1 << 20

    /// A request's header (or the retire message) and all its descriptors; nil when the socket closed.
    private static func receiveRequest(_ socket: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> (ArraySlice<UInt8>, [Int32])? {
        var fds = [Int32](repeating: -1, count: descriptorsPerMessage)
        var count: Int32 = 0
        let n = vmm_receive_with_fds(socket, buffer.baseAddress, buffer.count, &fds, Int32(fds.count), &count, 0)
        guard n >= 0, !(n == 0 && count == 0 && isClosed(socket)) else { return nil }
        var received = Array(fds[0..<Int(count)])
        let header = ArraySlice(UnsafeRawBufferPointer(rebasing: buffer[0..<n]).bindMemory(to: UInt8.self))
        guard let request = LaunchRequest(decoding: header) else { return (header, received) }
        while received.count < request.fdCount {
            var byte: UInt8 = 0
            guard vmm_receive_with_fds(socket, &byte, 1, &fds, Int32(fds.count), &count, 0) > 0 else {
                received.forEach { _ = close($0) }
                return nil
            }
            received += fds[0..<Int(count)]
        }
        return (header, received)
    }

    private static func isClosed(_ socket: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0
    }

    /// Sends a request on: the header with the first descriptors, the rest 250 at a time. False if the peer is gone.
    static func forward(_ header: some Collection<UInt8>, _ fds: [Int32], to socket: Int32) -> Bool {
        var chunks = stride(from: 0, to: fds.count, by: descriptorsPerMessage).map {
            Array(fds[$0..<min($0 + descriptorsPerMessage, fds.count)])
        }
        if chunks.isEmpty { chunks = [[]] }
        for (i, chunk) in chunks.enumerated() {
            let bytes = i == 0 ? Array(header) : [0]
            let sent = bytes.withUnsafeBytes { vmm_send_with_fds(socket, $0.baseAddress, $0.count, chunk, Int32(chunk.count)) }
            guard sent == bytes.count else { return false }
        }
        return true
    }

    private enum BlankStart {
        case ready(Blank)
        /// The clone failed (pid -1), or, waited for, the child did (its pid and pidfd: the supervisor reaps it).
        case failed(pid: pid_t, pidfd: Int32, error: Int32)
    }

    /// Forks a blank; `waitReady`: returns only once it is in its namespaces with its ids, or failed there.
    private static func forkBlank(namespaces: UInt, supervisorPidfd: Int32, waitReady: Bool) -> BlankStart {
        var pair: [Int32] = [-1, -1]
        guard vmm_seqpacket_pair(&pair) == 0 else { return .failed(pid: -1, pidfd: -1, error: errno) }
        // The child inherits the launcher's heap, and each page of it that its allocations write becomes a copy of
        // its own: pages the launcher freed (specs it rehearsed) go back to the kernel first, so that the child fills
        // fresh pages instead of copying stale ones (20-30 KiB less per helper).
        _ = malloc_trim(0)
        var pidfd: Int32 = -1, error: Int32 = 0
        let pid = vmm_fork_blank(namespaces, 1, supervisorPidfd, pair[1], waitReady ? 1 : 0, &pidfd, &error)
        if pid == 0 { close(pair[0]); blankLife(pair[1]) }
        close(pair[1])
        guard pid > 0, error == 0 else {
            close(pair[0])
            return .failed(pid: pid, pidfd: pidfd, error: error != 0 ? error : EIO)
        }
        return .ready(Blank(pid: pid, pidfd: pidfd, socket: pair[0]))
    }

    /// A blank for the pool, not waited for; nil if it could not be forked (a failure shows again, with its reason,
    /// when a request forks one on the spot).
    private static func pooledBlank(namespaces: UInt, supervisorPidfd: Int32) -> Blank? {
        switch forkBlank(namespaces: namespaces, supervisorPidfd: supervisorPidfd, waitReady: false) {
        case .ready(let blank): return blank
        case .failed(_, let pidfd, _):
            if pidfd >= 0 { close(pidfd) }
            return nil
        }
    }

    /// A blank's life: wait for its request, then become that helper. Ends quietly if the launcher goes first.
    private static func blankLife(_ socket: Int32) -> Never {
        Signals.ignore([SIGINT, SIGQUIT, SIGTSTP, SIGPIPE])  // the terminal's signals are the supervisor's
        // The empty root (and what the command line needs of /proc before it) now, not on the way to the guest.
        _ = vmm_read_memory_map()
        do { try Jail.enterEmptyRoot() } catch {
            Log.error("a forked helper could not enter its empty root: \(error)")
            _exit(127)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: messageCapacity, alignment: 8)
        guard let (header, fds) = receiveRequest(socket, buffer), let request = LaunchRequest(decoding: header),
              fds.count == request.fdCount else { _exit(0) }
        // Its descriptors in place, every other one closed (the launcher's socket among them).
        guard vmm_place_fds(fds, Int32(fds.count), nil) == 0 else {
            Log.error("a forked \(request.role.rawValue) process could not take its descriptors: \(String(cString: strerror(errno)))")
            _exit(127)
        }
        buffer.deallocate()
        becomeHelper(request)
    }

    private static func reply(_ socket: Int32, pid: pid_t, error: Int32, pidfd: Int32) {
        var message = (pid, error)
        let fds = pidfd >= 0 ? [pidfd] : []
        _ = withUnsafeBytes(of: &message) { vmm_send_with_fds(socket, $0.baseAddress, $0.count, fds, Int32(fds.count)) }
    }

    /// In the forked child: the environment and command line of an exec'd helper, then the role's code.
    private static func becomeHelper(_ request: LaunchRequest) -> Never {
        clearenv()
        for entry in request.environment { putenv(strdup(entry)) }
        // The name first: whoever reads the role from the command line (ps, the tests) then sees the name too.
        request.role.processName.withCString { _ = vmm_prctl5(VMM_PR_SET_NAME, UInt(bitPattern: $0), 0, 0, 0) }
        // Interpolated: the standard library's generic `joined(separator:)` scans every protocol conformance of vmm
        // at its first call in a process, and here that is the vcpu process's way to the guest.
        let commandLine = Array("/proc/self/exe\0_role\0\(request.role.rawValue)\0\(request.spec)\0".utf8)
        let text = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: commandLine.count)  // kept for the process's life
        _ = text.initialize(from: commandLine)
        if vmm_set_command_line(text.baseAddress, text.count) != 0 {
            Log.debug("helper launcher: the command line stays the launcher's (PR_SET_MM_MAP refused)")
        }
        exit(HelperStartup.run(request.role, spec: request.spec))
    }

    private static func role(_ name: String) {
        Log.role = name
        "vmm-launcher".withCString { _ = vmm_prctl5(VMM_PR_SET_NAME, UInt(bitPattern: $0), 0, 0, 0) }
    }
}

extension ChildProcess.Namespaces {
    /// Every helper starts in its own mount, pid, ipc, uts and network namespaces. Run by a user other than root,
    /// vmm adds a user namespace, which gives the helper just enough (inside it) to build its jail.
    public static var forHelpers: ChildProcess.Namespaces { geteuid() == 0 ? .all : ChildProcess.Namespaces.all.union(.user) }
}
