/*
 * The Winsock calls of libsockdup from C: bad pointers and handles, WSAEnumProtocolsW's buffer
 * lengths, the event calls, the per-thread last error, and no descriptor left behind. Run by
 * tests/c_api.rs; prints "ok" and exits 0, or names the first check that failed and exits 1.
 */
#define _GNU_SOURCE
#include <sockdup/winsock2.h>

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            char m_[512];                                                                 \
            sockdup_last_error_message(m_, sizeof m_);                                    \
            fprintf(stderr, "calls.c:%d: %s failed (last error %d: %s)\n", __LINE__, #cond, \
                    WSAGetLastError(), m_);                                               \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* A call that fails with SOCKET_ERROR and `code`. */
#define FAILS(call, code)                                \
    do {                                                 \
        WSASetLastError(0);                              \
        CHECK((call) == SOCKET_ERROR);                   \
        CHECK(WSAGetLastError() == (code));              \
    } while (0)

static int open_descriptors(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    CHECK(d != NULL);
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static void *other_thread(void *arg) {
    (void)arg;
    /* The last error is per thread: this thread's starts at 0 and its own stays its own. */
    CHECK(WSAGetLastError() == 0);
    WSASetLastError(WSAEMFILE);
    return NULL;
}

static void bad_pointers_and_handles(void) {
    WSAPROTOCOL_INFOW info;
    char text[SOCKDUP_INFO_TEXT_MAX];
    int sv[2];
    int file = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    SOCKET s;
    WSAEVENT ev;
    WSANETWORKEVENTS ne;

    CHECK(file >= 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);

    /* NULL or short buffers: WSAEFAULT */
    FAILS(WSADuplicateSocketW((SOCKET)sv[0], (DWORD)getpid(), NULL), WSAEFAULT);
    FAILS(sockdup_info_from_text(NULL, &info), WSAEFAULT);
    FAILS(sockdup_info_from_text("sockdup1:AAAA", NULL), WSAEFAULT);
    CHECK(WSADuplicateSocketW((SOCKET)sv[0], (DWORD)getpid(), &info) == 0);
    FAILS(sockdup_info_to_text(NULL, text, sizeof text), WSAEFAULT);
    FAILS(sockdup_info_to_text(&info, NULL, sizeof text), WSAEFAULT);
    {
        int len = sockdup_info_to_text(&info, text, sizeof text);
        CHECK(len > 9 && (size_t)len == strlen(text));
        FAILS(sockdup_info_to_text(&info, text, (size_t)len), WSAEFAULT); /* no room for NUL */
        CHECK(sockdup_info_to_text(&info, text, (size_t)len + 1) == len);
    }
    FAILS(WSAEnumNetworkEvents((SOCKET)sv[0], NULL, NULL), WSAEFAULT);

    /* Unknown SOCKETs: WSAENOTSOCK */
    FAILS(WSADuplicateSocketW((SOCKET)999999, (DWORD)getpid(), &info), WSAENOTSOCK);
    FAILS(WSADuplicateSocketW((SOCKET)file, (DWORD)getpid(), &info), WSAENOTSOCK);
    FAILS(WSADuplicateSocketW(INVALID_SOCKET, (DWORD)getpid(), &info), WSAENOTSOCK);
    FAILS(WSADuplicateSocketW((SOCKET)1 << 40, (DWORD)getpid(), &info), WSAENOTSOCK);
    FAILS(closesocket((SOCKET)999999), WSAENOTSOCK);
    FAILS(closesocket((SOCKET)file), WSAENOTSOCK);
    FAILS(WSAEventSelect((SOCKET)file, NULL, 0), WSAENOTSOCK);

    /* Records that are not (or no longer) redeemable: WSAEINVAL */
    CHECK(WSADuplicateSocketW((SOCKET)sv[0], (DWORD)getpid(), &info) == 0);
    s = WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, 0);
    CHECK(s != INVALID_SOCKET);
    WSASetLastError(0);
    CHECK(WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, 0) ==
          INVALID_SOCKET);
    CHECK(WSAGetLastError() == WSAEINVAL); /* redeemed already */
    CHECK(closesocket(s) == 0);
    FAILS(closesocket(s), WSAENOTSOCK);
    {
        WSAPROTOCOL_INFOW junk;
        memset(&junk, 0x5a, sizeof junk);
        WSASetLastError(0);
        CHECK(WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &junk, 0, 0) ==
              INVALID_SOCKET);
        CHECK(WSAGetLastError() == WSAEINVAL);
    }
    FAILS(sockdup_info_from_text("not a record", &info), WSAEINVAL);
    {
        /* The message behind it: its full length, cut to fit a short buffer, NUL-terminated. */
        char small[8];
        int full = sockdup_last_error_message(NULL, 0);
        CHECK(full > 20);
        CHECK(sockdup_last_error_message(small, sizeof small) == full);
        CHECK(strlen(small) == sizeof small - 1);
        CHECK(strncmp(small, "\"not a ", 7) == 0);
        FAILS(sockdup_last_error_message(NULL, 5), WSAEFAULT);
    }
    WSASetLastError(0);
    CHECK(WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 7, 0) == INVALID_SOCKET);
    CHECK(WSAGetLastError() == WSAEINVAL); /* a group */
    WSASetLastError(0);
    CHECK(WSASocketW(AF_INET, SOCK_RAW, 255, NULL, 0, 0) == INVALID_SOCKET);
    CHECK(WSAGetLastError() == WSAEAFNOSUPPORT);

    /* Events: unknown handles are WSA_INVALID_HANDLE, never followed */
    FAILS(WSAEventSelect((SOCKET)sv[0], (WSAEVENT)(uintptr_t)0xdead0, FD_READ), WSA_INVALID_HANDLE);
    WSASetLastError(0);
    CHECK(WSACloseEvent((WSAEVENT)(uintptr_t)0xdead0) == FALSE);
    CHECK(WSAGetLastError() == WSA_INVALID_HANDLE);
    CHECK(WSASetEvent((WSAEVENT)(uintptr_t)8) == FALSE);
    {
        WSAEVENT bogus = (WSAEVENT)(uintptr_t)0xdead0;
        WSASetLastError(0);
        CHECK(WSAWaitForMultipleEvents(1, &bogus, FALSE, 0, FALSE) == WSA_WAIT_FAILED);
        CHECK(WSAGetLastError() == WSA_INVALID_HANDLE);
        WSASetLastError(0);
        CHECK(WSAWaitForMultipleEvents(0, &bogus, FALSE, 0, FALSE) == WSA_WAIT_FAILED);
        CHECK(WSAGetLastError() == WSA_INVALID_PARAMETER);
        WSASetLastError(0);
        CHECK(WSAWaitForMultipleEvents(65, &bogus, FALSE, 0, FALSE) == WSA_WAIT_FAILED);
        CHECK(WSAGetLastError() == WSA_INVALID_PARAMETER);
        WSASetLastError(0);
        CHECK(WSAWaitForMultipleEvents(1, NULL, FALSE, 0, FALSE) == WSA_WAIT_FAILED);
        CHECK(WSAGetLastError() == WSAEFAULT);
    }
    ev = WSACreateEvent();
    CHECK(ev != WSA_INVALID_EVENT);
    FAILS(WSAEventSelect((SOCKET)sv[0], ev, 1L << 20), WSAEINVAL);
    FAILS(WSAEventSelect((SOCKET)sv[0], ev, -1L), WSAEINVAL);
    FAILS(WSAEnumNetworkEvents((SOCKET)sv[0], (WSAEVENT)(uintptr_t)0xdead0, &ne), WSA_INVALID_HANDLE);
    CHECK(WSACloseEvent(ev) == TRUE);
    CHECK(WSACloseEvent(ev) == FALSE);

    /* The last error is per thread */
    {
        pthread_t t;
        WSASetLastError(WSAENOTSOCK);
        CHECK(pthread_create(&t, NULL, other_thread, NULL) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        CHECK(WSAGetLastError() == WSAENOTSOCK);
    }

    CHECK(closesocket((SOCKET)sv[0]) == 0); /* adopted: closesocket closes the caller's descriptor */
    CHECK(fcntl(sv[0], F_GETFD) == -1);
    close(sv[1]);
    close(file);
}

