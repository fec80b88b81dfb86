/// How the guest translates addresses, from CR0, CR4 and EFER.
public enum PagingMode: String, Sendable, CaseIterable {
    case none, bits32, pae, level4, level5
}

/// The registers a page walk depends on.
public struct PagingContext: Equatable, Sendable {
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var efer: UInt64
    /// MAXPHYADDR (CPUID 0x80000008 EAX[7:0]); bits at and above it in an entry are reserved.
    public var physicalAddressBits: Int
    /// Whether the guest's CPUID offers 1 GiB pages (0x80000001 EDX bit 26); without, PS in a PDPTE is reserved.
    public var gigabytePages: Bool

    public init(cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64, physicalAddressBits: Int = 52, gigabytePages: Bool = true) {
        self.cr0 = cr0
        self.cr3 = cr3
        self.cr4 = cr4
        self.efer = efer
        self.physicalAddressBits = physicalAddressBits
        self.gigabytePages = gigabytePages
    }

    enum Bit {
        static let cr0PG: UInt64 = 1 << 31, cr0WP: UInt64 = 1 << 16
        static let cr4PSE: UInt64 = 1 << 4, cr4PAE: UInt64 = 1 << 5, cr4LA57: UInt64 = 1 << 12
        static let cr4SMEP: UInt64 = 1 << 20, cr4SMAP: UInt64 = 1 << 21
        static let eferLMA: UInt64 = 1 << 10, eferNXE: UInt64 = 1 << 11
    }

    public var mode: PagingMode {
        guard cr0 & Bit.cr0PG != 0 else { return .none }
        if efer & Bit.eferLMA != 0 { return cr4 & Bit.cr4LA57 != 0 ? .level5 : .level4 }
        return cr4 & Bit.cr4PAE != 0 ? .pae : .bits32
    }
}

/// The kind of access being translated. The raw values are the page-fault error-code bits for W, U and I/D.
public struct AccessKind: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let write = AccessKind(rawValue: 1 << 1)
    public static let user = AccessKind(rawValue: 1 << 2)
    public static let fetch = AccessKind(rawValue: 1 << 4)
    /// A supervisor access the CPU makes on its own (descriptor tables, the IDT): SMAP applies whatever EFLAGS.AC.
    public static let implicit = AccessKind(rawValue: 1 << 31)
}

/// A successful translation and the combined permissions of the entries that led to it.
public struct Translation: Equatable, Sendable {
    public var physicalAddress: GuestAddress
    public var writable: Bool
    public var user: Bool
    public var executable: Bool
    public var pageSize: UInt64
}

/// A page fault as the CPU would deliver it: CR2 and the error code.
public struct PageFault: Error, Equatable, Sendable, CustomStringConvertible {
    public var address: UInt64
    public var errorCode: UInt32

    public enum Bit {
        public static let present: UInt32 = 1, write: UInt32 = 2, user: UInt32 = 4, reserved: UInt32 = 8, fetch: UInt32 = 16
    }
    public var description: String { "#PF at 0x\(String(address, radix: 16)), error code 0x\(String(errorCode, radix: 16))" }
}

/// Why a walk could not produce an address.
public enum WalkError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The guest must see a page fault.
    case pageFault(PageFault)
    /// A non-canonical address: the guest must see #GP (or #SS), not #PF.
    case nonCanonical(UInt64)
    /// A paging structure lies outside guest RAM.
    case tableOutsideRAM(GuestAddress)

    public var description: String {
        switch self {
        case .pageFault(let f): return f.description
        case .nonCanonical(let a): return "non-canonical address 0x\(String(a, radix: 16))"
        case .tableOutsideRAM(let a): return "paging structure at 0x\(String(a, radix: 16)) is outside guest RAM"
        }
    }
}

/// The guest page-table walker: KVM's `walk_mmu->gva_to_gpa` in userspace. Every x86 paging mode, with the
/// permission checks of the SDM (U/S, R/W with CR0.WP, NX, SMEP, SMAP), reserved-bit checks, and the accessed
/// and dirty bits set as the CPU sets them, only when the translation succeeds.
public struct PageWalker {
    public let memory: GuestMemory
    public init(memory: GuestMemory) { self.memory = memory }

    private static let present: UInt64 = 1, writable: UInt64 = 2, userBit: UInt64 = 4
    private static let accessed: UInt64 = 1 << 5, dirty: UInt64 = 1 << 6, pageSizeBit: UInt64 = 1 << 7
    private static let noExecute: UInt64 = 1 << 63

