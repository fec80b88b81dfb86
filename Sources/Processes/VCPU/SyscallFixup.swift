import CKVM
import System
import Emulator
import KVM
import Memory

/// A PVM-style host quirk: SYSCALL from guest user mode jumps to LSTAR but stays at CPL3, so the guest kernel
/// takes a page fault on its own syscall entry. The fix-up watches the guest's page-fault entry with a hardware
/// breakpoint (the handler's address is read from the guest's IDT, vector 14, and re-read while the kernel
/// replaces its IDT during boot). When the exception frame shows a fault at RIP == LSTAR coming from CPL3, the
/// vCPU is put where a working SYSCALL would have put it: RIP = LSTAR at CPL0 with STAR's kernel selectors, the
/// user RSP, RFLAGS masked by FMASK (RCX and R11 already hold the return address and flags). The kernel's SYSRET
/// then works. Any other page fault continues: since this host ignores RFLAGS.RF, the instruction under the
/// breakpoint is stepped over by the emulation fallback (it is a NOP, ENDBR64, CLAC or CLD in Linux's entry
/// code), or single-stepped with the breakpoint off when it is something else.
final class SyscallFixup {
    enum MSR {
        static let star: UInt32 = 0xc000_0081, lstar: UInt32 = 0xc000_0082, fmask: UInt32 = 0xc000_0084
    }
    /// How often the IDT is looked at again (it changes a few times during boot, then never).
    static let refreshNanoseconds: UInt64 = 20_000_000
    /// The same in the runner's clock.
    private let refreshTicks: UInt64

    let vcpu: VCPU
    let fallback: EmulationFallback
    private var handler: UInt64?
    private var nextRefresh: UInt64 = 0
    private var singleStepping = false
    private(set) var fixes = 0
    private(set) var stepsOver = 0
    /// Jumps to the system-call entry that were not a SYSCALL.
    private(set) var refusals = 0

    init(vcpu: VCPU, fallback: EmulationFallback, clock: CycleClock) {
        self.vcpu = vcpu
        self.fallback = fallback
        refreshTicks = clock.ticks(nanoseconds: Self.refreshNanoseconds)
    }

    /// Whether the fix-up has set guest debugging (its breakpoint, or a step past it): nobody else may change it.
    var ownsGuestDebug: Bool { handler != nil || singleStepping }

    /// Re-arms the breakpoint if the guest's page-fault handler moved; cheap unless the refresh is due. `now`: the
    /// runner's clock (CycleClock ticks; the last exit's reading will do: the refresh period is far longer than an exit).
    @inline(__always)
    func refreshIfDue(now: UInt64) throws(KVMError) {
        guard _slowPath(now >= nextRefresh), !singleStepping else { return }
        try refresh(now: now)
    }

    /// Out of line: the run loop calls `refreshIfDue` on every exit, and this body is due once in a long while.
    @inline(never)
    private func refresh(now: UInt64) throws(KVMError) {
        nextRefresh = now &+ refreshTicks
        let sregs = try vcpu.sregs()
        guard sregs.efer & 0x400 != 0, sregs.idt.limit >= 14 * 16 + 15 else { return }  // long mode with an IDT
        fallback.mmu.update(try vcpu.pagingContext())
        guard let gate = try? fallback.mmu.read(sregs.idt.base &+ 14 * 16, count: 16) else { return }
        // A 64-bit gate: offset bits 0-15 in bytes 0-1, 16-31 in bytes 6-7, 32-63 in bytes 8-11.
        let low = UInt64(Self.littleEndian(gate, at: 0, count: 2)), mid = Self.littleEndian(gate, at: 6, count: 2)
        let address = low | mid << 16 | Self.littleEndian(gate, at: 8, count: 4) << 32
        guard gate[5] & 0x80 != 0, address != handler else { return }
        try vcpu.setGuestDebug(breakpoint: address)
        if handler == nil { Log.debug("SYSCALL fix-up: page-fault entry at 0x\(String(address, radix: 16))") }
        handler = address
    }

