import Glibc

/// A failed system call: the call's name and the errno it returned.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Runs a syscall wrapper that returns -1 and sets errno on failure, retrying on EINTR.
@inline(__always)
public func syscallRetrying<T: BinaryInteger>(_ call: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let r = body()
        if r != -1 { return r }
        let e = Glibc.errno
        if e != EINTR { throw SystemError(call, errno: e) }
    }
}
