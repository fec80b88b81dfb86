// Linux calls that need _GNU_SOURCE, are variadic, or have no glibc wrapper, exposed to Swift.
#ifndef CLINUX_H
#define CLINUX_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <signal.h>
#include <spawn.h>
#include <poll.h>
#include <linux/sched.h>
#include <malloc.h>

int vmm_memfd_create(const char *name, unsigned int flags);
int vmm_eventfd(unsigned int initval, int flags);
int vmm_pidfd_open(pid_t pid, unsigned int flags);
int vmm_pidfd_send_signal(int pidfd, int sig);
int vmm_close_range(unsigned int first, unsigned int last, unsigned int flags);
int vmm_pipe2(int fds[2], int flags);
int vmm_ioctl_ptr(int fd, unsigned long request, void *arg);
int vmm_ioctl_val(int fd, unsigned long request, unsigned long arg);
int vmm_fcntl_int(int fd, int cmd, int arg);
int vmm_prctl(int option, unsigned long arg2);
int vmm_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);
int vmm_thread_kill(unsigned long thread, int sig);
int vmm_signalfd(int fd, const sigset_t *mask, int flags);
int vmm_sigset_of(sigset_t *set, const int *signals, int count);
int vmm_block_signals(const int *signals, int count);
int vmm_open(const char *path, int flags, int mode);
int vmm_signalfd_read(int fd);
int vmm_set_pdeathsig(int sig);
int vmm_set_affinity(pid_t pid, const int *cpus, int count);
/// Writes the CPUs in `pid`'s affinity mask (0: the calling thread) to `cpus`, at most `max` of them; returns how many
/// the mask holds, or -1 with errno.
int vmm_get_affinity(pid_t pid, int *cpus, int max);

/// Unmaps this process's pages of program code (the executable segments of the executable and of every loaded
/// library, not the vDSO, not an object with text relocations): what it runs afterwards maps again from the page
/// cache on first use. Returns 0, or -1 with errno set by the first madvise that failed.
int vmm_release_code_mappings(void);

/// clone3 + execve with `fds[i]` as the child's fd i (all others closed), optionally in new namespaces
/// (CLONE_NEW* flags). The child gets SIGKILL when this process dies, and does not start if `parent_pidfd`
/// (>= 0) shows this process already gone. Returns the pid and a pidfd, or -1 with *error_out set.
pid_t vmm_spawn(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds,
                unsigned long namespaces, int parent_pidfd, int *pidfd_out, int *error_out);

/// clone3 like vmm_spawn, but the child returns 0 from here (only for a single-threaded caller) with its identity set
/// (namespaces, ids, signals, death with the parent) and only stderr and `keep_fd` (> 2) open: a helper not yet told
/// its role, which gets its descriptors later (vmm_place_fds). `as_sibling`: the child becomes the caller's
/// parent's child (CLONE_PARENT), which then reaps it; a failure of such a child is reported with its pid and pidfd
/// (*error_out set), not reaped. Without `wait_ready` it returns at once: a child that fails then just exits.
pid_t vmm_fork_blank(unsigned long namespaces, int as_sibling, int parent_pidfd, int keep_fd, int wait_ready,
                     int *pidfd_out, int *error_out);

/// `fds[i]` becomes descriptor i; every other descriptor is closed but `*keep` (if >= 0), which moves above them
/// (close-on-exec) and is updated. 0 or -errno.
int vmm_place_fds(const int *fds, int nfds, int *keep);

/// Makes /proc/self/cmdline show `text` (`len` bytes, NUL-separated and -terminated, kept allocated): a forked
/// helper's command line reads as an exec'd one's. 0 or -errno.
int vmm_set_command_line(const char *text, size_t len);
/// Reads what vmm_set_command_line needs from /proc/self/stat ahead, for a process about to lose /proc. 0 or -errno.
int vmm_read_memory_map(void);

/// sendmsg/recvmsg of one message with up to 250 descriptors (SCM_RIGHTS), retrying EINTR. Receiving keeps up to
/// `max` descriptors (close-on-exec; any more are closed), fails with EMSGSIZE when the message or its descriptors
/// did not fit, and with `nonblocking` fails with EAGAIN instead of waiting.
long vmm_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
long vmm_receive_with_fds(int sock, void *buf, size_t len, int *fds, int max, int *nfds, int nonblocking);

/// Installs the SIGSYS handler for seccomp's trap action: report the call on `report_fd` (a control pipe),
/// then fail it with ENOSYS (`only_log`) or die by SIGSYS.
/* Control records: what a helper tells the supervisor over its control pipe, 16 bytes each, little-endian
 * u32 kind | u32 argument | u64 value. The one definition of the kinds: Swift's ControlMessage and the SIGSYS
 * handler (sigsys.c) both use these. */
#define VMM_CONTROL_RECORD_SIZE 16
#define VMM_CONTROL_GUEST_EXIT 1
#define VMM_CONTROL_VCPU_HALTED 2
#define VMM_CONTROL_VCPU_TRIPLE_FAULT 3
#define VMM_CONTROL_VCPU_INTERNAL_ERROR 4
#define VMM_CONTROL_VCPU_FAILED_ENTRY 5
#define VMM_CONTROL_VCPU_UNHANDLED_EXIT 6
#define VMM_CONTROL_VCPU_SYSTEM_EVENT 7
#define VMM_CONTROL_VCPU_SETUP_FAILED 8
#define VMM_CONTROL_SECCOMP_KILLED 9
#define VMM_CONTROL_SECCOMP_LOGGED 10
#define VMM_CONTROL_GUEST_EVENT 11
#define VMM_CONTROL_VCPU_RUN_FAILED 12
#define VMM_CONTROL_VCPU_PAUSED 13

