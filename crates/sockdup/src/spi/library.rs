//! Provider libraries: layers whose provider is a shared library exporting `WSPStartup`, as
//! Windows LSPs are DLLs.
//!
//! The catalog keeps such a layer as kind [`LIBRARY_KIND`] with its path in the setting
//! [`PATH_KEY`] (and its provider GUID, as every layer). Loading a library (`dlopen`, `dlsym`,
//! calling C function pointers) is `unsafe`, and this crate has none of it: a program that can
//! load provider libraries registers a [`LibraryLoader`] ([`register_library_loader`]); the
//! `sockdup-capi` crate (the code of libsockdup) has one (`sockdup_capi::provider::register()`),
//! which libsockdup's `WSAStartup`, the `sockdup` command and the test peer call. The dispatcher asks the loader for a library's provider when a chain
//! holding it is first used, and starts it (`WSPStartup`) with the chain's entry; a chain's
//! providers are kept only once every one has started, so a failure leaves nothing half-loaded
//! and the next use tries again.
//!
//! A library layer loads the providers below it itself, as Windows LSPs do (`WSCEnumProtocols`,
//! `WSCGetProviderPath`, `dlopen`, `WSPStartup` with the propagation rule): for the base entry
//! and for built-in layers that is libsockdup, whose `WSPStartup` serves the built-in layers
//! below the libraries ([`below_libraries`](super::below_libraries)). The libraries of a chain
//! must be next to each other ([`check_chain_for_libraries`]).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use sockdup_core::catalog::{Catalog, Layer};
use sockdup_core::error::{Error, ErrorKind};

use super::Provider;

/// The layer kind of a provider library in the catalog file.
pub const LIBRARY_KIND: &str = "library";

/// The setting of a library layer that holds its path (absolute).
pub const PATH_KEY: &str = "path";

/// What loads provider libraries into this process: implemented by `sockdup-capi`, which holds
/// the `unsafe` code (`dlopen`, `dlsym`, calls through C function pointers).
pub trait LibraryLoader: Send + Sync + fmt::Debug {
    /// Loads the library of `layer` (at `path`) and returns its provider, not yet started:
    /// the dispatcher calls [`Provider::startup`] (`WSPStartup`) with the chain's entry.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidProvider`] naming the path for a library that is missing, not a
    /// shared library, or does not itself define `WSPStartup`.
    fn load(&self, layer: &Layer, path: &Path) -> Result<Arc<dyn Provider>, Error>;
}

static LOADER: OnceLock<&'static dyn LibraryLoader> = OnceLock::new();

/// Registers this process's loader of provider libraries. The first registration wins; returns
/// whether this one did.
pub fn register_library_loader(loader: &'static dyn LibraryLoader) -> bool {
    LOADER.set(loader).is_ok()
}

/// Whether a loader of provider libraries is registered in this process.
pub fn library_loader_registered() -> bool {
    LOADER.get().is_some()
}

/// The path of a library layer; `None` for a built-in layer kind.
pub fn library_path(layer: &Layer) -> Option<&Path> {
    (layer.kind == LIBRARY_KIND).then(|| Path::new(layer.config.get(PATH_KEY).map_or("", |p| p)))
}

/// Checks a library layer's settings: exactly [`PATH_KEY`], an absolute path.
pub(crate) fn check_settings(layer: &Layer) -> Result<(), Error> {
    let bad = |why: String| {
        Err(Error::new(
            ErrorKind::InvalidLayerSetting,
            format!(
                "catalog entry {} (library layer {:?}): {why}; a library layer takes one setting, \
                 {PATH_KEY} (the absolute path of the shared library): install it with \
                 `sockdup catalog install-library PATH --over ID`",
                layer.id, layer.name
            ),
        ))
    };
    if let Some(key) = layer.config.keys().find(|k| *k != PATH_KEY) {
        return bad(format!("{key:?} is not a setting of a library layer"));
    }
    match layer.config.get(PATH_KEY) {
        None => bad(format!("the setting {PATH_KEY} is missing")),
        Some(p) if !Path::new(p).is_absolute() => bad(format!("the path {p:?} is not absolute")),
        Some(_) => Ok(()),
    }
}

