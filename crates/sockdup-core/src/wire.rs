//! The `WSAPROTOCOL_INFOW` record: 628 bytes, little-endian, byte for byte the Windows layout.
//!
//! | Offset | Size | Windows field | [`ProtocolInfo`] field |
//! |-------:|-----:|---------------|------------------------|
//! | 0 | 4 | `dwServiceFlags1` | `service_flags1` |
//! | 4 | 4 | `dwServiceFlags2` | `service_flags2` |
//! | 8 | 4 | `dwServiceFlags3` | `service_flags3` |
//! | 12 | 4 | `dwServiceFlags4` | `service_flags4` |
//! | 16 | 4 | `dwProviderFlags` | `provider_flags` |
//! | 20 | 16 | `ProviderId` | `provider_id` |
//! | 36 | 4 | `dwCatalogEntryId` | `catalog_entry_id` |
//! | 40 | 32 | `ProtocolChain` (`ChainLen` + 7 `ChainEntries`) | `protocol_chain` |
//! | 72 | 4 | `iVersion` | `version` |
//! | 76 | 4 | `iAddressFamily` | `address_family` |
//! | 80 | 4 | `iMaxSockAddr` | `max_sockaddr` |
//! | 84 | 4 | `iMinSockAddr` | `min_sockaddr` |
//! | 88 | 4 | `iSocketType` | `socket_type` |
//! | 92 | 4 | `iProtocol` | `protocol` |
//! | 96 | 4 | `iProtocolMaxOffset` | `protocol_max_offset` |
//! | 100 | 4 | `iNetworkByteOrder` | `network_byte_order` |
//! | 104 | 4 | `iSecurityScheme` | `security_scheme` |
//! | 108 | 4 | `dwMessageSize` | `message_size` |
//! | 112 | 4 | `dwProviderReserved` | `provider_reserved` |
//! | 116 | 512 | `szProtocol` (256 UTF-16 units, NUL-terminated) | `protocol_name` |
//!
//! Any 628 bytes either decode or fail with `WSAEINVAL` naming the field; nothing panics.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, ErrorKind};

/// `MAX_PROTOCOL_CHAIN`: the most entries a protocol chain holds.
pub const MAX_PROTOCOL_CHAIN: usize = 7;
/// `WSAPROTOCOL_LEN`: the most UTF-16 units of `szProtocol` before its NUL.
pub const WSAPROTOCOL_LEN: usize = 255;
/// `LAYERED_PROTOCOL`: `ChainLen` of a layered provider's own entry.
pub const LAYERED_PROTOCOL: i32 = 0;
/// `BASE_PROTOCOL`: `ChainLen` of a base provider's entry.
pub const BASE_PROTOCOL: i32 = 1;

/// Byte ranges of the fields (smoltcp's `mod field` idiom).
mod field {
    use std::ops::Range;
    pub(super) const SERVICE_FLAGS1: usize = 0;
    pub(super) const SERVICE_FLAGS2: usize = 4;
    pub(super) const SERVICE_FLAGS3: usize = 8;
    pub(super) const SERVICE_FLAGS4: usize = 12;
    pub(super) const PROVIDER_FLAGS: usize = 16;
    pub(super) const PROVIDER_ID: Range<usize> = 20..36;
    pub(super) const CATALOG_ENTRY_ID: usize = 36;
    pub(super) const CHAIN_LEN: usize = 40;
    pub(super) const CHAIN_ENTRIES: usize = 44;
    pub(super) const VERSION: usize = 72;
    pub(super) const ADDRESS_FAMILY: usize = 76;
    pub(super) const MAX_SOCKADDR: usize = 80;
    pub(super) const MIN_SOCKADDR: usize = 84;
    pub(super) const SOCKET_TYPE: usize = 88;
    pub(super) const PROTOCOL: usize = 92;
    pub(super) const PROTOCOL_MAX_OFFSET: usize = 96;
    pub(super) const NETWORK_BYTE_ORDER: usize = 100;
    pub(super) const SECURITY_SCHEME: usize = 104;
    pub(super) const MESSAGE_SIZE: usize = 108;
    pub(super) const PROVIDER_RESERVED: usize = 112;
    pub(super) const SZ_PROTOCOL: Range<usize> = 116..628;
}

const _: () = assert!(field::SZ_PROTOCOL.end == ProtocolInfo::LEN);
const _: () =
    assert!(field::SZ_PROTOCOL.end - field::SZ_PROTOCOL.start == 2 * (WSAPROTOCOL_LEN + 1));

