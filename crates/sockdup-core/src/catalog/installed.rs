//! The installed catalog: built-in base entries, plus layered providers and the protocol chains
//! built over them, as `WSCInstallProvider` and an LSP installer would leave them.
//!
//! A layer has one hidden entry of its own (`ChainLen` 0, `PFL_HIDDEN`); for each protocol it is
//! installed over it gets one chain entry (`ChainLen` > 1, entries top layer first, base last, at
//! most 7). New chains come first in the catalog, so socket creation picks them before the base
//! entry, as Windows's installers arrange by reordering.
//!
//! The catalog is persisted as JSON ([`Catalog::to_json`], [`Catalog::from_json`]); reading
//! validates the structure and names the entry at fault. Which layer kinds exist and what
//! settings each takes is not known here: the `sockdup` crate checks every layer against its
//! registry whenever it reads or writes a catalog. Writing the file atomically is the driver's
//! job.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{BASE_PROVIDER_ID, FIRST_CATALOG_ID, base_entries, base_entry};
use crate::error::{Error, ErrorKind};
use crate::flags::{PFL_HIDDEN, PFL_MATCHES_PROTOCOL_ZERO, XP1_IFS_HANDLES};
use crate::wire::{Guid, LAYERED_PROTOCOL, MAX_PROTOCOL_CHAIN, ProtocolChain, ProtocolInfo};

/// The first id given to installed entries, leaving room after the built-in base entries.
pub const FIRST_INSTALLED_ID: u32 = FIRST_CATALOG_ID + 100;

/// One installed layered provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Its own (hidden, `ChainLen` 0) catalog entry id.
    pub id: u32,
    /// Which layer implementation (`trace`, `policy`, `fault`, …): a name of the `sockdup`
    /// crate's registry of layers, which checks it.
    pub kind: String,
    /// A name for people; appears in `szProtocol` of its entries.
    pub name: String,
    /// Whether it hands out the base provider's real descriptors (IFS) or handles of its own.
    pub ifs: bool,
    /// Its provider GUID.
    pub provider_id: Guid,
    /// Settings of the layer implementation (rules, faults), by name; what they may be is its
    /// kind's business (checked by the `sockdup` crate's registry of layers).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// One protocol chain entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// The chain's catalog entry id.
    pub id: u32,
    /// Catalog ids, top layer first, the base entry last.
    pub entries: Vec<u32>,
}

/// Layers and chains as stored in the catalog file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    #[serde(default)]
    layers: Vec<Layer>,
    /// Chains in catalog order (newest first).
    #[serde(default)]
    chains: Vec<Chain>,
}

/// The whole catalog: built-in base entries, installed layers and chains (see the
/// [`catalog`](crate::catalog) module).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    layers: Vec<Layer>,
    chains: Vec<Chain>,
}

/// The longest layer name, in characters (it becomes part of a 255-unit `szProtocol`).
pub const MAX_LAYER_NAME: usize = 100;

/// Checks a layer's name; a bad one is an error of `kind`.
fn check_name(name: &str, kind: ErrorKind) -> Result<(), Error> {
    if name.is_empty()
        || name.chars().count() > MAX_LAYER_NAME
        || name.chars().any(char::is_control)
    {
        return Err(Error::new(
            kind,
            format!(
                "layer name {name:?} must be 1 to {MAX_LAYER_NAME} characters without control characters"
            ),
        ));
    }
    Ok(())
}

fn guid_for(kind: &str, id: u32) -> Guid {
    // Deterministic per (kind, id), so a catalog file can be rebuilt identically.
    let k = kind
        .bytes()
        .fold(0u16, |h, b| h.rotate_left(5) ^ u16::from(b));
    Guid {
        data1: 0x5d0c_4d75 ^ id,
        data2: 0x7b3e,
        data3: k,
        data4: BASE_PROVIDER_ID.data4,
    }
}

