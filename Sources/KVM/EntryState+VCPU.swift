import X86
import CKVM

extension VCPU {
    /// Puts the vCPU in the state a loader asked for: flat segments from the loader's GDT, protected or long mode.
    public func apply(_ entry: EntryState) throws(KVMError) {
        let long = entry.mode == .long64
        var s = try sregs()
        var code = kvm_segment()
        code.base = 0; code.limit = 0xffff_ffff; code.selector = entry.selectors.code
        code.type = 0xb; code.present = 1; code.s = 1; code.g = 1
        code.db = long ? 0 : 1; code.l = long ? 1 : 0
        var data = code
        data.selector = entry.selectors.data; data.type = 0x3; data.db = 1; data.l = 0
        s.cs = code
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        s.gdt.base = entry.gdtBase; s.gdt.limit = entry.gdtLimit
        s.idt.base = 0; s.idt.limit = 0
        s.cr0 = 0x11  // PE | ET: caches enabled, unlike the reset value
        if long {
            s.cr0 |= 0x8000_0000  // PG
            s.cr3 = entry.cr3
            s.cr4 = 0x20  // PAE
            s.efer = 0x500  // LME | LMA
        }
        setSregs(s)
        var r = kvm_regs()
        r.rflags = 0x2
        r.rip = entry.rip; r.rsp = entry.rsp; r.rax = entry.rax; r.rbx = entry.rbx; r.rsi = entry.rsi
        setRegs(r)
    }
}

extension VCPU {
    /// The state an application processor starts in after INIT and a start-up IPI with `vector`: the reset
    /// state (real mode, caches off), executing at `vector` << 12 with CS = `vector` << 8 and IP = 0.
    public func applyStartup(vector: UInt8) throws(KVMError) {
        var s = try sregs()
        func realModeSegment(selector: UInt16, type: UInt8) -> kvm_segment {
            var seg = kvm_segment()
            seg.selector = selector; seg.base = UInt64(selector) << 4; seg.limit = 0xffff
            seg.type = type; seg.present = 1; seg.s = 1
            return seg
        }
        s.cs = realModeSegment(selector: UInt16(vector) << 8, type: 0xb)
        let data = realModeSegment(selector: 0, type: 0x3)
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        s.tr = kvm_segment(); s.tr.limit = 0xffff; s.tr.type = 0xb; s.tr.present = 1
        s.ldt = kvm_segment(); s.ldt.limit = 0xffff; s.ldt.type = 0x2; s.ldt.present = 1
        s.gdt.base = 0; s.gdt.limit = 0xffff
        s.idt.base = 0; s.idt.limit = 0xffff
        s.cr0 = 0x6000_0010  // CD | NW | ET
        s.cr2 = 0; s.cr3 = 0; s.cr4 = 0; s.cr8 = 0; s.efer = 0
        setSregs(s)
        var r = kvm_regs()
        r.rflags = 0x2
        r.rdx = 0x600  // processor signature, as after RESET
        setRegs(r)
    }
}
