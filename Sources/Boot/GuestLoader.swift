import Memory

/// Picks the loader for a guest image: multiboot v1 first (as QEMU does), then a plain ELF64 executable.
public enum GuestLoader {
    /// Loads `kernel` and returns where the vCPU starts.
    ///
    /// An ELF64 executable starts in long mode with the first 4 GiB identity-mapped, a GDT, RSP below the
    /// boot-info page, and the same multiboot information as a multiboot image (RAX = magic, RBX = info).
    public static func load(kernel: [UInt8], cmdline: String, modules: [Multiboot.Module],
                            into memory: GuestMemory) throws(BootError) -> EntryState {
        guard memory.size > Int(X86Layout.highMemory) else { throw .doesNotFit("guest RAM must be larger than 1 MiB") }
        if let header = try Multiboot.findHeader(kernel) {
            return try Multiboot.load(kernel, header: header, cmdline: cmdline, modules: modules, into: memory)
        }
        guard ELFImage.isELF(kernel) else { throw .unrecognisedImage }
        let elf = try ELFImage(kernel)
        guard elf.is64 else { throw .unsupported("a 32-bit ELF without a multiboot header") }
        guard elf.entry < 1 << 32 else { throw .unsupported("ELF64 entry 0x\(String(elf.entry, radix: 16)) is above the identity map") }
        let kernelEnd = try elf.load(kernel, into: memory)
        do {
            try X86Layout.writeGDT(memory, longMode: true)
            try X86Layout.writeIdentityPageTables(memory)
        } catch { throw BootError.from(error) }
        // The multiboot structure is useful to ELF64 guests too: it carries the command line and memory map.
        let info = try Multiboot.writeInfo(cmdline: cmdline, modules: modules, after: kernelEnd, pageAlign: true, into: memory)
        return EntryState(mode: .long64, rip: elf.entry, rsp: X86Layout.stackTop, rax: UInt64(Multiboot.bootloaderMagic),
                          rbx: info, cr3: X86Layout.pml4)
    }
}