/// Checks that the provider libraries of chain entry `chain_id` (whose layers are `layers`,
/// top first) are next to each other: each library loads the provider below it itself, and
/// the lowest one, when that is a built-in layer, gets the built-in layers below it from
/// libsockdup's `WSPStartup` (`sockdup::spi::below_libraries`); a built-in layer between two
/// libraries would be started twice.
///
/// # Errors
/// [`ErrorKind::InvalidCatalog`] naming the layers (a change to the catalog that would leave
/// it is `CatalogChangeRefused`).
pub fn check_chain_for_libraries(chain_id: u32, layers: &[&Layer]) -> Result<(), Error> {
    let is_lib = |l: &&Layer| l.kind == LIBRARY_KIND;
    let (Some(first), Some(last)) = (
        layers.iter().position(is_lib),
        layers.iter().rposition(is_lib),
    ) else {
        return Ok(());
    };
    match layers[first..last].iter().find(|l| !is_lib(l)) {
        None => Ok(()),
        Some(builtin) => Err(Error::new(
            ErrorKind::InvalidCatalog,
            format!(
                "catalog entry {chain_id}: the {} layer {} ({:?}) sits between the provider libraries {} \
                 ({:?}) and {} ({:?}); the provider libraries of a chain must be next to each other \
                 (built-in layers above them, below them, or both): install the library over a chain \
                 without one, or built-in layers over the library's chain",
                builtin.kind,
                builtin.id,
                builtin.name,
                layers[first].id,
                layers[first].name,
                layers[last].id,
                layers[last].name
            ),
        )),
    }
}

/// Checks every chain of `catalog` with [`check_chain_for_libraries`].
///
/// # Errors
/// As [`check_chain_for_libraries`].
pub fn check_catalog_for_libraries(catalog: &Catalog) -> Result<(), Error> {
    for chain in catalog.chains() {
        let layers: Vec<&Layer> = chain
            .entries
            .iter()
            .filter_map(|id| catalog.layer(*id))
            .collect();
        check_chain_for_libraries(chain.id, &layers)?;
    }
    Ok(())
}

/// The provider of library layer `layer`, loaded by the registered loader (not started).
///
/// # Errors
/// [`ErrorKind::ProviderFailedInit`] if no loader is registered (saying what to do); the
/// loader's errors.
pub(crate) fn load(layer: &Layer) -> Result<Arc<dyn Provider>, Error> {
    let path = library_path(layer).unwrap_or(Path::new(""));
    let loader = LOADER.get().ok_or_else(|| {
        Error::new(
            ErrorKind::ProviderFailedInit,
            format!(
                "catalog entry {} is the provider library {}, but this program cannot load provider \
                 libraries: link the sockdup-capi crate and call sockdup_capi::provider::register() before using \
                 sockets (the sockdup command and libsockdup do), or use a chain without it",
                layer.id,
                path.display()
            ),
        )
    })?;
    loader.load(layer, path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn library(path: &str) -> BTreeMap<String, String> {
        [(PATH_KEY.to_owned(), path.to_owned())].into()
    }

    #[test]
    fn settings_and_chains_are_checked() {
        let mut c = Catalog::builtin();
        let (lib, chains) = c
            .install(LIBRARY_KIND, "l", true, library("/x/l.so"), &[1001])
            .unwrap();
        let layer = c.layer(lib).unwrap().clone();
        assert_eq!(library_path(&layer), Some(Path::new("/x/l.so")));
        check_settings(&layer).unwrap();
        assert!(check_catalog_for_libraries(&c).is_ok());
        for (config, needle) in [
            (library("l.so"), "not absolute"),
            (BTreeMap::new(), "missing"),
            (
                [("x".to_owned(), "1".to_owned())].into(),
                "\"x\" is not a setting",
            ),
        ] {
            let bad = Layer {
                config,
                ..layer.clone()
            };
            let e = check_settings(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
            assert!(e.message().contains(needle), "{e}");
        }
        // A built-in layer over the library's chain is fine, and a library over a trace chain;
        // a library over a chain of a built-in layer over a library is not.
        let (_, over_lib) = c
            .install("trace", "t", true, BTreeMap::new(), &[chains[0]])
            .unwrap();
        assert!(check_catalog_for_libraries(&c).is_ok());
        let (_, over_trace) = c
            .install("trace", "t2", true, BTreeMap::new(), &[1002])
            .unwrap();
        c.install(
            LIBRARY_KIND,
            "l2",
            true,
            library("/x/l2.so"),
            &[over_trace[0]],
        )
        .unwrap();
        assert!(check_catalog_for_libraries(&c).is_ok());
        c.install(
            LIBRARY_KIND,
            "l3",
            true,
            library("/x/l3.so"),
            &[over_lib[0]],
        )
        .unwrap();
        let e = check_catalog_for_libraries(&c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidCatalog);
        assert!(
            e.message().contains("sits between the provider libraries"),
            "{e}"
        );
    }

    #[test]
    fn without_a_loader_the_error_says_what_to_do() {
        if library_loader_registered() {
            return;
        }
        let mut c = Catalog::builtin();
        let (lib, _) = c
            .install(LIBRARY_KIND, "l", true, library("/x/l.so"), &[1001])
            .unwrap();
        let e = load(c.layer(lib).unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ProviderFailedInit);
        assert!(
            e.message().contains("/x/l.so")
                && e.message().contains("sockdup_capi::provider::register()"),
            "{e}"
        );
    }
}
