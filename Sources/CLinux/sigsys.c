// The SIGSYS handler behind every seccomp policy's default action (SECCOMP_RET_TRAP). It reports the denied
// system call to the supervisor as a 16-byte control record, then either lets the call fail with ENOSYS
// (log mode) or issues it again from inside the handler, where SIGSYS is blocked, so that the kernel
// forces the default action and the process dies by SIGSYS (kill mode). Only async-signal-safe calls.
#define _GNU_SOURCE
#include "clinux.h"
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/ptrace.h>

static int report_fd = -1;
static int log_only = 0;

void vmm_seccomp_record(int nr, int logged, uint32_t record[4]) {
    _Static_assert(VMM_CONTROL_RECORD_SIZE == 4 * sizeof(uint32_t), "one control record");
    record[0] = logged ? VMM_CONTROL_SECCOMP_LOGGED : VMM_CONTROL_SECCOMP_KILLED;
    record[1] = (uint32_t)nr;
    record[2] = 0;
    record[3] = 0;
}

static void on_sigsys(int sig, siginfo_t *info, void *context) {
    (void)sig;
    ucontext_t *uc = context;
    int nr = info->si_syscall;
    if (report_fd >= 0) {
        uint32_t record[4];
        vmm_seccomp_record(nr, log_only, record);
        (void)!write(report_fd, record, sizeof record);
    }
    greg_t *r = uc->uc_mcontext.gregs;
    if (log_only) {
        r[REG_RAX] = -ENOSYS;
        return;
    }
    syscall(nr, r[REG_RDI], r[REG_RSI], r[REG_RDX], r[REG_R10], r[REG_R8], r[REG_R9]);
    syscall(SYS_exit_group, 128 + SIGSYS);  // not reached: the repeated call is denied with SIGSYS blocked
}

int vmm_sigsys_install(int fd, int only_log) {
    report_fd = fd;
    log_only = only_log;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL);
}

int vmm_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

long vmm_fault_ptrace(void) { return ptrace(PTRACE_TRACEME, 0, NULL, NULL); }
