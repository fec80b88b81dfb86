import Memory

/// Why a guest image could not be loaded.
public enum BootError: Error, CustomStringConvertible, Equatable {
    case unrecognisedImage
    case malformed(String)
    case unsupported(String)
    case doesNotFit(String)
    /// The machine cannot be described in ACPI tables (too many vCPUs, a device above 4 GiB, a shared pin...).
    case acpi(String)

    public var description: String {
        switch self {
        case .unrecognisedImage:
            return "not a multiboot image or an ELF64 executable"
        case .malformed(let why): return "malformed image: \(why)"
        case .unsupported(let why): return "unsupported image: \(why)"
        case .doesNotFit(let why): return "image does not fit in guest RAM: \(why)"
        case .acpi(let why): return why
        }
    }

    static func from(_ e: GuestMemoryError) -> BootError { .doesNotFit(e.description) }
}

/// Little-endian reads from an image with bounds checks.
struct ImageReader {
    let bytes: [UInt8]

    func u16(_ at: Int) throws(BootError) -> UInt16 { UInt16(truncatingIfNeeded: try le(at, 2)) }
    func u32(_ at: Int) throws(BootError) -> UInt32 { UInt32(truncatingIfNeeded: try le(at, 4)) }
    func u64(_ at: Int) throws(BootError) -> UInt64 { try le(at, 8) }

    private func le(_ at: Int, _ n: Int) throws(BootError) -> UInt64 {
        guard at >= 0, at <= bytes.count - n else { throw .malformed("read past the end of the file at offset \(at)") }
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(bytes[at + i]) << (8 * UInt64(i)) }
        return v
    }

    func slice(_ offset: UInt64, _ count: UInt64) throws(BootError) -> ArraySlice<UInt8> {
        guard offset <= UInt64(bytes.count), count <= UInt64(bytes.count) - offset else {
            throw .malformed("segment at file offset \(offset) (\(count) bytes) runs past the end of the file")
        }
        return bytes[Int(offset)..<Int(offset + count)]
    }
}
