import CKVM
import KVM
import Memory

/// What KVM's instruction emulator cannot do, done in userspace: KVM's `x86_emulate_instruction` with
/// `inject_emulated_exception`, for a documented set. On an emulation failure the instruction at CS:RIP is
/// fetched through the MMU and decoded with Zydis; INT3, INT n, INTO, FWAIT and the IRET forms are carried out;
/// a fault raised on the way (#PF from the walk, #GP, #NP, #SS, #UD) is injected into the guest. Anything else
/// is reported unhandled, and the caller stops the VM with a crash report.
public final class EmulationFallback {
    public let vcpu: VCPU
    public let mmu: MMU

    public init(vcpu: VCPU, memory: GuestMemory) throws(KVMError) {
        self.vcpu = vcpu
        mmu = MMU(memory: memory, context: try vcpu.pagingContext())
    }

    public enum Outcome: Equatable {
        /// The instruction was carried out or its exception injected; resume the guest.
        case handled(String)
        /// Outside the handled set: stop with a crash report.
        case unhandled(String)
        /// A fault while delivering #DF: the guest has shut down, as on a triple fault.
        case tripleFault(String)
    }

    /// A fault the emulated instruction raises: injected into the guest.
    struct GuestFault: Error {
        let vector: UInt8
        let errorCode: UInt32?
        var pageFaultAddress: UInt64? = nil
        static func gp(_ code: UInt32 = 0) -> GuestFault { GuestFault(vector: 13, errorCode: code) }
        static func pageFault(_ f: PageFault) -> GuestFault { GuestFault(vector: 14, errorCode: f.errorCode, pageFaultAddress: f.address) }
    }

    /// An emulation that cannot continue (a page table outside RAM, an unsupported form): stop the VM.
    struct Unsupported: Error { let reason: String }

    public func handle() throws(KVMError) -> Outcome {
        if let vectoring = Self.vectoring(try vcpu.events()) {
            // KVM stopped while it was still delivering an event: the instruction at RIP has not started, and
            // emulating it now would overtake that event (or overwrite it with an injection of our own). Not
            // seen on these hosts (a fault in KVM's own delivery is combined in KVM, without an exit); should it
            // happen, the caller resumes once, so KVM retries the delivery, and a second time stops the VM.
            return .unhandled("KVM stopped while delivering \(vectoring); not emulating past it")
        }
        let regs = try vcpu.regs()
        let sregs = try vcpu.sregs()
        mmu.update(try vcpu.pagingContext())
        // The guest may have changed its page tables (or run INVLPG) since the last fallback: start from them.
        mmu.flush()
        let mode = CPUMode(sregs)
        let linear = InstructionDecoder.linearRIP(regs, sregs)
        let (bytes, fetchError) = InstructionDecoder.fetch(linear, mmu: mmu, user: sregs.cs.dpl == 3)
        guard let instruction = InstructionDecoder.decode(bytes, mode: mode, address: regs.rip) else {
            if case .walk(.pageFault(let f))? = fetchError {
                return try guarded("instruction fetch") { () throws -> Outcome in
                    try deliverFault(.pageFault(f), what: "instruction fetch fault at 0x\(String(linear, radix: 16))")
                }
            }
            return .unhandled("undecodable bytes at RIP: \(bytes.prefix(15).map { String($0, radix: 16) }.joined(separator: " "))")
        }
        return try guarded(instruction.text) { () throws -> Outcome in
            do {
                return try execute(instruction, mode: mode, regs: regs, sregs: sregs)
            } catch let fault as GuestFault {
                return try deliverFault(fault, what: "\(instruction.text) raised vector \(fault.vector)")
            }
        }
    }

    /// Runs a step whose errors other than KVM's become `.unhandled`: a hostile guest stops the VM, never traps.
    private func guarded(_ what: String, _ body: () throws -> Outcome) throws(KVMError) -> Outcome {
        do {
            return try body()
        } catch let u as Unsupported {
            return .unhandled("\(what): \(u.reason)")
        } catch let u as InterruptGate.Unsupported {
            return .unhandled("\(what): \(u.reason)")
        } catch let e as KVMError {
            throw e
        } catch {
            return .unhandled("\(what): \(error)")
        }
    }

