import Glibc
import Machine
import Synchronization
import System

/// One VM's helper processes in a cgroup of their own, with memory, process-count and (optionally) CPU limits, so
/// that a compromised helper, or all of them together, cannot take the host's memory, fork-bomb it, or take more CPU
/// than the VM was given. cgroup v2 where the host gives vmm the controllers (the usual systemd host, vmm run as
/// root or in a unit with `Delegate=yes`); the v1 controllers where the host mounts those instead. Where neither is
/// writable, the VM runs without (vmm says so at info level): the per-helper rlimits still apply.
final class VMCgroup: Sendable {
    /// What the VM's processes may use together.
    struct Limits: Equatable {
        var memoryBytes: UInt64
        var processes: Int
        /// CPU time per 100 ms period, in microseconds; nil: no CPU limit.
        var cpuQuotaMicroseconds: Int?
        static let cpuPeriodMicroseconds = 100_000
    }

    /// The directories made (removed at the end), and the `cgroup.procs` file a helper's pid goes to in each.
    let directories: [String]

    private init(directories: [String]) { self.directories = directories }

    /// Where cgroup filesystems are and which cgroup this process is in: the host's by default, a test's tree
    /// otherwise.
    struct Host {
        /// `/proc/self/mountinfo` and `/proc/self/cgroup`.
        var mountInfo: String
        var ownCgroups: String

        static func current() -> Host {
            Host(mountInfo: FileDescriptor.readText("/proc/self/mountinfo") ?? "",
                 ownCgroups: FileDescriptor.readText("/proc/self/cgroup") ?? "")
        }

        /// Mount points of cgroup filesystems: the v2 one, and the v1 ones by controller.
        var mounts: (v2: String?, v1: [String: String]) {
            var v2: String?
            var v1: [String: String] = [:]
            for line in mountInfo.split(separator: "\n") {
                // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
                let halves = line.components(separatedBy: " - ")
                guard halves.count == 2 else { continue }
                let fields = halves[0].split(separator: " "), tail = halves[1].split(separator: " ")
                guard fields.count >= 5, tail.count >= 3, fields[3] == "/" else { continue }
                let point = String(fields[4])
                if tail[0] == "cgroup2" { v2 = point }
                if tail[0] == "cgroup" { for option in tail[2].split(separator: ",") { v1[String(option)] = point } }
            }
            return (v2, v1)
        }

