/// The vCPU's view of guest-virtual memory: the page walker behind a small software TLB, plus reads and writes
/// of guest-virtual ranges that cross page boundaries.
///
/// The TLB is direct-mapped and keyed by virtual page number and access kind: an entry records that exactly
/// this kind of access to this 4 KiB page succeeded (and, for a write, that the walk set the dirty bit), so a hit
/// needs no permission logic of its own and faults and A/D updates always come from the walker. It is flushed
/// whenever CR0, CR3, CR4 or EFER change, and on request (INVLPG, a guest write to a page table).
public final class MMU: @unchecked Sendable {
    public let walker: PageWalker
    public private(set) var context: PagingContext
    public var tlbEnabled: Bool
    private let tlb: UnsafeMutablePointer<Entry>
    private static let slots = 256
    public private(set) var hits = 0
    public private(set) var misses = 0

    struct Entry {
        var page: UInt64 = .max
        var kind: UInt32 = 0
        var frame: UInt64 = 0
    }

    public init(memory: GuestMemory, context: PagingContext, tlbEnabled: Bool = true) {
        walker = PageWalker(memory: memory)
        self.context = context
        self.tlbEnabled = tlbEnabled
        tlb = .allocate(capacity: Self.slots)
        tlb.initialize(repeating: Entry(), count: Self.slots)
    }

    deinit { tlb.deallocate() }

    /// Adopts new paging registers; any change to them flushes the TLB.
    public func update(_ new: PagingContext) {
        if new != context { flush() }
        context = new
    }

    public func flush() {
        tlb.update(repeating: Entry(), count: Self.slots)
    }

    public func translate(_ address: UInt64, _ access: AccessKind, alignmentCheck: Bool = false) throws(WalkError) -> GuestAddress {
        let page = address >> 12
        let kind = access.rawValue | (alignmentCheck ? 1 << 30 : 0)
        let slot = Int((page ^ UInt64(kind >> 1)) & UInt64(Self.slots - 1))
        if tlbEnabled && tlb[slot].page == page && tlb[slot].kind == kind {
            hits += 1
            return tlb[slot].frame | (address & 0xfff)
        }
        misses += 1
        let t = try walker.translate(address, access, context: context, alignmentCheck: alignmentCheck)
        if tlbEnabled { tlb[slot] = Entry(page: page, kind: kind, frame: t.physicalAddress & ~0xfff) }
        return t.physicalAddress
    }

    /// Reads `count` bytes at a guest-virtual address, page by page.
    public func read(_ address: UInt64, count: Int, _ access: AccessKind = []) throws(MMUError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var va = address
        var left = count
        while left > 0 {
            let chunk = min(left, 4096 - Int(va & 0xfff))
            let pa: GuestAddress
            do { pa = try translate(va, access) } catch { throw .walk(error) }
            do { out += try walker.memory.read(pa, count: chunk) } catch { throw .memory(error) }
            va &+= UInt64(chunk)
            left -= chunk
        }
        return out
    }

    /// Writes bytes at a guest-virtual address; every page is translated (and checked) before any byte is written.
    public func write(_ bytes: [UInt8], at address: UInt64, _ access: AccessKind = []) throws(MMUError) {
        var pieces: [(GuestAddress, Range<Int>)] = []
        var va = address
        var done = 0
        while done < bytes.count {
            let chunk = min(bytes.count - done, 4096 - Int(va & 0xfff))
            do { pieces.append((try translate(va, access.union(.write)), done..<done + chunk)) } catch { throw .walk(error) }
            va &+= UInt64(chunk)
            done += chunk
        }
        for (pa, range) in pieces {
            do { try walker.memory.write(bytes[range], at: pa) } catch { throw .memory(error) }
        }
    }
}

/// A guest-virtual access that failed: in the walk (the guest should see the fault) or in guest RAM.
public enum MMUError: Error, Equatable, CustomStringConvertible {
    case walk(WalkError)
    case memory(GuestMemoryError)
    public var description: String {
        switch self {
        case .walk(let e): return e.description
        case .memory(let e): return e.description
        }
    }
}
