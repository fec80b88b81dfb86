#define _GNU_SOURCE
#include "clinux.h"
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <grp.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/if_tun.h>

const unsigned int VMM_MFD_CLOEXEC = MFD_CLOEXEC;
const unsigned int VMM_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
const int VMM_EFD_CLOEXEC = EFD_CLOEXEC;
const int VMM_EFD_NONBLOCK = EFD_NONBLOCK;
const int VMM_SFD_CLOEXEC = SFD_CLOEXEC;
const int VMM_O_CLOEXEC = O_CLOEXEC;
const int VMM_POSIX_SPAWN_SETSIGMASK = POSIX_SPAWN_SETSIGMASK;
const int VMM_POSIX_SPAWN_SETSIGDEF = POSIX_SPAWN_SETSIGDEF;

int vmm_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
int vmm_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }
int vmm_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
int vmm_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }
int vmm_close_range(unsigned int first, unsigned int last, unsigned int flags) {
    return (int)syscall(SYS_close_range, first, last, flags);
}
int vmm_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }
int vmm_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int vmm_ioctl_val(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }
int vmm_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
int vmm_prctl(int option, unsigned long arg2) { return prctl(option, arg2, 0, 0, 0); }
int vmm_spawn_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}
int vmm_thread_kill(unsigned long thread, int sig) { return pthread_kill((pthread_t)thread, sig); }
int vmm_signalfd(int fd, const sigset_t *mask, int flags) { return signalfd(fd, mask, flags); }
int vmm_sigset_of(sigset_t *set, const int *signals, int count) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) if (sigaddset(set, signals[i]) != 0) return -1;
    return 0;
}
int vmm_block_signals(const int *signals, int count) {
    sigset_t set;
    if (vmm_sigset_of(&set, signals, count) != 0) return -1;
    return pthread_sigmask(SIG_BLOCK, &set, NULL) == 0 ? 0 : -1;
}
int vmm_open(const char *path, int flags, int mode) { return open(path, flags, mode); }
int vmm_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    if (n != (ssize_t)sizeof info) return -1;
    return (int)info.ssi_signo;
}
int vmm_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0); }
int vmm_set_affinity(pid_t pid, const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) { errno = EINVAL; return -1; }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(pid, sizeof set, &set);
}

int vmm_get_affinity(pid_t pid, int *cpus, int max) {
    cpu_set_t set;
    if (sched_getaffinity(pid, sizeof set, &set) != 0) return -1;
    int count = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        if (count < max) cpus[count] = cpu;
        count++;
    }
    return count;
}

const int VMM_PR_CAPBSET_DROP = PR_CAPBSET_DROP, VMM_PR_CAP_AMBIENT = PR_CAP_AMBIENT;
const int VMM_PR_CAP_AMBIENT_CLEAR_ALL = PR_CAP_AMBIENT_CLEAR_ALL, VMM_PR_SET_NO_NEW_PRIVS = PR_SET_NO_NEW_PRIVS;
const int VMM_PR_SET_NAME = PR_SET_NAME, VMM_PR_GET_NAME = PR_GET_NAME;
const int VMM_RLIMIT_NOFILE = RLIMIT_NOFILE, VMM_RLIMIT_CORE = RLIMIT_CORE, VMM_RLIMIT_FSIZE = RLIMIT_FSIZE;
const int VMM_RLIMIT_NPROC = RLIMIT_NPROC, VMM_RLIMIT_AS = RLIMIT_AS;
int vmm_prctl5(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5) {
    return prctl(option, a2, a3, a4, a5);
}
int vmm_setresuid(uid_t uid) { return setresuid(uid, uid, uid); }
int vmm_setresgid(gid_t gid) { return setresgid(gid, gid, gid); }
int vmm_set_rlimit(int resource, uint64_t value) {
    struct rlimit l = { (rlim_t)value, (rlim_t)value };
    return setrlimit(resource, &l);
}

int vmm_fallocate(int fd, int mode, int64_t offset, int64_t length) { return fallocate(fd, mode, offset, length); }

long vmm_getrandom(void *buffer, size_t count, unsigned int flags) { return syscall(SYS_getrandom, buffer, count, flags); }

int vmm_poll_ns(struct pollfd *fds, unsigned long count, uint64_t timeout_ns) {
    struct timespec t = { (time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull) };
    return ppoll(fds, count, &t, NULL);
}
int vmm_timerfd_create(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK); }
int vmm_timerfd_set_absolute(int fd, uint64_t at_ns) {
    struct itimerspec t = { { 0, 0 }, { (time_t)(at_ns / 1000000000ull), (long)(at_ns % 1000000000ull) } };
    if (at_ns == 0) { t.it_value.tv_sec = 0; t.it_value.tv_nsec = 0; }
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &t, NULL);
}
static void kick_handler(int sig) { (void)sig; }
int vmm_install_kick_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}
int vmm_thread_signal(unsigned long thread, int sig) { return pthread_kill((pthread_t)thread, sig); }
unsigned long vmm_thread_self(void) { return (unsigned long)pthread_self(); }
const int VMM_PR_SET_TIMERSLACK = PR_SET_TIMERSLACK;

/* Fault injection ("crash"): the supervisor sends `sig`; the handler makes a real invalid memory access, so the
 * process dies of a genuine SIGSEGV as from a bug. (A helper is the init of its own pid namespace: a SIGSEGV sent
 * from outside would be ignored, a fault raised by the CPU is not.) */