/// A Windows `GUID`: 16 bytes, the first three groups little-endian in memory.
///
/// `Display` and `FromStr` use the canonical lowercase `8-4-4-4-12` form
/// (`6b29fc40-ca47-1067-b31d-00dd010662da`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid {
    /// `Data1`
    pub data1: u32,
    /// `Data2`
    pub data2: u16,
    /// `Data3`
    pub data3: u16,
    /// `Data4`
    pub data4: [u8; 8],
}

impl Guid {
    /// The GUID in its 16-byte Windows memory layout.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.data1.to_le_bytes());
        b[4..6].copy_from_slice(&self.data2.to_le_bytes());
        b[6..8].copy_from_slice(&self.data3.to_le_bytes());
        b[8..16].copy_from_slice(&self.data4);
        b
    }

    /// Reads a GUID from its 16-byte Windows memory layout.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let [a0, a1, a2, a3, b0, b1, c0, c1, d @ ..] = b;
        Self {
            data1: u32::from_le_bytes([a0, a1, a2, a3]),
            data2: u16::from_le_bytes([b0, b1]),
            data3: u16::from_le_bytes([c0, c1]),
            data4: d,
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

impl FromStr for Guid {
    type Err = Error;

    /// Parses `8-4-4-4-12` hex groups, optionally in braces, in either case.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::new(
                ErrorKind::MalformedRecord,
                format!("{s:?} is not a GUID: expected the form 8-4-4-4-12 of hex digits"),
            )
        };
        let t = s.trim();
        let t = t
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(t);
        let groups: Vec<&str> = t.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5
            || groups
                .iter()
                .zip(lens)
                .any(|(g, n)| g.len() != n || !g.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(bad());
        }
        let hex = |g: &str| u64::from_str_radix(g, 16).map_err(|_| bad());
        let tail = hex(groups[3])? << 48 | hex(groups[4])?;
        Ok(Self {
            data1: hex(groups[0])? as u32,
            data2: hex(groups[1])? as u16,
            data3: hex(groups[2])? as u16,
            data4: tail.to_be_bytes(),
        })
    }
}

/// A GUID is stored in text (catalog files) in its canonical form.
impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e: Error| serde::de::Error::custom(e.message()))
    }
}

/// `WSAPROTOCOLCHAIN`: `ChainLen` and seven `ChainEntries`.
///
/// `len` 0 is a layered provider's own entry, 1 a base provider, more a chain listed top layer
/// first (index 0) down to the base provider (index `len - 1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProtocolChain {
    /// `ChainLen`: an element count (not bytes, whatever one Windows page says).
    pub len: i32,
    /// `ChainEntries`: catalog entry ids; only the first `len` mean anything.
    pub entries: [u32; MAX_PROTOCOL_CHAIN],
}

impl ProtocolChain {
    /// The entries that are in use (`entries[..len]`), or all seven when `len` is out of range.
    pub fn used(&self) -> &[u32] {
        let n = usize::try_from(self.len)
            .unwrap_or(0)
            .min(MAX_PROTOCOL_CHAIN);
        &self.entries[..n]
    }
}

