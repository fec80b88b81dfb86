import Memory
import X86

/// Multiboot v1 (the GNU multiboot specification 0.6.96): finds the header, loads the image (ELF32 program
/// headers, or the a.out kludge addresses for flat images), and writes the multiboot information structure.
public enum Multiboot {
    public static let headerMagic: UInt32 = 0x1BAD_B002
    public static let bootloaderMagic: UInt32 = 0x2BAD_B002

    enum HeaderFlag {
        static let pageAlignModules: UInt32 = 1 << 0
        static let memoryInfo: UInt32 = 1 << 1
        static let videoMode: UInt32 = 1 << 2
        static let addressFields: UInt32 = 1 << 16
    }
    enum InfoFlag {
        static let memory: UInt32 = 1 << 0
        static let cmdline: UInt32 = 1 << 2
        static let modules: UInt32 = 1 << 3
        static let memoryMap: UInt32 = 1 << 6
        static let bootloaderName: UInt32 = 1 << 9
    }

    struct Header {
        let offset: Int
        let flags: UInt32
        let headerAddr: UInt32, loadAddr: UInt32, loadEndAddr: UInt32, bssEndAddr: UInt32, entryAddr: UInt32
    }

    /// The header, if the image has one in its first 8 KiB (32-bit aligned, with a valid checksum).
    static func findHeader(_ bytes: [UInt8]) throws(BootError) -> Header? {
        let r = ImageReader(bytes: bytes)
        var at = 0
        while at + 12 <= min(bytes.count, 8192) {
            defer { at += 4 }
            guard try r.u32(at) == headerMagic else { continue }
            let flags = try r.u32(at + 4)
            guard headerMagic &+ flags &+ (try r.u32(at + 8)) == 0 else { continue }
            if flags & HeaderFlag.addressFields != 0 {
                return Header(offset: at, flags: flags, headerAddr: try r.u32(at + 12), loadAddr: try r.u32(at + 16),
                              loadEndAddr: try r.u32(at + 20), bssEndAddr: try r.u32(at + 24), entryAddr: try r.u32(at + 28))
            }
            return Header(offset: at, flags: flags, headerAddr: 0, loadAddr: 0, loadEndAddr: 0, bssEndAddr: 0, entryAddr: 0)
        }
        return nil
    }

    /// A module the loader hands over (e.g. an initrd): its bytes and its string.
    public struct Module { public let bytes: [UInt8]; public let string: String
        public init(bytes: [UInt8], string: String) { self.bytes = bytes; self.string = string } }

    /// Loads a multiboot image and returns the protected-mode entry state (EAX = magic, EBX = info).
    static func load(_ bytes: [UInt8], header: Header, cmdline: String, modules: [Module],
                     into memory: GuestMemory) throws(BootError) -> EntryState {
        let required = header.flags & 0xffff
        let known = HeaderFlag.pageAlignModules | HeaderFlag.memoryInfo
        if required & HeaderFlag.videoMode != 0 { throw .unsupported("multiboot image requires a video mode (no display here)") }
        if required & ~known != 0 { throw .unsupported("multiboot header flags 0x\(String(required, radix: 16))") }

        var entry: UInt64
        var kernelEnd: UInt64
        if header.flags & HeaderFlag.addressFields != 0 {
            (entry, kernelEnd) = try loadKludge(bytes, header: header, into: memory)
        } else {
            let elf = try ELFImage(bytes)
            guard !elf.is64 else { throw .unsupported("a multiboot ELF must be 32-bit (use the ELF64 entry instead)") }
            kernelEnd = try elf.load(bytes, into: memory)
            entry = elf.entry
        }
        let info = try writeInfo(cmdline: cmdline, modules: modules, after: kernelEnd,
                                 pageAlign: header.flags & HeaderFlag.pageAlignModules != 0, into: memory)
        do { try X86Layout.writeGDT(memory, longMode: false) } catch { throw BootError.from(error) }
        guard entry < UInt64(memory.size) else { throw .doesNotFit("entry point 0x\(String(entry, radix: 16)) is outside guest RAM") }
        return EntryState(mode: .protected32, rip: entry, rax: UInt64(bootloaderMagic), rbx: info.info, gdtBase: X86Layout.gdt)
    }

