import CKVM
import Devices
import KVM

/// The vCPU's side of its local APIC beyond the irqchip's model: the TPR as CR8 and the register (TaskPriority),
/// IA32_APIC_BASE as KVM reports it (APICBase), and single-stepping while a vector waits (WindowStepper).
extension VCPURunner {
    /// Steps the guest while a vector waits (see WindowStepper), unless the SYSCALL fix-up holds guest debugging
    /// (a long-mode guest with a page-fault handler): KVM has one guest-debug setting, and its breakpoint must stay.
    /// Inlined into the run loop for the common case, no vector waiting, no TPR raised and no stepping under way,
    /// where the full check below would conclude the same: nothing to change (see InterruptInjector.beforeEntry
    /// for why a call costs).
    @inline(__always)
    func updateWindowStepping() throws {
        guard windowStepping else { return }
        guard interrupts.wantsWindow || devices.taskPriorityClass > 0 || windowStepper.stepping else {
            interrupts.tprWatch.store(false, ordering: .relaxed)
            longModeWhileHeld = nil  // tprMayDropUnseen()
            _ = windowStepper.change(wanted: false)
            return
        }
        try updateWindowSteppingFully()
    }

    @inline(never)
    private func updateWindowSteppingFully() throws {
        let fixupOwns = syscallFixup?.ownsGuestDebug ?? false
        let watchTPR = try tprMayDropUnseen()
        interrupts.tprWatch.store(watchTPR, ordering: .relaxed)
        // Not at an entry that delivers an event KVM holds (an injection a kick kept from being delivered, an NMI, an
        // exception): delivered at the entry that starts stepping, its frame holds the step's TF, and the handler's
        // IRET hands that to the guest as its own, a #DB after the next instruction it never asked for (a triple
        // fault in a guest without a #DB handler; seen with the timer guest under irqchip kills). Stepping waits for
        // the exit after the delivery. One KVM_GET_VCPU_EVENTS per entry while a vector waits.
        let wanted = try (interrupts.wantsWindow || watchTPR) && !fixupOwns && !vcpu.events().deliversAtNextEntry
        guard let step = windowStepper.change(wanted: wanted) else { return }
        if !fixupOwns { try vcpu.setGuestDebug(breakpoint: nil, singleStep: step) }
    }

    /// Whether the instruction at the step's RIP is HLT (read through the guest's page tables; unreadable: no).
    func nextInstructionIsHalt() throws -> Bool {
        // The paging context is read once per run of steps: a step that changes CR3 or the mode is rare, and a
        // stale context at worst misses a HLT (the guest then parks and is woken as before) or reads the wrong byte.
        if !stepContextFresh {
            fallback.mmu.update(try vcpu.pagingContext())
            stepContextFresh = true
        }
        guard let byte = try? fallback.mmu.read(vmm_run_debug_pc(vcpu.run), count: 1) else { return false }
        return byte.first == 0xf4
    }

    /// Whether the instruction before RIP is a HLT (a HLT exit's RIP follows it); unreadable: yes.
    func rightAfterHalt() throws -> Bool {
        let rip = try vcpu.regs().rip
        let sregs = try vcpu.sregs()
        fallback.mmu.update(try vcpu.pagingContext())
        guard rip > 0, let byte = try? fallback.mmu.read(sregs.cs.base &+ rip &- 1, count: 1) else { return true }
        return byte.first == 0xf4
    }

    /// Whether a requested vector waits on the TPR while the vCPU is in long mode, where a MOV to CR8 lowers it
    /// without an exit. Long mode is read once per such wait (one KVM_GET_SREGS).
    @inline(__always)
    func tprMayDropUnseen() throws -> Bool {
        guard devices.tprHoldsARequest else {
            longModeWhileHeld = nil
            return false
        }
        if longModeWhileHeld == nil { longModeWhileHeld = try vcpu.sregs().efer & 0x400 != 0 }
        return longModeWhileHeld ?? false
    }

    /// The guest wrote its TPR (the register, or CR8): the vCPU's copy gates injection from now on, the irqchip
    /// hears of it (waiting for it when the write may have unblocked a requested vector), and CR8 follows.
    func setTaskPriority(_ value: UInt8) {
        let lowered = interrupts.taskPriority.set(value)
        devices.writeTPR(value, lowered: lowered)
        vcpu.run.pointee.cr8 = UInt64(interrupts.taskPriority.priorityClass)
    }

    /// The guest's IA32_APIC_BASE as KVM reports it: a disabled APIC takes nothing and has no page; a moved one
    /// answers at its new page (see APICBase).
    @inline(__always)
    func followAPICBase() {
        guard let value = apicBase.change(reported: vcpu.run.pointee.apic_base) else { return }
        Log.debug("IA32_APIC_BASE 0x\(String(value, radix: 16))")
        devices.setAPICBase(value)
        interrupts.apicEnabled = value & APICBase.globalEnable != 0
        if !interrupts.apicEnabled {
            // Disabling resets the APIC (the irqchip resets its model), TPR and so CR8 included.
            interrupts.taskPriority = TaskPriority()
            devices.taskPriorityClass = 0
            vcpu.run.pointee.cr8 = 0
        }
    }

    /// Without an in-kernel local APIC, KVM keeps CR8 for the VMM in kvm_run: it reports the guest's CR8 after
    /// every exit (a MOV to CR8 that lowers it exits with KVM_EXIT_SET_TPR) and loads kvm_run.cr8 at every entry.
    /// A CR8 that differs from the TPR's class is one the guest wrote: that is a TPR write (CR8 = TPR[7:4]).
    @inline(__always)
    func followCR8() {
        let cr8 = vcpu.run.pointee.cr8
        guard cr8 != UInt64(interrupts.taskPriority.priorityClass) else { return }
        setTaskPriority(UInt8(truncatingIfNeeded: cr8 & 0xf) << 4)
    }
}
