// KVM's ioctl request numbers are function-like macros, which Swift cannot import; this header gives Swift
// constant copies, and small accessors for the anonymous unions in struct kvm_run.
#ifndef CKVM_H
#define CKVM_H
#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>

static const unsigned long VMM_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long VMM_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long VMM_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long VMM_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long VMM_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long VMM_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long VMM_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long VMM_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long VMM_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long VMM_KVM_RUN = KVM_RUN;
static const unsigned long VMM_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long VMM_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long VMM_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long VMM_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long VMM_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long VMM_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long VMM_KVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
static const unsigned long VMM_KVM_TRANSLATE = KVM_TRANSLATE;
static const unsigned long VMM_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long VMM_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long VMM_KVM_INTERRUPT = KVM_INTERRUPT;
static const unsigned long VMM_KVM_NMI = KVM_NMI;
static const unsigned long VMM_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long VMM_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long VMM_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long VMM_KVM_SET_GUEST_DEBUG = KVM_SET_GUEST_DEBUG;
static const unsigned long VMM_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const uint32_t VMM_KVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;
static const unsigned long VMM_KVM_REGISTER_COALESCED_MMIO = KVM_REGISTER_COALESCED_MMIO;
/// Entries in KVM's ring of coalesced writes: KVM_COALESCED_MMIO_MAX, whose PAGE_SIZE is the kernel's (x86: 4 KiB).
static const uint32_t VMM_KVM_COALESCED_MMIO_MAX =
    (4096 - sizeof(struct kvm_coalesced_mmio_ring)) / sizeof(struct kvm_coalesced_mmio);

/// Makes accesses to `indices` exit to userspace (KVM_EXIT_X86_RDMSR/WRMSR) instead of being handled or dropped
/// by KVM: enables KVM_CAP_X86_USER_SPACE_MSR for filtered MSRs, then installs a filter denying just those.
/// Returns 0, or -1 with errno set when the host cannot do it.
int vmm_kvm_route_msrs_to_userspace(int vm_fd, const uint32_t *indices, int count);
/// KVM_SET_GUEST_DEBUG: `control` is KVM_GUESTDBG_* flags; `dr0` an instruction breakpoint address, armed
/// through `dr7`. Returns 0, or -1 with errno set.
int vmm_kvm_set_guest_debug(int vcpu_fd, uint32_t control, uint64_t dr0, uint64_t dr7);
/// Reads one MSR of a vCPU with KVM_GET_MSRS. Returns 0, or -1 with errno set.
int vmm_kvm_get_msr(int vcpu_fd, uint32_t index, uint64_t *value);

/// Size in bytes of a struct kvm_cpuid2 holding `n` entries.
static inline size_t vmm_kvm_cpuid2_size(uint32_t n) {
    return sizeof(struct kvm_cpuid2) + (size_t)n * sizeof(struct kvm_cpuid_entry2);
}
static inline struct kvm_cpuid_entry2 *vmm_kvm_cpuid2_entries(struct kvm_cpuid2 *c) { return c->entries; }

/// The KVM_EXIT_IO view of kvm_run.
typedef struct { uint8_t direction; uint8_t size; uint16_t port; uint32_t count; uint64_t data_offset; } vmm_io_exit;
static inline vmm_io_exit vmm_run_io(const struct kvm_run *r) {
    vmm_io_exit e = { r->io.direction, r->io.size, r->io.port, r->io.count, r->io.data_offset };
    return e;
}
/// The KVM_EXIT_MMIO view of kvm_run; data lives in the run page itself.
static inline uint64_t vmm_run_mmio_addr(const struct kvm_run *r) { return r->mmio.phys_addr; }
static inline uint32_t vmm_run_mmio_len(const struct kvm_run *r) { return r->mmio.len; }
static inline uint8_t vmm_run_mmio_is_write(const struct kvm_run *r) { return r->mmio.is_write; }
static inline uint8_t *vmm_run_mmio_data(struct kvm_run *r) { return r->mmio.data; }
static inline uint64_t vmm_run_hw_reason(const struct kvm_run *r) { return r->hw.hardware_exit_reason; }
static inline uint64_t vmm_run_fail_entry_reason(const struct kvm_run *r) { return r->fail_entry.hardware_entry_failure_reason; }
static inline uint32_t vmm_run_internal_suberror(const struct kvm_run *r) { return r->internal.suberror; }
static inline uint32_t vmm_run_internal_ndata(const struct kvm_run *r) { return r->internal.ndata; }
static inline uint64_t vmm_run_internal_data(const struct kvm_run *r, uint32_t i) { return i < 16 ? r->internal.data[i] : 0; }
static inline uint32_t vmm_run_system_event_type(const struct kvm_run *r) { return r->system_event.type; }
/// The KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR view of kvm_run; `error` 1 makes the guest's access raise #GP.
static inline uint32_t vmm_run_msr_index(const struct kvm_run *r) { return r->msr.index; }
static inline uint64_t vmm_run_msr_data(const struct kvm_run *r) { return r->msr.data; }
static inline void vmm_run_msr_complete(struct kvm_run *r, uint64_t data, uint8_t error) { r->msr.data = data; r->msr.error = error; }
/// The KVM_EXIT_DEBUG view of kvm_run.
static inline uint64_t vmm_run_debug_pc(const struct kvm_run *r) { return r->debug.arch.pc; }
static inline uint64_t vmm_run_debug_dr6(const struct kvm_run *r) { return r->debug.arch.dr6; }
static inline uint32_t vmm_run_debug_exception(const struct kvm_run *r) { return r->debug.arch.exception; }
/// Sync-regs area: registers KVM copies out on exit (kvm_valid_regs) and in on entry (kvm_dirty_regs).
static inline struct kvm_regs *vmm_run_sync_regs(struct kvm_run *r) { return &r->s.regs.regs; }
static inline struct kvm_sregs *vmm_run_sync_sregs(struct kvm_run *r) { return &r->s.regs.sregs; }
#endif
