//! The settings of each built-in layer kind, parsed from a layer's `config` map into typed
//! structs: [`TraceSettings`], [`PolicySettings`], [`FaultSettings`].
//!
//! One parser per kind ([`LayerSettings::parse`]) serves every place that meets a layer's
//! settings: [`Catalog::install`](super::Catalog::install) and
//! [`Catalog::from_json`](super::Catalog::from_json) (through
//! [`Catalog::validate`](super::Catalog::validate)) check them, and the layer implementations
//! take the parsed struct when they are built. An unknown key or a bad value is
//! [`ErrorKind::InvalidLayerSetting`] naming the key and listing the valid ones.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// A layer's settings as stored in the catalog: key to value.
pub type Config = BTreeMap<String, String>;

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
            Self::AddressToString => "address_to_string",
            Self::StringToAddress => "string_to_address",
        }
    }

    /// The call named `name`, if a layer intercepts one of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Every call's name, comma-separated, for messages.
    fn names() -> String {
        Self::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The settings of one layer kind, parsed from its `config`.
pub trait LayerSettings: Sized {
    /// The layer kind these settings belong to (`"trace"`, …).
    const KIND: &'static str;

    /// The valid keys, for messages: `"target_uids, target_exe, connect"`.
    fn valid_keys() -> String;

    /// Parses a layer's `config`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidLayerSetting`] for an unknown key or a bad value, naming the key and
    /// listing the valid keys.
    fn parse(config: &Config) -> Result<Self, Error>;
}

/// The error for setting `key`: `why` it is refused, then the valid keys of kind `S`.
fn refuse<S: LayerSettings>(key: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidLayerSetting,
        format!(
            "layer setting {key:?} {why}; the valid keys of a {} layer are {}",
            S::KIND,
            S::valid_keys()
        ),
    )
}

/// The error for an unknown key of kind `S`.
fn unknown<S: LayerSettings>(key: &str) -> Error {
    refuse::<S>(key, &format!("is not a setting of a {} layer", S::KIND))
}

/// The error for a bad `value` of `key`, which should be `want`.
fn bad_value<S: LayerSettings>(key: &str, value: &str, want: &str) -> Error {
    refuse::<S>(
        key,
        &format!("has the value {value:?}, which is not {want}"),
    )
}

/// A comma-separated list, without empty items.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The settings of a `trace` layer: it has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSettings {}

impl LayerSettings for TraceSettings {
    const KIND: &'static str = "trace";

    fn valid_keys() -> String {
        "none (a trace layer takes no settings)".to_owned()
    }

    fn parse(config: &Config) -> Result<Self, Error> {
        match config.keys().next() {
            Some(key) => Err(unknown::<Self>(key)),
            None => Ok(Self {}),
        }
    }
}

/// The settings of a `policy` layer: each rule is absent (allows everything) or a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySettings {
    /// `target_uids`: duplicates only to processes of these real uids.
    pub target_uids: Option<Vec<u32>>,
    /// `target_exe`: duplicates only to processes whose executable path starts with one of
    /// these prefixes.
    pub target_exe: Option<Vec<String>>,
    /// `connect`: connections only to these addresses, networks or `ip:port`s.
    pub connect: Option<Vec<Net>>,
}

impl LayerSettings for PolicySettings {
    const KIND: &'static str = "policy";

    fn valid_keys() -> String {
        "target_uids (uids, comma-separated), target_exe (executable path prefixes, \
         comma-separated), connect (addresses, networks ADDR/PREFIX or IP:PORT, comma-separated)"
            .to_owned()
    }

