/*
 * sockdup/winsock2.h: Windows Sockets 2 socket duplication for Linux, from C.
 *
 * The names, structures and calling shape of Windows' winsock2.h for the calls sockdup
 * implements: WSAStartup, WSACleanup, WSAGetLastError, WSASetLastError, WSADuplicateSocketW,
 * WSASocketW, closesocket, WSAEnumProtocolsW, the event calls (WSACreateEvent, WSAEventSelect,
 * WSAEnumNetworkEvents, WSAWaitForMultipleEvents, WSACloseEvent, WSASetEvent, WSAResetEvent),
 * and the one-line text form of a record (sockdup_info_to_text, sockdup_info_from_text).
 *
 * A SOCKET is a file descriptor: bind, listen, connect, accept, setsockopt, send, recv and poll
 * work on it, and any socket descriptor of the process (from socket(2) or accept(2) too) is a
 * valid SOCKET. Build:
 *
 *     cargo build --release -p sockdup-ffi
 *     cc app.c -I crates/sockdup-ffi/include -L target/release -lsockdup
 *
 * and #include <sockdup/winsock2.h>.
 */
#ifndef SOCKDUP_WINSOCK2_H
#define SOCKDUP_WINSOCK2_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WSAAPI
#define WSPAPI

/* ---- basic types (Windows' sizes) ---- */
typedef uintptr_t SOCKET;
typedef uint8_t BYTE;
typedef uint16_t WORD;
typedef uint32_t DWORD;
typedef int32_t LONG;
typedef int INT;
typedef int BOOL;
typedef uint16_t WCHAR; /* one UTF-16 unit, as on Windows: not wchar_t */
typedef unsigned int GROUP;
typedef uintptr_t DWORD_PTR;
typedef DWORD *LPDWORD;
typedef DWORD_PTR *PDWORD_PTR;
typedef int *LPINT;
typedef WCHAR *LPWSTR;
typedef void *WSAEVENT;
typedef WSAEVENT *LPWSAEVENT;

#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

#define INVALID_SOCKET ((SOCKET)(~(SOCKET)0))
#define SOCKET_ERROR (-1)
#define FROM_PROTOCOL_INFO (-1)

#define MAKEWORD(low, high) ((WORD)(((BYTE)(low)) | ((WORD)((BYTE)(high))) << 8))
#define LOBYTE(w) ((BYTE)((w) & 0xff))
#define HIBYTE(w) ((BYTE)(((w) >> 8) & 0xff))

/* ---- GUID ---- */
#ifndef GUID_DEFINED
#define GUID_DEFINED
typedef struct _GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} GUID;
#endif
typedef GUID *LPGUID;

/* ---- WSAPROTOCOL_INFOW ---- */
#define MAX_PROTOCOL_CHAIN 7
#define BASE_PROTOCOL 1
#define LAYERED_PROTOCOL 0
#define WSAPROTOCOL_LEN 255

typedef struct _WSAPROTOCOLCHAIN {
    int ChainLen;                           /* 0 layered, 1 base, > 1 a chain */
    DWORD ChainEntries[MAX_PROTOCOL_CHAIN]; /* top layer first */
} WSAPROTOCOLCHAIN, *LPWSAPROTOCOLCHAIN;
typedef WSAPROTOCOLCHAIN WSAPROTOCOL_CHAIN;

typedef struct _WSAPROTOCOL_INFOW {
    DWORD dwServiceFlags1;
    DWORD dwServiceFlags2;
    DWORD dwServiceFlags3; /* sockdup duplicate: the target pid */
    DWORD dwServiceFlags4; /* sockdup duplicate: the target's run nonce */
    DWORD dwProviderFlags;
    GUID ProviderId;
    DWORD dwCatalogEntryId;
    WSAPROTOCOLCHAIN ProtocolChain;
    int iVersion;
    int iAddressFamily;
    int iMaxSockAddr;
    int iMinSockAddr;
    int iSocketType;
    int iProtocol;
    int iProtocolMaxOffset;
    int iNetworkByteOrder;
    int iSecurityScheme;
    DWORD dwMessageSize;
    DWORD dwProviderReserved; /* sockdup duplicate: the ticket */
    WCHAR szProtocol[WSAPROTOCOL_LEN + 1];
} WSAPROTOCOL_INFOW, *LPWSAPROTOCOL_INFOW;

