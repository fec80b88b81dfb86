import System

/// Why the KVM layer could not do what was asked.
public enum KVMError: Error, CustomStringConvertible {
    case system(SystemError)
    case unsupported(String)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .unsupported(let what): return "KVM on this host does not support \(what)"
        }
    }
}

@inline(__always)
func kvmCall(_ name: String, _ body: () -> Int32) throws(KVMError) -> Int32 {
    do { return try syscallRetrying(name, body) } catch { throw .system(error) }
}
