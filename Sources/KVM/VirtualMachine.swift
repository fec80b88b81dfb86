import CKVM
import CLinux
import Memory
import System

/// A KVM virtual machine: memory slots and vCPUs. No in-kernel irqchip: the LAPIC lives in userspace.
public final class VirtualMachine: @unchecked Sendable {
    public let host: KVMHost
    public let fd: FileDescriptor

    init(host: KVMHost, fd: consuming FileDescriptor) {
        self.host = host
        self.fd = fd
    }

    /// Maps guest RAM into the VM at guest-physical 0.
    public func mapMemory(_ memory: GuestMemory, slot: UInt32 = 0, dirtyLogging: Bool = false) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: dirtyLogging ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0, guest_phys_addr: 0,
            memory_size: UInt64(memory.size), userspace_addr: UInt64(UInt(bitPattern: memory.hostBase)))
        _ = try kvmCall("KVM_SET_USER_MEMORY_REGION") { vmm_ioctl_ptr(fd.raw, VMM_KVM_SET_USER_MEMORY_REGION, &region) }
    }

    /// Intel VMX needs three pages for a real-mode TSS and one for an identity map, above guest RAM.
    public func setSystemAddresses(tss: UInt64, identityMap: UInt64) throws(KVMError) {
        _ = try kvmCall("KVM_SET_TSS_ADDR") { vmm_ioctl_val(fd.raw, VMM_KVM_SET_TSS_ADDR, UInt(tss)) }
        var map = identityMap
        // Older or non-VMX hosts may not implement this one; it is only needed for unpaged real mode on VMX.
        _ = vmm_ioctl_ptr(fd.raw, VMM_KVM_SET_IDENTITY_MAP_ADDR, &map)
    }

    /// Makes guest accesses to these MSRs exit to userspace (KVM_EXIT_X86_RDMSR/WRMSR), where KVM would otherwise
    /// handle them itself or, without an in-kernel LAPIC, drop them. Returns false when the host cannot (the
    /// start-up probe for features that depend on it, such as TSC-deadline).
    public func routeMSRsToUserspace(_ indices: [UInt32]) -> Bool {
        indices.withUnsafeBufferPointer { vmm_kvm_route_msrs_to_userspace(fd.raw, $0.baseAddress, Int32($0.count)) } == 0
    }

    /// Makes a guest write of `value` (`length` bytes) to the MMIO `address` signal the eventfd `fd` inside KVM, with
    /// no exit to userspace: how a virtio device process gets its queue notifications straight from the guest.
    /// Works without an in-kernel irqchip. Other values written there still exit as MMIO.
    public func signalEventFD(_ fd: Int32, onWriteOf value: UInt64, length: UInt32, at address: UInt64) throws(KVMError) {
        var event = kvm_ioeventfd()
        event.datamatch = value
        event.addr = address
        event.len = length
        event.fd = fd
        event.flags = VMM_KVM_IOEVENTFD_FLAG_DATAMATCH
        _ = try kvmCall("KVM_IOEVENTFD") { vmm_ioctl_ptr(self.fd.raw, VMM_KVM_IOEVENTFD, &event) }
    }

    /// Makes KVM queue the guest's writes to `size` bytes at `address` (ports when `port`) in its ring of coalesced
    /// writes (CoalescedWriteRing) and go on running the guest, with no exit to userspace; the VMM takes them from
    /// the ring at the next exit. Reads there, and writes while the ring is full, exit as before.
    public func coalesceWrites(at address: UInt64, size: UInt32, port: Bool) throws(KVMError) {
        var zone = kvm_coalesced_mmio_zone()
        zone.addr = address
        zone.size = size
        zone.pio = port ? 1 : 0
        _ = try kvmCall("KVM_REGISTER_COALESCED_MMIO") { vmm_ioctl_ptr(fd.raw, VMM_KVM_REGISTER_COALESCED_MMIO, &zone) }
    }

    public func createVCPU(id: Int) throws(KVMError) -> VCPU {
        let vcpu = try kvmCall("KVM_CREATE_VCPU") { vmm_ioctl_val(fd.raw, VMM_KVM_CREATE_VCPU, UInt(id)) }
        return try VCPU(vm: self, id: id, fd: FileDescriptor(owning: vcpu))
    }
}
