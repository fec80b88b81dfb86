import BenchKit
import Foundation

/// Traces the KVM_RUN ioctl's entry and return and KVM's guest-FPU switches (see ExitPhases) for a while, in a
/// tracefs instance of its own (its own ring buffer, clock and event filters: the host's tracing is left as it was),
/// from a thread of its own, while the caller runs a guest.
/// `failure` is written by the tracing thread before it signals `done` and read only after `finish` waited on it.
final class PhaseTracer: @unchecked Sendable {
    let instance: String
    private let done = DispatchSemaphore(value: 0)
    private var failure: String?

    /// tracefs, where this kernel has it (root only).
    static var root: String? {
        ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].first { FileManager.default.fileExists(atPath: $0 + "/instances") }
    }

    /// tracefs, mounted where systemd would have mounted it if nobody did (a container, a minimal image): root
    /// only; nil with the reason otherwise.
    static func mountedRoot() -> Result<String, Failure> {
        if let root { return .success(root) }
        guard geteuid() == 0 else { return .failure(Failure("no tracefs with instances (tracing needs root)")) }
        guard mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nil) == 0 else {
            return .failure(Failure("no tracefs with instances, and mounting one on /sys/kernel/tracing failed: \(String(cString: strerror(errno)))"))
        }
        guard let root else { return .failure(Failure("tracefs mounted on /sys/kernel/tracing has no instances (kernel too old)")) }
        return .success(root)
    }

    /// Starts tracing `delay` seconds from now (past the guest's start-up), for `duration` seconds.
    init(delay: Double, duration: Double) throws {
        let root = try Self.mountedRoot().get()
        // A benchmark killed while it traced left its instance (and its buffers) behind: gone with it now.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root + "/instances")) ?? [] where name.hasPrefix("vmm-bench-") {
            if let pid = pid_t(name.dropFirst("vmm-bench-".count)), kill(pid, 0) != 0 && errno == ESRCH { rmdir(root + "/instances/" + name) }
        }
        instance = root + "/instances/vmm-bench-\(getpid())"
        rmdir(instance)  // this run's previous one, should it have been left
        guard mkdir(instance, 0o755) == 0 else { throw Failure("cannot make a tracefs instance: \(String(cString: strerror(errno)))") }
        do {
            try set("tracing_on", "0")
            try set("trace_clock", "x86-tsc")
            try set("buffer_size_kb", "16384")
            for call in ["sys_enter", "sys_exit"] {
                try set("events/raw_syscalls/\(call)/filter", "id == 16")  // ioctl: KVM_RUN among others
                try set("events/raw_syscalls/\(call)/enable", "1")
            }
            try set("events/kvm/kvm_fpu/enable", "1")
        } catch {
            rmdir(instance)
            throw error
        }
        Thread.detachNewThread { [self] in
            Thread.sleep(forTimeInterval: delay)
            do {
                try set("tracing_on", "1")
                Thread.sleep(forTimeInterval: duration)
                try set("tracing_on", "0")
            } catch {
                failure = "\(error)"
            }
            done.signal()
        }
    }

    /// Waits for the tracing to end (the guest must run past it), reads what it traced and removes the instance.
    func finish() throws -> String {
        done.wait()
        defer { rmdir(instance) }
        if let failure { throw Failure(failure) }
        guard let file = FileHandle(forReadingAtPath: instance + "/trace") else { throw Failure("cannot read \(instance)/trace") }
        defer { try? file.close() }  // before the instance goes
        return String(decoding: try file.readToEnd() ?? Data(), as: UTF8.self)
    }

    private func set(_ file: String, _ value: String) throws {
        let path = instance + "/" + file
        guard let handle = FileHandle(forWritingAtPath: path) else { throw Failure("cannot open \(path)") }
        defer { try? handle.close() }
        do { try handle.write(contentsOf: Data((value + "\n").utf8)) } catch { throw Failure("cannot write \(value) to \(path): \(error)") }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
