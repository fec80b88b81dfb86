// Starting a helper: clone3 (optionally into new namespaces, always with a pidfd), then in the child only
// async-signal-safe system calls before execve: the parent may be multithreaded.
#define _GNU_SOURCE
#include "clinux.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
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

pid_t vmm_spawn(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds,
                unsigned long namespaces, int parent_pidfd, int *pidfd_out, int *error_out) {
    char uid_map[32], gid_map[32];
    format_map(uid_map, (unsigned)geteuid());
    format_map(gid_map, (unsigned)getegid());
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) { *error_out = errno; return -1; }

    struct clone_args args;
    memset(&args, 0, sizeof args);
    int pidfd = -1;
    args.flags = CLONE_PIDFD | namespaces;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) {
        *error_out = errno;
        close(report[0]); close(report[1]);
        return -1;
    }
    if (pid == 0) {
        // Child. Die with the supervisor; if it is already gone, do not start at all.
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) child_fail(report[1], 1);
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
        if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) child_fail(report[1], 2);
        if (namespaces & CLONE_NEWUSER) {
            if (write_file("/proc/self/setgroups", "deny") != 0) child_fail(report[1], 8);
            if (write_file("/proc/self/uid_map", uid_map) != 0) child_fail(report[1], 9);
            if (write_file("/proc/self/gid_map", gid_map) != 0) child_fail(report[1], 10);
        }
        // Two steps so that no dup2 clobbers a later source: first above every target, then into place.
        int moved[nfds > 0 ? nfds : 1];
        for (int i = 0; i < nfds; i++) {
            moved[i] = fcntl(fds[i], F_DUPFD, nfds);
            if (moved[i] < 0) child_fail(report[1], 3);
        }
        int report_high = fcntl(report[1], F_DUPFD_CLOEXEC, nfds);
        if (report_high < 0) child_fail(report[1], 4);
        for (int i = 0; i < nfds; i++) {
            if (dup2(moved[i], i) != i) child_fail(report_high, 5);
        }
        // Everything above the child's own descriptors goes, except the close-on-exec error report.
        if (report_high > nfds && syscall(SYS_close_range, nfds, report_high - 1, 0) != 0) child_fail(report_high, 6);
        if (syscall(SYS_close_range, report_high + 1, ~0U, 0) != 0) child_fail(report_high, 6);
        (void)report;
        execve(path, argv, envp);
        child_fail(report_high, 7);
    }
    close(report[1]);
    int code = 0;
    ssize_t n;
    do { n = read(report[0], &code, sizeof code); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof code) {
        // The child failed before execve; reap it and report why.
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) { }
        close(pidfd);
        *error_out = code >> 8;
        return -1;
    }
    *pidfd_out = pidfd;
    return (pid_t)pid;
}