static void vmm_crash_now(int sig) {
    (void)sig;
    *(volatile int *)(uintptr_t)8 = 0;
}
int vmm_install_crash_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = vmm_crash_now;
    return sigaction(sig, &sa, NULL);
}

/* Attaches to the existing tap `name` as a virtio-net backend: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR with the 12-byte
 * virtio 1.x header, non-blocking. Returns the descriptor, or -errno with *step naming the call that failed. */
int vmm_tap_open(const char *name, const char **step) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(name) >= IFNAMSIZ) { *step = "the name"; return -ENAMETOOLONG; }
    strcpy(ifr.ifr_name, name);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    *step = "open(/dev/net/tun)";
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    int size = 12;
    int e = 0;
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) { *step = "TUNSETIFF"; e = errno; }
    else if (ioctl(fd, TUNSETVNETHDRSZ, &size) != 0) { *step = "TUNSETVNETHDRSZ"; e = errno; }
    if (e) { close(fd); return -e; }
    return fd;
}

int vmm_tap_set_offload(int fd, unsigned int flags) { return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags); }
const unsigned long VMM_TUNSETOFFLOAD = TUNSETOFFLOAD;

static int unix_address(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) return -ENAMETOOLONG;
    strcpy(a->sun_path, path);
    return 0;
}

int vmm_unix_listen(const char *path, int backlog) {
    struct sockaddr_un a;
    int e = unix_address(path, &a);
    if (e) return e;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, backlog) != 0) { e = errno; close(fd); return -e; }
    return fd;
}

int vmm_unix_connect(const char *path, int nonblocking) {
    struct sockaddr_un a;
    int e = unix_address(path, &a);
    if (e) return e;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { e = errno; close(fd); return -e; }
    if (nonblocking && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) { e = errno; close(fd); return -e; }
    return fd;
}

int vmm_accept_nonblocking(int listener) { return accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

int vmm_seqpacket_pair(int fds[2]) { return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds); }

// One sendmsg of `buf` with `nfds` (0-250) descriptors as SCM_RIGHTS.
static long send_rights(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > 250) { errno = EINVAL; return -1; }
    struct iovec iov = { (void *)buf, len };
    char control[CMSG_SPACE(250 * sizeof(int))];
    struct msghdr m = { 0 };
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (nfds > 0) {
        memset(control, 0, sizeof control);
        m.msg_control = control;
        m.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
    }
    return sendmsg(sock, &m, MSG_NOSIGNAL);
}

long vmm_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    long n;
    do { n = send_rights(sock, buf, len, fds, nfds); } while (n < 0 && errno == EINTR);
    return n;
}

long vmm_receive_with_fds(int sock, void *buf, size_t len, int *fds, int max, int *nfds, int nonblocking) {
    struct iovec iov = { buf, len };
    char control[CMSG_SPACE(250 * sizeof(int))];
    struct msghdr m = { 0 };
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    *nfds = 0;
    long n;
    do { n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0)); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *data = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*nfds < max) fds[(*nfds)++] = data[i]; else close(data[i]);  // more than asked for: not kept
        }
    }
    if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) { errno = EMSGSIZE; return -1; }
    return n;
}

int vmm_available_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

int vmm_current_cpu(void) { return sched_getcpu(); }

int vmm_step_off_cpus(const int *held, int count) {
    cpu_set_t allowed, target;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
    target = allowed;
    for (int i = 0; i < count; i++) {
        if (held[i] >= 0 && held[i] < CPU_SETSIZE) CPU_CLR(held[i], &target);
    }
    if (CPU_COUNT(&target) == 0) return -1;
    /* Narrowing the mask of a running thread migrates it before the call returns. */
    if (sched_setaffinity(0, sizeof target, &target) != 0) return -1;
    int cpu = sched_getcpu();
    (void)sched_setaffinity(0, sizeof allowed, &allowed);
    return cpu;
}

int vmm_seccomp_load_bpf(const void *instructions, size_t count) {
    if (count == 0 || count > 0xffff) return -EINVAL;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    struct sock_fprog prog = { (unsigned short)count, (struct sock_filter *)instructions };
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
    if (r < 0) return -errno;
    return r == 0 ? 0 : -EAGAIN;  // a positive result names a thread that could not be synchronised
}

#include <link.h>

static int object_has_text_relocations(const struct dl_phdr_info *info) {
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_DYNAMIC) continue;
        for (const ElfW(Dyn) *d = (const ElfW(Dyn) *)(info->dlpi_addr + ph->p_vaddr); d->d_tag != DT_NULL; d++) {
            if (d->d_tag == DT_TEXTREL) return 1;
            if (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_TEXTREL)) return 1;
        }
    }
    return 0;
}

static int release_object_code(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    int *error = data;
    // The vDSO is the kernel's own mapping; code patched at load (text relocations) lives in private copies that
    // dropping would lose.
    if (strncmp(info->dlpi_name, "linux-vdso", 10) == 0 || object_has_text_relocations(info)) return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X) || (ph->p_flags & PF_W)) continue;
        uintptr_t start = (info->dlpi_addr + ph->p_vaddr) & ~(page - 1);
        uintptr_t end = (info->dlpi_addr + ph->p_vaddr + ph->p_memsz + page - 1) & ~(page - 1);
        if (madvise((void *)start, end - start, MADV_DONTNEED) != 0 && *error == 0) *error = errno;
    }
    return 0;
}

int vmm_release_code_mappings(void) {
    int error = 0;
    dl_iterate_phdr(release_object_code, &error);
    if (error != 0) { errno = error; return -1; }
    return 0;
}
