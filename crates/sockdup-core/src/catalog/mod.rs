//! The catalog: the base provider's built-in entries, and ([`Catalog`]) the layers and protocol
//! chains installed over them.
//!
//! Like Windows's MSAFD entries, each names one (family, type, protocol) triple the Linux base
//! provider serves. Catalog ids start at 1001, as in `ws2_32`. Families, types and protocols use
//! the host's numbering (`AF_INET6` is 10 here, not Windows's 23).
//!
//! The core knows the catalog's structure (ids, chains, names, versions), not the layer kinds:
//! a layer's `kind` and `config` are checked against the `sockdup` crate's registry of layers
//! (`sockdup::spi::layers`), which owns each kind's settings.

mod call;
mod installed;

pub use call::ProviderCall;
pub use installed::{Catalog, Chain, FIRST_INSTALLED_ID, Layer, MAX_LAYER_NAME};

use crate::flags::*;
use crate::wire::{BASE_PROTOCOL, Guid, MAX_PROTOCOL_CHAIN, ProtocolChain, ProtocolInfo};

/// The GUID of sockdup's Linux base provider (`ProviderId` of its entries).
pub const BASE_PROVIDER_ID: Guid = Guid {
    data1: 0x5d0c_4d75,
    data2: 0x7b3e,
    data3: 0x4c1a,
    data4: [0x9e, 0x51, 0x73, 0x6f, 0x63, 0x6b, 0x64, 0x75],
};

/// The first catalog entry id, as in `ws2_32`.
pub const FIRST_CATALOG_ID: u32 = 1001;

/// `AF_UNIX` on Linux.
pub const AF_UNIX: i32 = 1;
/// `AF_INET` on Linux.
pub const AF_INET: i32 = 2;
/// `AF_INET6` on Linux.
pub const AF_INET6: i32 = 10;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: i32 = 1;
/// `SOCK_DGRAM`.
pub const SOCK_DGRAM: i32 = 2;
/// `SOCK_SEQPACKET`.
pub const SOCK_SEQPACKET: i32 = 5;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: i32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: i32 = 17;

/// One built-in base entry, before it becomes a [`ProtocolInfo`].
struct BaseEntry {
    family: i32,
    socket_type: i32,
    protocol: i32,
    service_flags: u32,
    sockaddr: (i32, i32),
    message_size: u32,
    name: &'static str,
}

const STREAM: u32 =
    XP1_GUARANTEED_DELIVERY | XP1_GUARANTEED_ORDER | XP1_GRACEFUL_CLOSE | XP1_IFS_HANDLES;
const UDP: u32 = XP1_CONNECTIONLESS
    | XP1_MESSAGE_ORIENTED
    | XP1_SUPPORT_BROADCAST
    | XP1_SUPPORT_MULTIPOINT
    | XP1_IFS_HANDLES;
const UNIX_DGRAM: u32 = XP1_CONNECTIONLESS
    | XP1_MESSAGE_ORIENTED
    | XP1_GUARANTEED_DELIVERY
    | XP1_GUARANTEED_ORDER
    | XP1_IFS_HANDLES;
const SEQPACKET: u32 = XP1_MESSAGE_ORIENTED | STREAM;
/// `sizeof(struct sockaddr_un)` and the smallest (unnamed) Unix address.
const SUN: (i32, i32) = (110, 2);

