// Starting a helper: clone3 (optionally into new namespaces, always with a pidfd), then in the child only
// async-signal-safe system calls before execve (the parent may be multithreaded), or, forked by the single-threaded
// helper launcher, the same preparation and a return into the helper's code.
#define _GNU_SOURCE
#include "clinux.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <linux/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void child_fail(int report_fd, int step) {
    int code = (errno << 8) | step;
    (void)!write(report_fd, &code, sizeof code);
    _exit(127);
}

// Maps uid/gid 0 of a new user namespace to the creator's ids, from inside: an unprivileged process may map
// exactly its own ids. Root inside keeps its capabilities (in that namespace only) across execve.
static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t len = (ssize_t)strlen(text);
    ssize_t n = write(fd, text, (size_t)len);
    close(fd);
    return n == len ? 0 : -1;
}

static void format_map(char *out, unsigned id) {
    char digits[16];
    int n = 0;
    do { digits[n++] = (char)('0' + id % 10); id /= 10; } while (id);
    out[0] = '0'; out[1] = ' ';
    int i = 2;
    while (n) out[i++] = digits[--n];
    out[i++] = ' '; out[i++] = '1'; out[i++] = '\n'; out[i] = 0;
}

// The child's side of every start, before it runs the helper (exec'd or forked): die with the supervisor, reset
// signals, map the user namespace's ids.
static void prepare_identity(int report_fd, unsigned long namespaces, int parent_pidfd, const char *uid_map,
                             const char *gid_map) {
    // Die with the supervisor; if it is already gone, do not start at all.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) child_fail(report_fd, 1);
    if (parent_pidfd >= 0) {
        struct pollfd p = { parent_pidfd, POLLIN, 0 };
        if (poll(&p, 1, 0) != 0) _exit(127);
    }
    sigset_t none;
    sigemptyset(&none);
    for (int s = 1; s < 65; s++) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        (void)sigaction(s, &dfl, NULL);
    }
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) child_fail(report_fd, 2);
    if (namespaces & CLONE_NEWUSER) {
        if (write_file("/proc/self/setgroups", "deny") != 0) child_fail(report_fd, 8);
        if (write_file("/proc/self/uid_map", uid_map) != 0) child_fail(report_fd, 9);
        if (write_file("/proc/self/gid_map", gid_map) != 0) child_fail(report_fd, 10);
    }
}

// Moves `fds` into place as 0..nfds-1 and closes every other descriptor except `*extra` (when >= 0), which is moved
// above them, close-on-exec. 0, or the failed step.
static int move_fds(const int *fds, int nfds, int *extra) {
    // Two steps so that no dup2 clobbers a later source: first above every target, then into place.
    int moved[nfds > 0 ? nfds : 1];
    for (int i = 0; i < nfds; i++) {
        moved[i] = fcntl(fds[i], F_DUPFD, nfds);
        if (moved[i] < 0) return 3;
    }
    int high = nfds;
    if (*extra >= 0) {
        high = fcntl(*extra, F_DUPFD_CLOEXEC, nfds);
        if (high < 0) return 4;
        *extra = high;
        high += 1;
    }
    for (int i = 0; i < nfds; i++) {
        if (dup2(moved[i], i) != i) return 5;
    }
    if (*extra > nfds && syscall(SYS_close_range, nfds, *extra - 1, 0) != 0) return 6;
    if (syscall(SYS_close_range, high, ~0U, 0) != 0) return 6;
    return 0;
}

// The parent's side: wait until the child reports a failure (a 4-byte code) or closes its end (it exec'd, or a
// forked child is ready). Returns the pid, or -1 with *error_out set and the child reaped; a sibling (which
// only its real parent can reap) is returned with *error_out set.
static pid_t await_child(long pid, int pidfd, int report[2], int reap, int *pidfd_out, int *error_out) {
    close(report[1]);
    int code = 0;
    ssize_t n;
    do { n = read(report[0], &code, sizeof code); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof code) {
        *error_out = code >> 8;
        if (!reap) {  // a sibling's parent reaps it: it gets the pid and the pidfd with the error
            *pidfd_out = pidfd;
            return (pid_t)pid;
        }
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) { }
        close(pidfd);
        return -1;
    }
    *pidfd_out = pidfd;
    return (pid_t)pid;
}

static long clone_child(unsigned long flags, int *pidfd, int report[2], int *error_out) {
    if (pipe2(report, O_CLOEXEC) != 0) { *error_out = errno; return -1; }
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_PIDFD | flags;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    // A sibling (CLONE_PARENT) ends with its creator's exit signal; clone3 wants none given then.
    args.exit_signal = (flags & CLONE_PARENT) ? 0 : SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) {
        *error_out = errno;
        close(report[0]); close(report[1]);
    }
    return pid;
}

