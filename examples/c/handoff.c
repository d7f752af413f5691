/*
 * handoff.c: the specification's handoff scenario (LPWSPDuplicateSocket, "Remarks") between two
 * C processes, with the Winsock calls of <sockdup/winsock2.h> and the BSD calls on descriptors.
 *
 *   source                                  target
 *   1) WSASocketW, connect
 *   2) asks for the target's pid     ==>    3) answers: "pid N"
 *   4) reads the pid                 <==
 *   5) WSADuplicateSocketW(s, N, &info)
 *   6) sends the record ("record sockdup1:...")  ==>  7) reads it
 *      closesocket(s): the target holds          8) WSASocketW(FROM_PROTOCOL_INFO, ..., &info)
 *      its own descriptor already                9) uses the shared socket: "ping" out,
 *   the source's other end answers "pong"   <=>      "pong" back
 *                                                10) closesocket
 *
 * Build and run (from the repository root):
 *   cargo build --release -p sockdup-ffi
 *   cc examples/c/handoff.c -I crates/sockdup-ffi/include -L target/release -lsockdup -o handoff
 *   LD_LIBRARY_PATH=target/release ./handoff
 *
 * With no argument it runs the scenario for a TCP connection, a connected UDP socket and a Unix
 * stream socket, starting itself as the target for each (through pipes). One role alone, for
 * a peer in another language, speaking the lines above over stdin and stdout:
 *   ./handoff source tcp|udp|unix      reads "pid N", writes "record ...", then "ok"
 *   ./handoff target                   writes "pid N", reads "record ...", then "ok"
 */
#define _GNU_SOURCE
#include <sockdup/winsock2.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* This program's path, to start itself as the target. */
static const char *self = "/proc/self/exe";

static void fail(const char *what) {
    char message[512];
    sockdup_last_error_message(message, sizeof message);
    fprintf(stderr, "handoff[%d]: %s failed: error %d: %s\n", (int)getpid(), what,
            WSAGetLastError(), message);
    exit(1);
}

static void fail_errno(const char *what) {
    fprintf(stderr, "handoff[%d]: %s: %s\n", (int)getpid(), what, strerror(errno));
    exit(1);
}

/* Bounded waits: a peer that never answers fails the run instead of hanging it. */
static void recv_timeout(int fd) {
    struct timeval tv = {10, 0};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) fail_errno("setsockopt");
}

static void expect(int fd, const char *word) {
    char buf[64];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n < 0) fail_errno("recv");
    buf[n] = 0;
    if (strcmp(buf, word) != 0) {
        fprintf(stderr, "handoff[%d]: expected \"%s\", received \"%s\"\n", (int)getpid(), word, buf);
        exit(1);
    }
}

static void say(int fd, const char *word) {
    if (send(fd, word, strlen(word), 0) != (ssize_t)strlen(word)) fail_errno("send");
}

static void start(void) {
    WSADATA data;
    int err = WSAStartup(MAKEWORD(2, 2), &data);
    if (err != 0) {
        fprintf(stderr, "handoff: WSAStartup failed: error %d\n", err);
        exit(1);
    }
}

static struct sockaddr_in loopback(void) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* The source's socket to hand off (*shared) and its other end (*other), of one kind. */
static void make_pair(const char *kind, SOCKET *shared, int *other) {
    if (strcmp(kind, "tcp") == 0) {
        int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
        struct sockaddr_in a = loopback();
        socklen_t len = sizeof a;
        if (listener < 0 || bind(listener, (struct sockaddr *)&a, sizeof a) != 0 ||
            listen(listener, 1) != 0 || getsockname(listener, (struct sockaddr *)&a, &len) != 0)
            fail_errno("listening");
        /* 1) WSASocketW + connect */
        *shared = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
        if (*shared == INVALID_SOCKET) fail("WSASocketW");
        if (connect((int)*shared, (struct sockaddr *)&a, sizeof a) != 0) fail_errno("connect");
        *other = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (*other < 0) fail_errno("accept");
        close(listener);
    } else if (strcmp(kind, "udp") == 0) {
        struct sockaddr_in a = loopback(), b = loopback();
        socklen_t len = sizeof b;
        *shared = WSASocketW(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
        if (*shared == INVALID_SOCKET) fail("WSASocketW");
        *other = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP);
        if (*other < 0 || bind(*other, (struct sockaddr *)&b, sizeof b) != 0 ||
            getsockname(*other, (struct sockaddr *)&b, &len) != 0)
            fail_errno("the other UDP socket");
        if (bind((int)*shared, (struct sockaddr *)&a, sizeof a) != 0 ||
            connect((int)*shared, (struct sockaddr *)&b, sizeof b) != 0)
            fail_errno("the shared UDP socket");
    } else if (strcmp(kind, "unix") == 0) {
        /* Any socket descriptor of the process is a SOCKET, socketpair's too. */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) fail_errno("socketpair");
        *shared = (SOCKET)sv[0];
        *other = sv[1];
    } else {
        fprintf(stderr, "handoff: unknown kind %s: use tcp, udp or unix\n", kind);
        exit(2);
    }
    recv_timeout(*other);
}