    fn parse(config: &Config) -> Result<Self, Error> {
        let mut settings = Self::default();
        for (key, value) in config {
            match key.as_str() {
                "target_uids" => {
                    let uids = list(value)
                        .iter()
                        .map(|u| {
                            u.parse()
                                .map_err(|_| bad_value::<Self>(key, u, "a uid (a number)"))
                        })
                        .collect::<Result<_, _>>()?;
                    settings.target_uids = Some(uids);
                }
                "target_exe" => settings.target_exe = Some(list(value)),
                "connect" => {
                    let nets = list(value)
                        .iter()
                        .map(|n| {
                            Net::parse(n).ok_or_else(|| {
                                bad_value::<Self>(key, n, "an address, network or ip:port")
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    settings.connect = Some(nets);
                }
                _ => return Err(unknown::<Self>(key)),
            }
        }
        Ok(settings)
    }
}

/// The settings of a `fault` layer: errors and delays to inject, per call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSettings {
    /// `fail.CALL = CODE`: the call fails with this Winsock error number.
    pub fail: BTreeMap<ProviderCall, i32>,
    /// `delay.CALL = MILLISECONDS`: the call waits this long first.
    pub delay: BTreeMap<ProviderCall, Duration>,
}

impl LayerSettings for FaultSettings {
    const KIND: &'static str = "fault";

    fn valid_keys() -> String {
        format!(
            "fail.CALL (a Winsock error number to inject) and delay.CALL (milliseconds to wait), \
             where CALL is one of {}",
            ProviderCall::names()
        )
    }

    fn parse(config: &Config) -> Result<Self, Error> {
        let mut settings = Self::default();
        for (key, value) in config {
            let (what, call) = key.split_once('.').unwrap_or((key, ""));
            let Some(call) = ProviderCall::from_name(call) else {
                return Err(unknown::<Self>(key));
            };
            match what {
                "fail" => {
                    let code = value
                        .trim()
                        .parse()
                        .map_err(|_| bad_value::<Self>(key, value, "a Winsock error number"))?;
                    settings.fail.insert(call, code);
                }
                "delay" => {
                    let ms: u64 = value
                        .trim()
                        .parse()
                        .map_err(|_| bad_value::<Self>(key, value, "a number of milliseconds"))?;
                    settings.delay.insert(call, Duration::from_millis(ms));
                }
                _ => return Err(unknown::<Self>(key)),
            }
        }
        Ok(settings)
    }
}

/// Checks `config` against the parser of layer kind `kind`.
///
/// # Errors
/// [`ErrorKind::InvalidLayerSetting`] as [`LayerSettings::parse`];
/// [`ErrorKind::InvalidCatalog`] for a kind that is none of [`LAYER_KINDS`](super::LAYER_KINDS).
pub fn check_settings(kind: &str, config: &Config) -> Result<(), Error> {
    fn check<S: LayerSettings>(config: &Config) -> Result<(), Error> {
        S::parse(config).map(drop)
    }
    let check = match kind {
        TraceSettings::KIND => check::<TraceSettings>,
        PolicySettings::KIND => check::<PolicySettings>,
        FaultSettings::KIND => check::<FaultSettings>,
        other => {
            return Err(Error::new(
                ErrorKind::InvalidCatalog,
                format!(
                    "there is no layer kind {other:?}; the kinds are {}",
                    super::LAYER_KINDS.join(", ")
                ),
            ));
        }
    };
    check(config)
}

/// An address rule of the policy layer: an IP with an optional prefix length and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    ip: IpAddr,
    prefix: u8,
    port: Option<u16>,
}

impl Net {
    /// Parses `ADDR`, `ADDR/PREFIX` or `IP:PORT` (`[IPV6]:PORT`); `None` if it is none of
    /// those, or the prefix is longer than the address (33 for IPv4, 129 for IPv6).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(sa) = text.parse::<SocketAddr>() {
            let prefix = if sa.is_ipv4() { 32 } else { 128 };
            return Some(Self {
                ip: sa.ip(),
                prefix,
                port: Some(sa.port()),
            });
        }
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(width);
        if prefix > width {
            return None;
        }
        Some(Self {
            ip,
            prefix,
            port: None,
        })
    }

    /// Whether `addr` is inside this rule (same family, same network prefix, same port if the
    /// rule has one).
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((a, wa), (b, wb)) = (bits(self.ip), bits(addr.ip()));
        if wa != wb || self.prefix > wa {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        a & mask == b & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Asserts an InvalidLayerSetting error whose message holds every needle.
    #[track_caller]
    fn refused(e: Error, needles: &[&str]) {
        assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting, "{e}");
        assert_eq!(e.code(), crate::error::WSAEINVAL);
        for n in needles {
            assert!(e.message().contains(n), "{n:?} missing from: {e}");
        }
    }

    #[test]
    fn every_call_name_round_trips() {
        for &c in ProviderCall::ALL {
            assert_eq!(ProviderCall::from_name(c.name()), Some(c));
        }
        assert_eq!(ProviderCall::from_name("conect"), None);
    }

    #[test]
    fn trace_takes_no_settings() {
        assert_eq!(
            TraceSettings::parse(&Config::new()).unwrap(),
            TraceSettings {}
        );
        refused(
            TraceSettings::parse(&config(&[("verbose", "1")])).unwrap_err(),
            &["\"verbose\"", "trace layer takes no settings"],
        );
    }

