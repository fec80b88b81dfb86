/// ACPI Machine Language: the small part of it a microVM's DSDT needs (ACPI 6.5, chapter 20), encoded as iasl
/// encodes it, so the bytes can be compared with iasl's and QEMU's output byte for byte.
///
/// Terms are values: build a tree of `AMLTerm`s and ask for its `encoded` bytes. Every name, string and EISA ID
/// is validated when it is made, so encoding cannot fail.

/// A 4-character name segment (`NameSeg`): a lead character A-Z or `_`, then A-Z, 0-9 or `_`; shorter names are
/// padded with `_` as ASL pads them (`_SB` is `_SB_`).
public struct NameSeg: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The four ASCII bytes.
    public let bytes: [UInt8]

    /// Nil unless `name` is 1-4 valid name characters. (Labelled: `NameSeg("X")` is the literal, SE-0213.)
    public init?(validating name: String) {
        let chars = Array(name.utf8)
        guard (1...4).contains(chars.count) else { return nil }
        for (i, c) in chars.enumerated() {
            let upper = (0x41...0x5a).contains(c), digit = (0x30...0x39).contains(c), underscore = c == 0x5f
            guard upper || underscore || (i > 0 && digit) else { return nil }
        }
        bytes = chars + [UInt8](repeating: 0x5f, count: 4 - chars.count)
    }

    /// A literal name: a malformed literal is a programming error, caught the first time the code runs.
    public init(stringLiteral value: String) {
        guard let seg = NameSeg(validating: value) else { preconditionFailure("not an ACPI name segment: \(value)") }
        self = seg
    }

    public var description: String { String(decoding: bytes, as: UTF8.self) }
}

/// A name path: `\_SB_` (from the root), `_SB_.COM1` (relative), as `NameString` encodes it.
public struct NamePath: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let absolute: Bool
    public let segments: [NameSeg]

    public init(absolute: Bool, segments: [NameSeg]) {
        self.absolute = absolute
        self.segments = segments
    }

    /// Nil unless `path` is an optional `\` and one or more dot-separated name segments.
    public init?(validating path: String) {
        var rest = Substring(path)
        absolute = rest.first == "\\"
        if absolute { rest = rest.dropFirst() }
        var segs: [NameSeg] = []
        for part in rest.split(separator: ".", omittingEmptySubsequences: false) {
            guard let seg = NameSeg(validating: String(part)) else { return nil }
            segs.append(seg)
        }
        guard !segs.isEmpty, segs.count <= 255 else { return nil }
        segments = segs
    }

    public init(stringLiteral value: String) {
        guard let path = NamePath(validating: value) else { preconditionFailure("not an ACPI name path: \(value)") }
        self = path
    }

    public var description: String { (absolute ? "\\" : "") + segments.map(\.description).joined(separator: ".") }

    /// `NameString`: RootChar, then one segment, DualNamePrefix and two, or MultiNamePrefix, a count and more.
    var encoded: [UInt8] {
        var out: [UInt8] = absolute ? [0x5c] : []
        switch segments.count {
        case 1: break
        case 2: out.append(0x2e)
        default: out += [0x2f, UInt8(segments.count)]
        }
        for s in segments { out += s.bytes }
        return out
    }
}

/// An AML string: ASCII 0x01-0x7f (the NUL terminates it).
public struct AMLString: Hashable, Sendable, ExpressibleByStringLiteral {
    public let value: String

    public init?(validating value: String) {
        guard value.utf8.allSatisfy({ (0x01...0x7f).contains($0) }) else { return nil }
        self.value = value
    }

    public init(stringLiteral value: String) {
        guard let s = AMLString(validating: value) else { preconditionFailure("not an ASCII AML string: \(value)") }
        self = s
    }
}

/// A compressed EISA ID (`EisaId ("PNP0501")`): three letters A-Z and four hex digits, packed into 32 bits as the
/// PnP ISA specification does (5 bits a letter, 4 a digit) and stored most significant byte first.
public struct EISAID: Hashable, Sendable, ExpressibleByStringLiteral {
    /// The value as a DWord constant holds it (little-endian bytes in the AML are the big-endian packed ID).
    public let value: UInt32

    public init?(validating id: String) {
        let c = Array(id.utf8)
        guard c.count == 7, c[0..<3].allSatisfy({ (0x41...0x5a).contains($0) }) else { return nil }
        var packed: UInt32 = 0
        for letter in c[0..<3] { packed = packed << 5 | UInt32(letter - 0x40) }
        for digit in c[3..<7] {
            guard let v = hexValue(digit) else { return nil }
            packed = packed << 4 | UInt32(v)
        }
        value = packed.byteSwapped
    }

    public init(stringLiteral value: String) {
        guard let id = EISAID(validating: value) else { preconditionFailure("not an EISA ID: \(value)") }
        self = id
    }
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 0x30...0x39: return c - 0x30
    case 0x41...0x46: return c - 0x41 + 10
    default: return nil  // iasl accepts upper-case hex digits only in an EISA ID
    }
}

/// A data object a `Name` can hold.
public enum AMLData: Hashable, Sendable {
    /// An integer in its smallest encoding: ZeroOp, OneOp, or a Byte/Word/DWord/QWord constant.
    case integer(UInt64)
    case string(AMLString)
    case eisaID(EISAID)
    case buffer([UInt8])
    /// A `ResourceTemplate ()`: a buffer of resource descriptors closed by an end tag.
    case resourceTemplate([ResourceDescriptor])

