import Glibc

/// A shared mapping of a file descriptor, unmapped when dropped.
public struct MappedRegion: ~Copyable, @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let size: Int

    /// Maps `size` bytes of `fd` read-write and shared.
    public init(fd: Int32, size: Int, offset: Int = 0, prot: Int32 = PROT_READ | PROT_WRITE) throws(SystemError) {
        guard let p = mmap(nil, size, prot, MAP_SHARED, fd, off_t(offset)), p != MAP_FAILED else {
            throw SystemError("mmap(\(size) bytes)", errno: Glibc.errno)
        }
        self.base = p
        self.size = size
    }

    deinit { munmap(base, size) }
}