    /// Whether the user-mode fault at LSTAR followed a SYSCALL, not a jump there dressed up as one. SYSRET loads
    /// RFLAGS from R11, so a forged R11 with IOPL 3 would give the user port I/O and one with IF clear would let it
    /// keep interrupts off. Checked: the instruction before RCX (where SYSRET returns) is SYSCALL; R11 agrees with
    /// the fault's frame in every flag FMASK does not clear (this host's SYSCALL applies FMASK before it faults, RF
    /// aside); and R11 has IOPL 0 and IF set, as every CPL3 flags value does that the user could not have set
    /// itself (a guest that runs user code with IOPL > 0 cannot use this fix-up). A refused one stays the page fault
    /// it is, and the guest kernel handles it. A jump with RCX after a real SYSCALL and the user's own flags passes:
    /// it does what running that SYSCALL would.
    private func isRealSyscall(_ regs: kvm_regs, faultRFLAGS: UInt64, fmask: UInt64) -> Bool {
        let resumeFlag: UInt64 = 1 << 16, interruptFlag: UInt64 = 1 << 9, ioPrivilege: UInt64 = 3 << 12
        let flagsMatch = (regs.r11 ^ faultRFLAGS) & ~(fmask | resumeFlag) == 0
        let unprivileged = regs.r11 & ioPrivilege == 0 && regs.r11 & interruptFlag != 0
        let instruction = try? fallback.mmu.read(regs.rcx &- 2, count: 2)
        guard flagsMatch, unprivileged, instruction == [0x0f, 0x05] else {
            if refusals < 10 {
                Log.warning("SYSCALL fix-up: a user-mode jump to the system-call entry that was no SYSCALL (RCX 0x\(String(regs.rcx, radix: 16)), "
                            + "R11 0x\(String(regs.r11, radix: 16)), flags 0x\(String(faultRFLAGS, radix: 16))) is left a page fault")
            }
            refusals += 1
            return false
        }
        return true
    }

    static func littleEndian(_ bytes: [UInt8], at offset: Int, count: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in (0..<count).reversed() { value = value << 8 | UInt64(bytes[offset + i]) }
        return value
    }

    /// A KVM_EXIT_DEBUG: false when it is not this fix-up's breakpoint or step.
    func handleDebugExit() throws -> Bool {
        let run = vcpu.run
        if singleStepping {
            singleStepping = false
            try vcpu.setGuestDebug(breakpoint: handler)
            return true
        }
        guard let handler, vmm_run_debug_pc(run) == handler else { return false }
        var regs = try vcpu.regs()
        fallback.mmu.update(try vcpu.pagingContext())
        let frame = try fallback.mmu.read(regs.rsp, count: 48)
        func word(_ i: Int) -> UInt64 { Self.littleEndian(frame, at: i * 8, count: 8) }
        let (faultRIP, faultCS, faultRFLAGS, faultRSP) = (word(1), word(2), word(3), word(4))
        if faultCS & 3 == 3, faultRIP >= 0xffff_8000_0000_0000, faultRIP == (try vcpu.msr(MSR.lstar)),
           case let fmask = try vcpu.msr(MSR.fmask), isRealSyscall(regs, faultRFLAGS: faultRFLAGS, fmask: fmask) {
            let star = try vcpu.msr(MSR.star)
            var sregs = try vcpu.sregs()
            let kernelCS = UInt16(truncatingIfNeeded: star >> 32) & 0xfffc
            sregs.cs.selector = kernelCS; sregs.cs.base = 0; sregs.cs.limit = 0xffff_ffff; sregs.cs.type = 0xb
            sregs.cs.present = 1; sregs.cs.dpl = 0; sregs.cs.db = 0; sregs.cs.s = 1; sregs.cs.l = 1; sregs.cs.g = 1
            sregs.ss.selector = kernelCS + 8; sregs.ss.base = 0; sregs.ss.limit = 0xffff_ffff; sregs.ss.type = 0x3
            sregs.ss.present = 1; sregs.ss.dpl = 0; sregs.ss.db = 1; sregs.ss.s = 1; sregs.ss.l = 0; sregs.ss.g = 1
            vcpu.setSregs(sregs)
            regs.rip = faultRIP
            regs.rsp = faultRSP
            regs.rflags = (faultRFLAGS & ~fmask) | 2
            vcpu.setRegs(regs)
            if fixes == 0 { Log.debug("SYSCALL fix-up: first user system call rewound to CPL0 (return to 0x\(String(regs.rcx, radix: 16)))") }
            fixes += 1
            return true
        }
        // Another page fault (a user-mode jump to the kernel's entry included): carry on past the breakpoint.
        switch try fallback.handle() {
        case .handled:
            stepsOver += 1
        case .unhandled(let why), .tripleFault(let why):
            Log.debug("SYSCALL fix-up: single-stepping past the breakpoint (\(why))")
            singleStepping = true
            try vcpu.setGuestDebug(breakpoint: nil, singleStep: true)
        }
        return true
    }
}