const BASE_ENTRIES: [BaseEntry; 7] = [
    BaseEntry {
        family: AF_INET,
        socket_type: SOCK_STREAM,
        protocol: IPPROTO_TCP,
        service_flags: STREAM | XP1_EXPEDITED_DATA,
        sockaddr: (16, 16),
        message_size: 0,
        name: "sockdup Linux TCP/IPv4",
    },
    BaseEntry {
        family: AF_INET,
        socket_type: SOCK_DGRAM,
        protocol: IPPROTO_UDP,
        service_flags: UDP,
        sockaddr: (16, 16),
        message_size: 65_507,
        name: "sockdup Linux UDP/IPv4",
    },
    BaseEntry {
        family: AF_INET6,
        socket_type: SOCK_STREAM,
        protocol: IPPROTO_TCP,
        service_flags: STREAM | XP1_EXPEDITED_DATA,
        sockaddr: (28, 28),
        message_size: 0,
        name: "sockdup Linux TCP/IPv6",
    },
    BaseEntry {
        family: AF_INET6,
        socket_type: SOCK_DGRAM,
        protocol: IPPROTO_UDP,
        service_flags: UDP,
        sockaddr: (28, 28),
        message_size: 65_527,
        name: "sockdup Linux UDP/IPv6",
    },
    BaseEntry {
        family: AF_UNIX,
        socket_type: SOCK_STREAM,
        protocol: 0,
        service_flags: STREAM,
        sockaddr: SUN,
        message_size: 0,
        name: "sockdup Linux Unix stream",
    },
    BaseEntry {
        family: AF_UNIX,
        socket_type: SOCK_DGRAM,
        protocol: 0,
        service_flags: UNIX_DGRAM,
        sockaddr: SUN,
        message_size: 1,
        name: "sockdup Linux Unix datagram",
    },
    BaseEntry {
        family: AF_UNIX,
        socket_type: SOCK_SEQPACKET,
        protocol: 0,
        service_flags: SEQPACKET,
        sockaddr: SUN,
        message_size: 1,
        name: "sockdup Linux Unix seqpacket",
    },
];

fn entry_info(id: u32, e: &BaseEntry) -> ProtocolInfo {
    let mut entries = [0u32; MAX_PROTOCOL_CHAIN];
    entries[0] = id;
    ProtocolInfo {
        service_flags1: e.service_flags,
        provider_flags: PFL_MATCHES_PROTOCOL_ZERO,
        provider_id: BASE_PROVIDER_ID,
        catalog_entry_id: id,
        protocol_chain: ProtocolChain {
            len: BASE_PROTOCOL,
            entries,
        },
        version: 2,
        address_family: e.family,
        max_sockaddr: e.sockaddr.0,
        min_sockaddr: e.sockaddr.1,
        socket_type: e.socket_type,
        protocol: e.protocol,
        network_byte_order: 0,
        message_size: e.message_size,
        protocol_name: e.name.to_owned(),
        ..ProtocolInfo::default()
    }
}

/// Every built-in base entry, in catalog order (ids 1001, 1002, …).
pub fn base_entries() -> Vec<ProtocolInfo> {
    (FIRST_CATALOG_ID..)
        .zip(BASE_ENTRIES.iter())
        .map(|(id, e)| entry_info(id, e))
        .collect()
}

/// The base entry for a socket's real family, type and protocol, as read back from the socket.
/// Unix sockets report protocol 0 and match entries with protocol 0.
pub fn base_entry_for(family: i32, socket_type: i32, protocol: i32) -> Option<ProtocolInfo> {
    (FIRST_CATALOG_ID..)
        .zip(BASE_ENTRIES.iter())
        .find(|(_, e)| e.family == family && e.socket_type == socket_type && e.protocol == protocol)
        .map(|(id, e)| entry_info(id, e))
}

/// Whether `id` is a built-in base entry's id (without building the entry).
pub fn is_base_id(id: u32) -> bool {
    id.checked_sub(FIRST_CATALOG_ID)
        .is_some_and(|i| (i as usize) < BASE_ENTRIES.len())
}

/// The base entry with catalog id `id`, if there is one.
pub fn base_entry(id: u32) -> Option<ProtocolInfo> {
    let index = usize::try_from(id.checked_sub(FIRST_CATALOG_ID)?).ok()?;
    BASE_ENTRIES.get(index).map(|e| entry_info(id, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_1001_and_round_trip() {
        let all = base_entries();
        assert_eq!(all.len(), 7);
        for (i, info) in all.iter().enumerate() {
            assert_eq!(info.catalog_entry_id, 1001 + i as u32);
            assert_eq!(base_entry(info.catalog_entry_id).as_ref(), Some(info));
            assert_eq!(
                base_entry_for(info.address_family, info.socket_type, info.protocol).as_ref(),
                Some(info)
            );
            assert_eq!(info.protocol_chain.len, 1);
            assert_ne!(info.service_flags1 & XP1_IFS_HANDLES, 0);
            assert_eq!(ProtocolInfo::from_bytes(&info.to_bytes()).unwrap(), *info);
        }
        assert!(
            base_entry(1000).is_none() && base_entry(1008).is_none() && base_entry(0).is_none()
        );
        assert!(base_entry_for(AF_INET, SOCK_STREAM, IPPROTO_UDP).is_none());
    }
}