static void enum_protocols(void) {
    DWORD len = 0, needed;
    int n, tcp[] = {IPPROTO_TCP, 0}, i, count_tcp;
    WSAPROTOCOL_INFOW *buf;

    FAILS(WSAEnumProtocolsW(NULL, NULL, NULL), WSAEFAULT);
    FAILS(WSAEnumProtocolsW(NULL, NULL, &len), WSAENOBUFS);
    needed = len;
    CHECK(needed > 0 && needed % sizeof(WSAPROTOCOL_INFOW) == 0);
    buf = malloc(needed);
    CHECK(buf != NULL);
    len = needed - 1;
    FAILS(WSAEnumProtocolsW(NULL, buf, &len), WSAENOBUFS);
    CHECK(len == needed);
    len = 0;
    FAILS(WSAEnumProtocolsW(NULL, buf, &len), WSAENOBUFS);
    CHECK(len == needed);
    n = WSAEnumProtocolsW(NULL, buf, &len);
    CHECK(n == (int)(needed / sizeof(WSAPROTOCOL_INFOW)));
    count_tcp = 0;
    for (i = 0; i < n; i++) {
        CHECK((buf[i].dwProviderFlags & PFL_HIDDEN) == 0);
        CHECK(buf[i].dwCatalogEntryId != 0);
        if (buf[i].iProtocol == IPPROTO_TCP) count_tcp++;
    }
    CHECK(count_tcp >= 2); /* TCP over IPv4 and IPv6 */
    /* An entry makes a new socket of its own kind (no duplicate in it). */
    for (i = 0; i < n; i++) {
        if (buf[i].iAddressFamily == AF_INET && buf[i].iProtocol == IPPROTO_TCP) {
            SOCKET s = WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &buf[i], 0, 0);
            int type = 0;
            socklen_t tl = sizeof type;
            CHECK(s != INVALID_SOCKET);
            CHECK(getsockopt((int)s, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM);
            CHECK(closesocket(s) == 0);
            WSASetLastError(0);
            CHECK(WSASocketW(AF_INET6, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &buf[i], 0, 0) == INVALID_SOCKET);
            CHECK(WSAGetLastError() == WSAEINVAL);
            break;
        }
    }
    len = needed;
    n = WSAEnumProtocolsW(tcp, buf, &len);
    CHECK(n == count_tcp);
    for (i = 0; i < n; i++) CHECK(buf[i].iProtocol == IPPROTO_TCP);
    free(buf);
}