/// `WSAPROTOCOL_INFOW`: the record `WSADuplicateSocketW` writes and `WSASocketW` reads.
///
/// Its 628-byte form ([`to_bytes`](Self::to_bytes), [`from_bytes`](Self::from_bytes)) is
/// exactly the Windows structure, so a record written by Windows or Wine decodes field for field.
/// Its text form (`Display`, `FromStr`) is one line, safe in a shell argument, an environment
/// variable or a JSON string: `sockdup1:` followed by the URL-safe base64 (no padding) of the
/// 628 bytes with trailing zero bytes left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProtocolInfo {
    /// `dwServiceFlags1`: `XP1_*` bits (see [`crate::flags`]).
    pub service_flags1: u32,
    /// `dwServiceFlags2`: reserved.
    pub service_flags2: u32,
    /// `dwServiceFlags3`: reserved; in a sockdup duplicate, the target's process id.
    pub service_flags3: u32,
    /// `dwServiceFlags4`: reserved; in a sockdup duplicate, the target inbox's run nonce.
    pub service_flags4: u32,
    /// `dwProviderFlags`: `PFL_*` bits.
    pub provider_flags: u32,
    /// `ProviderId`: the GUID of the provider.
    pub provider_id: Guid,
    /// `dwCatalogEntryId`: the catalog entry that owns the socket; redemption routes by it.
    pub catalog_entry_id: u32,
    /// `ProtocolChain`.
    pub protocol_chain: ProtocolChain,
    /// `iVersion`.
    pub version: i32,
    /// `iAddressFamily`, in the host's numbering (`AF_INET6` is 10 on Linux, not 23).
    pub address_family: i32,
    /// `iMaxSockAddr`: the largest socket address, in bytes.
    pub max_sockaddr: i32,
    /// `iMinSockAddr`: the smallest socket address, in bytes.
    pub min_sockaddr: i32,
    /// `iSocketType` (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_SEQPACKET` 5).
    pub socket_type: i32,
    /// `iProtocol` (`IPPROTO_TCP` 6, `IPPROTO_UDP` 17, 0 for Unix sockets).
    pub protocol: i32,
    /// `iProtocolMaxOffset`.
    pub protocol_max_offset: i32,
    /// `iNetworkByteOrder`: `BIGENDIAN` 0, `LITTLEENDIAN` 1.
    pub network_byte_order: i32,
    /// `iSecurityScheme`: `SECURITY_PROTOCOL_NONE` 0.
    pub security_scheme: i32,
    /// `dwMessageSize`: 0 for streams, 1 if it depends on the MTU, `0xFFFFFFFF` if unbounded.
    pub message_size: u32,
    /// `dwProviderReserved`: the provider's context; in a sockdup duplicate, the ticket.
    pub provider_reserved: u32,
    /// `szProtocol`: a human-readable name, at most 255 UTF-16 units.
    pub protocol_name: String,
}

/// How the text form of a record begins.
pub const TEXT_PREFIX: &str = "sockdup1:";

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn rd_i32(b: &[u8], at: usize) -> i32 {
    rd_u32(b, at) as i32
}

impl ProtocolInfo {
    /// `sizeof(WSAPROTOCOL_INFOW)`.
    pub const LEN: usize = 628;

