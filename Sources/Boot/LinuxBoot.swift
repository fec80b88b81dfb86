import Memory

/// The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry: a zero page (struct
/// boot_params) with the setup header, the command line, the initrd and an E820 map; RSI points at it.
/// Two image kinds: a bzImage (its protected-mode part loaded at `pref_address`, entered at +0x200), and an
/// uncompressed vmlinux ELF (entered at its ELF entry, `startup_64`), which skips the decompressor: guest kernel
/// code is emulated on some hosts, and decompressing there takes minutes.
public enum LinuxBoot {
    /// Offsets in the zero page, and in a bzImage's first sector (the setup header is at the same place in both).
    enum Offset {
        static let e820Entries = 0x1e8, setupSects = 0x1f1, bootFlag = 0x1fe, header = 0x202, version = 0x206
        static let typeOfLoader = 0x210, loadFlags = 0x211, ramdiskImage = 0x218, ramdiskSize = 0x21c
        static let cmdLinePtr = 0x228, initrdAddrMax = 0x22c, kernelAlignment = 0x230, xloadFlags = 0x236
        static let cmdlineSize = 0x238, prefAddress = 0x258, initSize = 0x260, e820Table = 0x2d0
        static let extRamdiskImage = 0x0c0, extRamdiskSize = 0x0c4, extCmdLinePtr = 0x0c8
        static let acpiRSDPAddr = 0x070
    }
    static let headerMagic: UInt32 = 0x5372_6448  // "HdrS"
    static let maxE820Entries = 128

    /// What a bzImage's setup header says about loading it.
    struct SetupHeader {
        let setupBytes: Int  // the real-mode part, skipped: the 64-bit entry does not run it
        let version: UInt16
        let prefAddress: UInt64
        let initSize: UInt64
        let initrdAddrMax: UInt32
        let cmdlineSize: UInt32
        let raw: [UInt8]  // 0x1f1 ..< end of the header, copied into the zero page
    }

    public static func isBzImage(_ bytes: [UInt8]) -> Bool {
        let r = ImageReader(bytes: bytes)
        return (try? r.u16(Offset.bootFlag)) == 0xaa55 && (try? r.u32(Offset.header)) == headerMagic
    }

    static func parseHeader(_ bytes: [UInt8]) throws(BootError) -> SetupHeader {
        let r = ImageReader(bytes: bytes)
        let version = try r.u16(Offset.version)
        guard version >= 0x020c else { throw .unsupported("boot protocol \(version >> 8).\(version & 0xff) (2.12 or later has the 64-bit entry)") }
        guard try r.u16(Offset.xloadFlags) & 1 != 0 else { throw .unsupported("a bzImage without a 64-bit entry point (XLF_KERNEL_64)") }
        var sects = Int(bytes[Offset.setupSects])
        if sects == 0 { sects = 4 }
        let end = 0x202 + Int(bytes[0x201])  // the jump at 0x200 ends the header
        guard end > Offset.initSize + 4, end <= bytes.count else { throw .malformed("setup header length") }
        let setupBytes = (sects + 1) * 512
        guard setupBytes < bytes.count else { throw .malformed("setup_sects \(sects) is past the end of the image") }
        // cmdline_size counts the terminating NUL, so 0 leaves no room for any command line (boot.rst: 2.06+
        // kernels set it; a loader must not compute "cmdline_size - 1" on a 0 from a hostile image).
        let cmdlineSize = try r.u32(Offset.cmdlineSize)
        guard cmdlineSize > 0 else { throw .malformed("cmdline_size 0 (the command line's NUL does not fit)") }
        return SetupHeader(setupBytes: setupBytes, version: version, prefAddress: try r.u64(Offset.prefAddress),
                           initSize: UInt64(try r.u32(Offset.initSize)), initrdAddrMax: try r.u32(Offset.initrdAddrMax),
                           cmdlineSize: cmdlineSize, raw: Array(bytes[Offset.setupSects..<end]))
    }

