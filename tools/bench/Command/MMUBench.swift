import Memory
import System

/// Translations per second through the MMU, with and without its software TLB, on 4-level tables mapping a
/// working set of 4 KiB pages spread over the address space (no KVM needed).
enum MMUBench {
    static func measure(translations: Int, workingSet: Int = 64) throws -> (withTLB: Double, withoutTLB: Double) {
        let size = 32 << 20
        let fd = try MemFD.create(name: "mmu-bench", size: size)
        let memory = try GuestMemory(fd: fd.raw, size: size)
        var next: UInt64 = 0x10_0000
        func table() -> UInt64 { defer { next += 0x1000 }; return next }
        let pml4 = table()
        var rng = SystemRandomNumberGenerator()
        var pages: [UInt64] = []
        for i in 0..<workingSet {
            let va = (UInt64.random(in: 0..<(1 << 47), using: &rng) & ~0xfff)
            var t = pml4
            for level in stride(from: 4, to: 1, by: -1) {
                let at = t + ((va >> UInt64(12 + 9 * (level - 1))) & 0x1ff) * 8
                var entry = try memory.load(UInt64.self, at: at)
                if entry & 1 == 0 { entry = table() | 7; try memory.store(entry, at: at) }
                t = entry & 0x000f_ffff_ffff_f000
            }
            try memory.store(UInt64(0x100_0000 + i * 0x1000) | 7, at: t + ((va >> 12) & 0x1ff) * 8)
            pages.append(va)
        }
        let context = PagingContext(cr0: 0x8001_0011, cr3: pml4, cr4: 0x20, efer: 0x500)
        let addresses = (0..<4096).map { pages[$0 % pages.count] | UInt64($0 * 8 & 0xfff) }
        func rate(tlb: Bool) throws -> Double {
            let mmu = MMU(memory: memory, context: context, tlbEnabled: tlb)
            var sum: UInt64 = 0
            let start = monotonicNanoseconds()
            for i in 0..<translations { sum &+= try mmu.translate(addresses[i & 4095], []) }
            let seconds = Double(monotonicNanoseconds() - start) / 1e9
            precondition(sum != 0)
            return Double(translations) / seconds
        }
        return (try rate(tlb: true), try rate(tlb: false))
    }
}

import Glibc
