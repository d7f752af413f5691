/*
 * counting_lsp.c: a layered service provider in C that counts the calls it passes down.
 *
 * It is what a Windows LSP is, on sockdup: a shared library exporting WSPStartup, installed as
 * a layer with a protocol chain over a catalog entry, loaded by whatever process first uses
 * that chain (a C program through WSASocketW, a Rust one through sockdup::spi::Socket):
 *
 *     cc -shared -fPIC -I crates/sockdup-ffi/include examples/c/counting_lsp.c \
 *        -o libcounting_lsp.so
 *     sockdup catalog install-library $PWD/libcounting_lsp.so --over 1001 --name counting
 *
 * It is an IFS layer: it passes the descriptors of the provider below through, registered to
 * the chain's entry with WPUModifyIFSHandle. It finds the provider below as Windows LSPs do:
 * its own place in the chain (the entry whose library is this file), the next entry with
 * WSCEnumProtocols, that entry's library with WSCGetProviderPath, then dlopen +
 * dlsym("WSPStartup"), called with the propagation rule: the next entry's own record when the
 * next is the base provider, the caller's record unchanged when it is another layer.
 *
 * The same rule for every record it passes down (WSPSocket, WSPDuplicateSocket); on the way up
 * WSPDuplicateSocket writes the chain's entry into lpProtocolInfo, keeping dwProviderReserved
 * and the service flags the base provider set, as in Microsoft's LSP sample.
 *
 * Every call appends one line to the file named by COUNTING_LSP_LOG (if set), with the call's
 * running count and the records it saw and passed:
 *
 *     WSPStartup count=1 in=1102 in_chain=2 own=1101 next=1001 next_base=1 down=1001
 *     WSPSocket count=1 af=2 in=1102 in_chain=2 down=1001 down_chain=1 socket=7
 *     WSPDuplicateSocket count=1 pid=42 in=1102 down=1001 down_chain=1 up=1102 up_chain=2 reserved=5 flags3=42
 *     WSPSocket count=2 af=-1 in=1102 in_chain=2 down=1001 down_chain=1 reserved=5 socket=9
 *
 * It links nothing of sockdup's: WSCEnumProtocols and WSCGetProviderPath bind, when it is
 * loaded, to the process's one copy (libsockdup.so in a C program, the program itself in a
 * Rust one).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sockdup/ws2spi.h>

#define MAX_CHAINS 8
#define MAX_HANDLES 65536

/* One chain this layer serves: its entry, and the provider below it. */
struct chain {
    WSAPROTOCOL_INFOW entry; /* the chain's own entry (what WSPStartup was given) */
    WSAPROTOCOL_INFOW next;  /* the next entry's own record */
    int next_is_base;
    DWORD own_id;
    WSPPROC_TABLE below;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct chain chains[MAX_CHAINS];
static int nchains;
static WSPUPCALLTABLE upcalls;
static unsigned char chain_of_handle[MAX_HANDLES]; /* index + 1 */

static struct {
    unsigned long startup, socket, duplicate, close, connect, bind, listen, accept, send, recv,
        cleanup;
} counts;

static void lsp_log(const char *fmt, ...) {
    const char *path = getenv("COUNTING_LSP_LOG");
    if (!path || !*path)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, (size_t)n); /* one write: lines of two threads never mix */
    (void)w;
    close(fd);
}

/* The UTF-16 path WSCGetProviderPath gives, as UTF-8 (paths here are ASCII or BMP text). */
static int utf16_to_utf8(const WCHAR *in, char *out, size_t cap) {
    size_t o = 0;
    for (; *in; in++) {
        unsigned c = *in;
        if (c < 0x80) {
            if (o + 1 >= cap)
                return -1;
            out[o++] = (char)c;
        } else if (c < 0x800) {
            if (o + 2 >= cap)
                return -1;
            out[o++] = (char)(0xC0 | (c >> 6));
            out[o++] = (char)(0x80 | (c & 0x3F));
        } else {
            if (o + 3 >= cap)
                return -1;
            out[o++] = (char)(0xE0 | (c >> 12));
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (c & 0x3F));
        }
    }
    out[o] = 0;
    return 0;
}

