// KVM calls whose argument structs end in flexible arrays or nest pointers, which Swift handles poorly.
#include "ckvm.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

int vmm_kvm_route_msrs_to_userspace(int vm_fd, const uint32_t *indices, int count) {
    if (count > KVM_MSR_FILTER_MAX_RANGES) { errno = E2BIG; return -1; }
    struct kvm_enable_cap cap = { .cap = KVM_CAP_X86_USER_SPACE_MSR };
    cap.args[0] = KVM_MSR_EXIT_REASON_FILTER;
    if (ioctl(vm_fd, KVM_ENABLE_CAP, &cap) != 0) return -1;
    static uint8_t deny = 0;  // one MSR per range, its bit clear: denied, so it exits with reason FILTER
    struct kvm_msr_filter filter;
    memset(&filter, 0, sizeof filter);
    filter.flags = KVM_MSR_FILTER_DEFAULT_ALLOW;
    for (int i = 0; i < count; i++) {
        filter.ranges[i].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
        filter.ranges[i].nmsrs = 1;
        filter.ranges[i].base = indices[i];
        filter.ranges[i].bitmap = &deny;
    }
    return ioctl(vm_fd, KVM_X86_SET_MSR_FILTER, &filter);
}

int vmm_kvm_get_msr(int vcpu_fd, uint32_t index, uint64_t *value) {
    struct { struct kvm_msrs header; struct kvm_msr_entry entry; } msrs;
    memset(&msrs, 0, sizeof msrs);
    msrs.header.nmsrs = 1;
    msrs.entry.index = index;
    int n = ioctl(vcpu_fd, KVM_GET_MSRS, &msrs);
    if (n < 0) return -1;
    if (n != 1) { errno = EINVAL; return -1; }
    *value = msrs.entry.data;
    return 0;
}

int vmm_kvm_set_guest_debug(int vcpu_fd, uint32_t control, uint64_t dr0, uint64_t dr7) {
    struct kvm_guest_debug debug;
    memset(&debug, 0, sizeof debug);
    debug.control = control;
    debug.arch.debugreg[0] = dr0;
    debug.arch.debugreg[7] = dr7;
    return ioctl(vcpu_fd, KVM_SET_GUEST_DEBUG, &debug);
}