    /// The 628-byte Windows form.
    ///
    /// A `protocol_name` longer than 255 UTF-16 units is cut at the last whole character that
    /// fits; everything after the name's NUL is zero. Other fields are written as they are, even
    /// values [`from_bytes`](Self::from_bytes) refuses (a chain longer than 7).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(field::SERVICE_FLAGS1, self.service_flags1);
        put(field::SERVICE_FLAGS2, self.service_flags2);
        put(field::SERVICE_FLAGS3, self.service_flags3);
        put(field::SERVICE_FLAGS4, self.service_flags4);
        put(field::PROVIDER_FLAGS, self.provider_flags);
        put(field::CATALOG_ENTRY_ID, self.catalog_entry_id);
        put(field::CHAIN_LEN, self.protocol_chain.len as u32);
        for (i, e) in self.protocol_chain.entries.iter().enumerate() {
            put(field::CHAIN_ENTRIES + 4 * i, *e);
        }
        put(field::VERSION, self.version as u32);
        put(field::ADDRESS_FAMILY, self.address_family as u32);
        put(field::MAX_SOCKADDR, self.max_sockaddr as u32);
        put(field::MIN_SOCKADDR, self.min_sockaddr as u32);
        put(field::SOCKET_TYPE, self.socket_type as u32);
        put(field::PROTOCOL, self.protocol as u32);
        put(field::PROTOCOL_MAX_OFFSET, self.protocol_max_offset as u32);
        put(field::NETWORK_BYTE_ORDER, self.network_byte_order as u32);
        put(field::SECURITY_SCHEME, self.security_scheme as u32);
        put(field::MESSAGE_SIZE, self.message_size);
        put(field::PROVIDER_RESERVED, self.provider_reserved);
        b[field::PROVIDER_ID].copy_from_slice(&self.provider_id.to_bytes());
        let mut at = field::SZ_PROTOCOL.start;
        let name = self.protocol_name.as_bytes();
        if name.is_ascii() {
            // Every catalog entry's name: one unit per byte, cut to leave the NUL.
            for &c in name.iter().take(WSAPROTOCOL_LEN) {
                b[at] = c;
                at += 2;
            }
            return b;
        }
        let mut units = 0;
        for ch in self.protocol_name.chars() {
            let mut buf = [0u16; 2];
            let enc = ch.encode_utf16(&mut buf);
            if units + enc.len() > WSAPROTOCOL_LEN {
                break;
            }
            for u in enc.iter() {
                b[at..at + 2].copy_from_slice(&u.to_le_bytes());
                at += 2;
            }
            units += enc.len();
        }
        b
    }

    /// Writes the 628-byte form into the start of `out`.
    ///
    /// # Errors
    /// `WSAEFAULT` if `out` is shorter than 628 bytes (as `WSADuplicateSocketW` reports for a
    /// buffer it cannot write).
    pub fn write_to(&self, out: &mut [u8]) -> Result<(), Error> {
        let Some(dst) = out.get_mut(..Self::LEN) else {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                format!(
                    "the buffer holds {} bytes, but a protocol-info record needs 628: pass a larger buffer",
                    out.len()
                ),
            ));
        };
        dst.copy_from_slice(&self.to_bytes());
        Ok(())
    }

    /// Decodes the 628-byte Windows form.
    ///
    /// # Errors
    /// `WSAEINVAL`, naming the field, if `bytes` is not 628 bytes long, `ChainLen` is outside
    /// `0..=7`, or `szProtocol` has no NUL or is not valid UTF-16. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != Self::LEN {
            return Err(Error::new(
                ErrorKind::MalformedRecord,
                format!(
                    "a protocol-info record is exactly 628 bytes (WSAPROTOCOL_INFOW), but {} were given: pass the whole record, unchanged",
                    bytes.len()
                ),
            ));
        }
        let b = bytes;
        let chain_len = rd_i32(b, field::CHAIN_LEN);
        if !(0..=MAX_PROTOCOL_CHAIN as i32).contains(&chain_len) {
            return Err(Error::new(
                ErrorKind::MalformedRecord,
                format!(
                    "field protocol_chain.len (ChainLen) is {chain_len}, but a chain holds 0 to 7 entries: the record is corrupt"
                ),
            ));
        }
        let mut entries = [0u32; MAX_PROTOCOL_CHAIN];
        for (i, e) in entries.iter_mut().enumerate() {
            *e = rd_u32(b, field::CHAIN_ENTRIES + 4 * i);
        }
        let units = b[field::SZ_PROTOCOL]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        let Some(nul) = units.clone().position(|u| u == 0) else {
            return Err(Error::new(
                ErrorKind::MalformedRecord,
                "field protocol_name (szProtocol) has no NUL terminator within its 256 UTF-16 units: the record is corrupt",
            ));
        };
        // Names are ASCII in practice (every catalog entry's is): copied byte by byte, without
        // decoding; anything else goes through the UTF-16 decoder.
        let protocol_name = if units.clone().take(nul).all(|u| u < 0x80) {
            let mut name = String::with_capacity(nul);
            name.extend(units.take(nul).map(|u| char::from(u as u8)));
            name
        } else {
            char::decode_utf16(units.take(nul))
                .collect::<Result<String, _>>()
                .map_err(|_| {
                    Error::new(
                        ErrorKind::MalformedRecord,
                        "field protocol_name (szProtocol) is not valid UTF-16: the record is corrupt",
                    )
                })?
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[field::PROVIDER_ID]);
        Ok(Self {
            service_flags1: rd_u32(b, field::SERVICE_FLAGS1),
            service_flags2: rd_u32(b, field::SERVICE_FLAGS2),
            service_flags3: rd_u32(b, field::SERVICE_FLAGS3),
            service_flags4: rd_u32(b, field::SERVICE_FLAGS4),
            provider_flags: rd_u32(b, field::PROVIDER_FLAGS),
            provider_id: Guid::from_bytes(id),
            catalog_entry_id: rd_u32(b, field::CATALOG_ENTRY_ID),
            protocol_chain: ProtocolChain {
                len: chain_len,
                entries,
            },
            version: rd_i32(b, field::VERSION),
            address_family: rd_i32(b, field::ADDRESS_FAMILY),
            max_sockaddr: rd_i32(b, field::MAX_SOCKADDR),
            min_sockaddr: rd_i32(b, field::MIN_SOCKADDR),
            socket_type: rd_i32(b, field::SOCKET_TYPE),
            protocol: rd_i32(b, field::PROTOCOL),
            protocol_max_offset: rd_i32(b, field::PROTOCOL_MAX_OFFSET),
            network_byte_order: rd_i32(b, field::NETWORK_BYTE_ORDER),
            security_scheme: rd_i32(b, field::SECURITY_SCHEME),
            message_size: rd_u32(b, field::MESSAGE_SIZE),
            provider_reserved: rd_u32(b, field::PROVIDER_RESERVED),
            protocol_name,
        })
    }

    /// Decodes either form: 628 raw bytes, or the text form (surrounding whitespace allowed).
    ///
    /// Input made of printable ASCII and whitespace is read as text (a text record can be 628
    /// bytes long too), falling back to the raw form for exactly 628 bytes; anything else is
    /// read as the raw form, so binary input of the wrong length gets the error about length.
    ///
    /// # Errors
    /// As [`from_bytes`](Self::from_bytes) and [`FromStr`].
    pub fn from_raw_or_text(input: &[u8]) -> Result<Self, Error> {
        let printable = input
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        match std::str::from_utf8(input) {
            Ok(text) if printable => text.parse().or_else(|e| {
                if input.len() == Self::LEN {
                    Self::from_bytes(input).map_err(|_| e)
                } else {
                    Err(e)
                }
            }),
            _ => Self::from_bytes(input),
        }
    }
}