impl Catalog {
    /// Only the built-in base entries.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// Reads a catalog file's contents, validating its structure (see
    /// [`validate`](Self::validate)).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidCatalog`] (`WSAEINVAL`) naming the entry at fault: unparsable JSON,
    /// another version than 1, a bad layer name, a duplicate id, a chain entry naming an id that
    /// does not exist, a layer twice in one chain, a chain longer than 7 or shorter than 2, or
    /// whose last entry is not a base entry or whose others are not layers.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let stored: Stored = serde_json::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidCatalog,
                format!("the catalog file is not valid: {e}"),
            )
        })?;
        if stored.version != 1 {
            return Err(Error::new(
                ErrorKind::InvalidCatalog,
                format!(
                    "the catalog file has version {}, but this sockdup reads version 1",
                    stored.version
                ),
            ));
        }
        let catalog = Self {
            layers: stored.layers,
            chains: stored.chains,
        };
        catalog.validate()?;
        Ok(catalog)
    }

    /// The catalog as the JSON of a catalog file.
    pub fn to_json(&self) -> String {
        let stored = Stored {
            version: 1,
            layers: self.layers.clone(),
            chains: self.chains.clone(),
        };
        serde_json::to_string_pretty(&stored).unwrap_or_default()
    }

    /// Checks every structural invariant (ids, chains, names); see
    /// [`from_json`](Self::from_json). A layer's kind and settings are not checked here: the
    /// `sockdup` crate checks them against its registry of layers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidCatalog`] naming the entry at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let mut ids = HashSet::new();
        for layer in &self.layers {
            check_name(&layer.name, ErrorKind::InvalidCatalog)
                .map_err(|e| e.context(format!("catalog entry {}", layer.id)))?;
            if base_entry(layer.id).is_some() || !ids.insert(layer.id) {
                return Err(Error::new(
                    ErrorKind::InvalidCatalog,
                    format!(
                        "catalog entry {} (layer {:?}) reuses an id",
                        layer.id, layer.name
                    ),
                ));
            }
        }
        for chain in &self.chains {
            if base_entry(chain.id).is_some() || !ids.insert(chain.id) {
                return Err(Error::new(
                    ErrorKind::InvalidCatalog,
                    format!("catalog entry {} (chain) reuses an id", chain.id),
                ));
            }
            self.check_chain(chain)?;
        }
        Ok(())
    }

    fn check_chain(&self, chain: &Chain) -> Result<(), Error> {
        let bad = |why: String| {
            Err(Error::new(
                ErrorKind::InvalidCatalog,
                format!(
                    "catalog entry {} (chain {:?}) {why}",
                    chain.id, chain.entries
                ),
            ))
        };
        let n = chain.entries.len();
        if n < 2 {
            return bad(
                "has fewer than 2 entries: a chain is at least one layer over a base entry".into(),
            );
        }
        if n > MAX_PROTOCOL_CHAIN {
            return bad(format!("has {n} entries, more than MAX_PROTOCOL_CHAIN (7)"));
        }
        let (base, layers) = chain.entries.split_last().unwrap_or((&0, &[]));
        if base_entry(*base).is_none() {
            return if self.layer(*base).is_some() {
                bad(format!(
                    "ends with layer {base}, but the last entry must be a base entry"
                ))
            } else {
                bad(format!(
                    "ends with {base}, which is not a base entry in the catalog"
                ))
            };
        }
        let mut seen = HashSet::new();
        for id in layers {
            if self.layer(*id).is_none() {
                return if base_entry(*id).is_some() {
                    bad(format!("has base entry {id} above its bottom"))
                } else {
                    bad(format!("names {id}, which is not a layer in the catalog"))
                };
            }
            if !seen.insert(*id) {
                return bad(format!("holds layer {id} twice (a cycle)"));
            }
        }
        Ok(())
    }

    /// The layer with entry id `id`.
    pub fn layer(&self, id: u32) -> Option<&Layer> {
        self.layers.iter().find(|l| l.id == id)
    }

    /// The installed layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The installed chains, in catalog order.
    pub fn chains(&self) -> &[Chain] {
        &self.chains
    }

    fn next_id(&self) -> u32 {
        self.layers
            .iter()
            .map(|l| l.id)
            .chain(self.chains.iter().map(|c| c.id))
            .max()
            .map_or(FIRST_INSTALLED_ID, |m| m + 1)
    }

    /// The entries a chain stands on when another layer goes over entry `id`: a base entry, or
    /// an existing chain.
    fn lower_entries(&self, id: u32) -> Result<Vec<u32>, Error> {
        if base_entry(id).is_some() {
            return Ok(vec![id]);
        }
        if let Some(chain) = self.chains.iter().find(|c| c.id == id) {
            return Ok(chain.entries.clone());
        }
        Err(Error::new(
            ErrorKind::CatalogChangeRefused,
            format!(
                "catalog entry {id} is neither a base entry nor a chain: a layer goes over those (see `sockdup catalog`)"
            ),
        ))
    }

    /// Installs a layer of `kind` over the entries `over` (base entries or chains): one hidden
    /// entry for the layer and one new chain per entry in `over`, placed first in the catalog.
    /// Returns the layer's id and the new chains' ids, in the order of `over`.
    ///
    /// `kind` and `config` are kept as given: the `sockdup` crate checks them against its
    /// registry of layers when the catalog is saved (`sockdup::update_catalog_at`,
    /// `sockdup::save_catalog_to`), so an unknown kind or a bad setting is refused there.
    ///
    /// # Errors
    /// [`ErrorKind::CatalogChangeRefused`] (`WSAEINVAL`) for a bad name, an empty `over`, an
    /// entry named twice, an entry that is neither base nor chain, or a chain that would grow
    /// beyond 7 entries. The catalog is unchanged then.
    #[doc(alias = "WSCInstallProvider")]
    pub fn install(
        &mut self,
        kind: &str,
        name: &str,
        ifs: bool,
        config: BTreeMap<String, String>,
        over: &[u32],
    ) -> Result<(u32, Vec<u32>), Error> {
        if over.is_empty() {
            return Err(Error::new(
                ErrorKind::CatalogChangeRefused,
                "a layer must be installed over at least one catalog entry",
            ));
        }
        check_name(name, ErrorKind::CatalogChangeRefused)?;
        if let Some(dup) = over
            .iter()
            .enumerate()
            .find_map(|(i, id)| over[..i].contains(id).then_some(id))
        {
            return Err(Error::new(
                ErrorKind::CatalogChangeRefused,
                format!("entry {dup} is named twice: a layer goes over each entry once"),
            ));
        }
        for &id in over {
            let n = self.lower_entries(id)?.len() + 1;
            if n > MAX_PROTOCOL_CHAIN {
                return Err(Error::new(
                    ErrorKind::CatalogChangeRefused,
                    format!(
                        "a layer over entry {id} would make a chain of {n} entries, more than MAX_PROTOCOL_CHAIN (7)"
                    ),
                ));
            }
        }
        let mut next = self.next_id();
        let layer_id = next;
        next += 1;
        let layer = Layer {
            id: layer_id,
            kind: kind.to_owned(),
            name: name.to_owned(),
            ifs,
            provider_id: guid_for(kind, layer_id),
            config,
        };
        let mut candidate = self.clone();
        candidate.layers.push(layer);
        let mut new_chains = Vec::new();
        for &id in over {
            let mut entries = vec![layer_id];
            entries.extend(self.lower_entries(id)?);
            new_chains.push(Chain { id: next, entries });
            next += 1;
        }
        let ids = new_chains.iter().map(|c| c.id).collect();
        candidate.chains.splice(0..0, new_chains);
        candidate.validate()?;
        *self = candidate;
        Ok((layer_id, ids))
    }

    /// Removes entry `id`: a chain, or a layer with every chain that holds it.
    ///
    /// # Errors
    /// [`ErrorKind::CatalogChangeRefused`] (`WSAEINVAL`) for a built-in base entry or an id the
    /// catalog does not have.
    #[doc(alias = "WSCDeinstallProvider")]
    pub fn remove(&mut self, id: u32) -> Result<(), Error> {
        if base_entry(id).is_some() {
            return Err(Error::new(
                ErrorKind::CatalogChangeRefused,
                format!("catalog entry {id} is a built-in base entry and cannot be removed"),
            ));
        }
        if self.layer(id).is_some() {
            self.layers.retain(|l| l.id != id);
            self.chains.retain(|c| !c.entries.contains(&id));
        } else {
            let before = self.chains.len();
            self.chains.retain(|c| c.id != id);
            if self.chains.len() == before {
                return Err(Error::new(
                    ErrorKind::CatalogChangeRefused,
                    format!("the catalog has no entry {id} (see `sockdup catalog`)"),
                ));
            }
        }
        // A layer left in no chain serves nothing: it goes too, as an uninstaller would.
        let chains = &self.chains;
        self.layers
            .retain(|l| chains.iter().any(|c| c.entries.contains(&l.id)));
        Ok(())
    }

    /// The entry with catalog id `id`, as a [`ProtocolInfo`].
    pub fn entry(&self, id: u32) -> Option<ProtocolInfo> {
        if let Some(base) = base_entry(id) {
            return Some(base);
        }
        if let Some(layer) = self.layer(id) {
            return Some(self.layer_entry(layer));
        }
        self.chains
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| self.chain_entry(c))
    }

    fn layer_entry(&self, layer: &Layer) -> ProtocolInfo {
        let mut entries = [0u32; MAX_PROTOCOL_CHAIN];
        entries[0] = layer.id;
        ProtocolInfo {
            service_flags1: if layer.ifs { XP1_IFS_HANDLES } else { 0 },
            provider_flags: PFL_HIDDEN,
            provider_id: layer.provider_id,
            catalog_entry_id: layer.id,
            protocol_chain: ProtocolChain {
                len: LAYERED_PROTOCOL,
                entries,
            },
            version: 2,
            protocol_name: format!("sockdup {} layer {:?}", layer.kind, layer.name),
            ..ProtocolInfo::default()
        }
    }

    fn chain_entry(&self, chain: &Chain) -> Option<ProtocolInfo> {
        let (&base_id, layers) = chain.entries.split_last()?;
        let mut info = base_entry(base_id)?;
        let top = self.layer(*layers.first()?)?;
        let all_ifs = layers
            .iter()
            .all(|id| self.layer(*id).is_some_and(|l| l.ifs));
        let mut entries = [0u32; MAX_PROTOCOL_CHAIN];
        entries[..chain.entries.len()].copy_from_slice(&chain.entries);
        if !all_ifs {
            info.service_flags1 &= !XP1_IFS_HANDLES;
        }
        info.provider_flags = PFL_MATCHES_PROTOCOL_ZERO;
        info.provider_id = top.provider_id;
        info.catalog_entry_id = chain.id;
        info.protocol_chain = ProtocolChain {
            len: chain.entries.len() as i32,
            entries,
        };
        info.protocol_name = format!("{} over [{}]", top.name, info.protocol_name);
        Some(info)
    }

    /// Every entry, like `WSCEnumProtocols`: chains (newest first), base entries, then the
    /// hidden layer entries.
    #[doc(alias = "WSCEnumProtocols")]
    pub fn all_entries(&self) -> Vec<ProtocolInfo> {
        let chains = self.chains.iter().filter_map(|c| self.chain_entry(c));
        let layers = self.layers.iter().map(|l| self.layer_entry(l));
        chains.chain(base_entries()).chain(layers).collect()
    }

    /// The entries applications see, like `WSAEnumProtocols`: every entry but hidden ones.
    #[doc(alias = "WSAEnumProtocols")]
    pub fn visible_entries(&self) -> Vec<ProtocolInfo> {
        self.all_entries()
            .into_iter()
            .filter(|e| e.provider_flags & PFL_HIDDEN == 0)
            .collect()
    }

    /// The entry `socket(family, type, protocol)` uses: the first visible entry that matches,
    /// where protocol 0 matches entries flagged `PFL_MATCHES_PROTOCOL_ZERO`.
    pub fn entry_for_socket(
        &self,
        family: i32,
        socket_type: i32,
        protocol: i32,
    ) -> Option<ProtocolInfo> {
        self.visible_entries().into_iter().find(|e| {
            e.address_family == family
                && e.socket_type == socket_type
                && (e.protocol == protocol
                    || (protocol == 0 && e.provider_flags & PFL_MATCHES_PROTOCOL_ZERO != 0))
        })
    }

    /// The layers of entry `id` from the top, and its base entry: what a call on a socket of
    /// that entry passes through. A base entry has no layers.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownCatalogEntry`] (`WSAEINVAL`) if the catalog has no entry `id`, or
    /// `id` is a layer's own entry (those are never used for sockets).
    pub fn resolve(&self, id: u32) -> Result<(Vec<&Layer>, ProtocolInfo), Error> {
        if let Some(base) = base_entry(id) {
            return Ok((Vec::new(), base));
        }
        let chain = self.chains.iter().find(|c| c.id == id).ok_or_else(|| {
            if self.layer(id).is_some() {
                Error::new(ErrorKind::UnknownCatalogEntry, format!("catalog entry {id} is a layer's own entry, which sockets never use: use one of its chains"))
            } else {
                Error::new(ErrorKind::UnknownCatalogEntry, format!(
                    "the record names catalog entry {id}, which is not in this process's catalog: install the same \
                     chain in the target (sockdup catalog), or duplicate through a chain both processes have"
                ))
            }
        })?;
        let (base_id, layers) = chain
            .entries
            .split_last()
            .ok_or_else(|| Error::new(ErrorKind::InvalidCatalog, format!("chain {id} is empty")))?;
        let layers = layers.iter().filter_map(|id| self.layer(*id)).collect();
        let base = base_entry(*base_id).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidCatalog,
                format!("chain {id} has no base entry"),
            )
        })?;
        Ok((layers, base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{AF_INET, IPPROTO_TCP, SOCK_STREAM};

    fn install(c: &mut Catalog, kind: &str, over: &[u32]) -> (u32, Vec<u32>) {
        c.install(kind, kind, true, BTreeMap::new(), over).unwrap()
    }

    #[test]
    fn install_puts_new_chains_first_and_hides_the_layer() {
        let mut c = Catalog::builtin();
        assert_eq!(c.all_entries().len(), 7);
        let (trace, chains) = install(&mut c, "trace", &[1001, 1003]);
        assert_eq!(trace, FIRST_INSTALLED_ID);
        let all = c.all_entries();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].catalog_entry_id, chains[0]);
        assert_eq!(all[0].protocol_chain.used(), [trace, 1001]);
        assert_eq!(all.last().unwrap().protocol_chain.len, 0);
        assert!(
            c.visible_entries()
                .iter()
                .all(|e| e.catalog_entry_id != trace)
        );
        let picked = c.entry_for_socket(AF_INET, SOCK_STREAM, 0).unwrap();
        assert_eq!(picked.catalog_entry_id, chains[0]);
        assert_eq!(
            c.entry_for_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)
                .unwrap()
                .catalog_entry_id,
            chains[0]
        );
        let (policy, over_chain) = install(&mut c, "policy", &[chains[0]]);
        let (layers, base) = c.resolve(over_chain[0]).unwrap();
        assert_eq!(
            layers.iter().map(|l| l.id).collect::<Vec<_>>(),
            [policy, trace]
        );
        assert_eq!(base.catalog_entry_id, 1001);
        assert_eq!(
            c.entry_for_socket(AF_INET, SOCK_STREAM, 0)
                .unwrap()
                .catalog_entry_id,
            over_chain[0]
        );
    }

    #[test]
    fn chains_stop_at_seven() {
        let mut c = Catalog::builtin();
        let mut top = 1001;
        for _ in 0..6 {
            top = install(&mut c, "trace", &[top]).1[0];
        }
        assert_eq!(c.entry(top).unwrap().protocol_chain.len, 7);
        let before = c.clone();
        let e = c
            .install("trace", "x", true, BTreeMap::new(), &[top])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CatalogChangeRefused);
        assert!(
            e.message()
                .contains(&format!("over entry {top} would make a chain of 8")),
            "{e}"
        );
        let e = c
            .install("trace", "x", true, BTreeMap::new(), &[1001, 1001])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CatalogChangeRefused);
        assert!(e.message().contains("named twice"), "{e}");
        let e = c
            .install("trace", "a\u{0}b", true, BTreeMap::new(), &[1001])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CatalogChangeRefused);
        assert!(e.message().contains("control characters"), "{e}");
        assert_eq!(c, before);
    }

    #[test]
    fn remove_a_layer_takes_its_chains() {
        let mut c = Catalog::builtin();
        let (trace, chains) = install(&mut c, "trace", &[1001, 1002]);
        let (_, over) = install(&mut c, "fault", &[chains[0]]);
        c.remove(trace).unwrap();
        assert!(c.chains().is_empty(), "{:?}", c.chains());
        assert!(
            c.layers().is_empty(),
            "the fault layer, now in no chain, went too"
        );
        assert!(c.entry(over[0]).is_none());
        let e = c.remove(1001).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CatalogChangeRefused);
        assert!(e.message().contains("built-in"), "{e}");
        let e = c.remove(4242).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CatalogChangeRefused);
        assert!(e.message().contains("no entry 4242"), "{e}");
    }

    #[test]
    fn json_round_trip_and_refusals_name_the_entry() {
        let mut c = Catalog::builtin();
        install(&mut c, "trace", &[1001]);
        assert_eq!(Catalog::from_json(&c.to_json()).unwrap(), c);
        let layer = r#"{"id":1101,"kind":"trace","name":"t","ifs":true,"provider_id":"5d0c4d75-7b3e-4c1a-9e51-736f636b6475"}"#;
        // A catalog with the trace layer and one chain over it.
        let with_chain = |id: u32, entries: &str| {
            format!(
                r#"{{"version":1,"layers":[{layer}],"chains":[{{"id":{id},"entries":[{entries}]}}]}}"#
            )
        };
        let cases = [
            ("{", "not valid"),
            (r#"{"version":2}"#, "version 2"),
            (&with_chain(1102, "1101,9999"), "entry 1102"),
            (&with_chain(1102, "1101,1101,1001"), "twice"),
            (&with_chain(1102, "1001,1101"), "last entry must be a base"),
            (&with_chain(1102, "1101,1001,1001"), "above its bottom"),
            (
                &with_chain(1102, "1101,1101,1101,1101,1101,1101,1101,1001"),
                "more than",
            ),
            (&with_chain(1101, "1101,1001"), "reuses an id"),
            (
                r#"{"version":1,"layers":[{"id":1101,"kind":"trace","name":"","ifs":true,"provider_id":"5d0c4d75-7b3e-4c1a-9e51-736f636b6475"}]}"#,
                "catalog entry 1101",
            ),
            (
                r#"{"version":1,"chains":[{"id":1102,"entries":[4000,1001]}]}"#,
                "not a layer",
            ),
        ];
        for (text, needle) in cases {
            let e = Catalog::from_json(text).unwrap_err();
            assert_eq!(e.code(), 10022);
            assert_eq!(e.kind(), ErrorKind::InvalidCatalog, "{text}: {e}");
            assert!(e.message().contains(needle), "{text}: {e}");
        }
        // Kinds and settings are the registry's business (the sockdup crate): the core keeps
        // them as written.
        let other = r#"{"version":1,"layers":[{"id":1101,"kind":"magic","name":"m","ifs":true,"provider_id":"5d0c4d75-7b3e-4c1a-9e51-736f636b6475","config":{"fail.conect":"10050"}}],"chains":[{"id":1102,"entries":[1101,1001]}]}"#;
        let c = Catalog::from_json(other).unwrap();
        assert_eq!(c.layers()[0].kind, "magic");
        assert_eq!(c.layers()[0].config["fail.conect"], "10050");
    }

    #[test]
    fn resolving_unknown_entries_is_einval() {
        let mut c = Catalog::builtin();
        let (trace, _) = install(&mut c, "trace", &[1001]);
        let e = c.resolve(777).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownCatalogEntry);
        assert!(e.message().contains("not in this process's catalog"), "{e}");
        let e = c.resolve(trace).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownCatalogEntry);
        assert!(e.message().contains("layer's own entry"), "{e}");
        assert!(c.resolve(1005).unwrap().0.is_empty());
    }
}
