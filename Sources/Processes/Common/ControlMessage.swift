import CLinux
import Glibc
import Machine
import System

/// What a helper tells the supervisor, over its own control pipe: 16-byte records, kind | argument | value.
/// The supervisor validates each record; a helper that writes nonsense is treated as failed.
public enum ControlMessage: Equatable, Sendable {
    /// The guest wrote to the debug-exit port; `status` is what vmm exits with.
    case guestExit(status: Int32)
    /// The vCPU stopped for good.
    case vcpuStopped(VCPUStop)
    /// The helper made a call its policy denies and is dying by SIGSYS (written by the SIGSYS handler in C).
    case seccompKilled(syscall: Int32)
    /// Log mode: the helper made a call its policy denies; the call failed with ENOSYS and the helper goes on.
    case seccompLogged(syscall: Int32)
    /// Something the guest did that a device saw: a reset, a panic, the boot-complete marker.
    case guest(GuestEvent)
    /// Every vCPU is outside KVM_RUN and waits (true), or runs again (false): the answer to a pause or resume.
    case vcpuPaused(Bool)

    public enum GuestEvent: UInt32, Equatable, Sendable {
        /// The CPU reset line was pulsed (i8042): the guest reboots.
        case reset = 1
        /// The guest kernel panicked.
        case panic = 2
        /// The guest wrote the boot-complete marker (not an end of the VM).
        case booted = 3
    }

    public enum VCPUStop: Equatable, Sendable {
        case halted
        case tripleFault
        case internalError(suberror: UInt32)
        case failedEntry(reason: UInt64)
        case unhandledExit(reason: UInt32)
        case systemEvent(type: UInt32)
        /// Preparing the VM failed before the guest ran.
        case setupFailed
        /// vmm failed while the guest ran (a KVM call that should not fail did).
        case runFailed
    }

    static let recordSize = Int(VMM_CONTROL_RECORD_SIZE)

    var record: [UInt8] {
        let (kind, arg, value): (Int32, UInt32, UInt64)
        switch self {
        case .guestExit(let s): (kind, arg, value) = (VMM_CONTROL_GUEST_EXIT, UInt32(bitPattern: s), 0)
        case .vcpuStopped(.halted): (kind, arg, value) = (VMM_CONTROL_VCPU_HALTED, 0, 0)
        case .vcpuStopped(.tripleFault): (kind, arg, value) = (VMM_CONTROL_VCPU_TRIPLE_FAULT, 0, 0)
        case .vcpuStopped(.internalError(let e)): (kind, arg, value) = (VMM_CONTROL_VCPU_INTERNAL_ERROR, e, 0)
        case .vcpuStopped(.failedEntry(let r)): (kind, arg, value) = (VMM_CONTROL_VCPU_FAILED_ENTRY, 0, r)
        case .vcpuStopped(.unhandledExit(let r)): (kind, arg, value) = (VMM_CONTROL_VCPU_UNHANDLED_EXIT, r, 0)
        case .vcpuStopped(.systemEvent(let t)): (kind, arg, value) = (VMM_CONTROL_VCPU_SYSTEM_EVENT, t, 0)
        case .vcpuStopped(.setupFailed): (kind, arg, value) = (VMM_CONTROL_VCPU_SETUP_FAILED, 0, 0)
        case .vcpuStopped(.runFailed): (kind, arg, value) = (VMM_CONTROL_VCPU_RUN_FAILED, 0, 0)
        case .seccompKilled(let nr): (kind, arg, value) = (VMM_CONTROL_SECCOMP_KILLED, UInt32(bitPattern: nr), 0)
        case .seccompLogged(let nr): (kind, arg, value) = (VMM_CONTROL_SECCOMP_LOGGED, UInt32(bitPattern: nr), 0)
        case .guest(let event): (kind, arg, value) = (VMM_CONTROL_GUEST_EVENT, event.rawValue, 0)
        case .vcpuPaused(let paused): (kind, arg, value) = (VMM_CONTROL_VCPU_PAUSED, paused ? 1 : 0, 0)
        }
        return withUnsafeBytes(of: UInt32(kind).littleEndian, Array.init) + withUnsafeBytes(of: arg.littleEndian, Array.init)
            + withUnsafeBytes(of: value.littleEndian, Array.init)
    }

    /// Decodes and validates a record; nil for anything a well-behaved helper would not write.
    init?(record r: [UInt8]) {
        guard r.count == Self.recordSize else { return nil }
        func u32(_ at: Int) -> UInt32 { r[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        let value = r[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let arg = u32(4)
        guard let kind = Int32(exactly: u32(0)) else { return nil }
        switch kind {
        case VMM_CONTROL_GUEST_EXIT:
            let status = Int32(bitPattern: arg)
            guard status & 1 == 1, (1...511).contains(status) else { return nil }
            self = .guestExit(status: status)
        case VMM_CONTROL_VCPU_HALTED: self = .vcpuStopped(.halted)
        case VMM_CONTROL_VCPU_TRIPLE_FAULT: self = .vcpuStopped(.tripleFault)
        case VMM_CONTROL_VCPU_INTERNAL_ERROR: self = .vcpuStopped(.internalError(suberror: arg))
        case VMM_CONTROL_VCPU_FAILED_ENTRY: self = .vcpuStopped(.failedEntry(reason: value))
        case VMM_CONTROL_VCPU_UNHANDLED_EXIT: self = .vcpuStopped(.unhandledExit(reason: arg))
        case VMM_CONTROL_VCPU_SYSTEM_EVENT: self = .vcpuStopped(.systemEvent(type: arg))
        case VMM_CONTROL_VCPU_SETUP_FAILED: self = .vcpuStopped(.setupFailed)
        case VMM_CONTROL_VCPU_RUN_FAILED: self = .vcpuStopped(.runFailed)
        case VMM_CONTROL_SECCOMP_KILLED, VMM_CONTROL_SECCOMP_LOGGED:
            guard arg < 4096 else { return nil }
            self = kind == VMM_CONTROL_SECCOMP_KILLED ? .seccompKilled(syscall: Int32(arg)) : .seccompLogged(syscall: Int32(arg))
        case VMM_CONTROL_GUEST_EVENT:
            guard let event = GuestEvent(rawValue: arg) else { return nil }
            self = .guest(event)
        case VMM_CONTROL_VCPU_PAUSED:
            guard arg <= 1 else { return nil }
            self = .vcpuPaused(arg == 1)
        default: return nil
        }
    }

    /// Whether `role` may send this message: the supervisor believes a guest exit only from the device that
    /// has the debug-exit port, a vCPU stop only from the vcpu process.
    func mayBeSent(by role: Role) -> Bool {
        switch self {
        case .seccompKilled, .seccompLogged: return true
        case .vcpuStopped, .vcpuPaused: return role == .vcpu
        case .guestExit, .guest: return role == .pio
        }
    }

    /// Sends this message on a control pipe (one write, under PIPE_BUF, so it is atomic).
    func send(on fd: Int32) {
        let bytes = record
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}