impl fmt::Display for ProtocolInfo {
    /// The one-line text form: `sockdup1:` and URL-safe base64 without padding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        write!(f, "{TEXT_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes[..end]))
    }
}

/// Writes the one-line text form of many records, each exactly as `Display` writes it, but
/// re-encoding only the base64 groups that differ from the previous record's.
///
/// The records an acceptor writes in a row differ in a few bytes (the same catalog entry and
/// target process, a ticket each): most of the text of one is the text of the one before.
/// This is the cost per connection of the handoff's `conn` lines, not a different format.
#[derive(Clone, Debug, Default)]
pub struct TextEncoder {
    /// The last record written (`None` before the first).
    last: Option<ProtocolInfo>,
    /// Its bytes.
    bytes: Vec<u8>,
    /// How many of them the text covers (trailing zeros are left out).
    end: usize,
    /// The URL-safe base64 of `bytes[..end]`, without padding: ASCII, kept as bytes so that
    /// a group is patched in place (`String::replace_range` and the UTF-8 check of the new
    /// characters were half the cost of a record).
    text: Vec<u8>,
}

/// The fields that differ between the records of one batch: the target's pid and run, and
/// the ticket.
const RUN_FIELDS: [usize; 3] = [
    field::SERVICE_FLAGS3,
    field::SERVICE_FLAGS4,
    field::PROVIDER_RESERVED,
];

impl TextEncoder {
    /// An encoder that has written nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `info`'s text form (what `info.to_string()` gives) to `out`.
    pub fn encode_into(&mut self, info: &ProtocolInfo, out: &mut String) {
        self.update(info);
        out.push_str(TEXT_PREFIX);
        // Base64 is ASCII: always borrowed.
        out.push_str(&String::from_utf8_lossy(&self.text));
    }

    /// Appends `info`'s text form, as bytes, to `out` ([`encode_into`](Self::encode_into)
    /// for a writer of bytes, without checking the text is UTF-8 again).
    pub fn encode_bytes_into(&mut self, info: &ProtocolInfo, out: &mut Vec<u8>) {
        self.update(info);
        out.extend_from_slice(TEXT_PREFIX.as_bytes());
        out.extend_from_slice(&self.text);
    }

    /// Makes the kept text `info`'s.
    fn update(&mut self, info: &ProtocolInfo) {
        if !self.patch(info) {
            let bytes = info.to_bytes();
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            self.text = URL_SAFE_NO_PAD.encode(&bytes[..end]).into_bytes();
            self.bytes.clear();
            self.bytes.extend_from_slice(&bytes);
            self.end = end;
            self.last = Some(info.clone());
        }
    }

