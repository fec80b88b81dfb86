import CKVM
import CLinux
import Glibc
import System

/// One virtual CPU: its fd, the shared kvm_run page, and a register cache.
///
/// The cache follows KVM's own `regs_avail`/`regs_dirty`: after an exit nothing is available, a read fetches
/// the set once, a write marks it dirty, and dirty sets go back before the next entry. General registers go back
/// through KVM_CAP_SYNC_REGS (written into the run page, no ioctl) when the host offers it.
public final class VCPU: @unchecked Sendable {
    public let id: Int
    public let vm: VirtualMachine
    public let fd: FileDescriptor
    private let runPage: MappedRegion
    public let run: UnsafeMutablePointer<kvm_run>
    private let syncRegs: Bool

    /// Which register sets the cache holds (available) or must write back (dirty).
    public struct RegisterSets: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let general = RegisterSets(rawValue: 1)
        public static let special = RegisterSets(rawValue: 2)
    }
    public private(set) var available: RegisterSets = []
    public private(set) var dirty: RegisterSets = []
    private var regsCache = kvm_regs()
    private var sregsCache = kvm_sregs()
    /// MAXPHYADDR the guest sees (CPUID 0x80000008 EAX[7:0]), for reserved-bit checks in page walks.
    public private(set) var physicalAddressBits = 52
    /// Whether the guest's CPUID offers 1 GiB pages.
    public private(set) var gigabytePages = true

    init(vm: VirtualMachine, id: Int, fd: consuming FileDescriptor) throws(KVMError) {
        self.vm = vm
        self.id = id
        self.fd = fd
        let size = try vm.host.vcpuMmapSize()
        do { runPage = try MappedRegion(fd: self.fd.raw, size: size) } catch { throw .system(error) }
        run = runPage.base.assumingMemoryBound(to: kvm_run.self)
        let caps = vm.host.checkExtension(KVM_CAP_SYNC_REGS)
        syncRegs = (UInt32(caps) & UInt32(KVM_SYNC_X86_REGS)) != 0
    }

    /// KVM's ring of coalesced writes, in this vCPU's mapping (every vCPU maps the VM's one ring); nil when the
    /// host has none (no KVM_CAP_COALESCED_MMIO, or without ports: KVM_CAP_COALESCED_PIO).
    public func coalescedWriteRing() -> CoalescedWriteRing? {
        let page = vm.host.checkExtension(KVM_CAP_COALESCED_MMIO)
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard page > 0, vm.host.checkExtension(KVM_CAP_COALESCED_PIO) > 0, (Int(page) + 1) * pageSize <= runPage.size else { return nil }
        return CoalescedWriteRing(page: runPage.base + Int(page) * pageSize)
    }

    // MARK: register cache

    public func regs() throws(KVMError) -> kvm_regs {
        if !available.contains(.general) {
            _ = try kvmCall("KVM_GET_REGS") { vmm_ioctl_ptr(fd.raw, VMM_KVM_GET_REGS, &regsCache) }
            available.insert(.general)
        }
        return regsCache
    }

    public func setRegs(_ r: kvm_regs) {
        regsCache = r
        available.insert(.general)
        dirty.insert(.general)
    }

    public func sregs() throws(KVMError) -> kvm_sregs {
        if !available.contains(.special) {
            _ = try kvmCall("KVM_GET_SREGS") { vmm_ioctl_ptr(fd.raw, VMM_KVM_GET_SREGS, &sregsCache) }
            available.insert(.special)
        }
        return sregsCache
    }

    public func setSregs(_ s: kvm_sregs) {
        sregsCache = s
        available.insert(.special)
        dirty.insert(.special)
    }

    /// Writes dirty register sets back to KVM.
    public func flushRegisters() throws(KVMError) {
        if dirty.contains(.special) {
            _ = try kvmCall("KVM_SET_SREGS") { vmm_ioctl_ptr(fd.raw, VMM_KVM_SET_SREGS, &sregsCache) }
        }
        if dirty.contains(.general) {
            if syncRegs {
                vmm_run_sync_regs(run).pointee = regsCache
                run.pointee.kvm_dirty_regs |= UInt64(KVM_SYNC_X86_REGS)
            } else {
                _ = try kvmCall("KVM_SET_REGS") { vmm_ioctl_ptr(fd.raw, VMM_KVM_SET_REGS, &regsCache) }
            }
        }
        dirty = []
    }

    // MARK: running

    /// Enters the guest until the next exit; returns the exit reason. EINTR (a kick) returns KVM_EXIT_INTR.
    public func runOnce() throws(KVMError) -> UInt32 {
        if !dirty.isEmpty { try flushRegisters() }
        available = []
        if vmm_ioctl_val(fd.raw, VMM_KVM_RUN, 0) != 0 {
            let e = errno
            if e == EINTR || e == EAGAIN { return UInt32(KVM_EXIT_INTR) }
            throw .system(SystemError("KVM_RUN", errno: e))
        }
        return run.pointee.exit_reason
    }

    /// Data bytes of the current KVM_EXIT_IO, inside the run page (inlinable: every port exit asks).
    @inlinable
    public var ioData: UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(run) + Int(vmm_run_io(run).data_offset)
    }

    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        let bytes = vmm_kvm_cpuid2_size(UInt32(entries.count))
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        let c = raw.assumingMemoryBound(to: kvm_cpuid2.self)
        c.pointee.nent = UInt32(entries.count)
        let dst = vmm_kvm_cpuid2_entries(c)!
        for (i, e) in entries.enumerated() { dst[i] = e }
        _ = try kvmCall("KVM_SET_CPUID2") { vmm_ioctl_ptr(fd.raw, VMM_KVM_SET_CPUID2, raw) }
        if let e = entries.first(where: { $0.function == 0x8000_0008 }), e.eax & 0xff >= 32 {
            physicalAddressBits = Int(min(e.eax & 0xff, CPUIDTable.maxPhysicalAddressBits))  // (1 << 64) - 1 would trap
        }
        gigabytePages = entries.first(where: { $0.function == 0x8000_0001 }).map { $0.edx & (1 << 26) != 0 } ?? false
    }

    public func events() throws(KVMError) -> kvm_vcpu_events {
        var ev = kvm_vcpu_events()
        _ = try kvmCall("KVM_GET_VCPU_EVENTS") { vmm_ioctl_ptr(fd.raw, VMM_KVM_GET_VCPU_EVENTS, &ev) }
        return ev
    }

    /// Replaces the exception and interrupt state; `flags` (KVM_VCPUEVENT_VALID_*) says which other parts apply
    /// (0: NMI, SIPI and shadow state stay as they are).
    public func setEvents(_ events: kvm_vcpu_events, flags: UInt32 = 0) throws(KVMError) {
        var ev = events
        ev.flags = flags
        _ = try kvmCall("KVM_SET_VCPU_EVENTS") { vmm_ioctl_ptr(fd.raw, VMM_KVM_SET_VCPU_EVENTS, &ev) }
    }

    public func fpu() throws(KVMError) -> kvm_fpu {
        var f = kvm_fpu()
        _ = try kvmCall("KVM_GET_FPU") { vmm_ioctl_ptr(fd.raw, VMM_KVM_GET_FPU, &f) }
        return f
    }

    /// Arms one instruction breakpoint at `address` (nil: none), or single-steps the next instruction.
    public func setGuestDebug(breakpoint address: UInt64?, singleStep: Bool = false) throws(KVMError) {
        var control: UInt32 = 0
        if address != nil || singleStep { control |= UInt32(KVM_GUESTDBG_ENABLE) }
        if address != nil { control |= UInt32(KVM_GUESTDBG_USE_HW_BP) }
        if singleStep { control |= UInt32(KVM_GUESTDBG_SINGLESTEP) }
        let dr7: UInt64 = address != nil ? 0x401 : 0x400  // L0: DR0 as an instruction breakpoint (RW0 = LEN0 = 0)
        _ = try kvmCall("KVM_SET_GUEST_DEBUG") { vmm_kvm_set_guest_debug(fd.raw, control, address ?? 0, dr7) }
    }

    public func msr(_ index: UInt32) throws(KVMError) -> UInt64 {
        var value: UInt64 = 0
        _ = try kvmCall("KVM_GET_MSRS") { vmm_kvm_get_msr(fd.raw, index, &value) }
        return value
    }

    public func tscKHz() -> Int {
        Int(max(0, vmm_ioctl_val(fd.raw, VMM_KVM_GET_TSC_KHZ, 0)))
    }
}

