import CKVM
import Emulator
import KVM
import Memory

/// The readable report printed when a vCPU stops abnormally: registers, segments, pending events, the
/// instruction at RIP (bytes and disassembly) and the top of the stack, both read through the guest's page tables.
enum CrashDump {
    static func hex(_ v: UInt64, _ width: Int = 16) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    static func segment(_ name: String, _ s: kvm_segment) -> String {
        "\(name)=\(hex(UInt64(s.selector), 4)) base=\(hex(s.base)) limit=\(hex(UInt64(s.limit), 8)) type=\(s.type) "
            + "dpl=\(s.dpl) p=\(s.present) s=\(s.s) db=\(s.db) l=\(s.l) g=\(s.g)"
    }

    static func render(vcpu: VCPU, mmu: MMU, headline: String) -> String {
        var lines = ["vcpu\(vcpu.id): \(headline)"]
        guard let r = try? vcpu.regs(), let s = try? vcpu.sregs() else {
            return (lines + ["  (registers unavailable)"]).joined(separator: "\n")
        }
        lines.append("  RAX=\(hex(r.rax)) RBX=\(hex(r.rbx)) RCX=\(hex(r.rcx)) RDX=\(hex(r.rdx))")
        lines.append("  RSI=\(hex(r.rsi)) RDI=\(hex(r.rdi)) RBP=\(hex(r.rbp)) RSP=\(hex(r.rsp))")
        lines.append("  R8 =\(hex(r.r8)) R9 =\(hex(r.r9)) R10=\(hex(r.r10)) R11=\(hex(r.r11))")
        lines.append("  R12=\(hex(r.r12)) R13=\(hex(r.r13)) R14=\(hex(r.r14)) R15=\(hex(r.r15))")
        lines.append("  RIP=\(hex(r.rip)) RFLAGS=\(hex(r.rflags, 8)) CPL=\(s.cs.dpl)")
        lines.append("  CR0=\(hex(s.cr0, 8)) CR2=\(hex(s.cr2)) CR3=\(hex(s.cr3)) CR4=\(hex(s.cr4, 8)) CR8=\(hex(s.cr8, 2)) EFER=\(hex(s.efer, 4))")
        for (n, seg) in [("CS", s.cs), ("DS", s.ds), ("ES", s.es), ("SS", s.ss), ("FS", s.fs), ("GS", s.gs), ("TR", s.tr), ("LDT", s.ldt)] {
            lines.append("  " + segment(n, seg))
        }
        lines.append("  GDT=\(hex(s.gdt.base)) limit \(hex(UInt64(s.gdt.limit), 4))  IDT=\(hex(s.idt.base)) limit \(hex(UInt64(s.idt.limit), 4))")
        if let ev = try? vcpu.events() {
            lines.append("  exception: injected=\(ev.exception.injected) pending=\(ev.exception.pending) nr=\(ev.exception.nr) "
                         + "error=\(ev.exception.has_error_code != 0 ? hex(UInt64(ev.exception.error_code), 8) : "none")"
                         + "  interrupt: injected=\(ev.interrupt.injected) nr=\(ev.interrupt.nr)  nmi: pending=\(ev.nmi.pending)")
        }
        if let context = try? vcpu.pagingContext() { mmu.update(context) }
        lines.append("  " + instruction(mmu: mmu, regs: r, sregs: s))
        lines.append("  " + stack(mmu: mmu, regs: r, sregs: s))
        return lines.joined(separator: "\n")
    }

    static func instruction(mmu: MMU, regs: kvm_regs, sregs: kvm_sregs) -> String {
        let mode = CPUMode(sregs)
        let linear = InstructionDecoder.linearRIP(regs, sregs)
        // Read as a data access: the report should show the bytes even where a fetch would fault (NX).
        let bytes = (0..<15).compactMap { i in try? mmu.read(linear &+ UInt64(i), count: 1).first }
        guard !bytes.isEmpty else { return "instruction at RIP: linear \(hex(linear)) cannot be read (not mapped or outside RAM)" }
        guard let d = InstructionDecoder.decode(bytes, mode: mode, address: regs.rip) else {
            return "instruction at RIP (\(mode.rawValue)): \(bytes.map { hex(UInt64($0), 2) }.joined(separator: " "))  (does not decode)"
        }
        return "instruction at RIP (\(mode.rawValue)): \(d.text)   [\(d.bytes.map { hex(UInt64($0), 2) }.joined(separator: " "))]"
    }

    static func stack(mmu: MMU, regs: kvm_regs, sregs: kvm_sregs) -> String {
        let long = CPUMode(sregs) == .long64
        let width = long ? 8 : 4
        let linear = long ? regs.rsp : (sregs.ss.base &+ regs.rsp) & 0xffff_ffff
        var words: [String] = []
        for i in 0..<6 {
            guard let b = try? mmu.read(linear &+ UInt64(i * width), count: width) else { break }
            words.append(hex(b.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }, width * 2))
        }
        return words.isEmpty ? "stack: \(hex(linear)) cannot be read" : "stack at \(hex(linear)): " + words.joined(separator: " ")
    }
}
