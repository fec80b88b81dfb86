/* A vsock test program for the Linux guest (busybox has no AF_VSOCK client); tools/linux-image builds it statically
 * into the initramfs as /bin/vsock-test.
 *   vsock-test listen PORT COUNT   accepts COUNT connections (each served by a child process, so they run at once):
 *                                  reads to end-of-file, answers "sum=<FNV-1a 64 in hex> bytes=<n>\n" and closes
 *   vsock-test connect CID PORT N  connects, sends N bytes (byte i = i * 7 + N), shuts down its sending side and
 *                                  prints the peer's answer line, or "connect: <strerror>" */
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void serve(int c) {
    uint64_t h = 14695981039346656037ull, n = 0;
    unsigned char buf[65536];
    for (;;) {
        ssize_t got = read(c, buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        for (ssize_t i = 0; i < got; i++) h = (h ^ buf[i]) * 1099511628211ull;
        n += (uint64_t)got;
    }
    char line[64];
    int len = snprintf(line, sizeof line, "sum=%016llx bytes=%llu\n", (unsigned long long)h, (unsigned long long)n);
    if (write(c, line, (size_t)len) != len) perror("write");
    close(c);
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "listen") == 0) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)atoi(argv[2]) };
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) { perror("listen"); return 1; }
        printf("vsock-test: listening on %s\n", argv[2]);
        fflush(stdout);
        int count = atoi(argv[3]);
        for (int i = 0; i < count; i++) {
            int c = accept(s, NULL, NULL);
            if (c < 0) { perror("accept"); return 1; }
            if (fork() == 0) { serve(c); _exit(0); }
            close(c);
        }
        while (wait(NULL) > 0) {}
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "connect") == 0) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = (unsigned)atoi(argv[2]), .svm_port = (unsigned)atoi(argv[3]) };
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) { printf("connect: %s\n", strerror(errno)); return 1; }
        long n = atol(argv[4]);
        static unsigned char buf[65536];
        for (long done = 0; done < n;) {
            long k = n - done < (long)sizeof buf ? n - done : (long)sizeof buf;
            for (long i = 0; i < k; i++) buf[i] = (unsigned char)((done + i) * 7 + n);
            ssize_t w = write(s, buf, (size_t)k);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) { printf("write: %s\n", strerror(errno)); return 1; }
            done += w;
        }
        shutdown(s, SHUT_WR);
        char line[128];
        ssize_t got = 0, r;
        while (got < (ssize_t)sizeof line - 1 && (r = read(s, line + got, sizeof line - 1 - (size_t)got)) > 0) got += r;
        line[got] = 0;
        printf("reply: %s", got > 0 ? line : "(none)\n");
        return 0;
    }
    fprintf(stderr, "usage: vsock-test listen PORT COUNT | connect CID PORT BYTES\n");
    return 2;
}