    /// Loads a bzImage's protected-mode kernel at its preferred address; returns the entry and the end of the
    /// memory the kernel claims while it decompresses itself (init_size).
    static func loadBzImage(_ bytes: [UInt8], header: SetupHeader, into memory: GuestMemory) throws(BootError) -> (entry: UInt64, end: UInt64) {
        let load = header.prefAddress
        let payload = bytes[header.setupBytes...]
        // pref_address comes from the image: the sum may wrap past 2^64, which must be an error, not a trap.
        let (end, wrapped) = load.addingReportingOverflow(max(header.initSize, UInt64(payload.count)))
        guard !wrapped else {
            throw .doesNotFit("pref_address 0x\(String(load, radix: 16)) plus the kernel's size wraps past 2^64")
        }
        guard load >= X86Layout.highMemory, end <= UInt64(memory.size) else {
            throw .doesNotFit("the kernel needs 0x\(String(load, radix: 16))-0x\(String(end, radix: 16))")
        }
        do { try memory.write(payload, at: load) } catch { throw BootError.from(error) }
        return (load + 0x200, end)
    }

    /// Writes the zero page: `header` (a bzImage's, or a minimal one for a vmlinux), the command line, the
    /// initrd, the E820 map and, when there are ACPI tables, the RSDP's address (`acpi_rsdp_addr`: boot protocol
    /// 2.14, honoured by Linux 5.x and later; older kernels ignore it and find the RSDP by scanning 0xE0000).
    static func writeZeroPage(header: [UInt8]?, cmdline: UInt64, cmdlineLength: Int, initrd: (start: UInt64, size: UInt64)?,
                              acpiRSDP: GuestAddress? = nil, into memory: GuestMemory) throws(BootError) {
        let page = X86Layout.zeroPage
        guard let length = UInt32(exactly: cmdlineLength) else { throw .unsupported("a command line of \(cmdlineLength) bytes") }
        do {
            try memory.fill(page, count: 0x1000)
            if let header { try memory.write(header, at: page + UInt64(Offset.setupSects)) } else {
                try memory.store(UInt16(0xaa55), at: page + UInt64(Offset.bootFlag))
                try memory.store(headerMagic, at: page + UInt64(Offset.header))
                try memory.store(UInt16(0x020f), at: page + UInt64(Offset.version))
                try memory.store(UInt32(0x0100_0000), at: page + UInt64(Offset.kernelAlignment))
            }
            try memory.store(UInt8(0xff), at: page + UInt64(Offset.typeOfLoader))  // no registered loader ID
            let loadFlags = try memory.load(UInt8.self, at: page + UInt64(Offset.loadFlags))
            try memory.store(loadFlags | 0x01, at: page + UInt64(Offset.loadFlags))  // LOADED_HIGH
            try memory.store(UInt32(truncatingIfNeeded: cmdline), at: page + UInt64(Offset.cmdLinePtr))
            try memory.store(UInt32(truncatingIfNeeded: cmdline >> 32), at: page + UInt64(Offset.extCmdLinePtr))
            try memory.store(length, at: page + UInt64(Offset.cmdlineSize))
            if let initrd {
                try memory.store(UInt32(truncatingIfNeeded: initrd.start), at: page + UInt64(Offset.ramdiskImage))
                try memory.store(UInt32(truncatingIfNeeded: initrd.size), at: page + UInt64(Offset.ramdiskSize))
                try memory.store(UInt32(truncatingIfNeeded: initrd.start >> 32), at: page + UInt64(Offset.extRamdiskImage))
                try memory.store(UInt32(truncatingIfNeeded: initrd.size >> 32), at: page + UInt64(Offset.extRamdiskSize))
            }
            if let acpiRSDP { try memory.store(acpiRSDP, at: page + UInt64(Offset.acpiRSDPAddr)) }
            let map = X86Layout.memoryMap(ramSize: UInt64(memory.size))
            for (i, e) in map.enumerated() {
                let at = page + UInt64(Offset.e820Table + i * 20)
                try memory.store(e.start, at: at)
                try memory.store(e.size, at: at + 8)
                try memory.store(e.type, at: at + 16)
            }
            try memory.store(UInt8(map.count), at: page + UInt64(Offset.e820Entries))
        } catch { throw BootError.from(error) }
    }
}
