// Linux calls that need _GNU_SOURCE, are variadic, or have no glibc wrapper, exposed to Swift.
#ifndef CLINUX_H
#define CLINUX_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <signal.h>
#include <spawn.h>
#include <poll.h>

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

static inline void vmm_cpu_relax(void) { __builtin_ia32_pause(); }

extern const unsigned int VMM_MFD_CLOEXEC;
extern const unsigned int VMM_MFD_ALLOW_SEALING;
extern const int VMM_EFD_CLOEXEC;
extern const int VMM_EFD_NONBLOCK;
extern const int VMM_SFD_CLOEXEC;
extern const int VMM_O_CLOEXEC;
extern const int VMM_POSIX_SPAWN_SETSIGMASK;
extern const int VMM_POSIX_SPAWN_SETSIGDEF;
#endif
