import Boot
import CKVM

extension VCPU {
    /// Puts the vCPU in the state a loader asked for: flat segments from the loader's GDT, protected or long mode.
    public func apply(_ entry: EntryState) throws(KVMError) {
        let long = entry.mode == .long64
        var s = try sregs()
        var code = kvm_segment()
        code.base = 0; code.limit = 0xffff_ffff; code.selector = X86Layout.codeSelector
        code.type = 0xb; code.present = 1; code.s = 1; code.g = 1
        code.db = long ? 0 : 1; code.l = long ? 1 : 0
        var data = code
        data.selector = X86Layout.dataSelector; data.type = 0x3; data.db = 1; data.l = 0
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
