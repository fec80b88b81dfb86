import Glibc
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
        case setupFailed
    }

    static let recordSize = 16

    var record: [UInt8] {
        let (kind, arg, value): (UInt32, UInt32, UInt64)
        switch self {
        case .guestExit(let s): (kind, arg, value) = (1, UInt32(bitPattern: s), 0)
        case .vcpuStopped(.halted): (kind, arg, value) = (2, 0, 0)
        case .vcpuStopped(.tripleFault): (kind, arg, value) = (3, 0, 0)
        case .vcpuStopped(.internalError(let e)): (kind, arg, value) = (4, e, 0)
        case .vcpuStopped(.failedEntry(let r)): (kind, arg, value) = (5, 0, r)
        case .vcpuStopped(.unhandledExit(let r)): (kind, arg, value) = (6, r, 0)
        case .vcpuStopped(.systemEvent(let t)): (kind, arg, value) = (7, t, 0)
        case .vcpuStopped(.setupFailed): (kind, arg, value) = (8, 0, 0)
        case .seccompKilled(let nr): (kind, arg, value) = (9, UInt32(bitPattern: nr), 0)
        case .seccompLogged(let nr): (kind, arg, value) = (10, UInt32(bitPattern: nr), 0)
        case .guest(let event): (kind, arg, value) = (11, event.rawValue, 0)
        }
        return withUnsafeBytes(of: kind.littleEndian, Array.init) + withUnsafeBytes(of: arg.littleEndian, Array.init)
            + withUnsafeBytes(of: value.littleEndian, Array.init)
    }

    init?(record r: [UInt8]) {
        guard r.count == Self.recordSize else { return nil }
        func u32(_ at: Int) -> UInt32 { r[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        let value = r[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let arg = u32(4)
        switch u32(0) {
        case 1:
            let status = Int32(bitPattern: arg)
            guard status & 1 == 1, (1...511).contains(status) else { return nil }
            self = .guestExit(status: status)
        case 2: self = .vcpuStopped(.halted)
        case 3: self = .vcpuStopped(.tripleFault)
        case 4: self = .vcpuStopped(.internalError(suberror: arg))
        case 5: self = .vcpuStopped(.failedEntry(reason: value))
        case 6: self = .vcpuStopped(.unhandledExit(reason: arg))
        case 7: self = .vcpuStopped(.systemEvent(type: arg))
        case 8: self = .vcpuStopped(.setupFailed)
        case 9, 10:
            guard arg < 4096 else { return nil }
            self = u32(0) == 9 ? .seccompKilled(syscall: Int32(arg)) : .seccompLogged(syscall: Int32(arg))
        case 11:
            guard let event = GuestEvent(rawValue: arg) else { return nil }
            self = .guest(event)
        default: return nil
        }
    }

    /// Sends this message on a control pipe (one write, under PIPE_BUF, so it is atomic).
    func send(on fd: Int32) {
        let bytes = record
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}