    /// If `info` is the last record but for its run fields, and those lie before the last
    /// non-zero byte (so the text's length stays): re-encodes only the base64 groups (3 bytes,
    /// 4 characters; the last one may be shorter) that cover them, and says so.
    fn patch(&mut self, info: &ProtocolInfo) -> bool {
        let Some(last) = self.last.as_mut() else {
            return false;
        };
        last.service_flags3 = info.service_flags3;
        last.service_flags4 = info.service_flags4;
        last.provider_reserved = info.provider_reserved;
        if *last != *info || RUN_FIELDS.iter().any(|&at| at + 4 >= self.end) {
            return false;
        }
        let values = [
            info.service_flags3,
            info.service_flags4,
            info.provider_reserved,
        ];
        for (&at, value) in RUN_FIELDS.iter().zip(values) {
            let new = value.to_le_bytes();
            if self.bytes[at..at + 4] == new {
                continue;
            }
            self.bytes[at..at + 4].copy_from_slice(&new);
            for g in at / 3..=(at + 3) / 3 {
                let group = &self.bytes[3 * g..(3 * g + 3).min(self.end)];
                let mut chars = [0u8; 4];
                let Ok(n) = URL_SAFE_NO_PAD.encode_slice(group, &mut chars) else {
                    return false;
                };
                let Some(at) = self.text.get_mut(4 * g..4 * g + n) else {
                    return false;
                };
                at.copy_from_slice(&chars[..n]);
            }
        }
        true
    }
}

impl FromStr for ProtocolInfo {
    type Err = Error;

