//! `XP1_*` service flags (`dwServiceFlags1`) and `PFL_*` provider flags (`dwProviderFlags`), with
//! their Winsock names, as in `winsock2.h`.

/// `XP1_CONNECTIONLESS`
pub const XP1_CONNECTIONLESS: u32 = 0x0000_0001;
/// `XP1_GUARANTEED_DELIVERY`
pub const XP1_GUARANTEED_DELIVERY: u32 = 0x0000_0002;
/// `XP1_GUARANTEED_ORDER`
pub const XP1_GUARANTEED_ORDER: u32 = 0x0000_0004;
/// `XP1_MESSAGE_ORIENTED`
pub const XP1_MESSAGE_ORIENTED: u32 = 0x0000_0008;
/// `XP1_PSEUDO_STREAM`
pub const XP1_PSEUDO_STREAM: u32 = 0x0000_0010;
/// `XP1_GRACEFUL_CLOSE`
pub const XP1_GRACEFUL_CLOSE: u32 = 0x0000_0020;
/// `XP1_EXPEDITED_DATA`
pub const XP1_EXPEDITED_DATA: u32 = 0x0000_0040;
/// `XP1_CONNECT_DATA`
pub const XP1_CONNECT_DATA: u32 = 0x0000_0080;
/// `XP1_DISCONNECT_DATA`
pub const XP1_DISCONNECT_DATA: u32 = 0x0000_0100;
/// `XP1_SUPPORT_BROADCAST`
pub const XP1_SUPPORT_BROADCAST: u32 = 0x0000_0200;
/// `XP1_SUPPORT_MULTIPOINT`
pub const XP1_SUPPORT_MULTIPOINT: u32 = 0x0000_0400;
/// `XP1_MULTIPOINT_CONTROL_PLANE`
pub const XP1_MULTIPOINT_CONTROL_PLANE: u32 = 0x0000_0800;
/// `XP1_MULTIPOINT_DATA_PLANE`
pub const XP1_MULTIPOINT_DATA_PLANE: u32 = 0x0000_1000;
/// `XP1_QOS_SUPPORTED`
pub const XP1_QOS_SUPPORTED: u32 = 0x0000_2000;
/// `XP1_INTERRUPT` (reserved)
pub const XP1_INTERRUPT: u32 = 0x0000_4000;
/// `XP1_UNI_SEND`
pub const XP1_UNI_SEND: u32 = 0x0000_8000;
/// `XP1_UNI_RECV`
pub const XP1_UNI_RECV: u32 = 0x0001_0000;
/// `XP1_IFS_HANDLES`: descriptors are real OS handles (here: real file descriptors).
pub const XP1_IFS_HANDLES: u32 = 0x0002_0000;
/// `XP1_PARTIAL_MESSAGE`
pub const XP1_PARTIAL_MESSAGE: u32 = 0x0004_0000;
/// `XP1_SAN_SUPPORT_SDP`
pub const XP1_SAN_SUPPORT_SDP: u32 = 0x0008_0000;

/// `PFL_MULTIPLE_PROTO_ENTRIES`
pub const PFL_MULTIPLE_PROTO_ENTRIES: u32 = 0x01;
/// `PFL_RECOMMENDED_PROTO_ENTRY`
pub const PFL_RECOMMENDED_PROTO_ENTRY: u32 = 0x02;
/// `PFL_HIDDEN`: never listed by `WSAEnumProtocols`.
pub const PFL_HIDDEN: u32 = 0x04;
/// `PFL_MATCHES_PROTOCOL_ZERO`: protocol 0 in `socket()` selects this entry.
pub const PFL_MATCHES_PROTOCOL_ZERO: u32 = 0x08;
/// `PFL_NETWORKDIRECT_PROVIDER`
pub const PFL_NETWORKDIRECT_PROVIDER: u32 = 0x10;

const XP1_NAMES: &[(u32, &str)] = &[
    (XP1_CONNECTIONLESS, "XP1_CONNECTIONLESS"),
    (XP1_GUARANTEED_DELIVERY, "XP1_GUARANTEED_DELIVERY"),
    (XP1_GUARANTEED_ORDER, "XP1_GUARANTEED_ORDER"),
    (XP1_MESSAGE_ORIENTED, "XP1_MESSAGE_ORIENTED"),
    (XP1_PSEUDO_STREAM, "XP1_PSEUDO_STREAM"),
    (XP1_GRACEFUL_CLOSE, "XP1_GRACEFUL_CLOSE"),
    (XP1_EXPEDITED_DATA, "XP1_EXPEDITED_DATA"),
    (XP1_CONNECT_DATA, "XP1_CONNECT_DATA"),
    (XP1_DISCONNECT_DATA, "XP1_DISCONNECT_DATA"),
    (XP1_SUPPORT_BROADCAST, "XP1_SUPPORT_BROADCAST"),
    (XP1_SUPPORT_MULTIPOINT, "XP1_SUPPORT_MULTIPOINT"),
    (XP1_MULTIPOINT_CONTROL_PLANE, "XP1_MULTIPOINT_CONTROL_PLANE"),
    (XP1_MULTIPOINT_DATA_PLANE, "XP1_MULTIPOINT_DATA_PLANE"),
    (XP1_QOS_SUPPORTED, "XP1_QOS_SUPPORTED"),
    (XP1_INTERRUPT, "XP1_INTERRUPT"),
    (XP1_UNI_SEND, "XP1_UNI_SEND"),
    (XP1_UNI_RECV, "XP1_UNI_RECV"),
    (XP1_IFS_HANDLES, "XP1_IFS_HANDLES"),
    (XP1_PARTIAL_MESSAGE, "XP1_PARTIAL_MESSAGE"),
    (XP1_SAN_SUPPORT_SDP, "XP1_SAN_SUPPORT_SDP"),
];

const PFL_NAMES: &[(u32, &str)] = &[
    (PFL_MULTIPLE_PROTO_ENTRIES, "PFL_MULTIPLE_PROTO_ENTRIES"),
    (PFL_RECOMMENDED_PROTO_ENTRY, "PFL_RECOMMENDED_PROTO_ENTRY"),
    (PFL_HIDDEN, "PFL_HIDDEN"),
    (PFL_MATCHES_PROTOCOL_ZERO, "PFL_MATCHES_PROTOCOL_ZERO"),
    (PFL_NETWORKDIRECT_PROVIDER, "PFL_NETWORKDIRECT_PROVIDER"),
];

fn names(value: u32, table: &[(u32, &'static str)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    for &(bit, name) in table {
        if value & bit != 0 {
            out.push(name.to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push(format!("{rest:#010x}"));
    }
    out
}

/// The `XP1_*` names of the bits set in `dwServiceFlags1`; bits without a name are given in hex.
pub fn service_flag_names(flags: u32) -> Vec<String> {
    names(flags, XP1_NAMES)
}

/// The `PFL_*` names of the bits set in `dwProviderFlags`; bits without a name are given in hex.
pub fn provider_flag_names(flags: u32) -> Vec<String> {
    names(flags, PFL_NAMES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown_bits() {
        assert_eq!(
            service_flag_names(XP1_IFS_HANDLES | XP1_GUARANTEED_DELIVERY | 0x8000_0000),
            ["XP1_GUARANTEED_DELIVERY", "XP1_IFS_HANDLES", "0x80000000"]
        );
        assert_eq!(provider_flag_names(0), Vec::<String>::new());
        assert_eq!(provider_flag_names(PFL_HIDDEN), ["PFL_HIDDEN"]);
    }
}