    /// Translates `address` for `access`; `alignmentCheck` is EFLAGS.AC (it lifts SMAP for explicit accesses).
    public func translate(_ address: UInt64, _ access: AccessKind, context: PagingContext,
                          alignmentCheck: Bool = false) throws(WalkError) -> Translation {
        switch context.mode {
        case .none:
            // Protected mode without paging: linear = physical, 32 bits wide.
            return Translation(physicalAddress: address & 0xffff_ffff, writable: true, user: true, executable: true, pageSize: 4096)
        case .bits32:
            return try walk32(address, access, context, alignmentCheck)
        case .pae, .level4, .level5:
            return try walk64(address, access, context, alignmentCheck)
        }
    }

    // MARK: 32-bit paging (4 KiB pages, 4 MiB pages with CR4.PSE)

    private func walk32(_ address: UInt64, _ access: AccessKind, _ c: PagingContext, _ ac: Bool) throws(WalkError) -> Translation {
        let va = address & 0xffff_ffff
        let pdeAddress = (c.cr3 & 0xffff_f000) + ((va >> 22) & 0x3ff) * 4
        let pde = UInt64(try load32(pdeAddress))
        guard pde & Self.present != 0 else { throw fault(address, access, c, present: false) }
        var entries: [(GuestAddress, UInt64)] = [(pdeAddress, pde)]
        let physical: UInt64, size: UInt64
        if c.cr4 & PagingContext.Bit.cr4PSE != 0 && pde & Self.pageSizeBit != 0 {
            // PSE-36: bits 20:13 of the PDE are physical address bits 39:32.
            let high = ((pde >> 13) & 0xff) << 32
            guard pde & (1 << 21) == 0, high >> c.physicalAddressBits == 0 else {
                throw fault(address, access, c, present: true, reserved: true)
            }
            physical = (pde & 0xffc0_0000) | high | (va & 0x3f_ffff)
            size = 4 << 20
        } else {
            let pteAddress = (pde & 0xffff_f000) + ((va >> 12) & 0x3ff) * 4
            let pte = UInt64(try load32(pteAddress))
            guard pte & Self.present != 0 else { throw fault(address, access, c, present: false) }
            entries.append((pteAddress, pte))
            physical = (pte & 0xffff_f000) | (va & 0xfff)
            size = 4096
        }
        let t = try check(address, access, c, ac, entries: entries, executeDisable: false, physical: physical, size: size)
        try setAccessedDirty(entries, write: access.contains(.write), wide: false)
        return t
    }

    // MARK: PAE, 4-level and 5-level paging

    private func walk64(_ address: UInt64, _ access: AccessKind, _ c: PagingContext, _ ac: Bool) throws(WalkError) -> Translation {
        let mode = c.mode
        let nxe = c.efer & PagingContext.Bit.eferNXE != 0
        let addressMask = ((UInt64(1) << c.physicalAddressBits) - 1) & ~0xfff
        // Bits from MAXPHYADDR to 51 are reserved in every entry; bit 63 too unless EFER.NXE.
        let reservedHigh = (c.physicalAddressBits < 52 ? ((UInt64(1) << 52) - 1) & ~((UInt64(1) << c.physicalAddressBits) - 1) : 0)
            | (nxe ? 0 : Self.noExecute)
        var levels: Int
        var table: UInt64
        var va = address
        switch mode {
        case .pae:
            va = address & 0xffff_ffff
            let pdpteAddress = (c.cr3 & 0xffff_ffe0) + ((va >> 30) & 3) * 8
            let pdpte = try load64(pdpteAddress)
            guard pdpte & Self.present != 0 else { throw fault(address, access, c, present: false) }
            // PDPTEs have no permission bits; bits 1, 2, 5-8 and 63 are reserved.
            guard pdpte & (0x1e6 | (UInt64(1) << 63) | reservedHigh) == 0 else { throw fault(address, access, c, present: true, reserved: true) }
            levels = 2
            table = pdpte & addressMask
        case .level4, .level5:
            levels = mode == .level5 ? 5 : 4
            let topBit = mode == .level5 ? 56 : 47
            let upper = address >> topBit
            guard upper == 0 || upper == (UInt64.max >> topBit) else { throw .nonCanonical(address) }
            table = c.cr3 & addressMask
        default:
            preconditionFailure("walk64 handles PAE, 4-level and 5-level paging")
        }
        var entries: [(GuestAddress, UInt64)] = []
        var executeDisable = false
        var level = levels
        while true {
            let index = (va >> UInt64(12 + 9 * (level - 1))) & 0x1ff
            let entryAddress = table + index * 8
            let entry = try load64(entryAddress)
            guard entry & Self.present != 0 else { throw fault(address, access, c, present: false) }
            var reserved = entry & reservedHigh
            let isLeafCandidate = level == 2 || (level == 3 && mode != .pae && c.gigabytePages)
            if entry & Self.pageSizeBit != 0 && !isLeafCandidate { reserved |= Self.pageSizeBit }  // PS in PML5E/PML4E
            guard reserved == 0 else { throw fault(address, access, c, present: true, reserved: true) }
            entries.append((entryAddress, entry))
            if nxe && entry & Self.noExecute != 0 { executeDisable = true }
            if level == 1 || (isLeafCandidate && entry & Self.pageSizeBit != 0) {
                let size = UInt64(1) << UInt64(12 + 9 * (level - 1))
                // In a large page, the bits between bit 12 (PAT) and the page size are reserved.
                if level > 1, entry & (size - 1) & ~0x1fff != 0 { throw fault(address, access, c, present: true, reserved: true) }
                let frame = entry & addressMask & ~(size - 1)
                let t = try check(address, access, c, ac, entries: entries, executeDisable: executeDisable,
                                  physical: frame | (va & (size - 1)), size: size)
                try setAccessedDirty(entries, write: access.contains(.write), wide: true)
                return t
            }
            table = entry & addressMask
            level -= 1
        }
    }