    private static func loadKludge(_ bytes: [UInt8], header: Header, into memory: GuestMemory) throws(BootError) -> (UInt64, UInt64) {
        let h = header
        guard h.loadAddr <= h.headerAddr, UInt64(h.headerAddr - h.loadAddr) <= UInt64(h.offset) else {
            throw .malformed("multiboot load_addr 0x\(String(h.loadAddr, radix: 16)) is after header_addr")
        }
        let fileStart = UInt64(h.offset) - UInt64(h.headerAddr - h.loadAddr)
        let loadEnd = h.loadEndAddr == 0 ? UInt64(h.loadAddr) + UInt64(bytes.count) - fileStart : UInt64(h.loadEndAddr)
        guard loadEnd >= UInt64(h.loadAddr) else { throw .malformed("multiboot load_end_addr is below load_addr") }
        let count = loadEnd - UInt64(h.loadAddr)
        let bssEnd = max(UInt64(h.bssEndAddr), loadEnd)
        guard UInt64(h.loadAddr) >= X86Layout.lowestLoadAddress else {
            throw .doesNotFit("load_addr 0x\(String(h.loadAddr, radix: 16)) overlaps the boot tables")
        }
        guard bssEnd <= UInt64(memory.size) else { throw .doesNotFit("image ends at 0x\(String(bssEnd, radix: 16))") }
        let r = ImageReader(bytes: bytes)
        let image = try r.slice(fileStart, count)
        do {
            try memory.write(image, at: UInt64(h.loadAddr))
            try memory.fill(loadEnd, count: Int(bssEnd - loadEnd))
        } catch { throw BootError.from(error) }
        return (UInt64(h.entryAddr), bssEnd)
    }

    /// Where writeInfo put things: the information structure, the command line string, each module's bytes.
    struct Placement {
        let info: UInt64
        let cmdline: UInt64
        let modules: [(start: UInt64, size: UInt64)]
    }

    /// Writes the information structure, memory map, module list, strings and module contents.
    static func writeInfo(cmdline: String, modules: [Module], after kernelEnd: UInt64, pageAlign: Bool,
                                  into memory: GuestMemory) throws(BootError) -> Placement {
        let info = X86Layout.bootInfo
        let mmapAddr = info + 0x100, modsAddr = info + 0x200, stringsAddr = info + 0x400
        let ramEnd = UInt64(memory.size)
        let map = X86Layout.memoryMap(ramSize: ramEnd)
        var strings = Array("vmm".utf8) + [0]
        let cmdlineAddr = stringsAddr + UInt64(strings.count)
        strings += Array(cmdline.utf8) + [0]
        var moduleStringAddrs: [UInt64] = []
        for m in modules {
            moduleStringAddrs.append(stringsAddr + UInt64(strings.count))
            strings += Array(m.string.utf8) + [0]
        }
        guard stringsAddr + UInt64(strings.count) <= X86Layout.bootInfoEnd else {
            throw .doesNotFit("command line and module strings exceed \(X86Layout.bootInfoEnd - stringsAddr) bytes")
        }
        guard modules.count <= 16 else { throw .unsupported("more than 16 modules") }
        // Where each module goes: after the kernel, page-aligned if asked, all inside RAM.
        var placed: [(start: UInt64, size: UInt64)] = []
        var next = (kernelEnd + 0xfff) & ~0xfff
        for (i, m) in modules.enumerated() {
            if pageAlign { next = (next + 0xfff) & ~0xfff }
            let end = next + UInt64(m.bytes.count)
            guard end <= ramEnd else { throw .doesNotFit("module \(i) (\(m.bytes.count) bytes)") }
            placed.append((next, UInt64(m.bytes.count)))
            next = end
        }
        do {
            try memory.fill(info, count: Int(X86Layout.bootInfoEnd - info))
            var flags = InfoFlag.memory | InfoFlag.cmdline | InfoFlag.memoryMap | InfoFlag.bootloaderName
            try memory.store(UInt32(640), at: info + 4)  // mem_lower (KiB)
            try memory.store(UInt32((ramEnd - X86Layout.highMemory) / 1024), at: info + 8)  // mem_upper (KiB)
            try memory.store(UInt32(cmdlineAddr), at: info + 16)
            for (i, e) in map.enumerated() {
                let at = mmapAddr + UInt64(i * 24)
                try memory.store(UInt32(20), at: at)
                try memory.store(e.start, at: at + 4)
                try memory.store(e.size, at: at + 12)
                try memory.store(e.type, at: at + 20)
            }
            try memory.store(UInt32(map.count * 24), at: info + 44)
            try memory.store(UInt32(mmapAddr), at: info + 48)
            try memory.store(UInt32(stringsAddr), at: info + 64)  // boot_loader_name
            try memory.write(strings, at: stringsAddr)
            if !modules.isEmpty {
                flags |= InfoFlag.modules
                for (i, m) in modules.enumerated() {
                    try memory.write(m.bytes, at: placed[i].start)
                    let at = modsAddr + UInt64(i * 16)
                    try memory.store(UInt32(placed[i].start), at: at)
                    try memory.store(UInt32(placed[i].start + placed[i].size), at: at + 4)
                    try memory.store(UInt32(moduleStringAddrs[i]), at: at + 8)
                }
                try memory.store(UInt32(modules.count), at: info + 20)
                try memory.store(UInt32(modsAddr), at: info + 24)
            }
            try memory.store(flags, at: info)
        } catch { throw BootError.from(error) }
        return Placement(info: info, cmdline: cmdlineAddr, modules: placed)
    }
}
