/* Stream test program for the Linux guest: busybox has no AF_VSOCK client, and its nc moves 1 KiB per system call
 * (each one costly where guest kernel code is emulated). tools/linux-image builds it statically into the initramfs
 * as /bin/streamtest.
 *   streamtest vsock-listen PORT COUNT   accepts COUNT vsock connections (each served by a child process, so they run
 *                                        at once): reads to end-of-file, answers "sum=<FNV-1a 64 in hex> bytes=<n>\n"
 *                                        and closes
 *   streamtest vsock-connect CID PORT N  connects, sends N bytes (byte i = i * 7 + N), shuts down its sending side and
 *                                        prints the peer's answer line, or "connect: <strerror>"
 *   streamtest tcp-get IP PORT FILE      connects over TCP and writes what it receives, to end-of-file, to FILE
 *   streamtest tcp-put IP PORT FILE      connects over TCP, sends FILE, shuts down its sending side, waits for the
 *                                        peer to close; prints "tcp-put: <n> bytes" */
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
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
    if (argc == 5 && (strcmp(argv[1], "tcp-get") == 0 || strcmp(argv[1], "tcp-put") == 0)) {
        int put = argv[1][4] == 'p';
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3])) };
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) { printf("connect: %s\n", strerror(errno)); return 1; }
        int f = put ? open(argv[4], O_RDONLY) : open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (f < 0) { perror(argv[4]); return 1; }
        static unsigned char buf[1 << 16];
        long total = 0;
        for (;;) {
            ssize_t n = read(put ? f : s, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) { perror("read"); return 1; }
            if (n == 0) break;
            for (ssize_t done = 0; done < n;) {
                ssize_t w = write(put ? s : f, buf + done, (size_t)(n - done));
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) { perror("write"); return 1; }
                done += w;
            }
            total += n;
        }
        if (put) {
            shutdown(s, SHUT_WR);
            while (read(s, buf, sizeof buf) > 0) {}
            printf("tcp-put: %ld bytes\n", total);
        }
        close(f);
        close(s);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "vsock-listen") == 0) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)atoi(argv[2]) };
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) { perror("listen"); return 1; }
        printf("streamtest: listening on %s\n", argv[2]);
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
    if (argc == 5 && strcmp(argv[1], "vsock-connect") == 0) {
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
    fprintf(stderr, "usage: streamtest vsock-listen PORT COUNT | vsock-connect CID PORT BYTES | tcp-get|tcp-put IP PORT FILE\n");
    return 2;
}