static void events(void) {
    int sv[2];
    WSAEVENT ev = WSACreateEvent(), other = WSACreateEvent();
    WSAEVENT both[2];
    WSANETWORKEVENTS ne;
    char c;

    CHECK(ev != WSA_INVALID_EVENT && other != WSA_INVALID_EVENT && ev != other);
    both[0] = other;
    both[1] = ev;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(WSAEventSelect((SOCKET)sv[0], ev, FD_ALL_EVENTS) == 0); /* Windows' ten bits */
    /* FD_WRITE (connected) set it; a new selection clears the record, not the event. */
    CHECK(WSAWaitForMultipleEvents(1, &ev, FALSE, 10000, FALSE) == WSA_WAIT_EVENT_0);
    CHECK(WSAResetEvent(ev) == TRUE);
    CHECK(WSAEventSelect((SOCKET)sv[0], ev, FD_READ | FD_CLOSE) == 0);
    CHECK(WSAWaitForMultipleEvents(2, both, FALSE, 0, FALSE) == WSA_WAIT_TIMEOUT);
    CHECK(write(sv[1], "x", 1) == 1);
    CHECK(WSAWaitForMultipleEvents(2, both, FALSE, 10000, FALSE) == WSA_WAIT_EVENT_0 + 1);
    CHECK(WSAEnumNetworkEvents((SOCKET)sv[0], ev, &ne) == 0);
    CHECK(ne.lNetworkEvents == FD_READ);
    CHECK(ne.iErrorCode[FD_READ_BIT] == 0);
    CHECK(WSAWaitForMultipleEvents(1, &ev, FALSE, 0, FALSE) == WSA_WAIT_TIMEOUT); /* reset */
    CHECK(read(sv[0], &c, 1) == 1);
    CHECK(closesocket((SOCKET)sv[0]) == 0);
    close(sv[1]);
    /* FD_CLOSE: a peer that goes */
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(WSAEventSelect((SOCKET)sv[0], ev, FD_CLOSE) == 0);
    close(sv[1]);
    CHECK(WSAWaitForMultipleEvents(1, &ev, FALSE, 10000, FALSE) == WSA_WAIT_EVENT_0);
    CHECK(WSAEnumNetworkEvents((SOCKET)sv[0], NULL, &ne) == 0);
    CHECK(ne.lNetworkEvents == FD_CLOSE);
    CHECK(WSASetEvent(other) == TRUE);
    CHECK(WSAWaitForMultipleEvents(2, both, TRUE, 0, FALSE) == WSA_WAIT_EVENT_0);
    CHECK(WSAResetEvent(other) == TRUE);
    CHECK(WSAEventSelect((SOCKET)sv[0], NULL, 0) == 0); /* cancels */
    CHECK(closesocket((SOCKET)sv[0]) == 0);
    CHECK(WSACloseEvent(ev) == TRUE);
    CHECK(WSACloseEvent(other) == TRUE);
}