#if defined(__cplusplus)
static_assert(sizeof(WSAPROTOCOL_INFOW) == 628, "WSAPROTOCOL_INFOW is 628 bytes, as on Windows");
static_assert(sizeof(WSAPROTOCOLCHAIN) == 32, "WSAPROTOCOLCHAIN is 32 bytes");
#else
_Static_assert(sizeof(WSAPROTOCOL_INFOW) == 628, "WSAPROTOCOL_INFOW is 628 bytes, as on Windows");
_Static_assert(sizeof(WSAPROTOCOLCHAIN) == 32, "WSAPROTOCOLCHAIN is 32 bytes");
#endif

/* XP1_* (dwServiceFlags1) */
#define XP1_CONNECTIONLESS 0x00000001
#define XP1_GUARANTEED_DELIVERY 0x00000002
#define XP1_GUARANTEED_ORDER 0x00000004
#define XP1_MESSAGE_ORIENTED 0x00000008
#define XP1_PSEUDO_STREAM 0x00000010
#define XP1_GRACEFUL_CLOSE 0x00000020
#define XP1_EXPEDITED_DATA 0x00000040
#define XP1_CONNECT_DATA 0x00000080
#define XP1_DISCONNECT_DATA 0x00000100
#define XP1_SUPPORT_BROADCAST 0x00000200
#define XP1_SUPPORT_MULTIPOINT 0x00000400
#define XP1_MULTIPOINT_CONTROL_PLANE 0x00000800
#define XP1_MULTIPOINT_DATA_PLANE 0x00001000
#define XP1_QOS_SUPPORTED 0x00002000
#define XP1_INTERRUPT 0x00004000
#define XP1_UNI_SEND 0x00008000
#define XP1_UNI_RECV 0x00010000
#define XP1_IFS_HANDLES 0x00020000
#define XP1_PARTIAL_MESSAGE 0x00040000
#define XP1_SAN_SUPPORT_SDP 0x00080000

/* PFL_* (dwProviderFlags) */
#define PFL_MULTIPLE_PROTO_ENTRIES 0x00000001
#define PFL_RECOMMENDED_PROTO_ENTRY 0x00000002
#define PFL_HIDDEN 0x00000004
#define PFL_MATCHES_PROTOCOL_ZERO 0x00000008
#define PFL_NETWORKDIRECT_PROVIDER 0x00000010

/* WSASocketW dwFlags (accepted; every sockdup descriptor is close-on-exec) */
#define WSA_FLAG_OVERLAPPED 0x01
#define WSA_FLAG_MULTIPOINT_C_ROOT 0x02
#define WSA_FLAG_MULTIPOINT_C_LEAF 0x04
#define WSA_FLAG_MULTIPOINT_D_ROOT 0x08
#define WSA_FLAG_MULTIPOINT_D_LEAF 0x10
#define WSA_FLAG_ACCESS_SYSTEM_SECURITY 0x40
#define WSA_FLAG_NO_HANDLE_INHERIT 0x80
#define WSA_FLAG_REGISTERED_IO 0x100

/* ---- WSADATA ---- */
#define WSADESCRIPTION_LEN 256
#define WSASYS_STATUS_LEN 128

typedef struct WSAData {
    WORD wVersion;
    WORD wHighVersion;
#if UINTPTR_MAX > 0xffffffffu
    unsigned short iMaxSockets;
    unsigned short iMaxUdpDg;
    char *lpVendorInfo;
    char szDescription[WSADESCRIPTION_LEN + 1];
    char szSystemStatus[WSASYS_STATUS_LEN + 1];
#else
    char szDescription[WSADESCRIPTION_LEN + 1];
    char szSystemStatus[WSASYS_STATUS_LEN + 1];
    unsigned short iMaxSockets;
    unsigned short iMaxUdpDg;
    char *lpVendorInfo;
#endif
} WSADATA, *LPWSADATA;

