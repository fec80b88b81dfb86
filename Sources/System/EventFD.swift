import Glibc
import CLinux

/// An eventfd used as a doorbell between processes. Non-blocking: waiting is done with poll(2), and draining
/// a counter that is already zero must never block.
public struct EventFD: ~Copyable, @unchecked Sendable {
    public let fd: FileDescriptor

    public init() throws(SystemError) {
        fd = FileDescriptor(owning: try syscallRetrying("eventfd") { vmm_eventfd(0, VMM_EFD_CLOEXEC | VMM_EFD_NONBLOCK) })
    }

    public init(owning raw: Int32) { fd = FileDescriptor(owning: raw) }

    public var raw: Int32 { fd.raw }

    /// An eventfd in a class, for keeping several in a collection.
    public final class Box: @unchecked Sendable {
        public let eventFD: EventFD
        public init(_ e: consuming EventFD) { eventFD = e }
        public var raw: Int32 { eventFD.raw }
    }

    /// Adds one to the counter, waking a waiter.
    public func signal() throws(SystemError) {
        var one: UInt64 = 1
        _ = try syscallRetrying("eventfd write") { Glibc.write(fd.raw, &one, 8) }
    }
}

/// An anonymous shared-memory file (memfd), the backing of guest RAM and of channels. Its size is sealed once set:
/// every process maps it whole, and one that shrank it (a compromised helper, say) would make the others' accesses
/// past the new end die with SIGBUS.
public enum MemFD {
    // linux/fcntl.h
    static let addSeals: Int32 = 1033, getSeals: Int32 = 1034
    static let sealSeal: Int32 = 1, sealShrink: Int32 = 2, sealGrow: Int32 = 4

    public static func create(name: String, size: Int) throws(SystemError) -> FileDescriptor {
        let fd = FileDescriptor(owning: try syscallRetrying("memfd_create") {
            vmm_memfd_create(name, VMM_MFD_CLOEXEC | VMM_MFD_ALLOW_SEALING)
        })
        try fd.truncate(to: size)
        _ = try syscallRetrying("fcntl(F_ADD_SEALS)") { fcntl(fd.raw, addSeals, sealShrink | sealGrow | sealSeal) }
        return fd
    }

    /// The seals on a memfd (F_GET_SEALS).
    public static func seals(_ fd: Int32) throws(SystemError) -> Int32 {
        try syscallRetrying("fcntl(F_GET_SEALS)") { fcntl(fd, getSeals) }
    }
}

/// A pipe whose ends are close-on-exec.
public struct Pipe: ~Copyable {
    public let readEnd: FileDescriptor
    public let writeEnd: FileDescriptor

    public init() throws(SystemError) {
        var fds: [Int32] = [-1, -1]
        if fds.withUnsafeMutableBufferPointer({ vmm_pipe2($0.baseAddress!, O_CLOEXEC) }) != 0 {
            throw SystemError("pipe2", errno: Glibc.errno)
        }
        readEnd = FileDescriptor(owning: fds[0])
        writeEnd = FileDescriptor(owning: fds[1])
    }
}