import Memory

extension kvm_vcpu_events {
    /// KVM is in the middle of delivering an event (an interrupt, an exception or an NMI): it injects it again at
    /// the next entry, before anything else.
    public var deliveryUnderway: Bool { interrupt.injected != 0 || exception.injected != 0 || nmi.injected != 0 }

    /// KVM delivers an event at the next entry: one under way, a pending exception, or a pending NMI not blocked.
    public var deliversAtNextEntry: Bool {
        deliveryUnderway || exception.pending != 0 || (nmi.pending != 0 && nmi.masked == 0)
    }
}

extension VCPU {
    /// The registers the guest's page walk depends on, from the cached special registers.
    public func pagingContext() throws(KVMError) -> PagingContext {
        let s = try sregs()
        return PagingContext(cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer, physicalAddressBits: physicalAddressBits,
                             gigabytePages: gigabytePages)
    }

    /// What KVM_TRANSLATE says about a guest-virtual address: nil when it reports no valid translation.
    public func kvmTranslate(_ linear: UInt64) -> (physical: UInt64, writeable: Bool, user: Bool)? {
        var t = kvm_translation()
        t.linear_address = linear
        guard vmm_ioctl_ptr(fd.raw, VMM_KVM_TRANSLATE, &t) == 0, t.valid != 0 else { return nil }
        return (t.physical_address, t.writeable != 0, t.usermode != 0)
    }
}