/* ---- network events ---- */
#define FD_READ_BIT 0
#define FD_READ (1 << FD_READ_BIT)
#define FD_WRITE_BIT 1
#define FD_WRITE (1 << FD_WRITE_BIT)
#define FD_OOB_BIT 2
#define FD_OOB (1 << FD_OOB_BIT)
#define FD_ACCEPT_BIT 3
#define FD_ACCEPT (1 << FD_ACCEPT_BIT)
#define FD_CONNECT_BIT 4
#define FD_CONNECT (1 << FD_CONNECT_BIT)
#define FD_CLOSE_BIT 5
#define FD_CLOSE (1 << FD_CLOSE_BIT)
/* Accepted by WSAEventSelect (they are in FD_ALL_EVENTS), never signalled by sockdup. */
#define FD_QOS_BIT 6
#define FD_QOS (1 << FD_QOS_BIT)
#define FD_GROUP_QOS_BIT 7
#define FD_GROUP_QOS (1 << FD_GROUP_QOS_BIT)
#define FD_ROUTING_INTERFACE_CHANGE_BIT 8
#define FD_ROUTING_INTERFACE_CHANGE (1 << FD_ROUTING_INTERFACE_CHANGE_BIT)
#define FD_ADDRESS_LIST_CHANGE_BIT 9
#define FD_ADDRESS_LIST_CHANGE (1 << FD_ADDRESS_LIST_CHANGE_BIT)
#define FD_MAX_EVENTS 10
#define FD_ALL_EVENTS ((1 << FD_MAX_EVENTS) - 1)

typedef struct _WSANETWORKEVENTS {
    LONG lNetworkEvents;
    int iErrorCode[FD_MAX_EVENTS];
} WSANETWORKEVENTS, *LPWSANETWORKEVENTS;

#define WSA_INVALID_EVENT ((WSAEVENT)0)
#define WSA_MAXIMUM_WAIT_EVENTS 64
#define WSA_WAIT_EVENT_0 ((DWORD)0)
#define WSA_WAIT_IO_COMPLETION ((DWORD)0xC0)
#define WSA_WAIT_TIMEOUT ((DWORD)258)
#define WSA_WAIT_FAILED ((DWORD)0xFFFFFFFF)
#define WSA_INFINITE ((DWORD)0xFFFFFFFF)

/* ---- error codes (WSAGetLastError, *lpErrno) ---- */
#define WSA_INVALID_HANDLE 6
#define WSA_NOT_ENOUGH_MEMORY 8
#define WSA_INVALID_PARAMETER 87
#define WSABASEERR 10000
#define WSAEINTR 10004
#define WSAEBADF 10009
#define WSAEACCES 10013
#define WSAEFAULT 10014
#define WSAEINVAL 10022
#define WSAEMFILE 10024
#define WSAEWOULDBLOCK 10035
#define WSAEINPROGRESS 10036
#define WSAEALREADY 10037
#define WSAENOTSOCK 10038
#define WSAEDESTADDRREQ 10039
#define WSAEMSGSIZE 10040
#define WSAEPROTOTYPE 10041
#define WSAENOPROTOOPT 10042
#define WSAEPROTONOSUPPORT 10043
#define WSAESOCKTNOSUPPORT 10044
#define WSAEOPNOTSUPP 10045
#define WSAEPFNOSUPPORT 10046
#define WSAEAFNOSUPPORT 10047
#define WSAEADDRINUSE 10048
#define WSAEADDRNOTAVAIL 10049
#define WSAENETDOWN 10050
#define WSAENETUNREACH 10051
#define WSAENETRESET 10052
#define WSAECONNABORTED 10053
#define WSAECONNRESET 10054
#define WSAENOBUFS 10055
#define WSAEISCONN 10056
#define WSAENOTCONN 10057
#define WSAESHUTDOWN 10058
#define WSAETIMEDOUT 10060
#define WSAECONNREFUSED 10061
#define WSAEHOSTUNREACH 10065
#define WSASYSNOTREADY 10091
#define WSAVERNOTSUPPORTED 10092
#define WSANOTINITIALISED 10093
#define WSAEINVALIDPROCTABLE 10104
#define WSAEINVALIDPROVIDER 10105
#define WSAEPROVIDERFAILEDINIT 10106
#define WSASYSCALLFAILURE 10107

/* ---- functions ---- */

/* 0 on success, else the error code itself (WSAEFAULT for a NULL lpWSAData,
 * WSAVERNOTSUPPORTED below 1.1). Calls nest; each needs a WSACleanup. */