    private func execute(_ i: DecodedInstruction, mode: CPUMode, regs: kvm_regs, sregs: kvm_sregs) throws -> Outcome {
        var r = regs
        let next = r.rip &+ UInt64(i.length)
        switch i.operation {
        case .int3:
            // A trap: the handler returns after the INT3.
            return try deliverSoftware(3, next: next, regs: regs, sregs: sregs, what: "int3: #BP")
        case .int(let vector):
            return try deliverSoftware(vector, next: next, regs: regs, sregs: sregs, what: "int 0x\(String(vector, radix: 16))")
        case .into:
            if mode == .long64 { throw GuestFault(vector: 6, errorCode: nil) }
            if r.rflags & 0x800 != 0 { return try deliverSoftware(4, next: next, regs: regs, sregs: sregs, what: "into: #OF") }
            r.rip = next
            vcpu.setRegs(r)
            return .handled("into: no overflow")
        case .fwait:
            // #MF when an unmasked x87 exception is pending (FSW.ES), else nothing to wait for.
            if try vcpu.fpu().fsw & 0x80 != 0 { throw GuestFault(vector: 16, errorCode: nil) }
            r.rip = next
            vcpu.setRegs(r)
            return .handled("fwait: no x87 exception pending")
        case .iret:
            // IRET ends NMI blocking even when it faults (SDM vol. 3, 6.7.1): KVM's own IRET would tell its NMI
            // logic, this one must, or the handler's IRET leaves every later NMI blocked.
            var ev = try vcpu.events()
            if ev.nmi.masked != 0 {
                ev.nmi.masked = 0
                try vcpu.setEvents(ev)
            }
            try iret(operandSize: i.operandSize, mode: mode, regs: regs, sregs: sregs)
            return .handled("\(i.text) emulated")
        case .nop, .clac, .cld:
            // Only reached when stepping over a breakpoint (see the SYSCALL fix-up): KVM runs these itself.
            if i.operation == .clac { r.rflags &= ~UInt64(0x4_0000) }
            if i.operation == .cld { r.rflags &= ~UInt64(0x400) }
            r.rip = next
            vcpu.setRegs(r)
            return .handled("\(i.text) stepped over")
        case .other:
            throw Unsupported(reason: "not in the emulation fallback's set")
        }
    }

    // MARK: IRET

