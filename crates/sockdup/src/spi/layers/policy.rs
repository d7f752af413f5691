//! The `policy` layer: refuses duplicates to targets outside its rules (`target_uids`,
//! `target_exe`) and connections to addresses outside them (`connect`), with
//! [`ErrorKind::RefusedByLayer`] (`WSAEACCES`) naming the rule. A rule that is not set allows
//! everything.

use std::net::{IpAddr, SocketAddr};

use sockdup_core::catalog::{Layer, ProviderCall};
use sockdup_core::error::{Error, ErrorKind};

use super::{Call, Config, Detail, Hooks, LayerKind, LayerSettings, bad_value, list, unknown};
use crate::sys::procfs;

/// The settings of a `policy` layer: each rule is absent (allows everything) or a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PolicySettings {
    /// `target_uids`: duplicates only to processes of these real uids.
    pub(crate) target_uids: Option<Vec<u32>>,
    /// `target_exe`: duplicates only to processes whose executable path starts with one of
    /// these prefixes.
    pub(crate) target_exe: Option<Vec<String>>,
    /// `connect`: connections only to these addresses, networks or `ip:port`s.
    pub(crate) connect: Option<Vec<Net>>,
}

impl LayerSettings for PolicySettings {
    const KIND: &'static str = "policy";

    fn valid_keys() -> String {
        "target_uids (uids, comma-separated), target_exe (executable path prefixes, \
         comma-separated), connect (addresses, networks ADDR/PREFIX or IP:PORT, comma-separated)"
            .to_owned()
    }

    fn usage() -> String {
        "target_uids=UID,...  target_exe=PATH-PREFIX,...  connect=ADDR[/PREFIX]|IP:PORT,..."
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

/// An address rule of the policy layer: an IP with an optional prefix length and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Net {
    ip: IpAddr,
    prefix: u8,
    port: Option<u16>,
}

impl Net {
    /// Parses `ADDR`, `ADDR/PREFIX` or `IP:PORT` (`[IPV6]:PORT`); `None` if it is none of
    /// those, or the prefix is longer than the address (33 for IPv4, 129 for IPv6).
    pub(crate) fn parse(text: &str) -> Option<Self> {
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
    pub(crate) fn contains(&self, addr: &SocketAddr) -> bool {
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

/// One `policy` layer instance.
#[derive(Debug)]
pub(crate) struct Policy {
    id: u32,
    name: String,
    /// The `connect` rule as written, for refusals.
    connect_text: String,
    rules: PolicySettings,
}

impl LayerKind for Policy {
    type Settings = PolicySettings;

    fn new(spec: &Layer, _chain_id: u32, rules: PolicySettings) -> Self {
        Self {
            id: spec.id,
            name: spec.name.clone(),
            connect_text: spec.config.get("connect").cloned().unwrap_or_default(),
            rules,
        }
    }
}

impl Policy {
    fn refuse(&self, call: ProviderCall, rule: String) -> Error {
        Error::new(
            ErrorKind::RefusedByLayer,
            format!(
                "policy layer {} ({:?}) refused {}: {rule}",
                self.id,
                self.name,
                call.name()
            ),
        )
    }

    /// The rule a duplicate to process `pid` breaks, if any.
    fn duplicate_breaks(&self, pid: u32) -> Option<String> {
        if let Some(uids) = &self.rules.target_uids {
            let uid = procfs::process_uid(pid).ok();
            if !uid.is_some_and(|u| uids.contains(&u)) {
                return Some(format!(
                    "rule target_uids={} does not include process {pid}'s uid ({})",
                    uids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
                ));
            }
        }
        if let Some(exes) = &self.rules.target_exe {
            let shown = procfs::process_exe(pid)
                .map_or_else(|_| "unknown".to_owned(), |p| p.display().to_string());
            if !exes.iter().any(|prefix| shown.starts_with(prefix.as_str())) {
                return Some(format!(
                    "rule target_exe={} does not match process {pid}'s executable {shown}",
                    exes.join(",")
                ));
            }
        }
        None
    }

    /// The rule a connection to `addr` breaks, if any.
    fn connect_breaks(&self, addr: &SocketAddr) -> Option<String> {
        match &self.rules.connect {
            Some(nets) if !nets.iter().any(|n| n.contains(addr)) => Some(format!(
                "rule connect={} does not allow {addr}",
                self.connect_text
            )),
            _ => None,
        }
    }
}

impl Hooks for Policy {
    fn before(&self, call: &Call<'_>) -> Result<(), Error> {
        let broken = match call.detail {
            Detail::Duplicate(pid) => self.duplicate_breaks(pid),
            Detail::Connect(addr) => self.connect_breaks(addr),
            Detail::None => None,
        };
        match broken {
            Some(rule) => Err(self.refuse(call.name, rule)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spi::layers::tests::{config, refused};

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
