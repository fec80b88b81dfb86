import Memory
import X86

/// Fixed low-memory layout the loaders use, all below 640 KiB.
public enum X86Layout {
    public static let gdt: GuestAddress = 0x500
    public static let pml4: GuestAddress = 0x1000
    public static let pdpt: GuestAddress = 0x2000
    public static let pageDirectories: GuestAddress = 0x3000  // four, mapping 4 GiB with 2 MiB pages
    /// The Linux boot protocol's zero page (struct boot_params).
    public static let zeroPage: GuestAddress = 0x7000
    public static let stackTop: GuestAddress = 0x8ff0
    public static let bootInfo: GuestAddress = 0x9000  // multiboot info, memory map, modules, command line
    public static let bootInfoEnd: GuestAddress = 0xa000
    public static let ebda: GuestAddress = 0x9fc00
    /// The ACPI tables (the RSDP first, where Linux's scan of 0xE0000-0xFFFFF finds it) up to `acpiTablesEnd`.
    public static let acpiTables: GuestAddress = 0xe_0000
    public static let acpiTablesEnd: GuestAddress = 0xf_0000
    public static let highMemory: GuestAddress = 0x10_0000
    /// Nothing a loader places may go below this: it would overwrite the tables above.
    public static let lowestLoadAddress: GuestAddress = bootInfoEnd

    /// One range of the guest's physical memory map (E820 / multiboot types: 1 usable RAM, 2 reserved).
    public struct MemoryRange: Equatable, Sendable { public let start: UInt64; public let size: UInt64; public let type: UInt32 }

    /// The memory map every loader reports: base memory up to the EBDA (which holds the MP table), the EBDA
    /// reserved, 0xE0000-0xFFFFF (the ACPI tables and the BIOS area) reserved as one range, RAM from 1 MiB to the
    /// end. The ACPI tables' range is "reserved", not "ACPI reclaimable": Linux keeps the first MiB to itself
    /// anyway, and reserved is what a PC's BIOS area is.
    public static func memoryMap(ramSize: UInt64) -> [MemoryRange] {
        [MemoryRange(start: 0, size: ebda, type: 1), MemoryRange(start: ebda, size: 0xa0000 - ebda, type: 2),
         MemoryRange(start: acpiTables, size: highMemory - acpiTables, type: 2),
         MemoryRange(start: highMemory, size: ramSize - highMemory, type: 1)]
    }

    /// GDT selectors shared by every entry mode (the Linux boot protocol's __BOOT_CS and __BOOT_DS).
    public static let codeSelector: UInt16 = EntryState.Selectors.boot.code
    public static let dataSelector: UInt16 = EntryState.Selectors.boot.data

    static func descriptor(base: UInt32, limit: UInt32, flags: UInt16) -> UInt64 {
        // flags: access byte in bits 0-7, G/DB/L/AVL nibble in bits 12-15, as Firecracker's gdt_entry.
        (UInt64(base & 0xff00_0000) << 32) | (UInt64(flags & 0xf0ff) << 40) | (UInt64(limit & 0x000f_0000) << 32)
            | (UInt64(base & 0x00ff_ffff) << 16) | UInt64(limit & 0x0000_ffff)
    }

    /// Writes a GDT: null, null, code, data. `longMode` picks a 64-bit code segment.
    static func writeGDT(_ memory: GuestMemory, longMode: Bool) throws(GuestMemoryError) {
        let code = descriptor(base: 0, limit: 0xfffff, flags: longMode ? 0xa09b : 0xc09b)
        let data = descriptor(base: 0, limit: 0xfffff, flags: 0xc093)
        for (i, d) in [0, 0, code, data].enumerated() {
            try memory.store(d, at: gdt + UInt64(i * 8))
        }
    }

    /// Identity-maps the first 4 GiB with 2 MiB pages.
    static func writeIdentityPageTables(_ memory: GuestMemory) throws(GuestMemoryError) {
        let present: UInt64 = 0x3  // present | writable
        try memory.fill(pml4, count: 0x6000)
        try memory.store(pdpt | present, at: pml4)
        for i in 0..<4 {
            let pd = pageDirectories + UInt64(i) * 0x1000
            try memory.store(pd | present, at: pdpt + UInt64(i * 8))
            for j in 0..<512 {
                let frame = (UInt64(i) << 30) | (UInt64(j) << 21)
                try memory.store(frame | present | 0x80, at: pd + UInt64(j * 8))  // 0x80: 2 MiB page
            }
        }
    }
}