int WSAAPI WSAStartup(WORD wVersionRequested, LPWSADATA lpWSAData);
/* 0, or SOCKET_ERROR (WSANOTINITIALISED without WSAStartup). The last WSACleanup closes the
 * sockets WSASocketW made that are still open, as on Windows. */
int WSAAPI WSACleanup(void);
int WSAAPI WSAGetLastError(void);
void WSAAPI WSASetLastError(int iError);

/* 0, or SOCKET_ERROR: WSAEFAULT (NULL lpProtocolInfo), WSAENOTSOCK, WSAEINVAL (target pid)... */
int WSAAPI WSADuplicateSocketW(SOCKET s, DWORD dwProcessId, LPWSAPROTOCOL_INFOW lpProtocolInfo);
/* A new socket (first matching catalog entry, or the entry lpProtocolInfo names), or with a
 * duplicate's record (FROM_PROTOCOL_INFO in af/type/protocol) this process's descriptor of the
 * duplicated socket. INVALID_SOCKET on failure. g must be 0. */
SOCKET WSAAPI WSASocketW(int af, int type, int protocol, LPWSAPROTOCOL_INFOW lpProtocolInfo,
                         GROUP g, DWORD dwFlags);
int WSAAPI closesocket(SOCKET s);
/* The visible catalog entries (those of the protocols listed in the 0-terminated lpiProtocols,
 * or all for NULL): their count, or SOCKET_ERROR with WSAENOBUFS and *lpdwBufferLength set to
 * the size needed when lpProtocolBuffer is NULL or short. */
int WSAAPI WSAEnumProtocolsW(LPINT lpiProtocols, LPWSAPROTOCOL_INFOW lpProtocolBuffer,
                             LPDWORD lpdwBufferLength);

WSAEVENT WSAAPI WSACreateEvent(void);
BOOL WSAAPI WSACloseEvent(WSAEVENT hEvent);
BOOL WSAAPI WSASetEvent(WSAEVENT hEvent);
BOOL WSAAPI WSAResetEvent(WSAEVENT hEvent);
int WSAAPI WSAEventSelect(SOCKET s, WSAEVENT hEventObject, long lNetworkEvents);
int WSAAPI WSAEnumNetworkEvents(SOCKET s, WSAEVENT hEventObject,
                                LPWSANETWORKEVENTS lpNetworkEvents);
DWORD WSAAPI WSAWaitForMultipleEvents(DWORD cEvents, const WSAEVENT *lphEvents, BOOL fWaitAll,
                                      DWORD dwTimeout, BOOL fAlertable);

/* The generic names, as a UNICODE build of Windows' header maps them (sockdup has only the W
 * forms: the record's name is UTF-16 on every platform). */
typedef WSAPROTOCOL_INFOW WSAPROTOCOL_INFO;
typedef LPWSAPROTOCOL_INFOW LPWSAPROTOCOL_INFO;
#define WSASocket WSASocketW
#define WSADuplicateSocket WSADuplicateSocketW
#define WSAEnumProtocols WSAEnumProtocolsW

/* ---- sockdup's own ---- */

/* The record's one-line text form ("sockdup1:..."), NUL-terminated, into buf: its length
 * without the NUL, or SOCKET_ERROR with WSAEFAULT when buf is NULL or too short (the text is
 * at most SOCKDUP_INFO_TEXT_MAX bytes with its NUL). */
#define SOCKDUP_INFO_TEXT_MAX 850
int sockdup_info_to_text(const WSAPROTOCOL_INFOW *info, char *buf, size_t len);
/* Parses the text form (surrounding whitespace allowed): 0, or SOCKET_ERROR with WSAEINVAL for
 * text that is not a record, WSAEFAULT for a NULL pointer. */
int sockdup_info_from_text(const char *text, LPWSAPROTOCOL_INFOW out);
/* The message of this thread's last failed call (what went wrong and what to do), NUL-terminated
 * and cut to fit: its full length without the NUL, or SOCKET_ERROR with WSAEFAULT for a NULL buf
 * with len > 0. */
int sockdup_last_error_message(char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* SOCKDUP_WINSOCK2_H */