    private func iret(operandSize: Int, mode: CPUMode, regs: kvm_regs, sregs: kvm_sregs) throws {
        var r = regs
        var s = sregs
        let width = operandSize / 8
        let stack = StackReader(mmu: mmu, sregs: sregs, mode: mode, user: s.cs.dpl == 3)
        var sp = r.rsp
        func pop() throws -> UInt64 {
            let v = try stack.read(sp, width: width)
            sp = stack.advance(sp, by: width)
            return v
        }
        let newIP = try pop(), newCS = UInt16(truncatingIfNeeded: try pop()), popped = try pop()
        if mode == .real16 {
            r.rip = newIP & (width == 2 ? 0xffff : 0xffff_ffff)
            s.cs.selector = newCS
            s.cs.base = UInt64(newCS) << 4
            r.rflags = mergeFlags(r.rflags, popped, width: width, cpl: 0, iopl: 3)
            r.rsp = stack.setPointer(r.rsp, sp)
            vcpu.setRegs(r)
            vcpu.setSregs(s)
            return
        }
        if r.rflags & 0x4000 != 0 && mode != .long64 { throw Unsupported(reason: "IRET with NT set (task return)") }
        if popped & 0x2_0000 != 0 && s.cs.dpl == 0 && mode != .long64 { throw Unsupported(reason: "IRET to virtual-8086 mode") }
        let cpl = Int(s.cs.dpl)
        let rpl = Int(newCS & 3)
        guard newCS & 0xfffc != 0 else { throw GuestFault.gp(0) }
        guard rpl >= cpl else { throw GuestFault.gp(UInt32(newCS & 0xfffc)) }
        var code = try descriptor(newCS, sregs: s)
        guard code.s == 1, code.type & 8 != 0 else { throw GuestFault.gp(UInt32(newCS & 0xfffc)) }
        if code.type & 4 != 0 { guard Int(code.dpl) <= rpl else { throw GuestFault.gp(UInt32(newCS & 0xfffc)) } } else {
            guard Int(code.dpl) == rpl else { throw GuestFault.gp(UInt32(newCS & 0xfffc)) }
        }
        guard code.present == 1 else { throw GuestFault(vector: 11, errorCode: UInt32(newCS & 0xfffc)) }
        let outer = rpl > cpl
        if outer || mode == .long64 {
            // 64-bit IRET always pops SS:RSP; elsewhere only on a return to an outer privilege level.
            let newSP = try pop(), newSS = UInt16(truncatingIfNeeded: try pop())
            if newSS & 0xfffc == 0 && !(mode == .long64 && rpl != 3) { throw GuestFault.gp(0) }
            if newSS & 0xfffc != 0 {
                var ss = try descriptor(newSS, sregs: s)
                guard Int(newSS & 3) == rpl, Int(ss.dpl) == rpl, ss.s == 1, ss.type & 0xa == 2 else {
                    throw GuestFault.gp(UInt32(newSS & 0xfffc))
                }
                guard ss.present == 1 else { throw GuestFault(vector: 12, errorCode: UInt32(newSS & 0xfffc)) }
                ss.selector = newSS
                s.ss = ss
            } else {
                s.ss.selector = newSS
                s.ss.unusable = 1
                s.ss.dpl = UInt8(rpl)
            }
            r.rsp = mode == .long64 || s.ss.db != 0 ? newSP & (width == 2 ? 0xffff : (mode == .long64 && width == 8 ? .max : 0xffff_ffff)) : (r.rsp & ~0xffff) | (newSP & 0xffff)
        } else {
            r.rsp = stack.setPointer(r.rsp, sp)
        }
        code.selector = newCS
        code.dpl = UInt8(rpl)  // CPL lives in CS.DPL for KVM
        s.cs = code
        let rip = newIP & (width == 2 ? 0xffff : (width == 4 ? 0xffff_ffff : .max))
        // A bad frame gives the guest #GP(0), not a VM entry KVM refuses: a 64-bit target must be canonical, any
        // other must lie within the new code segment's limit.
        if mode == .long64 && code.l == 1 {
            guard rip < 0x0000_8000_0000_0000 || rip >= 0xffff_8000_0000_0000 else { throw GuestFault.gp(0) }
        } else {
            guard rip <= UInt64(code.limit) else { throw GuestFault.gp(0) }
        }
        r.rip = rip
        r.rflags = mergeFlags(r.rflags, popped, width: width, cpl: cpl, iopl: Int((r.rflags >> 12) & 3))
        if outer {
            // Data segments the new, less privileged code may not use are nulled, as the CPU does.
            for keyPath in [\kvm_sregs.ds, \kvm_sregs.es, \kvm_sregs.fs, \kvm_sregs.gs] {
                let seg = s[keyPath: keyPath]
                let conformingCode = seg.type & 0xc == 0xc
                if seg.unusable == 0 && !conformingCode && Int(seg.dpl) < rpl {
                    s[keyPath: keyPath].selector = 0
                    s[keyPath: keyPath].unusable = 1
                    s[keyPath: keyPath].present = 0
                }
            }
        }
        vcpu.setRegs(r)
        vcpu.setSregs(s)
    }

    /// The flags IRET may change at this privilege level: IOPL only at CPL 0, IF only when CPL <= IOPL.
    private func mergeFlags(_ old: UInt64, _ popped: UInt64, width: Int, cpl: Int, iopl: Int) -> UInt64 {
        var changeable: UInt64 = 0x25_7fd5 & ~0x3000 & ~0x200  // CF PF AF ZF SF TF DF OF NT RF AC ID
        if cpl == 0 { changeable |= 0x3000 }
        if cpl <= iopl { changeable |= 0x200 }
        if width == 2 { changeable &= 0xffff }
        return (old & ~changeable) | (popped & changeable) | 2
    }

