//! The C structures and constants of `winsock2.h`, in Windows' layout (`#[repr(C)]`), and their
//! conversion to and from [`ProtocolInfo`] through its 628-byte codec.

#![allow(non_camel_case_types, non_snake_case)]

use sockdup::{Error, ErrorKind, ProtocolInfo};
use sockdup_core::wire::{MAX_PROTOCOL_CHAIN, WSAPROTOCOL_LEN};

/// `SOCKET`: `uintptr_t`. An IFS socket is its file descriptor.
pub type SOCKET = usize;
/// `DWORD`.
pub type DWORD = u32;
/// `WORD`.
pub type WORD = u16;
/// `WCHAR`: one UTF-16 unit, as on Windows (not `wchar_t`).
pub type WCHAR = u16;
/// `GROUP`: socket groups are not supported; 0 is the only valid value.
pub type GROUP = u32;
/// `BOOL`.
pub type BOOL = i32;
/// `WSAEVENT`: an opaque handle (`HANDLE` on Windows); never dereferenced.
pub type WSAEVENT = *mut std::ffi::c_void;

/// `INVALID_SOCKET`: `~0`.
pub const INVALID_SOCKET: SOCKET = !0;
/// `SOCKET_ERROR`: -1.
pub const SOCKET_ERROR: i32 = -1;
/// `FROM_PROTOCOL_INFO`: take the family, type or protocol from the record.
pub const FROM_PROTOCOL_INFO: i32 = -1;
/// `WSA_INVALID_EVENT`: `NULL`.
pub const WSA_INVALID_EVENT: WSAEVENT = std::ptr::null_mut();
/// `WSADESCRIPTION_LEN`.
pub const WSADESCRIPTION_LEN: usize = 256;
/// `WSASYS_STATUS_LEN`.
pub const WSASYS_STATUS_LEN: usize = 128;
/// `WSASYSCALLFAILURE`: what a panic inside the library becomes (it never crosses the boundary).
pub const WSASYSCALLFAILURE: i32 = 10107;
/// `WSAVERNOTSUPPORTED`: `WSAStartup` asked for a version sockdup does not offer (below 1.1).
pub const WSAVERNOTSUPPORTED: i32 = 10092;
/// `WSA_INVALID_HANDLE` (`ERROR_INVALID_HANDLE`): an unknown `WSAEVENT`.
pub const WSA_INVALID_HANDLE: i32 = 6;
/// `WSA_WAIT_FAILED`.
pub const WSA_WAIT_FAILED: DWORD = 0xFFFF_FFFF;
/// `WSA_WAIT_EVENT_0`.
pub const WSA_WAIT_EVENT_0: DWORD = 0;
/// `WSA_WAIT_TIMEOUT` (`WAIT_TIMEOUT`).
pub const WSA_WAIT_TIMEOUT: DWORD = 258;
/// `WSA_INFINITE`.
pub const WSA_INFINITE: DWORD = 0xFFFF_FFFF;

/// `GUID`: 16 bytes, Windows' layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GUID {
    /// `Data1`.
    pub Data1: u32,
    /// `Data2`.
    pub Data2: u16,
    /// `Data3`.
    pub Data3: u16,
    /// `Data4`.
    pub Data4: [u8; 8],
}

impl From<sockdup::Guid> for GUID {
    fn from(g: sockdup::Guid) -> Self {
        Self {
            Data1: g.data1,
            Data2: g.data2,
            Data3: g.data3,
            Data4: g.data4,
        }
    }
}

impl From<GUID> for sockdup::Guid {
    fn from(g: GUID) -> Self {
        Self {
            data1: g.Data1,
            data2: g.Data2,
            data3: g.Data3,
            data4: g.Data4,
        }
    }
}

/// `WSAPROTOCOLCHAIN` (`WSAPROTOCOL_CHAIN` is not a Windows spelling; both are in the header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WSAPROTOCOLCHAIN {
    /// `ChainLen`: 0 layered, 1 base, more: a chain.
    pub ChainLen: i32,
    /// `ChainEntries`: catalog entry ids, top layer first.
    pub ChainEntries: [DWORD; MAX_PROTOCOL_CHAIN],
}

