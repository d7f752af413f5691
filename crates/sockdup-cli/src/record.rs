//! Presenting a [`ProtocolInfo`]: its JSON form and the Winsock names of its values, shared by
//! the commands that print records.

use serde_json::{Value, json};
use sockdup::ProtocolInfo;
use sockdup::catalog::{self, AF_INET, AF_INET6, AF_UNIX, BASE_PROVIDER_ID};

/// The record as one JSON object whose keys are exactly the field names of [`ProtocolInfo`].
///
/// Numbers are plain decimal JSON numbers: `u32` fields unsigned (`4294967295`, never `-1`),
/// `i32` fields signed. `provider_id` is the GUID's canonical text, `protocol_name` a string, and
/// `protocol_chain` is `{"len": N, "entries": [7 numbers]}` (all seven entries, used or not).
pub(crate) fn to_json(info: &ProtocolInfo) -> Value {
    // Destructure so that a field added to ProtocolInfo fails to compile here until it is shown.
    let ProtocolInfo {
        service_flags1,
        service_flags2,
        service_flags3,
        service_flags4,
        provider_flags,
        provider_id,
        catalog_entry_id,
        protocol_chain,
        version,
        address_family,
        max_sockaddr,
        min_sockaddr,
        socket_type,
        protocol,
        protocol_max_offset,
        network_byte_order,
        security_scheme,
        message_size,
        provider_reserved,
        protocol_name,
    } = info;
    json!({
        "service_flags1": service_flags1,
        "service_flags2": service_flags2,
        "service_flags3": service_flags3,
        "service_flags4": service_flags4,
        "provider_flags": provider_flags,
        "provider_id": provider_id.to_string(),
        "catalog_entry_id": catalog_entry_id,
        "protocol_chain": {
            "len": protocol_chain.len,
            "entries": protocol_chain.entries,
        },
        "version": version,
        "address_family": address_family,
        "max_sockaddr": max_sockaddr,
        "min_sockaddr": min_sockaddr,
        "socket_type": socket_type,
        "protocol": protocol,
        "protocol_max_offset": protocol_max_offset,
        "network_byte_order": network_byte_order,
        "security_scheme": security_scheme,
        "message_size": message_size,
        "provider_reserved": provider_reserved,
        "protocol_name": protocol_name,
    })
}

/// `0x` and eight hex digits.
pub(crate) fn hex(v: u32) -> String {
    format!("{v:#010x}")
}

/// Flag names joined with `|`, or "none".
pub(crate) fn flag_list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(" | ")
    }
}

/// `value  NAME`, or just the value when it has no name.
pub(crate) fn named(value: i32, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{value}  {name}"),
        None => value.to_string(),
    }
}

/// The value Wine's `WSADuplicateSocket` writes into `dwServiceFlags4` (its "magic").
pub(crate) const WINE_DUPLICATE_MAGIC: u32 = 0xff00_ff00;

/// The name of an address family (Linux numbering, and Windows's `AF_INET6` 23).
pub(crate) fn family_name(family: i32) -> Option<&'static str> {
    Some(match family {
        0 => "AF_UNSPEC",
        AF_UNIX => "AF_UNIX",
        AF_INET => "AF_INET",
        AF_INET6 => "AF_INET6",
        23 => "AF_INET6 in Windows numbering (Linux's AF_INET6 is 10)",
        _ => return None,
    })
}

/// The name of a socket type.
pub(crate) fn socket_type_name(kind: i32) -> Option<&'static str> {
    Some(match kind {
        0 => "any type (layered entry)",
        1 => "SOCK_STREAM",
        2 => "SOCK_DGRAM",
        3 => "SOCK_RAW",
        4 => "SOCK_RDM",
        5 => "SOCK_SEQPACKET",
        _ => return None,
    })
}

/// The name of a protocol number, given the family it is used with.
pub(crate) fn protocol_name(family: i32, protocol: i32) -> Option<&'static str> {
    Some(match protocol {
        0 if family == AF_UNIX => "the default protocol (Unix sockets have no other)",
        0 => "the family's default protocol",
        1 => "IPPROTO_ICMP",
        6 => "IPPROTO_TCP",
        17 => "IPPROTO_UDP",
        58 => "IPPROTO_ICMPV6",
        132 => "IPPROTO_SCTP",
        _ => return None,
    })
}

/// What `dwMessageSize` means.
pub(crate) fn message_size_meaning(size: u32) -> String {
    match size {
        0 => "stream: no message boundaries".to_owned(),
        1 => "the largest message depends on the MTU".to_owned(),
        u32::MAX => "messages of any size (0xFFFFFFFF)".to_owned(),
        n => format!("messages of at most {n} bytes"),
    }
}

/// The name of a well-known provider GUID.
pub(crate) fn provider_name(info: &ProtocolInfo) -> Option<&'static str> {
    let id = info.provider_id.to_string();
    if info.provider_id == BASE_PROVIDER_ID {
        Some("sockdup's Linux base provider")
    } else if id == "e70f1aa0-ab8b-11cf-8ca3-00805f48a192" {
        Some("MSAFD Tcpip (Windows's base provider for TCP/IP; Wine uses it too)")
    } else if id == "f9eab0c0-26d4-11d0-bbbf-00aa006c34e4" {
        Some("MSAFD Tcpip6 (Windows's base provider for TCP/IPv6)")
    } else {
        None
    }
}

/// What made a record, as far as its fields tell.
#[derive(Debug)]
pub(crate) enum Origin {
    /// A sockdup duplicate: a sockdup base catalog entry and sockdup's provider GUID.
    Sockdup {
        /// The base entry the record names.
        entry: ProtocolInfo,
    },
    /// A record from Wine's `WSADuplicateSocket` (its magic in `dwServiceFlags4`).
    Wine,
    /// Anything else.
    Unknown,
}

/// Classifies `info` by its catalog entry, provider GUID and reserved fields.
pub(crate) fn origin(info: &ProtocolInfo) -> Origin {
    match catalog::base_entry(info.catalog_entry_id) {
        Some(entry) if info.provider_id == BASE_PROVIDER_ID => Origin::Sockdup { entry },
        _ if info.service_flags4 == WINE_DUPLICATE_MAGIC => Origin::Wine,
        _ => Origin::Unknown,
    }
}