    /// The GDT or LDT descriptor of `selector`, as a KVM segment, with its accessed bit set (in memory too).
    private func descriptor(_ selector: UInt16, sregs: kvm_sregs) throws -> kvm_segment {
        let local = selector & 4 != 0
        let tableBase = local ? sregs.ldt.base : sregs.gdt.base
        let tableLimit = local ? UInt64(sregs.ldt.limit) : UInt64(sregs.gdt.limit)
        let offset = UInt64(selector & 0xfff8)
        guard offset + 7 <= tableLimit, !(local && sregs.ldt.unusable != 0) else { throw GuestFault.gp(UInt32(selector & 0xfffc)) }
        let raw: [UInt8]
        do { raw = try mmu.read(tableBase &+ offset, count: 8, .implicit) } catch {
            if case .walk(.pageFault(let f)) = error { throw GuestFault.pageFault(f) }
            throw Unsupported(reason: "descriptor table unreadable: \(error)")
        }
        let d = raw.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        let decoded = SegmentDescriptor(raw: d)
        var seg = kvm_segment()
        seg.base = decoded.base
        seg.limit = decoded.limit
        seg.g = decoded.g
        seg.type = decoded.type | 1
        seg.s = decoded.s
        seg.dpl = decoded.dpl
        seg.present = decoded.present
        seg.avl = decoded.avl
        seg.l = decoded.l
        seg.db = decoded.db
        seg.selector = selector
        if (d >> 40) & 1 == 0, seg.present == 1 {
            var updated = raw
            updated[5] |= 1
            try? mmu.write(updated, at: tableBase &+ offset, .implicit)
        }
        return seg
    }

    // MARK: injection

    private func inject(_ fault: GuestFault) throws(KVMError) {
        if let address = fault.pageFaultAddress {
            var s = try vcpu.sregs()
            s.cr2 = address
            vcpu.setSregs(s)
        }
        try vcpu.flushRegisters()
        var ev = try vcpu.events()
        ev.exception.injected = 1
        ev.exception.pending = 0
        ev.exception.nr = fault.vector
        ev.exception.has_error_code = fault.errorCode == nil ? 0 : 1
        ev.exception.error_code = fault.errorCode ?? 0
        try vcpu.setEvents(ev)
    }

    /// INT n, INT3, INTO: the gate and segment checks KVM skips on these hosts, then the injection. A fault in
    /// delivery points at the instruction (RIP stays), and goes through `deliverFault` as its second event.
    private func deliverSoftware(_ vector: UInt8, next: UInt64, regs: kvm_regs, sregs: kvm_sregs, what: String) throws -> Outcome {
        do {
            _ = try InterruptGate.check(vector: vector, source: .software, hasErrorCode: false,
                                        context: gateContext(regs, sregs), memory: GateMemory(mmu: mmu))
        } catch let f as InterruptGate.Fault {
            // A software interrupt is benign: the fault is delivered instead of it (SDM table 6-5).
            return try deliverFault(GuestFault(f), what: "\(what) not delivered: vector \(f.vector)")
        }
        var r = regs
        r.rip = next
        vcpu.setRegs(r)
        if vector == 3 || vector == 4 { try inject(GuestFault(vector: vector, errorCode: nil)) } else {
            try injectSoftwareInterrupt(vector)
        }
        return .handled("\(what) injected")
    }

    /// Injects an exception the instruction raised, after the checks its own delivery would make; a fault there
    /// is combined with it by the double-fault rules (SDM table 6-5): serially, as #DF, or as a triple fault.
    private func deliverFault(_ first: GuestFault, what: String) throws -> Outcome {
        var fault = first
        var chain = "\(fault.vector)"
        for _ in 0..<4 {
            let (regs, sregs) = (try vcpu.regs(), try vcpu.sregs())
            do {
                _ = try InterruptGate.check(vector: fault.vector, source: .hardware, hasErrorCode: fault.errorCode != nil,
                                            context: gateContext(regs, sregs), memory: GateMemory(mmu: mmu))
                try inject(fault)
                return .handled(fault.vector == first.vector ? what : "\(what); delivered as vector \(fault.vector) (\(chain))")
            } catch let f as InterruptGate.Fault {
                chain += " -> \(f.vector)"
                switch DoubleFault.combine(first: DoubleFault.classify(exception: fault.vector),
                                           second: DoubleFault.classify(exception: f.vector)) {
                case .deliverSecond: fault = GuestFault(f)
                case .doubleFault: fault = GuestFault(vector: 8, errorCode: 0)
                case .tripleFault: return .tripleFault("\(what); a fault while delivering #DF (\(chain))")
                }
            }
        }
        return .tripleFault("\(what); delivery keeps faulting (\(chain))")
    }