int vmm_sigsys_install(int report_fd, int only_log);
/* The record the SIGSYS handler sends for a denied call `nr` (little-endian host: the bytes are the wire format). */
void vmm_seccomp_record(int nr, int logged, uint32_t record[4]);

/// Loads a classic-BPF seccomp filter of `count` instructions on every thread (TSYNC), after PR_SET_NO_NEW_PRIVS,
/// as libseccomp's seccomp_load does by default. 0 or -errno.
int vmm_seccomp_load_bpf(const void *instructions, size_t count);
int vmm_pivot_root(const char *new_root, const char *put_old);
/// Privilege dropping: calls that need _GNU_SOURCE or are variadic, and the constants Swift cannot see.
int vmm_prctl5(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5);
/// Fault injection: `sig` makes the process crash with a real SIGSEGV.
int vmm_install_crash_handler(int sig);
int vmm_setresuid(uid_t uid);
int vmm_setresgid(gid_t gid);
int vmm_set_rlimit(int resource, uint64_t value);
extern const int VMM_PR_SET_TIMERSLACK;
extern const int VMM_PR_CAPBSET_DROP, VMM_PR_CAP_AMBIENT, VMM_PR_CAP_AMBIENT_CLEAR_ALL, VMM_PR_SET_NO_NEW_PRIVS, VMM_PR_SET_NAME, VMM_PR_GET_NAME;
extern const int VMM_RLIMIT_NOFILE, VMM_RLIMIT_CORE, VMM_RLIMIT_FSIZE, VMM_RLIMIT_NPROC, VMM_RLIMIT_AS;

/// An absolute CLOCK_MONOTONIC timerfd; `at_ns` 0 disarms it.
int vmm_timerfd_create(void);
/* getrandom(2), which glibc declares in a header Swift does not import. */
long vmm_getrandom(void *buffer, size_t count, unsigned int flags);
/* fallocate(2) (a _GNU_SOURCE declaration). */
int vmm_fallocate(int fd, int mode, int64_t offset, int64_t length);
int vmm_timerfd_set_absolute(int fd, uint64_t at_ns);
/// poll(2) with a timeout in nanoseconds (ppoll), for waits shorter than a millisecond.
int vmm_poll_ns(struct pollfd *fds, unsigned long count, uint64_t timeout_ns);
/// Installs an empty handler for `sig` without SA_RESTART, so a blocking KVM_RUN returns EINTR (the vCPU kick).
int vmm_install_kick_handler(int sig);
int vmm_thread_signal(unsigned long thread, int sig);
unsigned long vmm_thread_self(void);

/// Test hook: ptrace(PTRACE_TRACEME), a call no helper policy allows.
long vmm_fault_ptrace(void);

static inline void vmm_cpu_relax(void) { __builtin_ia32_pause(); }
static inline unsigned long long vmm_rdtsc(void) { return __builtin_ia32_rdtsc(); }
/// The number of CPUs in the calling thread's affinity mask (1 if it cannot be read).
int vmm_available_cpus(void);
/// The CPU the calling thread runs on (glibc reads it from the thread's rseq area: no system call), -1 if unknown.
int vmm_current_cpu(void);
/// Moves the calling thread onto a CPU its affinity mask allows and `held` (`count` CPU numbers) does not name, then
/// gives it its whole mask back (the scheduler leaves a thread where it runs): the CPU it runs on now, -1 when every
/// allowed CPU is held or the kernel refused.
int vmm_step_off_cpus(const int *held, int count);

extern const unsigned int VMM_MFD_CLOEXEC;
extern const unsigned int VMM_MFD_ALLOW_SEALING;
extern const int VMM_EFD_CLOEXEC;
extern const int VMM_EFD_NONBLOCK;
extern const int VMM_SFD_CLOEXEC;
extern const int VMM_O_CLOEXEC;
extern const int VMM_POSIX_SPAWN_SETSIGMASK;
extern const int VMM_POSIX_SPAWN_SETSIGDEF;
/* A tap as a virtio-net backend (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header, non-blocking): the descriptor,
 * or -errno with *step naming the call that failed. */
int vmm_tap_open(const char *name, const char **step);
/* TUNSETOFFLOAD: which offloads (TUN_F_*) the reader accepts. */
int vmm_tap_set_offload(int fd, unsigned int flags);
/* TUNSETOFFLOAD's request number, for the virtio-net policy. */
extern const unsigned long VMM_TUNSETOFFLOAD;
/* Unix stream sockets for vsock's host side: a non-blocking listener bound at `path` (-errno on failure); a
 * connection to `path` (optionally made non-blocking); a non-blocking accept. */
int vmm_unix_listen(const char *path, int backlog);
int vmm_unix_connect(const char *path, int nonblocking);
int vmm_accept_nonblocking(int listener);
/* A SOCK_SEQPACKET socket pair (close-on-exec). */
int vmm_seqpacket_pair(int fds[2]);
#endif
