//! The `policy` layer: refuses duplicates to targets outside its rules (`target_uids`,
//! `target_exe`) and connections to addresses outside them (`connect`), with
//! [`ErrorKind::RefusedByLayer`] (`WSAEACCES`) naming the rule. A rule that is not set allows
//! everything.

use std::net::SocketAddr;

use sockdup_core::catalog::{Layer, PolicySettings, ProviderCall};
use sockdup_core::error::{Error, ErrorKind};

use super::{Call, Detail, Hooks, LayerKind};
use crate::sys::procfs;

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