/* The library of the provider with GUID *id, canonical, into out. */
static int provider_path(GUID *id, char *out, size_t cap, LPINT lpErrno) {
    WCHAR wide[PATH_MAX];
    int len = PATH_MAX;
    if (WSCGetProviderPath(id, wide, &len, lpErrno) != 0)
        return -1;
    char utf8[PATH_MAX * 3];
    if (utf16_to_utf8(wide, utf8, sizeof utf8) != 0 || !realpath(utf8, out)) {
        *lpErrno = WSAEINVALIDPROVIDER;
        return -1;
    }
    (void)cap;
    return 0;
}

/* Every catalog entry (WSCEnumProtocols, hidden layer entries too); free() it. */
static WSAPROTOCOL_INFOW *enum_protocols(int *count, LPINT lpErrno) {
    DWORD len = 0;
    if (WSCEnumProtocols(NULL, NULL, &len, lpErrno) != SOCKET_ERROR || *lpErrno != WSAENOBUFS)
        return NULL;
    WSAPROTOCOL_INFOW *all = malloc(len);
    if (!all) {
        *lpErrno = WSAENOBUFS;
        return NULL;
    }
    int n = WSCEnumProtocols(NULL, all, &len, lpErrno);
    if (n == SOCKET_ERROR) {
        free(all);
        return NULL;
    }
    *count = n;
    return all;
}

static const WSAPROTOCOL_INFOW *find_entry(const WSAPROTOCOL_INFOW *all, int n, DWORD id) {
    for (int i = 0; i < n; i++)
        if (all[i].dwCatalogEntryId == id)
            return &all[i];
    return NULL;
}

static struct chain *chain_by_id(DWORD id) {
    for (int i = 0; i < nchains; i++)
        if (chains[i].entry.dwCatalogEntryId == id)
            return &chains[i];
    return NULL;
}

static struct chain *chain_by_handle(SOCKET s) {
    if (s < MAX_HANDLES && chain_of_handle[s])
        return &chains[chain_of_handle[s] - 1];
    return nchains == 1 ? &chains[0] : NULL;
}

static void remember(SOCKET s, struct chain *c) {
    if (s < MAX_HANDLES)
        chain_of_handle[s] = (unsigned char)(c - chains + 1);
}

/* The record to hand the provider below (the propagation rule): the next entry's own record,
 * with the provider's fields of `in`, when the next is the base; `in` itself otherwise. */
static WSAPROTOCOL_INFOW down_record(const struct chain *c, const WSAPROTOCOL_INFOW *in) {
    if (!c->next_is_base)
        return *in;
    WSAPROTOCOL_INFOW d = c->next;
    d.dwProviderReserved = in->dwProviderReserved;
    d.dwServiceFlags2 = in->dwServiceFlags2;
    d.dwServiceFlags3 = in->dwServiceFlags3;
    d.dwServiceFlags4 = in->dwServiceFlags4;
    return d;
}

static SOCKET WSPAPI lsp_socket(int af, int type, int protocol, LPWSAPROTOCOL_INFOW info, GROUP g,
                                DWORD flags, LPINT lpErrno) {
    if (!info) {
        *lpErrno = WSAEFAULT;
        return INVALID_SOCKET;
    }
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_id(info->dwCatalogEntryId);
    unsigned long n = ++counts.socket;
    pthread_mutex_unlock(&lock);
    if (!c) {
        *lpErrno = WSAEINVAL;
        return INVALID_SOCKET;
    }
    WSAPROTOCOL_INFOW down = down_record(c, info);
    SOCKET s = c->below.lpWSPSocket(af, type, protocol, &down, g, flags, lpErrno);
    if (s != INVALID_SOCKET) {
        /* An IFS layer: the descriptor below is ours, registered to the chain's entry. */
        s = upcalls.lpWPUModifyIFSHandle(info->dwCatalogEntryId, s, lpErrno);
    }
    if (s != INVALID_SOCKET) {
        pthread_mutex_lock(&lock);
        remember(s, c);
        pthread_mutex_unlock(&lock);
    }
    lsp_log("WSPSocket count=%lu af=%d type=%d protocol=%d in=%u in_chain=%d down=%u down_chain=%d "
         "reserved=%u socket=%ld error=%d",
         n, af, type, protocol, info->dwCatalogEntryId, info->ProtocolChain.ChainLen,
         down.dwCatalogEntryId, down.ProtocolChain.ChainLen, info->dwProviderReserved,
         s == INVALID_SOCKET ? -1L : (long)s, s == INVALID_SOCKET ? *lpErrno : 0);
    return s;
}

