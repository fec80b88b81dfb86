import Glibc

/// Finds the directory holding the role policies: the configured one, else $VMM_POLICY_DIR, else a `Policies`
/// directory beside the binary or above it (a checkout's .build/<config>/vmm), else /usr/share/vmm/Policies.
enum PolicyDirectory {
    static func locate(configured: String?) throws -> String {
        if let configured { return configured }
        if let env = getenv("VMM_POLICY_DIR") { return String(cString: env) }
        var tried: [String] = []
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if n > 0 {
            var dir = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            for _ in 0..<5 {
                dir = parent(of: dir)
                let candidate = dir + "/Policies"
                tried.append(candidate)
                if access(candidate + "/common.policy", R_OK) == 0 { return candidate }
                if dir == "/" || dir.isEmpty { break }
            }
        }
        let system = "/usr/share/vmm/Policies"
        if access(system + "/common.policy", R_OK) == 0 { return system }
        tried.append(system)
        throw Supervisor.HostSetupError(description: "no seccomp policy directory found (tried \(tried.joined(separator: ", "))); set vmm.sandbox.policy_dir or VMM_POLICY_DIR")
    }
}

private func parent(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "" }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}