    // MARK: permissions

    private func check(_ address: UInt64, _ access: AccessKind, _ c: PagingContext, _ ac: Bool,
                       entries: [(GuestAddress, UInt64)], executeDisable: Bool,
                       physical: UInt64, size: UInt64) throws(WalkError) -> Translation {
        let writable = entries.allSatisfy { $0.1 & Self.writable != 0 }
        let user = entries.allSatisfy { $0.1 & Self.userBit != 0 }
        let wp = c.cr0 & PagingContext.Bit.cr0WP != 0
        var denied = false
        if access.contains(.user) {
            if !user { denied = true }
            if access.contains(.write) && !writable { denied = true }
            if access.contains(.fetch) && executeDisable { denied = true }
        } else {
            if access.contains(.write) && !writable && wp { denied = true }
            if access.contains(.fetch) {
                if executeDisable { denied = true }
                if user && c.cr4 & PagingContext.Bit.cr4SMEP != 0 { denied = true }
            } else if user && c.cr4 & PagingContext.Bit.cr4SMAP != 0 && (access.contains(.implicit) || !ac) {
                denied = true
            }
        }
        if denied { throw fault(address, access, c, present: true) }
        return Translation(physicalAddress: physical, writable: writable, user: user, executable: !executeDisable, pageSize: size)
    }

    private func fault(_ address: UInt64, _ access: AccessKind, _ c: PagingContext, present: Bool,
                       reserved: Bool = false) -> WalkError {
        var code = access.rawValue & (PageFault.Bit.write | PageFault.Bit.user)
        if present { code |= PageFault.Bit.present }
        if reserved { code |= PageFault.Bit.reserved }
        // I/D is reported for fetches when NX or SMEP can make a fetch fault.
        if access.contains(.fetch) && (c.efer & PagingContext.Bit.eferNXE != 0 || c.cr4 & PagingContext.Bit.cr4SMEP != 0) {
            code |= PageFault.Bit.fetch
        }
        let cr2 = c.mode == .level4 || c.mode == .level5 ? address : address & 0xffff_ffff
        return .pageFault(PageFault(address: cr2, errorCode: code))
    }

    // MARK: memory

    private func load32(_ at: GuestAddress) throws(WalkError) -> UInt32 {
        do { return try memory.load(UInt32.self, at: at) } catch { throw .tableOutsideRAM(at) }
    }

    private func load64(_ at: GuestAddress) throws(WalkError) -> UInt64 {
        do { return try memory.load(UInt64.self, at: at) } catch { throw .tableOutsideRAM(at) }
    }

    /// Sets A in every entry used and D in the leaf for a write, as the CPU does (atomically: another vCPU may
    /// be walking the same tables).
    private func setAccessedDirty(_ entries: [(GuestAddress, UInt64)], write: Bool, wide: Bool) throws(WalkError) {
        for (i, (at, entry)) in entries.enumerated() {
            var bits = Self.accessed
            if write && i == entries.count - 1 { bits |= Self.dirty }
            guard entry & bits != bits else { continue }
            do {
                if wide { try memory.atomicOr(bits, at: at) } else { try memory.atomicOr(UInt32(bits), at: at) }
            } catch { throw .tableOutsideRAM(at) }
        }
    }
}