static int WSPAPI lsp_duplicate_socket(SOCKET s, DWORD pid, LPWSAPROTOCOL_INFOW info,
                                       LPINT lpErrno) {
    if (!info) {
        *lpErrno = WSAEFAULT;
        return SOCKET_ERROR;
    }
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.duplicate;
    pthread_mutex_unlock(&lock);
    if (!c) {
        *lpErrno = WSAENOTSOCK;
        return SOCKET_ERROR;
    }
    /* Down: the base entry when the next is the base, the chain's entry to a next layer. */
    WSAPROTOCOL_INFOW down = c->next_is_base ? c->next : c->entry;
    int r = c->below.lpWSPDuplicateSocket(s, pid, &down, lpErrno);
    if (r == 0) {
        /* Up: the chain's entry, with the base provider's fields (ticket, target, run). */
        WSAPROTOCOL_INFOW up = c->entry;
        up.dwProviderReserved = down.dwProviderReserved;
        up.dwServiceFlags2 = down.dwServiceFlags2;
        up.dwServiceFlags3 = down.dwServiceFlags3;
        up.dwServiceFlags4 = down.dwServiceFlags4;
        *info = up;
    }
    lsp_log("WSPDuplicateSocket count=%lu pid=%u socket=%ld down=%u down_chain=%d up=%u up_chain=%d "
         "reserved=%u flags3=%u error=%d",
         n, pid, (long)s, down.dwCatalogEntryId, down.ProtocolChain.ChainLen,
         r == 0 ? info->dwCatalogEntryId : 0, r == 0 ? info->ProtocolChain.ChainLen : 0,
         down.dwProviderReserved, down.dwServiceFlags3, r == 0 ? 0 : *lpErrno);
    return r;
}

static int WSPAPI lsp_close_socket(SOCKET s, LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.close;
    if (s < MAX_HANDLES)
        chain_of_handle[s] = 0;
    pthread_mutex_unlock(&lock);
    if (!c) {
        *lpErrno = WSAENOTSOCK;
        return SOCKET_ERROR;
    }
    int r = c->below.lpWSPCloseSocket(s, lpErrno);
    lsp_log("WSPCloseSocket count=%lu socket=%ld error=%d", n, (long)s, r == 0 ? 0 : *lpErrno);
    return r;
}

static int WSPAPI lsp_connect(SOCKET s, const struct sockaddr *name, int namelen, LPWSABUF a,
                              LPWSABUF b, LPQOS q1, LPQOS q2, LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.connect;
    pthread_mutex_unlock(&lock);
    if (!c || !c->below.lpWSPConnect) {
        *lpErrno = c ? WSAEOPNOTSUPP : WSAENOTSOCK;
        return SOCKET_ERROR;
    }
    int r = c->below.lpWSPConnect(s, name, namelen, a, b, q1, q2, lpErrno);
    lsp_log("WSPConnect count=%lu socket=%ld error=%d", n, (long)s, r == 0 ? 0 : *lpErrno);
    return r;
}

static int WSPAPI lsp_bind(SOCKET s, const struct sockaddr *name, int namelen, LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.bind;
    pthread_mutex_unlock(&lock);
    if (!c || !c->below.lpWSPBind) {
        *lpErrno = c ? WSAEOPNOTSUPP : WSAENOTSOCK;
        return SOCKET_ERROR;
    }
    int r = c->below.lpWSPBind(s, name, namelen, lpErrno);
    lsp_log("WSPBind count=%lu socket=%ld error=%d", n, (long)s, r == 0 ? 0 : *lpErrno);
    return r;
}

static int WSPAPI lsp_listen(SOCKET s, int backlog, LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.listen;
    pthread_mutex_unlock(&lock);
    if (!c || !c->below.lpWSPListen) {
        *lpErrno = c ? WSAEOPNOTSUPP : WSAENOTSOCK;
        return SOCKET_ERROR;
    }
    int r = c->below.lpWSPListen(s, backlog, lpErrno);
    lsp_log("WSPListen count=%lu socket=%ld error=%d", n, (long)s, r == 0 ? 0 : *lpErrno);
    return r;
}