    var encoded: [UInt8] {
        switch self {
        case .integer(let v): return AML.integer(v)
        case .string(let s): return [0x0d] + Array(s.value.utf8) + [0]
        case .eisaID(let id): return [0x0c] + AML.le(id.value)
        case .buffer(let bytes): return AML.buffer(bytes)
        case .resourceTemplate(let descriptors): return AML.buffer(ResourceDescriptor.template(descriptors))
        }
    }
}

/// The terms a DSDT here is made of.
public indirect enum AMLTerm: Hashable, Sendable {
    /// `Name (NAME, data)`.
    case name(NameSeg, AMLData)
    /// `Device (NAME) { terms }`.
    case device(NameSeg, [AMLTerm])
    /// `Scope (path) { terms }`.
    case scope(NamePath, [AMLTerm])

    public var encoded: [UInt8] {
        switch self {
        case .name(let name, let data):
            return [0x08] + name.bytes + data.encoded
        case .device(let name, let terms):
            return [0x5b, 0x82] + AML.package(name.bytes + terms.flatMap(\.encoded))
        case .scope(let path, let terms):
            return [0x10] + AML.package(path.encoded + terms.flatMap(\.encoded))
        }
    }
}

/// Resource descriptors for `_CRS` (ACPI 6.5, 6.4): the ones a microVM's devices use.
public enum ResourceDescriptor: Hashable, Sendable {
    /// `Memory32Fixed (ReadWrite|ReadOnly, base, length)`: large item 0x86.
    case memory32Fixed(writable: Bool, base: UInt32, length: UInt32)
    /// `IO (Decode16, base, base, alignment, length)`: small item 0x47, a fixed range of ports.
    case io(base: UInt16, alignment: UInt8, length: UInt8)
    /// `Interrupt (ResourceConsumer, trigger, polarity, sharing) { gsi }`: the extended interrupt descriptor,
    /// large item 0x89, with one interrupt.
    case interrupt(trigger: InterruptTrigger, polarity: InterruptPolarity, shared: Bool, gsi: UInt32)

    var encoded: [UInt8] {
        switch self {
        case .memory32Fixed(let writable, let base, let length):
            return [0x86] + AML.le(UInt16(9)) + [writable ? 1 : 0] + AML.le(base) + AML.le(length)
        case .io(let base, let alignment, let length):
            return [0x47, 0x01] + AML.le(base) + AML.le(base) + [alignment, length]  // 0x01: 16-bit decode
        case .interrupt(let trigger, let polarity, let shared, let gsi):
            // Flags: bit 0 consumer, bit 1 edge, bit 2 active low, bit 3 shared (bit 4, wake capable: no).
            var flags: UInt8 = 0x01
            if trigger == .edge { flags |= 0x02 }
            if polarity == .activeLow { flags |= 0x04 }
            if shared { flags |= 0x08 }
            return [0x89] + AML.le(UInt16(6)) + [flags, 1] + AML.le(gsi)
        }
    }

    /// The descriptors and the end tag. Its checksum byte is 0, which the specification defines as "treat the
    /// checksum as valid"; iasl and QEMU write 0 too, so these bytes compare equal with theirs.
    static func template(_ descriptors: [ResourceDescriptor]) -> [UInt8] {
        descriptors.flatMap(\.encoded) + [0x79, 0x00]
    }
}

/// How an interrupt line signals: a rising edge, or a level held until the device is serviced.
public enum InterruptTrigger: Hashable, Sendable { case edge, level }
/// Which electrical level (or edge) of the line means "asserted".
public enum InterruptPolarity: Hashable, Sendable { case activeHigh, activeLow }

/// The encodings the terms share.
enum AML {
    /// An integer in the smallest encoding, as iasl chooses it.
    static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [0x00]  // ZeroOp
        case 1: return [0x01]  // OneOp
        case 2...0xff: return [0x0a, UInt8(v)]
        case 0x100...0xffff: return [0x0b] + le(UInt16(v))
        case 0x1_0000...0xffff_ffff: return [0x0c] + le(UInt32(v))
        default: return [0x0e] + le(v)
        }
    }

    /// `DefBuffer`: BufferOp, PkgLength, the size as an integer, the bytes.
    static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        [0x11] + package(integer(UInt64(bytes.count)) + bytes)
    }

    /// `payload` behind its PkgLength, which counts itself: one byte up to 63 in all; otherwise 2-4 bytes, the
    /// first holding the count of bytes that follow (bits 6-7) and the low nibble, the others 8 bits each.
    static func package(_ payload: [UInt8]) -> [UInt8] {
        pkgLength(payload.count) + payload
    }

    static func pkgLength(_ payloadCount: Int) -> [UInt8] {
        if payloadCount + 1 <= 0x3f { return [UInt8(payloadCount + 1)] }
        for extra in 1...3 {
            let total = payloadCount + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var out = [UInt8(extra << 6) | UInt8(total & 0xf)]
            for i in 0..<extra { out.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
            return out
        }
        preconditionFailure("an AML package of \(payloadCount) bytes is over PkgLength's 2^28 limit")
    }

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) }
    }
}