/* Sockets made, adopted, duplicated, redeemed and closed, many times: no descriptor stays. */
static void no_descriptor_left(void) {
    int i;
    for (i = 0; i < 50; i++) {
        WSAPROTOCOL_INFOW info;
        SOCKET s = WSASocketW(AF_INET, SOCK_STREAM, 0, NULL, 0, WSA_FLAG_OVERLAPPED), r;
        int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        CHECK(s != INVALID_SOCKET && u >= 0);
        CHECK(WSADuplicateSocketW(s, (DWORD)getpid(), &info) == 0);
        r = WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, 0);
        CHECK(r != INVALID_SOCKET && r != s);
        CHECK(WSADuplicateSocketW((SOCKET)u, (DWORD)getpid(), &info) == 0);
        /* a record nobody redeems is closed when its time-to-live ends or at WSACleanup */
        CHECK(closesocket(r) == 0);
        CHECK(closesocket(s) == 0);
        CHECK(closesocket((SOCKET)u) == 0);
    }
    CHECK(WSACleanup() == 0); /* the last: the inbox and the unredeemed duplicates go */
}

/* A child forked after WSAStartup starts its own run: its WSAStartup/WSACleanup count is its
 * own, and the parent's sockets are plain descriptors to it. */
static void forked_child(void) {
    SOCKET s = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, 0);
    pid_t child;
    int status;
    CHECK(s != INVALID_SOCKET);
    child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        WSADATA data;
        WSAPROTOCOL_INFOW info;
        WSASetLastError(0);
        CHECK(WSADuplicateSocketW(s, (DWORD)getpid(), &info) == SOCKET_ERROR);
        CHECK(WSAGetLastError() == WSANOTINITIALISED); /* the parent's run does not cross fork */
        CHECK(WSAStartup(MAKEWORD(2, 2), &data) == 0);
        CHECK(WSADuplicateSocketW(s, (DWORD)getpid(), &info) == 0);
        CHECK(closesocket(s) == 0);
        CHECK(WSACleanup() == 0);
        FAILS(WSACleanup(), WSANOTINITIALISED);
        _exit(0);
    }
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(closesocket(s) == 0); /* the parent's is still its own */
}

int main(void) {
    WSADATA data;
    WSAPROTOCOL_INFOW info;
    int baseline = open_descriptors();

    /* Before WSAStartup: WSANOTINITIALISED */
    FAILS(WSADuplicateSocketW((SOCKET)0, 1, &info), WSANOTINITIALISED);
    CHECK(WSASocketW(AF_INET, SOCK_STREAM, 0, NULL, 0, 0) == INVALID_SOCKET);
    CHECK(WSAGetLastError() == WSANOTINITIALISED);
    FAILS(WSACleanup(), WSANOTINITIALISED);
    CHECK(WSAStartup(MAKEWORD(2, 2), NULL) == WSAEFAULT);
    CHECK(WSAStartup(MAKEWORD(1, 0), &data) == WSAVERNOTSUPPORTED);

    CHECK(WSAStartup(MAKEWORD(2, 2), &data) == 0);
    CHECK(data.wVersion == MAKEWORD(2, 2) && data.wHighVersion == MAKEWORD(2, 2));
    CHECK(WSAStartup(MAKEWORD(2, 0), &data) == 0); /* calls nest */
    CHECK(data.wVersion == MAKEWORD(2, 0));
    bad_pointers_and_handles();
    enum_protocols();
    events();
    forked_child();
    CHECK(WSACleanup() == 0);
    no_descriptor_left();
    FAILS(WSACleanup(), WSANOTINITIALISED);
    if (open_descriptors() != baseline) {
        fprintf(stderr, "calls.c: %d descriptors open at the end, %d at the start\n",
                open_descriptors(), baseline);
        return 1;
    }
    printf("ok\n");
    return 0;
}