    /// Parses the text form written by `Display`; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Error> {
        let t = s.trim();
        let Some(body) = t.strip_prefix(TEXT_PREFIX) else {
            let shown: String = t.chars().take(24).collect();
            return Err(Error::new(
                ErrorKind::MalformedRecord,
                format!(
                    "{shown:?} is not a sockdup record: the text form starts with \"{TEXT_PREFIX}\"; pass the line printed by the source unchanged"
                ),
            ));
        };
        let mut bytes = URL_SAFE_NO_PAD.decode(body).map_err(|e| {
            Error::new(ErrorKind::MalformedRecord, format!("the text record is not valid URL-safe base64 ({e}): it was cut or altered in transit"))
        })?;
        if bytes.len() > Self::LEN {
            return Err(Error::new(
                ErrorKind::MalformedRecord,
                format!(
                    "the text record decodes to {} bytes, more than the 628 of a protocol-info record: it was altered in transit",
                    bytes.len()
                ),
            ));
        }
        bytes.resize(Self::LEN, 0);
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record as Wine's `WS_DuplicateSocket` writes it for TCP/IPv4 (catalog id 1001, MSAFD's
    /// GUID, handle 0x1234 in dwServiceFlags3 and the 0xff00ff00 magic in dwServiceFlags4), built
    /// byte by byte from the offsets of the Windows header rather than through `to_bytes`.
    fn wine_tcp_record() -> Vec<u8> {
        let mut b = vec![0u8; 628];
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(0, 0x0002_0066);
        put(8, 0x1234);
        put(12, 0xff00_ff00);
        put(16, 0x08);
        put(36, 1001);
        put(40, 1);
        put(72, 2);
        put(76, 2);
        put(80, 16);
        put(84, 16);
        put(88, 1);
        put(92, 6);
        put(108, 0);
        // {E70F1AA0-AB8B-11CF-8CA3-00805F48A192}: MSAFD Tcpip's provider GUID.
        b[20..36].copy_from_slice(&[
            0xa0, 0x1a, 0x0f, 0xe7, 0x8b, 0xab, 0xcf, 0x11, 0x8c, 0xa3, 0x00, 0x80, 0x5f, 0x48,
            0xa1, 0x92,
        ]);
        for (i, u) in "TCP/IP".encode_utf16().enumerate() {
            b[116 + 2 * i..118 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        b
    }

    #[test]
    fn the_shared_wine_fixture_is_this_record() {
        // testdata/wine-tcp-ipv4.bin serves other crates' tests (sockdup inspect); it must stay
        // the record built above from the header's offsets.
        assert_eq!(
            include_bytes!("../testdata/wine-tcp-ipv4.bin").as_slice(),
            wine_tcp_record().as_slice()
        );
    }

    #[test]
    fn decodes_a_wine_record_field_for_field() {
        let bytes = wine_tcp_record();
        let info = ProtocolInfo::from_bytes(&bytes).unwrap();
        assert_eq!(info.service_flags1, 0x0002_0066);
        assert_eq!(info.service_flags3, 0x1234);
        assert_eq!(info.service_flags4, 0xff00_ff00);
        assert_eq!(info.provider_flags, 8);
        assert_eq!(
            info.provider_id.to_string(),
            "e70f1aa0-ab8b-11cf-8ca3-00805f48a192"
        );
        assert_eq!(info.catalog_entry_id, 1001);
        assert_eq!(info.protocol_chain.len, 1);
        assert_eq!(
            (
                info.version,
                info.address_family,
                info.max_sockaddr,
                info.min_sockaddr
            ),
            (2, 2, 16, 16)
        );
        assert_eq!((info.socket_type, info.protocol), (1, 6));
        assert_eq!(info.protocol_name, "TCP/IP");
        assert_eq!(info.to_bytes().as_slice(), bytes.as_slice());
    }

    #[test]
    fn emit_overwrites_every_byte() {
        let info = ProtocolInfo::from_bytes(&wine_tcp_record()).unwrap();
        let mut buf = [0xa5u8; 700];
        info.write_to(&mut buf).unwrap();
        assert_eq!(&buf[..628], wine_tcp_record().as_slice());
        assert_eq!(buf[628], 0xa5);
        let err = info.write_to(&mut [0u8; 627]).unwrap_err();
        assert_eq!(
            (err.code(), err.kind()),
            (crate::error::WSAEFAULT, ErrorKind::BufferTooSmall)
        );
    }

    #[test]
    fn guid_text_round_trip() {
        let g: Guid = "{E70F1AA0-AB8B-11CF-8CA3-00805F48A192}".parse().unwrap();
        assert_eq!(g.to_string(), "e70f1aa0-ab8b-11cf-8ca3-00805f48a192");
        assert_eq!(Guid::from_bytes(g.to_bytes()), g);
        for bad in [
            "",
            "e70f1aa0-ab8b-11cf-8ca3",
            "g70f1aa0-ab8b-11cf-8ca3-00805f48a192",
            "+70f1aa0-ab8b-11cf-8ca3-00805f48a192",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_wrong_lengths_long_chains_and_bad_names() {
        for len in [0, 1, 627, 629, 1024] {
            let e = ProtocolInfo::from_bytes(&vec![0; len]).unwrap_err();
            assert_eq!(e.code(), 10022);
            assert!(e.message().contains("628"), "{e}");
        }
        let mut b = wine_tcp_record();
        b[40..44].copy_from_slice(&8i32.to_le_bytes());
        assert!(
            ProtocolInfo::from_bytes(&b)
                .unwrap_err()
                .message()
                .contains("protocol_chain.len")
        );
        b[40..44].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(
            ProtocolInfo::from_bytes(&b)
                .unwrap_err()
                .message()
                .contains("protocol_chain.len")
        );
        let mut b = wine_tcp_record();
        b[116..].fill(0x41);
        assert!(
            ProtocolInfo::from_bytes(&b)
                .unwrap_err()
                .message()
                .contains("protocol_name")
        );
        let mut b = wine_tcp_record();
        b[116..118].copy_from_slice(&0xd800u16.to_le_bytes()); // lone surrogate
        assert!(
            ProtocolInfo::from_bytes(&b)
                .unwrap_err()
                .message()
                .contains("UTF-16")
        );
    }

    #[test]
    fn long_names_are_cut_at_a_whole_character() {
        let info = ProtocolInfo {
            protocol_name: "a".repeat(254) + "😀",
            ..Default::default()
        };
        let back = ProtocolInfo::from_bytes(&info.to_bytes()).unwrap();
        assert_eq!(back.protocol_name, "a".repeat(254));
        let info = ProtocolInfo {
            protocol_name: "é".repeat(300),
            ..Default::default()
        };
        assert_eq!(
            ProtocolInfo::from_bytes(&info.to_bytes())
                .unwrap()
                .protocol_name
                .chars()
                .count(),
            255
        );
    }

    #[test]
    fn text_form_is_one_safe_line() {
        let info = ProtocolInfo::from_bytes(&wine_tcp_record()).unwrap();
        let text = info.to_string();
        assert!(text.starts_with("sockdup1:"));
        assert!(
            text.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_:".contains(&c)),
            "{text}"
        );
        assert_eq!(format!("  {text}\n").parse::<ProtocolInfo>().unwrap(), info);
        assert_eq!(
            ProtocolInfo::from_raw_or_text(text.as_bytes()).unwrap(),
            info
        );
        // A text record that happens to be 628 bytes long is still read as text.
        let mut long = info.clone();
        let mut seen = false;
        for n in 0..255 {
            long.protocol_name = "x".repeat(n);
            let line = format!("{long}\n");
            if line.len() == ProtocolInfo::LEN {
                assert_eq!(
                    ProtocolInfo::from_raw_or_text(line.as_bytes()).unwrap(),
                    long
                );
                seen = true;
            }
        }
        assert!(seen, "no name length gives a 628-byte text record");
        assert_eq!(ProtocolInfo::default().to_string(), "sockdup1:");
        assert_eq!(
            "sockdup1:".parse::<ProtocolInfo>().unwrap(),
            ProtocolInfo::default()
        );
        for bad in ["", "hello", "sockdup1:!!!", "sockdup2:AAAA"] {
            assert_eq!(
                bad.parse::<ProtocolInfo>().unwrap_err().code(),
                10022,
                "{bad}"
            );
        }
        let too_long = format!("sockdup1:{}", URL_SAFE_NO_PAD.encode([1u8; 629]));
        assert!(
            too_long
                .parse::<ProtocolInfo>()
                .unwrap_err()
                .message()
                .contains("629")
        );
    }

    proptest! {
        #[test]
        fn any_628_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 628)) {
            if let Ok(info) = ProtocolInfo::from_bytes(&bytes) {
                let again = ProtocolInfo::from_bytes(&info.to_bytes()).unwrap();
                prop_assert_eq!(&again, &info);
                prop_assert_eq!(info.to_string().parse::<ProtocolInfo>().unwrap(), info);
            }
        }

        #[test]
        fn any_text_parses_or_fails_cleanly(s in ".{0,900}") {
            let _ = s.parse::<ProtocolInfo>();
            let _ = format!("sockdup1:{s}").parse::<ProtocolInfo>();
        }

        #[test]
        fn fields_round_trip(a in any::<u32>(), b in any::<i32>(), chain in 0i32..=7, name in "[^\u{0}]{0,80}") {
            let info = ProtocolInfo {
                service_flags1: a, service_flags4: a.rotate_left(7), provider_reserved: a ^ 0x5555,
                address_family: b, protocol_max_offset: b.wrapping_neg(),
                protocol_chain: ProtocolChain { len: chain, entries: [a; 7] },
                protocol_name: name, ..Default::default()
            };
            prop_assert_eq!(ProtocolInfo::from_bytes(&info.to_bytes()).unwrap(), info.clone());
            prop_assert_eq!(info.to_string().parse::<ProtocolInfo>().unwrap(), info);
        }

        #[test]
        fn the_text_encoder_writes_what_display_writes(
            flags in any::<u32>(), entry in any::<u32>(), name in "[^\u{0}]{0,40}",
            changes in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>()), 1..12),
        ) {
            // A batch's records: one entry, tickets, pid and nonce changing, sometimes the
            // name (so the trimmed length changes too), against Display every time.
            let mut first = ProtocolInfo::from_bytes(&wine_tcp_record()).unwrap();
            first.service_flags1 = flags;
            first.catalog_entry_id = entry;
            first.protocol_name = name;
            let mut enc = TextEncoder::new();
            let mut out = String::new();
            let (mut bytes_enc, mut bytes_out) = (TextEncoder::new(), Vec::new());
            let mut want = String::new();
            for (ticket, pid, nonce, rename) in changes {
                let mut info = first.clone();
                info.provider_reserved = ticket;
                info.service_flags3 = pid;
                info.service_flags4 = nonce;
                if rename {
                    info.protocol_name = "x".repeat((ticket % 200) as usize);
                    info.provider_id = Default::default();
                }
                enc.encode_into(&info, &mut out);
                out.push('\n');
                bytes_enc.encode_bytes_into(&info, &mut bytes_out);
                bytes_out.push(b'\n');
                want.push_str(&info.to_string());
                want.push('\n');
            }
            prop_assert_eq!(&out, &want);
            prop_assert_eq!(bytes_out, want.into_bytes());
        }
    }

    #[test]
    fn the_text_encoder_handles_an_all_zero_record_and_a_tail_change() {
        let mut enc = TextEncoder::new();
        let mut out = String::new();
        let zero = ProtocolInfo::from_bytes(&[0u8; 628]).unwrap();
        enc.encode_into(&zero, &mut out);
        assert_eq!(out, zero.to_string());
        let mut bytes = wine_tcp_record();
        let a = ProtocolInfo::from_bytes(&bytes).unwrap();
        // Same length, a change in the last (partial) base64 group.
        let end = bytes.iter().rposition(|&b| b != 0).unwrap();
        bytes[end] ^= 0x40;
        let b = ProtocolInfo::from_bytes(&bytes).unwrap();
        for info in [&a, &b, &a, &zero, &b] {
            out.clear();
            enc.encode_into(info, &mut out);
            assert_eq!(out, info.to_string());
        }
    }
}
