//! The provider calls a layer intercepts ([`ProviderCall`]), by the names layers count and
//! layer settings use (`fail.send`, `delay.connect`, …): the vocabulary the catalog's layer
//! settings and the SPI's provider table share. What each layer kind takes as settings is the
//! business of its module in the `sockdup` crate's SPI, not of the core.

/// A provider call a layer intercepts, by the name layers count and fault settings use
/// (`fail.send`, `delay.connect`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProviderCall {
    /// `WSPStartup`.
    Startup,
    /// `WSPCleanup`.
    Cleanup,
    /// `WSPSocket` for a new socket.
    Socket,
    /// `WSPSocket` with a duplicate's record.
    SocketFromInfo,
    /// `WSPConnect`.
    Connect,
    /// `WSPBind`.
    Bind,
    /// `WSPListen`.
    Listen,
    /// `WSPAccept`.
    Accept,
    /// `WSPSend`.
    Send,
    /// `WSPRecv`.
    Recv,
    /// `WSPCloseSocket`.
    Close,
    /// `WSPDuplicateSocket`.
    Duplicate,
    /// `WSPGetSockOpt`.
    GetSockOpt,
    /// `WSPSetSockOpt`.
    SetSockOpt,
    /// `WSPEventSelect`.
    EventSelect,
    /// `WSPEnumNetworkEvents`.
    EnumNetworkEvents,
    /// `WSPAddressToString`.
    AddressToString,
    /// `WSPStringToAddress`.
    StringToAddress,
}

impl ProviderCall {
    /// Every call a layer intercepts, in the order of the provider table.
    pub const ALL: &'static [ProviderCall] = &[
        Self::Startup,
        Self::Cleanup,
        Self::Socket,
        Self::SocketFromInfo,
        Self::Connect,
        Self::Bind,
        Self::Listen,
        Self::Accept,
        Self::Send,
        Self::Recv,
        Self::Close,
        Self::Duplicate,
        Self::GetSockOpt,
        Self::SetSockOpt,
        Self::EventSelect,
        Self::EnumNetworkEvents,
        Self::AddressToString,
        Self::StringToAddress,
    ];

    /// The call's name: `"send"`, `"socket_from_info"`, `"close"`, …
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Cleanup => "cleanup",
            Self::Socket => "socket",
            Self::SocketFromInfo => "socket_from_info",
            Self::Connect => "connect",
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Accept => "accept",
            Self::Send => "send",
            Self::Recv => "recv",
            Self::Close => "close",
            Self::Duplicate => "duplicate",
            Self::GetSockOpt => "getsockopt",
            Self::SetSockOpt => "setsockopt",
            Self::EventSelect => "event_select",
            Self::EnumNetworkEvents => "enum_network_events",
            Self::AddressToString => "address_to_string",
            Self::StringToAddress => "string_to_address",
        }
    }

    /// The call named `name`, if a layer intercepts one of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Every call's name, comma-separated, for messages and help.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_name_round_trips() {
        for &c in ProviderCall::ALL {
            assert_eq!(ProviderCall::from_name(c.name()), Some(c));
        }
        assert_eq!(ProviderCall::from_name("conect"), None);
        assert!(ProviderCall::names().starts_with("startup, cleanup, socket, "));
    }
}