static SOCKET WSPAPI lsp_accept(SOCKET s, struct sockaddr *addr, LPINT addrlen,
                                LPCONDITIONPROC cond, DWORD_PTR data, LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.accept;
    pthread_mutex_unlock(&lock);
    if (!c || !c->below.lpWSPAccept) {
        *lpErrno = c ? WSAEOPNOTSUPP : WSAENOTSOCK;
        return INVALID_SOCKET;
    }
    SOCKET a = c->below.lpWSPAccept(s, addr, addrlen, cond, data, lpErrno);
    if (a != INVALID_SOCKET)
        a = upcalls.lpWPUModifyIFSHandle(c->entry.dwCatalogEntryId, a, lpErrno);
    if (a != INVALID_SOCKET) {
        pthread_mutex_lock(&lock);
        remember(a, c);
        pthread_mutex_unlock(&lock);
    }
    lsp_log("WSPAccept count=%lu socket=%ld accepted=%ld", n, (long)s,
         a == INVALID_SOCKET ? -1L : (long)a);
    return a;
}

static int WSPAPI lsp_send(SOCKET s, LPWSABUF bufs, DWORD count, LPDWORD sent, DWORD flags,
                           LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE done,
                           LPWSATHREADID thread, LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.send;
    pthread_mutex_unlock(&lock);
    if (!c || !c->below.lpWSPSend) {
        *lpErrno = c ? WSAEOPNOTSUPP : WSAENOTSOCK;
        return SOCKET_ERROR;
    }
    int r = c->below.lpWSPSend(s, bufs, count, sent, flags, ov, done, thread, lpErrno);
    lsp_log("WSPSend count=%lu socket=%ld bytes=%u error=%d", n, (long)s, r == 0 ? *sent : 0,
         r == 0 ? 0 : *lpErrno);
    return r;
}

static int WSPAPI lsp_recv(SOCKET s, LPWSABUF bufs, DWORD count, LPDWORD got, LPDWORD flags,
                           LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE done,
                           LPWSATHREADID thread, LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    struct chain *c = chain_by_handle(s);
    unsigned long n = ++counts.recv;
    pthread_mutex_unlock(&lock);
    if (!c || !c->below.lpWSPRecv) {
        *lpErrno = c ? WSAEOPNOTSUPP : WSAENOTSOCK;
        return SOCKET_ERROR;
    }
    int r = c->below.lpWSPRecv(s, bufs, count, got, flags, ov, done, thread, lpErrno);
    lsp_log("WSPRecv count=%lu socket=%ld bytes=%u error=%d", n, (long)s, r == 0 ? *got : 0,
         r == 0 ? 0 : *lpErrno);
    return r;
}

static int WSPAPI lsp_cleanup(LPINT lpErrno) {
    pthread_mutex_lock(&lock);
    unsigned long n = ++counts.cleanup;
    pthread_mutex_unlock(&lock);
    int r = 0;
    for (int i = 0; i < nchains && r == 0; i++)
        if (chains[i].below.lpWSPCleanup)
            r = chains[i].below.lpWSPCleanup(lpErrno);
    lsp_log("WSPCleanup count=%lu", n);
    return r;
}

/* This file, canonical (to find the own entry in a chain). */
static int own_path(char *out) {
    Dl_info di;
    if (!dladdr((void *)&own_path, &di) || !di.dli_fname || !realpath(di.dli_fname, out))
        return -1;
    return 0;
}

