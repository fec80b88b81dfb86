import TestSupport
import Memory


/// Builds random page-table trees in guest RAM for one paging mode and picks addresses that mostly follow
/// populated entries (so most translations get deep into the tree).
struct RandomPageTables {
    let memory: GuestMemory
    let mode: PagingMode
    let physicalAddressBits: Int
    var rng: SplitMix
    var nextTable: UInt64 = 0x100_0000  // tables from 16 MiB up
    var nxe = false
    var pse = false
    /// Populated indices of each table, to steer addresses through the tree.
    var populated: [UInt64: [UInt64]] = [:]

    init(memory: GuestMemory, mode: PagingMode, physicalAddressBits: Int, seed: UInt64) {
        self.memory = memory
        self.mode = mode
        self.physicalAddressBits = physicalAddressBits
        rng = SplitMix(state: seed)
    }

    var levels: Int { mode == .bits32 ? 2 : mode == .pae ? 3 : mode == .level5 ? 5 : 4 }
    var entrySize: UInt64 { mode == .bits32 ? 4 : 8 }

    mutating func allocate() throws -> UInt64 {
        let t = nextTable
        nextTable += 0x1000
        try memory.fill(t, count: 0x1000)
        return t
    }

    /// A new tree; returns CR3.
    mutating func build() throws -> UInt64 {
        nextTable = 0x100_0000
        populated = [:]
        nxe = mode != .bits32 && rng.chance(70)
        pse = mode == .bits32 && rng.chance(70)
        let root = try allocate()
        try fill(table: root, level: levels)
        return root
    }

    func physicalFrame(_ alignment: UInt64) -> UInt64 { 0 }

    mutating func randomFrame(alignment: UInt64) -> UInt64 {
        let limit: UInt64 = mode == .bits32 ? (pse ? 1 << 36 : 1 << 32) : UInt64(1) << min(physicalAddressBits, 40)
        return (rng.next() % limit) & ~(alignment - 1)
    }

    mutating func fill(table: UInt64, level: Int) throws {
        let isPDPT = mode == .pae && level == 3
        let count: UInt64 = isPDPT ? 4 : (mode == .bits32 ? 1024 : 512)
        var indices: [UInt64] = []
        for _ in 0..<(isPDPT ? 4 : 6) { indices.append(rng.next() % count) }
        populated[table] = indices
        for index in indices {
            var entry: UInt64 = rng.chance(90) ? 1 : 0
            if !isPDPT {
                if rng.chance(60) { entry |= 2 }  // R/W
                if rng.chance(60) { entry |= 4 }  // U/S
            }
            let leafCapable = level == 1 || level == 2 || (level == 3 && mode != .pae && mode != .bits32)
            let largeAllowed = level == 2 ? (mode != .bits32 || pse) : level == 3
            let pageSize: UInt64 = mode == .bits32 ? (level == 2 ? 4 << 20 : 4096) : UInt64(1) << UInt64(12 + 9 * (level - 1))
            if level == 1 || (leafCapable && largeAllowed && rng.chance(30)) {
                if level > 1 { entry |= 0x80 }
                var frame = randomFrame(alignment: pageSize)
                if mode == .bits32 && level == 2 {
                    frame = (frame & 0xffc0_0000) | (((frame >> 32) & 0xff) << 13)  // PSE-36 layout
                }
                entry |= frame
            } else if !isPDPT && level == levels && mode != .pae && rng.chance(3) {
                entry |= 0x80  // PS where it is reserved
                entry |= try allocate()
                try fill(table: entry & 0xffff_f000, level: level - 1)
            } else {
                let child = try allocate()
                entry |= child
                try fill(table: child, level: level - 1)
            }
            if mode != .bits32 && !isPDPT {
                if rng.chance(nxe ? 30 : 3) { entry |= 1 << 63 }  // XD, reserved without EFER.NXE
                if physicalAddressBits < 52 && rng.chance(3) { entry |= UInt64(1) << UInt64(physicalAddressBits) }
            }
            if mode == .bits32 { try memory.store(UInt32(truncatingIfNeeded: entry), at: table + index * 4) } else {
                try memory.store(entry, at: table + index * 8)
            }
        }
    }

    /// An address that follows populated entries most of the time.
    mutating func address(root: UInt64) throws -> UInt64 {
        var va: UInt64 = 0
        var table = root
        for level in stride(from: levels, through: 1, by: -1) {
            let shift: UInt64 = mode == .bits32 ? (level == 2 ? 22 : 12) : UInt64(12 + 9 * (level - 1))
            let width: UInt64 = mode == .bits32 ? 1024 : (mode == .pae && level == 3 ? 4 : 512)
            let known = populated[table] ?? []
            let index = !known.isEmpty && rng.chance(85) ? known[Int(rng.next() % UInt64(known.count))] : rng.next() % width
            va |= index << shift
            let entry = mode == .bits32 ? UInt64(try memory.load(UInt32.self, at: table + index * 4)) : try memory.load(UInt64.self, at: table + index * 8)
            let next = entry & 0x000f_ffff_ffff_f000 & ((UInt64(1) << UInt64(physicalAddressBits)) - 1)
            guard populated[next] != nil else { break }
            table = next
        }
        va |= rng.next() & 0xfff
        if mode == .level4 && va & (1 << 47) != 0 { va |= 0xffff_0000_0000_0000 }  // canonical
        if mode == .level5 && va & (1 << 56) != 0 { va |= 0xfe00_0000_0000_0000 }
        return va
    }
}