/* The source's role; `in` and `out` lead to the target. */
static void source(const char *kind, FILE *in, FILE *out) {
    SOCKET s;
    int other;
    char line[1024];
    unsigned long pid;
    WSAPROTOCOL_INFOW info;
    char text[SOCKDUP_INFO_TEXT_MAX];

    start();
    make_pair(kind, &s, &other);
    /* 2) - 4) the target's pid */
    if (!fgets(line, sizeof line, in) || sscanf(line, "pid %lu", &pid) != 1) {
        fprintf(stderr, "handoff: expected \"pid N\" from the target\n");
        exit(1);
    }
    /* 5) */
    if (WSADuplicateSocketW(s, (DWORD)pid, &info) == SOCKET_ERROR) fail("WSADuplicateSocketW");
    /* 6) */
    if (sockdup_info_to_text(&info, text, sizeof text) == SOCKET_ERROR) fail("sockdup_info_to_text");
    fprintf(out, "record %s\n", text);
    fflush(out);
    /* The target already holds its descriptor: this one may go. */
    if (closesocket(s) == SOCKET_ERROR) fail("closesocket");

    /* 9) the other end talks with the target through the shared socket */
    if (strcmp(kind, "udp") == 0) {
        char buf[64];
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(other, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &len);
        if (n != 4 || memcmp(buf, "ping", 4) != 0) fail_errno("receiving ping over UDP");
        if (sendto(other, "pong", 4, 0, (struct sockaddr *)&from, len) != 4) fail_errno("sendto");
    } else {
        expect(other, "ping");
        say(other, "pong");
    }
    close(other);
    if (WSACleanup() == SOCKET_ERROR) fail("WSACleanup");
}

/* The target's role; `in` and `out` lead to the source. */
static void target(FILE *in, FILE *out) {
    char line[2048];
    WSAPROTOCOL_INFOW info;
    SOCKET s;

    start(); /* before the pid goes out: the source duplicates into a started process */
    fprintf(out, "pid %lu\n", (unsigned long)getpid());
    fflush(out);
    /* 7) */
    if (!fgets(line, sizeof line, in) || strncmp(line, "record ", 7) != 0) {
        fprintf(stderr, "handoff: expected \"record ...\" from the source\n");
        exit(1);
    }
    if (sockdup_info_from_text(line + 7, &info) == SOCKET_ERROR) fail("sockdup_info_from_text");
    /* 8) */
    s = WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0,
                   WSA_FLAG_OVERLAPPED);
    if (s == INVALID_SOCKET) fail("WSASocketW(FROM_PROTOCOL_INFO)");
    recv_timeout((int)s);
    /* 9) */
    say((int)s, "ping");
    expect((int)s, "pong");
    /* 10) */
    if (closesocket(s) == SOCKET_ERROR) fail("closesocket");
    if (WSACleanup() == SOCKET_ERROR) fail("WSACleanup");
}

/* The whole scenario for one kind: this process is the source, a child running this program
 * as "target" the target, connected by two pipes. */
static void scenario(const char *kind) {
    int to_target[2], from_target[2], status;
    pid_t child;
    FILE *in, *out;

    if (pipe2(to_target, O_CLOEXEC) != 0 || pipe2(from_target, O_CLOEXEC) != 0) fail_errno("pipe");
    child = fork();
    if (child < 0) fail_errno("fork");
    if (child == 0) {
        char *args[] = {"handoff", "target", NULL};
        if (dup2(to_target[0], 0) < 0 || dup2(from_target[1], 1) < 0) _exit(127);
        execv(self, args);
        _exit(127);
    }
    close(to_target[0]);
    close(from_target[1]);
    out = fdopen(to_target[1], "w");
    in = fdopen(from_target[0], "r");
    if (!in || !out) fail_errno("fdopen");
    source(kind, in, out);
    {
        char line[64];
        if (!fgets(line, sizeof line, in) || strcmp(line, "ok\n") != 0) {
            fprintf(stderr, "handoff: the target did not finish with \"ok\"\n");
            exit(1);
        }
    }
    fclose(in);
    fclose(out);
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "handoff: the target failed (status %d)\n", status);
        exit(1);
    }
    printf("ok %s\n", kind);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (strchr(argv[0], '/')) self = argv[0];
    if (argc == 1) {
        scenario("tcp");
        scenario("udp");
        scenario("unix");
    } else if (argc == 3 && strcmp(argv[1], "source") == 0) {
        source(argv[2], stdin, stdout);
        printf("ok\n");
    } else if (argc == 2 && strcmp(argv[1], "target") == 0) {
        target(stdin, stdout);
        printf("ok\n");
    } else {
        fprintf(stderr, "usage: %s [source tcp|udp|unix | target]\n", argv[0]);
        return 2;
    }
    return 0;
}