int WSPAPI WSPStartup(WORD version, LPWSPDATA data, LPWSAPROTOCOL_INFOW info,
                      WSPUPCALLTABLE upcall_table, LPWSPPROC_TABLE table) {
    int err = 0;
    if ((version & 0xff) < 2)
        return WSAVERNOTSUPPORTED;
    if (!data || !info || !table)
        return WSAEFAULT;
    pthread_mutex_lock(&lock);
    unsigned long n = ++counts.startup;
    upcalls = upcall_table; /* the most recent one, as the specification asks */
    struct chain *c = chain_by_id(info->dwCatalogEntryId);
    if (c)
        goto fill; /* started for this chain already */
    if (nchains == MAX_CHAINS || info->ProtocolChain.ChainLen < 2) {
        err = WSAEINVAL;
        goto out;
    }
    char self[PATH_MAX];
    if (own_path(self) != 0) {
        err = WSAEPROVIDERFAILEDINIT;
        goto out;
    }
    int count = 0;
    WSAPROTOCOL_INFOW *all = enum_protocols(&count, &err);
    if (!all)
        goto out;
    /* Our place in the chain: the first layer entry whose library is this file. */
    int at = -1;
    for (int i = 0; i < info->ProtocolChain.ChainLen - 1 && at < 0; i++) {
        const WSAPROTOCOL_INFOW *e = find_entry(all, count, info->ProtocolChain.ChainEntries[i]);
        char path[PATH_MAX];
        int perr = 0;
        if (e && e->ProtocolChain.ChainLen == LAYERED_PROTOCOL &&
            provider_path((GUID *)&e->ProviderId, path, sizeof path, &perr) == 0 &&
            strcmp(path, self) == 0)
            at = i;
    }
    const WSAPROTOCOL_INFOW *next =
        at < 0 ? NULL : find_entry(all, count, info->ProtocolChain.ChainEntries[at + 1]);
    if (!next) {
        free(all);
        err = WSAEINVAL;
        goto out;
    }
    c = &chains[nchains];
    memset(c, 0, sizeof *c);
    c->entry = *info;
    c->next = *next;
    c->own_id = info->ProtocolChain.ChainEntries[at];
    c->next_is_base = next->ProtocolChain.ChainLen == BASE_PROTOCOL;
    free(all);

    /* The provider below: its library, WSPStartup with the propagation rule. */
    char below_path[PATH_MAX];
    if (provider_path(&c->next.ProviderId, below_path, sizeof below_path, &err) != 0)
        goto out;
    if (strcmp(below_path, self) == 0) { /* a catalog naming this file below itself */
        err = WSAEINVALIDPROVIDER;
        goto out;
    }
    void *lib = dlopen(below_path, RTLD_NOW | RTLD_LOCAL);
    LPWSPSTARTUP below_startup = lib ? (LPWSPSTARTUP)dlsym(lib, "WSPStartup") : NULL;
    if (!below_startup) {
        err = WSAEPROVIDERFAILEDINIT;
        goto out;
    }
    WSAPROTOCOL_INFOW down = c->next_is_base ? c->next : *info;
    WSPDATA below_data;
    err = below_startup(version, &below_data, &down, upcall_table, &c->below);
    lsp_log("WSPStartup count=%lu in=%u in_chain=%d own=%u next=%u next_base=%d down=%u "
         "down_chain=%d below=%s error=%d",
         n, info->dwCatalogEntryId, info->ProtocolChain.ChainLen, c->own_id,
         c->next.dwCatalogEntryId, c->next_is_base, down.dwCatalogEntryId,
         down.ProtocolChain.ChainLen, below_path, err);
    if (err != 0)
        goto out;
    if (!c->below.lpWSPSocket || !c->below.lpWSPCloseSocket ||
        !c->below.lpWSPDuplicateSocket) {
        err = WSAEINVALIDPROCTABLE;
        goto out;
    }
    nchains++;
fill:
    memset(table, 0, sizeof *table);
    table->lpWSPSocket = lsp_socket;
    table->lpWSPDuplicateSocket = lsp_duplicate_socket;
    table->lpWSPCloseSocket = lsp_close_socket;
    table->lpWSPConnect = lsp_connect;
    table->lpWSPBind = lsp_bind;
    table->lpWSPListen = lsp_listen;
    table->lpWSPAccept = lsp_accept;
    table->lpWSPSend = lsp_send;
    table->lpWSPRecv = lsp_recv;
    table->lpWSPCleanup = lsp_cleanup;
    data->wVersion = 0x0202;
    data->wHighVersion = 0x0202;
    memset(data->szDescription, 0, sizeof data->szDescription);
    {
        const char *d = "counting LSP";
        for (int i = 0; d[i]; i++)
            data->szDescription[i] = (WCHAR)d[i];
    }
out:
    pthread_mutex_unlock(&lock);
    if (err != 0)
        lsp_log("WSPStartup count=%lu in=%u error=%d", n, info->dwCatalogEntryId, err);
    return err;
}