    #[test]
    fn policy_settings_parse_and_name_bad_keys_and_values() {
        let s = PolicySettings::parse(&config(&[
            ("target_uids", "0, 1000"),
            ("target_exe", "/usr/bin/,/opt/a=b"),
            ("connect", "127.0.0.0/8,[::1]:80"),
        ]))
        .unwrap();
        assert_eq!(s.target_uids, Some(vec![0, 1000]));
        assert_eq!(
            s.target_exe,
            Some(vec!["/usr/bin/".to_owned(), "/opt/a=b".to_owned()])
        );
        assert_eq!(s.connect.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            PolicySettings::parse(&Config::new()).unwrap(),
            PolicySettings::default()
        );
        let all = ["target_uids", "target_exe", "connect"];
        let e = PolicySettings::parse(&config(&[("deny", "10.0.0.0/8")])).unwrap_err();
        refused(e, &["\"deny\"", "not a setting of a policy layer"]);
        let e = PolicySettings::parse(&config(&[("deny", "x")])).unwrap_err();
        refused(e, &all);
        let e = PolicySettings::parse(&config(&[("target_uids", "1,root")])).unwrap_err();
        refused(e, &["\"target_uids\"", "\"root\"", "a uid"]);
        let e = PolicySettings::parse(&config(&[("connect", "10.0.0.0/8,bogus")])).unwrap_err();
        refused(e, &["\"connect\"", "\"bogus\"", "target_exe"]);
    }

    #[test]
    fn fault_settings_take_only_calls_the_layer_intercepts() {
        let s = FaultSettings::parse(&config(&[
            ("fail.send", "10055"),
            ("delay.connect", "200"),
            ("fail.socket_from_info", " 10050 "),
        ]))
        .unwrap();
        assert_eq!(s.fail.get(&ProviderCall::Send), Some(&10055));
        assert_eq!(s.fail.get(&ProviderCall::SocketFromInfo), Some(&10050));
        assert_eq!(
            s.delay.get(&ProviderCall::Connect),
            Some(&Duration::from_millis(200))
        );
        for key in ["fail.conect", "fail", "delay.", "fial.send", "fail.send.x"] {
            let e = FaultSettings::parse(&config(&[(key, "10050")])).unwrap_err();
            refused(
                e,
                &[
                    &format!("{key:?}"),
                    "fail.CALL",
                    "delay.CALL",
                    "connect",
                    "socket_from_info",
                    "string_to_address",
                ],
            );
        }
        let e = FaultSettings::parse(&config(&[("fail.send", "many")])).unwrap_err();
        refused(e, &["\"fail.send\"", "\"many\"", "Winsock error number"]);
        let e = FaultSettings::parse(&config(&[("delay.recv", "-1")])).unwrap_err();
        refused(e, &["\"delay.recv\"", "milliseconds"]);
    }

    #[test]
    fn check_settings_dispatches_by_kind() {
        for kind in super::super::LAYER_KINDS {
            check_settings(kind, &Config::new()).unwrap();
        }
        refused(
            check_settings("fault", &config(&[("fail.conect", "10050")])).unwrap_err(),
            &["fail.conect"],
        );
        let e = check_settings("magic", &Config::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidCatalog);
    }

    #[test]
    fn policy_networks() {
        let n = Net::parse("127.0.0.0/8").unwrap();
        assert!(n.contains(&"127.1.2.3:80".parse().unwrap()));
        assert!(!n.contains(&"10.0.0.1:80".parse().unwrap()));
        assert!(!n.contains(&"[::1]:80".parse().unwrap()));
        let p = Net::parse("127.0.0.1:8080").unwrap();
        assert!(
            p.contains(&"127.0.0.1:8080".parse().unwrap())
                && !p.contains(&"127.0.0.1:8081".parse().unwrap())
        );
        assert!(
            Net::parse("::1")
                .unwrap()
                .contains(&"[::1]:9".parse().unwrap())
        );
        assert!(
            Net::parse("0.0.0.0/0")
                .unwrap()
                .contains(&"8.8.8.8:53".parse().unwrap())
        );
        assert!(Net::parse("bogus").is_none());
        assert!(Net::parse("10.0.0.0/33").is_none() && Net::parse("::/129").is_none());
        assert!(Net::parse("10.0.0.0/255").is_none());
        assert!(Net::parse("::/128").is_some() && Net::parse("10.0.0.0/0").is_some());
    }
}
