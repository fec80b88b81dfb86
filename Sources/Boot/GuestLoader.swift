import Memory
import X86

/// Picks the loader for a guest image: multiboot v1 first (as QEMU does), then a Linux bzImage, then an ELF64
/// executable (a Linux vmlinux or a test guest).
public enum GuestLoader {
    /// Whether `kernel` is a Linux kernel: a bzImage, or an ELF64 linked in the kernel's top 2 GiB (a vmlinux).
    public static func isLinux(_ kernel: [UInt8]) -> Bool {
        if (try? Multiboot.findHeader(kernel)) != nil { return false }
        if LinuxBoot.isBzImage(kernel) { return true }
        guard ELFImage.isELF(kernel), let elf = try? ELFImage(kernel), elf.is64 else { return false }
        return elf.segments.contains { $0.virtualAddress >= 0xffff_ffff_8000_0000 }
    }

    /// Loads `kernel` and returns where the vCPU starts.
    ///
    /// A bzImage or an ELF64 executable starts in long mode with the first 4 GiB identity-mapped, a GDT whose
    /// selectors are the boot protocol's, interrupts off, RSI pointing at a Linux zero page, and RAX/RBX holding the
    /// multiboot magic and information (the same structure a multiboot image gets), so one ELF64 entry serves a
    /// Linux vmlinux and a small test guest alike. The first module is the initrd. `acpiRSDP` goes into the zero
    /// page's `acpi_rsdp_addr` (`ACPIBoot.rsdpAddress` when the caller writes ACPI tables; a multiboot image
    /// has no zero page and ignores it).
    public static func load(kernel: [UInt8], cmdline: String, modules: [Multiboot.Module], acpiRSDP: GuestAddress? = nil,
                            into memory: GuestMemory) throws(BootError) -> EntryState {
        guard memory.size > Int(X86Layout.highMemory) else { throw .doesNotFit("guest RAM must be larger than 1 MiB") }
        if let header = try Multiboot.findHeader(kernel) {
            return try Multiboot.load(kernel, header: header, cmdline: cmdline, modules: modules, into: memory)
        }
        let entry: UInt64, kernelEnd: UInt64, setupHeader: LinuxBoot.SetupHeader?
        if LinuxBoot.isBzImage(kernel) {
            let header = try LinuxBoot.parseHeader(kernel)
            guard cmdline.utf8.count < header.cmdlineSize else {
                throw .unsupported("a command line of \(cmdline.utf8.count) bytes (this kernel takes at most \(header.cmdlineSize - 1))")
            }
            (entry, kernelEnd) = try LinuxBoot.loadBzImage(kernel, header: header, into: memory)
            setupHeader = header
        } else {
            guard ELFImage.isELF(kernel) else { throw .unrecognisedImage }
            let elf = try ELFImage(kernel)
            guard elf.is64 else { throw .unsupported("a 32-bit ELF without a multiboot header") }
            guard elf.entry < 1 << 32 else { throw .unsupported("ELF64 entry 0x\(String(elf.entry, radix: 16)) is above the identity map") }
            kernelEnd = try elf.load(kernel, into: memory)
            entry = elf.entry
            setupHeader = nil
        }
        do {
            try X86Layout.writeGDT(memory, longMode: true)
            try X86Layout.writeIdentityPageTables(memory)
        } catch { throw BootError.from(error) }
        let placed = try Multiboot.writeInfo(cmdline: cmdline, modules: modules, after: kernelEnd, pageAlign: true, into: memory)
        if let initrd = placed.modules.first, let limit = setupHeader?.initrdAddrMax, initrd.start + initrd.size > UInt64(limit) + 1 {
            throw .doesNotFit("the initrd ends above this kernel's initrd_addr_max 0x\(String(limit, radix: 16))")
        }
        try LinuxBoot.writeZeroPage(header: setupHeader?.raw, cmdline: placed.cmdline, cmdlineLength: cmdline.utf8.count,
                                    initrd: placed.modules.first, acpiRSDP: acpiRSDP, into: memory)
        return EntryState(mode: .long64, rip: entry, rsp: X86Layout.stackTop, rax: UInt64(Multiboot.bootloaderMagic),
                          rbx: placed.info, rsi: X86Layout.zeroPage, gdtBase: X86Layout.gdt, cr3: X86Layout.pml4)
    }
}
