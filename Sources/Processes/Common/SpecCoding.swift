import Config

/// The wire form of the role specs (supervisor to helper): JSON text, written and read through the specs' Codable
/// conformances with the config's own `JSONValue`, `JSONParser` and writer. Foundation's JSON coders did the same
/// work with a dynamic cast per value (to their special cases: dates, URLs, data, string-keyed dictionaries), and
/// each cast a type had not met yet scanned every protocol conformance in the binary: ~1.3 ms of the supervisor's
/// time and 0.7-1.3 ms of each helper's on its way to serving, the vcpu process's on the way to the guest's first
/// instruction. Here a value is one of the JSON scalars (numbers keep their exact text) or is asked to encode
/// itself; nothing is looked up by protocol.
enum SpecCoding {
    /// A spec that does not fit its type: the coding path and the reason.
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ path: [any CodingKey], _ reason: String) {
            description = (path.isEmpty ? "spec" : path.map(\.stringValue).joined(separator: ".")) + ": " + reason
        }
    }

    static func encode(_ value: some Encodable) throws -> String {
        let root = Node()
        try encode(value, into: root, path: [])
        return root.json.text
    }

    static func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        let json: JSONValue
        do { json = try JSONParser.parse(Array(text.utf8)) } catch { throw Failure([], "\(error)") }
        return try decodeValue(type, from: json, path: [])
    }

    /// A scalar as JSON, or the value's own encoding of itself.
    fileprivate static func encode<T: Encodable>(_ value: T, into node: Node, path: [any CodingKey]) throws {
        if let scalar = try scalar(value, path: path) {
            node.scalar = scalar
        } else {
            try value.encode(to: NodeEncoder(node: node, codingPath: path))
        }
    }

    /// Casts to concrete types only (a metadata comparison each), never to a protocol.
    private static func scalar<T>(_ value: T, path: [any CodingKey]) throws -> JSONValue? {
        switch value {
        case let v as Bool: return .bool(v)
        case let v as String: return .string(v)
        case let v as Int: return .number(String(v))
        case let v as Int32: return .number(String(v))
        case let v as UInt64: return .number(String(v))
        case let v as UInt32: return .number(String(v))
        case let v as UInt8: return .number(String(v))
        case let v as UInt16: return .number(String(v))
        case let v as Int64: return .number(String(v))
        case let v as Int16: return .number(String(v))
        case let v as Int8: return .number(String(v))
        case let v as UInt: return .number(String(v))
        case let v as Double:
            guard v.isFinite else { throw Failure(path, "\(v) has no JSON form") }
            return .number(String(v))
        case let v as Float:
            guard v.isFinite else { throw Failure(path, "\(v) has no JSON form") }
            return .number(String(v))
        default: return nil
        }
    }

    fileprivate static func decodeValue<T: Decodable>(_ type: T.Type, from json: JSONValue, path: [any CodingKey]) throws -> T {
        if let scalar = try scalar(type, from: json, path: path) { return scalar }
        return try T(from: ValueDecoder(value: json, codingPath: path))
    }

    private static func scalar<T>(_ type: T.Type, from json: JSONValue, path: [any CodingKey]) throws -> T? {
        func number<N: LosslessStringConvertible>(_: N.Type) throws -> T {
            guard case .number(let text) = json else { throw Failure(path, "expected a number, found \(json.kind)") }
            guard let n = N(text) else { throw Failure(path, "\(text) does not fit \(N.self)") }
            return n as! T
        }
        switch type {
        case is Bool.Type:
            guard case .bool(let b) = json else { throw Failure(path, "expected a boolean, found \(json.kind)") }
            return (b as! T)
        case is String.Type:
            guard case .string(let s) = json else { throw Failure(path, "expected a string, found \(json.kind)") }
            return (s as! T)
        case is Int.Type: return try number(Int.self)
        case is Int32.Type: return try number(Int32.self)
        case is UInt64.Type: return try number(UInt64.self)
        case is UInt32.Type: return try number(UInt32.self)
        case is UInt8.Type: return try number(UInt8.self)
        case is UInt16.Type: return try number(UInt16.self)
        case is Int64.Type: return try number(Int64.self)
        case is Int16.Type: return try number(Int16.self)
        case is Int8.Type: return try number(Int8.self)
        case is UInt.Type: return try number(UInt.self)
        case is Double.Type: return try number(Double.self)
        case is Float.Type: return try number(Float.self)
        default: return nil
        }
    }
}

/// What one value encodes to, filled in by its containers: a scalar, or members and elements that are nodes in
/// turn (a nested container fills its node after the member was added).
private final class Node {
    var scalar: JSONValue?
    var fields: [(key: String, node: Node)]?
    var items: [Node]?

    /// A value that encoded nothing is an empty object.
    var json: JSONValue {
        if let scalar { return scalar }
        if let fields { return .object(fields.map { (key: $0.key, value: $0.node.json) }) }
        if let items { return .array(items.map(\.json)) }
        return .object([])
    }
}