/// `WSAPROTOCOL_INFOW`: 628 bytes, Windows' layout (see [`sockdup::wire`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WSAPROTOCOL_INFOW {
    /// `dwServiceFlags1`: `XP1_*`.
    pub dwServiceFlags1: DWORD,
    /// `dwServiceFlags2`.
    pub dwServiceFlags2: DWORD,
    /// `dwServiceFlags3`: in a sockdup duplicate, the target pid.
    pub dwServiceFlags3: DWORD,
    /// `dwServiceFlags4`: in a sockdup duplicate, the target's run nonce.
    pub dwServiceFlags4: DWORD,
    /// `dwProviderFlags`: `PFL_*`.
    pub dwProviderFlags: DWORD,
    /// `ProviderId`.
    pub ProviderId: GUID,
    /// `dwCatalogEntryId`.
    pub dwCatalogEntryId: DWORD,
    /// `ProtocolChain`.
    pub ProtocolChain: WSAPROTOCOLCHAIN,
    /// `iVersion`.
    pub iVersion: i32,
    /// `iAddressFamily`.
    pub iAddressFamily: i32,
    /// `iMaxSockAddr`.
    pub iMaxSockAddr: i32,
    /// `iMinSockAddr`.
    pub iMinSockAddr: i32,
    /// `iSocketType`.
    pub iSocketType: i32,
    /// `iProtocol`.
    pub iProtocol: i32,
    /// `iProtocolMaxOffset`.
    pub iProtocolMaxOffset: i32,
    /// `iNetworkByteOrder`.
    pub iNetworkByteOrder: i32,
    /// `iSecurityScheme`.
    pub iSecurityScheme: i32,
    /// `dwMessageSize`.
    pub dwMessageSize: DWORD,
    /// `dwProviderReserved`: in a sockdup duplicate, the ticket.
    pub dwProviderReserved: DWORD,
    /// `szProtocol`: UTF-16, NUL-terminated.
    pub szProtocol: [WCHAR; WSAPROTOCOL_LEN + 1],
}

const _: () = assert!(std::mem::size_of::<WSAPROTOCOL_INFOW>() == ProtocolInfo::LEN);
const _: () = assert!(std::mem::size_of::<WSAPROTOCOLCHAIN>() == 32);
const _: () = assert!(std::mem::size_of::<GUID>() == 16);

impl Default for WSAPROTOCOL_INFOW {
    fn default() -> Self {
        Self::from_bytes(&[0; ProtocolInfo::LEN])
    }
}