pid_t vmm_spawn(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds,
                unsigned long namespaces, int parent_pidfd, int *pidfd_out, int *error_out) {
    char uid_map[32], gid_map[32];
    format_map(uid_map, (unsigned)geteuid());
    format_map(gid_map, (unsigned)getegid());
    int report[2], pidfd = -1;
    long pid = clone_child(namespaces, &pidfd, report, error_out);
    if (pid < 0) return -1;
    if (pid == 0) {
        prepare_identity(report[1], namespaces, parent_pidfd, uid_map, gid_map);
        int report_high = report[1];
        int step = move_fds(fds, nfds, &report_high);
        if (step) child_fail(report_high, step);
        execve(path, argv, envp);
        child_fail(report_high, 7);
    }
    return await_child(pid, pidfd, report, 1, pidfd_out, error_out);
}

static int close_between(unsigned first, unsigned last) {
    return first <= last && first != 0 && syscall(SYS_close_range, first, last, 0) != 0;
}

pid_t vmm_fork_blank(unsigned long namespaces, int as_sibling, int parent_pidfd, int keep_fd, int wait_ready,
                     int *pidfd_out, int *error_out) {
    char uid_map[32], gid_map[32];
    format_map(uid_map, (unsigned)geteuid());
    format_map(gid_map, (unsigned)getegid());
    int report[2], pidfd = -1;
    long pid = clone_child(namespaces | (as_sibling ? CLONE_PARENT : 0), &pidfd, report, error_out);
    if (pid < 0) return -1;
    if (pid == 0) {
        // Named first: until then it carries its launcher's name, and a reader of /proc would count two launchers.
        (void)prctl(PR_SET_NAME, (unsigned long)"vmm-blank", 0, 0, 0);
        prepare_identity(report[1], namespaces, parent_pidfd, uid_map, gid_map);
        // Keep stderr, `keep_fd` and the report; then report readiness by closing it.
        int lowest = keep_fd < report[1] ? keep_fd : report[1], highest = keep_fd < report[1] ? report[1] : keep_fd;
        if (close_between(3, lowest - 1) || close_between(lowest + 1, highest - 1) || close_between(highest + 1, ~0U))
            child_fail(report[1], 6);
        close(report[1]);
        return 0;
    }
    if (!wait_ready) {
        // Not waited for: a blank that fails exits, and whoever hands it a request finds its socket closed.
        close(report[0]); close(report[1]);
        *pidfd_out = pidfd;
        return (pid_t)pid;
    }
    return await_child(pid, pidfd, report, !as_sibling, pidfd_out, error_out);
}

int vmm_place_fds(const int *fds, int nfds, int *keep) {
    int none = -1;
    int step = move_fds(fds, nfds, keep ? keep : &none);
    return step ? -(errno ? errno : EBADF) : 0;
}

// /proc/PID/cmdline of a forked helper: point the kernel's record of the argument area at new text. PR_SET_MM_MAP
// needs no privilege when the executable stays the same; every other field is passed back as it is, from
// /proc/self/stat, read ahead (vmm_read_memory_map) by a helper that will not see /proc when it sets its line.
static unsigned long long stat_field[64];
static int stat_read;

int vmm_read_memory_map(void) {
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    char buf[2048];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -EIO;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -EIO;
    // Fields after the command name, numbered as in proc(5) from 3, the state (a letter: read as 0).
    int index = 3;
    for (char *q = p + 2; *q && index < 64; index++) {
        char *end;
        stat_field[index] = strtoull(q, &end, 10);
        while (*end && *end != ' ') end++;
        while (*end == ' ') end++;
        q = end;
    }
    if (index <= 51) return -EIO;
    stat_read = 1;
    return 0;
}

int vmm_set_command_line(const char *text, size_t len) {
    if (!stat_read) {
        int r = vmm_read_memory_map();
        if (r != 0) return r;
    }
    struct prctl_mm_map map;
    memset(&map, 0, sizeof map);
    map.start_code = stat_field[26]; map.end_code = stat_field[27]; map.start_stack = stat_field[28];
    map.start_data = stat_field[45]; map.end_data = stat_field[46]; map.start_brk = stat_field[47];
    map.brk = (unsigned long)sbrk(0);
    map.arg_start = (unsigned long)text; map.arg_end = (unsigned long)text + len;
    map.env_start = stat_field[50]; map.env_end = stat_field[51];
    map.exe_fd = (uint32_t)-1;
    if (prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&map, sizeof map, 0) != 0) return -errno;
    return 0;
}
