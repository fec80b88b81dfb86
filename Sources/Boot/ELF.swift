import Memory

/// The loadable parts of an ELF executable (32- or 64-bit, little-endian x86).
struct ELFImage {
    struct Segment {
        let physicalAddress: UInt64
        var virtualAddress: UInt64 = 0
        let fileOffset: UInt64
        let fileSize: UInt64
        let memorySize: UInt64
    }
    let is64: Bool
    let entry: UInt64
    let segments: [Segment]

    static func isELF(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 16 && bytes[0] == 0x7f && bytes[1] == 0x45 && bytes[2] == 0x4c && bytes[3] == 0x46
    }

    init(_ bytes: [UInt8]) throws(BootError) {
        let r = ImageReader(bytes: bytes)
        guard Self.isELF(bytes) else { throw .unrecognisedImage }
        guard bytes[5] == 1 else { throw .unsupported("big-endian ELF") }
        switch bytes[4] {
        case 1: is64 = false
        case 2: is64 = true
        default: throw .malformed("ELF class \(bytes[4])")
        }
        let machine = try r.u16(18)
        guard machine == (is64 ? 62 : 3) else { throw .unsupported("ELF machine \(machine) is not x86") }
        let type = try r.u16(16)
        guard type == 2 else { throw .unsupported("ELF type \(type) is not an executable (ET_EXEC)") }
        let phoff: UInt64, phentsize: Int, phnum: Int
        if is64 {
            entry = try r.u64(24); phoff = try r.u64(32)
            phentsize = Int(try r.u16(54)); phnum = Int(try r.u16(56))
        } else {
            entry = UInt64(try r.u32(24)); phoff = UInt64(try r.u32(28))
            phentsize = Int(try r.u16(42)); phnum = Int(try r.u16(44))
        }
        guard phentsize >= (is64 ? 56 : 32), phnum > 0, phnum <= 256, phoff < UInt64(bytes.count) else {
            throw .malformed("program header table")
        }
        var segments: [Segment] = []
        for i in 0..<phnum {
            let at = Int(phoff) + i * phentsize
            guard try r.u32(at) == 1 else { continue }  // PT_LOAD
            let s: Segment
            if is64 {
                s = Segment(physicalAddress: try r.u64(at + 24), virtualAddress: try r.u64(at + 16), fileOffset: try r.u64(at + 8),
                            fileSize: try r.u64(at + 32), memorySize: try r.u64(at + 40))
            } else {
                s = Segment(physicalAddress: UInt64(try r.u32(at + 12)), fileOffset: UInt64(try r.u32(at + 4)),
                            fileSize: UInt64(try r.u32(at + 16)), memorySize: UInt64(try r.u32(at + 20)))
            }
            guard s.fileSize <= s.memorySize else { throw .malformed("segment \(i) has p_filesz > p_memsz") }
            _ = try r.slice(s.fileOffset, s.fileSize)
            segments.append(s)
        }
        guard !segments.isEmpty else { throw .malformed("no PT_LOAD segment") }
        self.segments = segments
    }

    /// Copies every segment to its physical address; returns the end of the highest one.
    func load(_ bytes: [UInt8], into memory: GuestMemory) throws(BootError) -> UInt64 {
        let r = ImageReader(bytes: bytes)
        var end: UInt64 = 0
        for s in segments {
            guard s.memorySize <= UInt64(memory.size) else {
                throw .doesNotFit("segment of \(s.memorySize) bytes is larger than guest RAM")
            }
            guard s.physicalAddress >= X86Layout.lowestLoadAddress else {
                throw .doesNotFit("segment at 0x\(String(s.physicalAddress, radix: 16)) overlaps the boot tables below 0x\(String(X86Layout.lowestLoadAddress, radix: 16))")
            }
            let contents = try r.slice(s.fileOffset, s.fileSize)
            do {
                try memory.write(contents, at: s.physicalAddress)
                try memory.fill(s.physicalAddress + s.fileSize, count: Int(s.memorySize - s.fileSize))
            } catch { throw BootError.from(error) }
            end = max(end, s.physicalAddress + s.memorySize)
        }
        return end
    }
}