fn rd32(b: &[u8; ProtocolInfo::LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl WSAPROTOCOL_INFOW {
    /// The structure's 628 bytes in Windows' (little-endian) form.
    pub fn to_bytes(&self) -> [u8; ProtocolInfo::LEN] {
        let mut b = [0u8; ProtocolInfo::LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            b[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        for v in [
            self.dwServiceFlags1,
            self.dwServiceFlags2,
            self.dwServiceFlags3,
            self.dwServiceFlags4,
            self.dwProviderFlags,
        ] {
            put(&v.to_le_bytes());
        }
        put(&sockdup::Guid::from(self.ProviderId).to_bytes());
        put(&self.dwCatalogEntryId.to_le_bytes());
        put(&self.ProtocolChain.ChainLen.to_le_bytes());
        for e in self.ProtocolChain.ChainEntries {
            put(&e.to_le_bytes());
        }
        for v in [
            self.iVersion,
            self.iAddressFamily,
            self.iMaxSockAddr,
            self.iMinSockAddr,
            self.iSocketType,
            self.iProtocol,
            self.iProtocolMaxOffset,
            self.iNetworkByteOrder,
            self.iSecurityScheme,
        ] {
            put(&v.to_le_bytes());
        }
        put(&self.dwMessageSize.to_le_bytes());
        put(&self.dwProviderReserved.to_le_bytes());
        for u in self.szProtocol {
            put(&u.to_le_bytes());
        }
        debug_assert_eq!(at, ProtocolInfo::LEN);
        b
    }

    /// The structure from its 628 bytes (any bytes: this is the C view, not a validation).
    pub fn from_bytes(b: &[u8; ProtocolInfo::LEN]) -> Self {
        let i = |at: usize| rd32(b, at) as i32;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&b[20..36]);
        let mut chain = [0u32; MAX_PROTOCOL_CHAIN];
        for (k, e) in chain.iter_mut().enumerate() {
            *e = rd32(b, 44 + 4 * k);
        }
        let mut name = [0u16; WSAPROTOCOL_LEN + 1];
        for (k, u) in name.iter_mut().enumerate() {
            *u = u16::from_le_bytes([b[116 + 2 * k], b[117 + 2 * k]]);
        }
        Self {
            dwServiceFlags1: rd32(b, 0),
            dwServiceFlags2: rd32(b, 4),
            dwServiceFlags3: rd32(b, 8),
            dwServiceFlags4: rd32(b, 12),
            dwProviderFlags: rd32(b, 16),
            ProviderId: sockdup::Guid::from_bytes(guid).into(),
            dwCatalogEntryId: rd32(b, 36),
            ProtocolChain: WSAPROTOCOLCHAIN {
                ChainLen: i(40),
                ChainEntries: chain,
            },
            iVersion: i(72),
            iAddressFamily: i(76),
            iMaxSockAddr: i(80),
            iMinSockAddr: i(84),
            iSocketType: i(88),
            iProtocol: i(92),
            iProtocolMaxOffset: i(96),
            iNetworkByteOrder: i(100),
            iSecurityScheme: i(104),
            dwMessageSize: rd32(b, 108),
            dwProviderReserved: rd32(b, 112),
            szProtocol: name,
        }
    }

    /// The record, decoded and checked by [`ProtocolInfo::from_bytes`].
    ///
    /// # Errors
    /// `WSAEINVAL` (`malformed-record`) naming the field that is not valid.
    pub fn to_info(&self) -> Result<ProtocolInfo, Error> {
        ProtocolInfo::from_bytes(&self.to_bytes())
    }

    /// The C structure of a record.
    pub fn from_info(info: &ProtocolInfo) -> Self {
        Self::from_bytes(&info.to_bytes())
    }
}

impl From<&ProtocolInfo> for WSAPROTOCOL_INFOW {
    fn from(info: &ProtocolInfo) -> Self {
        Self::from_info(info)
    }
}

impl TryFrom<&WSAPROTOCOL_INFOW> for ProtocolInfo {
    type Error = Error;

    fn try_from(c: &WSAPROTOCOL_INFOW) -> Result<Self, Error> {
        c.to_info()
    }
}

/// `WSADATA`, in the 64-bit Windows order (the 32-bit order on 32-bit targets).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg(target_pointer_width = "64")]
pub struct WSADATA {
    /// `wVersion`: the version the caller will use.
    pub wVersion: WORD,
    /// `wHighVersion`: the highest version sockdup supports (2.2).
    pub wHighVersion: WORD,
    /// `iMaxSockets`: 0 (ignored since Winsock 2).
    pub iMaxSockets: u16,
    /// `iMaxUdpDg`: 0 (ignored since Winsock 2).
    pub iMaxUdpDg: u16,
    /// `lpVendorInfo`: `NULL`.
    pub lpVendorInfo: *mut std::ffi::c_char,
    /// `szDescription`.
    pub szDescription: [std::ffi::c_char; WSADESCRIPTION_LEN + 1],
    /// `szSystemStatus`.
    pub szSystemStatus: [std::ffi::c_char; WSASYS_STATUS_LEN + 1],
}

/// `WSADATA`, in the 32-bit Windows order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg(not(target_pointer_width = "64"))]
pub struct WSADATA {
    /// `wVersion`: the version the caller will use.
    pub wVersion: WORD,
    /// `wHighVersion`: the highest version sockdup supports (2.2).
    pub wHighVersion: WORD,
    /// `szDescription`.
    pub szDescription: [std::ffi::c_char; WSADESCRIPTION_LEN + 1],
    /// `szSystemStatus`.
    pub szSystemStatus: [std::ffi::c_char; WSASYS_STATUS_LEN + 1],
    /// `iMaxSockets`: 0 (ignored since Winsock 2).
    pub iMaxSockets: u16,
    /// `iMaxUdpDg`: 0 (ignored since Winsock 2).
    pub iMaxUdpDg: u16,
    /// `lpVendorInfo`: `NULL`.
    pub lpVendorInfo: *mut std::ffi::c_char,
}

/// `WSANETWORKEVENTS`: `lNetworkEvents` is a Windows `long` (32 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WSANETWORKEVENTS {
    /// `lNetworkEvents`: the `FD_*` bits recorded.
    pub lNetworkEvents: i32,
    /// `iErrorCode`: each event's error, by `FD_*_BIT`.
    pub iErrorCode: [i32; sockdup::spi::FD_MAX_EVENTS],
}

/// The error for a `NULL` or short buffer the caller passed (`WSAEFAULT`).
pub fn fault(what: &str) -> Error {
    Error::new(
        ErrorKind::BufferTooSmall,
        format!("{what} is NULL or too short: pass a valid buffer"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn the_layout_is_windows() {
        assert_eq!(offset_of!(WSAPROTOCOL_INFOW, ProviderId), 20);
        assert_eq!(offset_of!(WSAPROTOCOL_INFOW, dwCatalogEntryId), 36);
        assert_eq!(offset_of!(WSAPROTOCOL_INFOW, ProtocolChain), 40);
        assert_eq!(offset_of!(WSAPROTOCOL_INFOW, iVersion), 72);
        assert_eq!(offset_of!(WSAPROTOCOL_INFOW, dwProviderReserved), 112);
        assert_eq!(offset_of!(WSAPROTOCOL_INFOW, szProtocol), 116);
        assert_eq!(std::mem::size_of::<WSANETWORKEVENTS>(), 44);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<WSADATA>(), 408);
    }

    #[test]
    fn a_record_goes_through_the_c_structure_unchanged() {
        for mut info in sockdup::catalog::base_entries() {
            info.service_flags3 = 4242;
            info.service_flags4 = 0xdead_beef;
            info.provider_reserved = 7;
            let c = WSAPROTOCOL_INFOW::from_info(&info);
            assert_eq!(c.dwCatalogEntryId, info.catalog_entry_id);
            assert_eq!(c.iSocketType, info.socket_type);
            assert_eq!(c.to_bytes(), info.to_bytes());
            assert_eq!(c.to_info().expect("decodes"), info);
        }
    }

    #[test]
    fn any_bytes_round_trip_through_the_c_structure() {
        let mut b = [0u8; ProtocolInfo::LEN];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i * 7 + 3) as u8;
        }
        assert_eq!(WSAPROTOCOL_INFOW::from_bytes(&b).to_bytes(), b);
    }
}