        /// This process's cgroup path per v1 controller, and its v2 path ("" key).
        var paths: [String: String] {
            var paths: [String: String] = [:]
            for line in ownCgroups.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 3 else { continue }
                if parts[1].isEmpty { paths[""] = String(parts[2]) }
                for controller in parts[1].split(separator: ",") { paths[String(controller)] = String(parts[2]) }
            }
            return paths
        }
    }

    struct Unavailable: Error, CustomStringConvertible { let description: String }

    /// Makes the cgroup `name` below this process's own (v2 first, then v1) with `limits`.
    static func create(name: String, limits: Limits, host: Host = .current()) throws(Unavailable) -> VMCgroup {
        let (v2, v1) = host.mounts, paths = host.paths
        var why: [String] = []
        if let v2, let own = paths[""] {
            do { return try createV2(at: v2 + own, name: name, limits: limits) } catch { why.append("cgroup v2: \(error)") }
        } else {
            why.append("cgroup v2: not mounted")
        }
        do { return try createV1(v1, paths: paths, name: name, limits: limits) } catch { why.append("cgroup v1: \(error)") }
        throw Unavailable(description: why.joined(separator: "; "))
    }

    static let controllers = ["memory", "pids", "cpu"]

    private static func createV2(at parent: String, name: String, limits: Limits) throws(Unavailable) -> VMCgroup {
        let available = Set((FileDescriptor.readText(parent + "/cgroup.controllers") ?? "").split(whereSeparator: \.isWhitespace).map(String.init))
        let missing = controllers.filter { !available.contains($0) }
        guard missing.isEmpty else { throw Unavailable(description: "\(parent) does not offer \(missing.joined(separator: ", "))") }
        let enabled = Set((FileDescriptor.readText(parent + "/cgroup.subtree_control") ?? "").split(whereSeparator: \.isWhitespace).map(String.init))
        if !controllers.allSatisfy(enabled.contains) {
            // Fails (EBUSY) when the parent has processes of its own and is not the root: not delegated to us.
            try write(controllers.map { "+" + $0 }.joined(separator: " "), to: parent + "/cgroup.subtree_control")
        }
        let dir = parent + "/" + name
        try makeDirectory(dir)
        let group = VMCgroup(directories: [dir])
        do {
            try write("\(limits.memoryBytes)", to: dir + "/memory.max")
            try write("0", to: dir + "/memory.swap.max", optional: true)
            try write("\(limits.processes)", to: dir + "/pids.max")
            try write(limits.cpuQuotaMicroseconds.map { "\($0) \(Limits.cpuPeriodMicroseconds)" } ?? "max \(Limits.cpuPeriodMicroseconds)",
                      to: dir + "/cpu.max")
        } catch {
            group.remove()
            throw error
        }
        return group
    }

    private static func createV1(_ mounts: [String: String], paths: [String: String], name: String, limits: Limits) throws(Unavailable) -> VMCgroup {
        var dirs: [String: String] = [:]
        for controller in controllers {
            guard let mount = mounts[controller], let own = paths[controller] else {
                throw Unavailable(description: "no \(controller) hierarchy")
            }
            dirs[controller] = mount + (own == "/" ? "" : own) + "/" + name
        }
        let ordered = controllers.compactMap { dirs[$0] }
        var made: [String] = []
        do {
            for dir in ordered {
                try makeDirectory(dir)
                made.append(dir)
            }
            try write("\(limits.memoryBytes)", to: dirs["memory"]! + "/memory.limit_in_bytes")
            try write("\(limits.processes)", to: dirs["pids"]! + "/pids.max")
            if let quota = limits.cpuQuotaMicroseconds {
                try write("\(Limits.cpuPeriodMicroseconds)", to: dirs["cpu"]! + "/cpu.cfs_period_us")
                try write("\(quota)", to: dirs["cpu"]! + "/cpu.cfs_quota_us")
            }
        } catch {
            VMCgroup(directories: made).remove()
            throw error
        }
        return VMCgroup(directories: ordered)
    }

    /// Moves a helper into the VM's cgroup (in every hierarchy). One that has exited already needs no place (its
    /// end is the watch loop's to handle): not an error.
    func add(_ pid: pid_t) throws(Unavailable) {
        for dir in directories { try Self.write("\(pid)", to: dir + "/cgroup.procs", tolerating: ESRCH) }
    }

    /// Removes the cgroup once its processes are gone (a cgroup with processes cannot be removed).
    func remove() {
        for dir in directories.reversed() { _ = rmdir(dir) }
    }

    private static func makeDirectory(_ path: String) throws(Unavailable) {
        guard mkdir(path, 0o755) == 0 else {
            throw Unavailable(description: "mkdir \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Writes `text` to a cgroup file; `optional`: no error if that fails, `tolerating`: no error for that errno.
    private static func write(_ text: String, to path: String, optional: Bool = false, tolerating tolerated: Int32? = nil) throws(Unavailable) {
        do {
            let fd = try FileDescriptor.open(path, O_WRONLY | O_NOFOLLOW)
            try fd.writeAll(Array(text.utf8))
        } catch {
            if optional || error.errno == tolerated { return }
            throw Unavailable(description: "\(path): \(error)")
        }
    }
}

/// A VM's cgroup made, and the helpers of its start moved in, on a thread of its own, off the way to the guest's first
/// instruction: making it takes about 0.7 ms here (a directory and limits in each v1 hierarchy), and on cgroup v1 the
/// first move of a burst waits for an RCU grace period (0-20 ms), which held back the next helper's spawn when made
/// after each, and the watch loop (so the console's first bytes) when made after all. It is made only once the
/// supervisor has handed over the start's helpers (`place`) and the guest has run (or `guestWaitNanoseconds` later):
/// made while the helpers started, its CPU time on two CPUs held the guest's first instruction back by 5-7%. It also
/// waits `shortestWaitNanoseconds` after the hand-over: a VM that ends sooner (a function that returns at once, a
/// test guest) is never placed, and its end no longer waits for a cgroup made and moved into only to be removed
/// (`vmm run` of a three-instruction guest: 22 ms instead of 30). The supervisor polls `done`; `finish` makes it at
/// once, `abandon` drops what is not begun.
final class CgroupSetup: @unchecked Sendable {
    /// Readable once the helpers handed over are in (or it failed).
    let done: EventFD
    private let go: EventFD
    private final class Shared: Sendable {
        let helpers = Mutex<[(pid: pid_t, role: Role)]>([])
        /// Whether the guest has run its first instruction (nil until `place`).
        let guestRan = Mutex<(@Sendable () -> Bool)?>(nil)
        /// `finish` wants the outcome now: no more waiting for the guest.
        let hurried = Atomic<Bool>(false)
        /// The VM is ending: a cgroup not yet made is not made at all.
        let abandoned = Atomic<Bool>(false)
        let outcome = Mutex<(cgroup: VMCgroup?, failure: String?)>((nil, nil))
    }
    private let shared = Shared()
    private var thread: OSThread?

    /// How long the set-up waits for the guest's first instruction once the helpers are handed over (a guest that
    /// never runs, or a vcpu process that does not say so, gets its cgroup this much later).
    static let guestWaitNanoseconds: UInt64 = 20_000_000
    /// How long the set-up waits after the hand-over however soon the guest runs (see the type's summary).
    static let shortestWaitNanoseconds: UInt64 = 10_000_000

    init(name: String, limits: VMCgroup.Limits) throws(SystemError) {
        done = try EventFD()
        go = try EventFD()
        let shared = self.shared, goFD = go.raw, doneFD = done.raw
        thread = try OSThread.start(name: "vmm-cgroup") {
            _ = try? Poll.wait([goFD], timeoutMs: -1)
            let handedOver = monotonicNanoseconds()
            if let guestRan = shared.guestRan.withLock({ $0 }) {
                while !shared.hurried.load(ordering: .relaxed) {
                    let waited = monotonicNanoseconds() - handedOver
                    if waited >= Self.guestWaitNanoseconds || (waited >= Self.shortestWaitNanoseconds && guestRan()) { break }
                    usleep(500)
                }
            }
            if !shared.abandoned.load(ordering: .relaxed) {
                do {
                    let group = try VMCgroup.create(name: name, limits: limits)
                    shared.outcome.withLock { $0.cgroup = group }
                    Log.info("helpers run in \(group.directories.joined(separator: ", "))")
                } catch {
                    Log.info("no cgroup for this VM's helpers (\(error)); each still has its own resource limits")
                }
            }
            if let group = shared.outcome.withLock({ $0.cgroup }) {
                for (pid, role) in shared.helpers.withLock({ $0 }) where !shared.abandoned.load(ordering: .relaxed) {
                    do { try group.add(pid) } catch {
                        shared.outcome.withLock { $0.failure = "placing the \(role.rawValue) process in its cgroup: \(error)" }
                        break
                    }
                }
            }
            var one: UInt64 = 1
            _ = Glibc.write(doneFD, &one, 8)
        }
    }

    /// Hands over the helpers of the VM's start, spawned now, to be moved in once `guestRan` says the guest has run.
    func place(_ helpers: [(pid: pid_t, role: Role)], guestRan: @escaping @Sendable () -> Bool) {
        shared.helpers.withLock { $0 = helpers }
        shared.guestRan.withLock { $0 = guestRan }
        try? go.signal()
    }

    /// The VM is ending: a cgroup not yet made is not made, and helpers not yet moved are not moved (a cgroup v1
    /// move can wait for an RCU grace period). Called before the helpers are killed; does not wait.
    func abandon() {
        shared.abandoned.store(true, ordering: .relaxed)
        shared.hurried.store(true, ordering: .relaxed)
    }

    /// Waits for the thread (handing over nothing more if `place` was not called, waiting no longer for the guest)
    /// and returns the cgroup, if one could be made, and why the helpers could not be moved in, if they could not.
    /// `vmEnding`: only to remove the cgroup, once the helpers are gone (see `abandon`).
    func finish(vmEnding: Bool = false) -> (cgroup: VMCgroup?, failure: String?) {
        if vmEnding { abandon() }
        shared.hurried.store(true, ordering: .relaxed)
        try? go.signal()
        thread?.join()
        thread = nil
        return shared.outcome.withLock { ($0.cgroup, $0.failure) }
    }

    deinit { _ = finish(vmEnding: true) }
}
