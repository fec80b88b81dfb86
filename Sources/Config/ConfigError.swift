/// A config problem: the JSON path of the offending value and the reason.
public struct ConfigError: Error, Equatable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public let unsupported: Bool

    public init(_ path: String, _ reason: String) {
        self.path = path
        self.reason = reason
        unsupported = false
    }

    /// A section or value this VMM does not implement yet; `why` says what it waits for.
    public static func notSupportedYet(_ path: String, _ why: String) -> ConfigError {
        ConfigError(path: path, reason: why, unsupported: true)
    }

    private init(path: String, reason: String, unsupported: Bool) {
        self.path = path
        self.reason = reason
        self.unsupported = unsupported
    }

    public var description: String {
        unsupported ? "not supported yet: \(path) (\(reason))" : "\(path): \(reason)"
    }
}

/// Reads the members of one JSON object, remembering which were used so unknown ones can be reported.
struct ObjectReader {
    let path: String
    private let members: [(key: String, value: JSONValue)]
    private var used: Set<String> = []

    init(_ value: JSONValue, path: String) throws(ConfigError) {
        guard case .object(let m) = value else { throw ConfigError(path.isEmpty ? "(top level)" : path, "expected an object, found \(value.kind)") }
        self.path = path
        members = m
    }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The value of `key`, nil when absent or null (Firecracker's files write null for "not set").
    mutating func value(_ key: String) -> JSONValue? {
        used.insert(key)
        guard let v = members.first(where: { $0.key == key })?.value, v != .null else { return nil }
        return v
    }

    mutating func string(_ key: String) throws(ConfigError) -> String? {
        guard let v = value(key) else { return nil }
        guard case .string(let s) = v else { throw ConfigError(child(key), "expected a string, found \(v.kind)") }
        return s
    }

    mutating func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let v = value(key) else { return nil }
        guard case .bool(let b) = v else { throw ConfigError(child(key), "expected true or false, found \(v.kind)") }
        return b
    }

    mutating func integer(_ key: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let v = value(key) else { return nil }
        return try Self.integer(v, path: child(key), in: range)
    }

    static func integer(_ v: JSONValue, path: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard case .number(let text) = v else { throw ConfigError(path, "expected an integer, found \(v.kind)") }
        guard let n = Int(text) else { throw ConfigError(path, "expected an integer, found \(text)") }
        guard range.contains(n) else { throw ConfigError(path, "\(n) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return n
    }

    /// A member that must stay empty (absent, null, [] or {}) until the feature exists.
    mutating func rejectIfSet(_ key: String, _ why: String) throws(ConfigError) {
        guard let v = value(key) else { return }
        switch v {
        case .null: return
        case .array(let a) where a.isEmpty: return
        case .object(let o) where o.isEmpty: return
        default: throw ConfigError.notSupportedYet(child(key), why)
        }
    }

    /// Fails on the first member that no reader asked for.
    func finish() throws(ConfigError) {
        if let unknown = members.first(where: { !used.contains($0.key) }) {
            throw ConfigError(child(unknown.key), "unknown field")
        }
    }
}