    /// The event KVM reports it was delivering when it exited (`exit_int_info`), if any.
    static func vectoring(_ ev: kvm_vcpu_events) -> String? {
        if ev.exception.injected != 0 { return "exception \(ev.exception.nr)" + (ev.exception.has_error_code != 0 ? " (error code 0x\(String(ev.exception.error_code, radix: 16)))" : "") }
        if ev.nmi.injected != 0 { return "an NMI" }
        if ev.interrupt.injected != 0 { return (ev.interrupt.soft != 0 ? "software interrupt " : "interrupt ") + "0x\(String(ev.interrupt.nr, radix: 16))" }
        return nil
    }

    private func gateContext(_ r: kvm_regs, _ s: kvm_sregs) -> InterruptGate.Context {
        InterruptGate.Context(mode: CPUMode(s), cpl: Int(s.cs.dpl), idtBase: s.idt.base, idtLimit: UInt32(s.idt.limit),
                              gdtBase: s.gdt.base, gdtLimit: UInt32(s.gdt.limit), ldtBase: s.ldt.base, ldtLimit: s.ldt.limit,
                              ldtUsable: s.ldt.unusable == 0 && s.ldt.present == 1, trBase: s.tr.base, trLimit: s.tr.limit,
                              rsp: r.rsp, ssBase: s.ss.base, ssBig: s.ss.db != 0)
    }

    private func injectSoftwareInterrupt(_ vector: UInt8) throws(KVMError) {
        try vcpu.flushRegisters()
        var ev = try vcpu.events()
        ev.interrupt.injected = 1
        ev.interrupt.nr = vector
        ev.interrupt.soft = 1
        try vcpu.setEvents(ev)
    }
}

extension EmulationFallback.GuestFault {
    init(_ f: InterruptGate.Fault) { self.init(vector: f.vector, errorCode: f.errorCode, pageFaultAddress: f.address) }
}

/// Delivery's view of guest memory through the MMU: implicit supervisor reads of the tables, writes of the frame.
struct GateMemory: InterruptGate.Memory {
    let mmu: MMU

    func read(_ linear: UInt64, count: Int) throws -> [UInt8] {
        do { return try mmu.read(linear, count: count, .implicit) } catch { throw Self.fault(error) }
    }

    func checkWrite(_ linear: UInt64, count: Int, user: Bool) throws {
        var va = linear
        let end = linear &+ UInt64(count)
        while va < end {
            do { _ = try mmu.translate(va, user ? [.write, .user] : [.write, .implicit]) } catch { throw Self.fault(.walk(error)) }
            va = (va & ~0xfff) &+ 0x1000
        }
    }

    private static func fault(_ e: MMUError) -> Error {
        if case .walk(.pageFault(let f)) = e { return InterruptGate.Fault(vector: 14, errorCode: f.errorCode, address: f.address) }
        if case .walk(.nonCanonical) = e { return InterruptGate.Fault(vector: 13, errorCode: 0) }
        return EmulationFallback.Unsupported(reason: "event delivery reads outside guest RAM: \(e)")
    }
}

/// Reads the guest stack (SS-relative, with the stack's address width) through the MMU.
struct StackReader {
    let mmu: MMU
    let sregs: kvm_sregs
    let mode: CPUMode
    let user: Bool

    var wide: Bool { mode == .long64 || (mode != .real16 && sregs.ss.db != 0) }

    func read(_ sp: UInt64, width: Int) throws -> UInt64 {
        let linear = mode == .long64 ? sp : (sregs.ss.base &+ (wide ? sp & 0xffff_ffff : sp & 0xffff)) & 0xffff_ffff
        do {
            let b = try mmu.read(linear, count: width, user ? .user : [])
            return b.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        } catch {
            if case .walk(.pageFault(let f)) = error { throw EmulationFallback.GuestFault.pageFault(f) }
            throw EmulationFallback.GuestFault(vector: 12, errorCode: 0)  // #SS: the stack is not in RAM
        }
    }

    func advance(_ sp: UInt64, by n: Int) -> UInt64 {
        mode == .long64 ? sp &+ UInt64(n) : (wide ? (sp &+ UInt64(n)) & 0xffff_ffff : (sp &+ UInt64(n)) & 0xffff)
    }

    /// The new RSP: only the stack's width of it changes.
    func setPointer(_ old: UInt64, _ sp: UInt64) -> UInt64 {
        if mode == .long64 { return sp }
        return wide ? sp & 0xffff_ffff : (old & ~0xffff) | (sp & 0xffff)
    }
}