private struct NodeEncoder: Encoder {
    let node: Node
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if node.fields == nil { node.fields = [] }
        return KeyedEncodingContainer(KeyedNodeEncoder<Key>(node: node, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if node.items == nil { node.items = [] }
        return UnkeyedNodeEncoder(node: node, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { SingleNodeEncoder(node: node, codingPath: codingPath) }
}

private struct KeyedNodeEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: Node
    var codingPath: [any CodingKey]

    mutating func encodeNil(forKey key: Key) throws { member(key).scalar = .null }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try SpecCoding.encode(value, into: member(key), path: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        NodeEncoder(node: member(key), codingPath: codingPath + [key]).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        NodeEncoder(node: member(key), codingPath: codingPath + [key]).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder { NodeEncoder(node: member(SuperKey()), codingPath: codingPath) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { NodeEncoder(node: member(key), codingPath: codingPath + [key]) }

    /// A new member's node, in the order members are added.
    private func member(_ key: some CodingKey) -> Node {
        let child = Node()
        node.fields!.append((key.stringValue, child))
        return child
    }
}

private struct UnkeyedNodeEncoder: UnkeyedEncodingContainer {
    let node: Node
    var codingPath: [any CodingKey]
    var count: Int { node.items!.count }

    mutating func encodeNil() throws { element().node.scalar = .null }

    mutating func encode<T: Encodable>(_ value: T) throws {
        let (child, path) = element()
        try SpecCoding.encode(value, into: child, path: path)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let (child, path) = element()
        return NodeEncoder(node: child, codingPath: path).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let (child, path) = element()
        return NodeEncoder(node: child, codingPath: path).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        let (child, path) = element()
        return NodeEncoder(node: child, codingPath: path)
    }

    /// A new element's node and its coding path.
    private func element() -> (node: Node, path: [any CodingKey]) {
        let path = codingPath + [IndexKey(count)]
        let child = Node()
        node.items!.append(child)
        return (child, path)
    }
}

/// The generic `encode` witnesses every primitive overload too: each value goes through `SpecCoding`'s scalars.
private struct SingleNodeEncoder: SingleValueEncodingContainer {
    let node: Node
    var codingPath: [any CodingKey]
    mutating func encodeNil() throws { node.scalar = .null }
    mutating func encode<T: Encodable>(_ value: T) throws { try SpecCoding.encode(value, into: node, path: codingPath) }
}

private struct ValueDecoder: Decoder {
    let value: JSONValue
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object = value else { throw SpecCoding.Failure(codingPath, "expected an object, found \(value.kind)") }
        return KeyedDecodingContainer(KeyedValueDecoder<Key>(object: value, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw SpecCoding.Failure(codingPath, "expected an array, found \(value.kind)") }
        return UnkeyedValueDecoder(items: items, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { SingleValueDecoder(value: value, codingPath: codingPath) }
}

private struct KeyedValueDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    /// An object (checked by `ValueDecoder.container`).
    let object: JSONValue
    var codingPath: [any CodingKey]
    var allKeys: [Key] {
        guard case .object(let members) = object else { return [] }
        return members.compactMap { Key(stringValue: $0.key) }
    }

    func contains(_ key: Key) -> Bool { object[key.stringValue] != nil }

    private func member(_ key: Key) throws -> JSONValue {
        guard let value = object[key.stringValue] else { throw SpecCoding.Failure(codingPath + [key], "missing") }
        return value
    }

    func decodeNil(forKey key: Key) throws -> Bool { try member(key) == .null }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try SpecCoding.decodeValue(type, from: member(key), path: codingPath + [key])
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try ValueDecoder(value: member(key), codingPath: codingPath + [key]).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try ValueDecoder(value: member(key), codingPath: codingPath + [key]).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        ValueDecoder(value: object[SuperKey().stringValue] ?? .null, codingPath: codingPath)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder { ValueDecoder(value: try member(key), codingPath: codingPath + [key]) }
}

private struct UnkeyedValueDecoder: UnkeyedDecodingContainer {
    let items: [JSONValue]
    var codingPath: [any CodingKey]
    var currentIndex = 0
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    private mutating func next() throws -> (JSONValue, [any CodingKey]) {
        let path = codingPath + [IndexKey(currentIndex)]
        guard !isAtEnd else { throw SpecCoding.Failure(path, "past the end of the array") }
        defer { currentIndex += 1 }
        return (items[currentIndex], path)
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, items[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (value, path) = try next()
        return try SpecCoding.decodeValue(type, from: value, path: path)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (value, path) = try next()
        return try ValueDecoder(value: value, codingPath: path).container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (value, path) = try next()
        return try ValueDecoder(value: value, codingPath: path).unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder {
        let (value, path) = try next()
        return ValueDecoder(value: value, codingPath: path)
    }
}

/// The generic `decode` witnesses every primitive overload too, as in `SingleNodeEncoder`.
private struct SingleValueDecoder: SingleValueDecodingContainer {
    let value: JSONValue
    var codingPath: [any CodingKey]
    func decodeNil() -> Bool { value == .null }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try SpecCoding.decodeValue(type, from: value, path: codingPath) }
}

/// An array element's place in a coding path.
private struct IndexKey: CodingKey {
    let intValue: Int?
    var stringValue: String { String(intValue ?? 0) }
    init(_ index: Int) { intValue = index }
    init?(stringValue: String) { return nil }
    init?(intValue: Int) { self.intValue = intValue }
}

/// The member `super` holds a superclass's encoding in (as Foundation's coders name it).
private struct SuperKey: CodingKey {
    var stringValue: String { "super" }
    var intValue: Int? { nil }
    init() {}
    init?(stringValue: String) { return nil }
    init?(intValue: Int) { return nil }
}
