//! `sockdup catalog`: list the installed catalog, install and remove layered providers, reset.
//!
//! The catalog lives in one JSON file ([`sockdup::catalog_path`]); every change reads it,
//! changes it in memory ([`Catalog::install`], [`Catalog::remove`]) and replaces it atomically
//! ([`sockdup::save_catalog_to`]), so a failed change leaves the file as it was.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sockdup::ProtocolInfo;
use sockdup::catalog::{Catalog, Layer};
use sockdup::flags::{PFL_HIDDEN, provider_flag_names, service_flag_names};
use sockdup::spi::{layers, library};
use sockdup::wire::{BASE_PROTOCOL, LAYERED_PROTOCOL, MAX_PROTOCOL_CHAIN};

use crate::CliError;
use crate::record::{self, flag_list, hex, named};

/// The arguments of `sockdup catalog`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON array holding every entry, each an object with the keys of
    /// `sockdup inspect --json` (the field names of sockdup::ProtocolInfo).
    #[arg(long)]
    json: bool,

    #[command(subcommand)]
    action: Option<Action>,
}

/// What `sockdup catalog` does besides listing.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Install a layered provider over catalog entries (like WSCInstallProvider and an LSP
    /// installer).
    ///
    /// The layer gets one hidden entry of its own (ChainLen 0, PFL_HIDDEN) and, for each entry
    /// it goes over, one protocol chain entry (the layer on top of that entry's providers),
    /// placed first in the catalog so that new sockets pick it. Prints the new ids.
    #[command(after_long_help = install_help())]
    #[command(override_usage = "sockdup catalog install <LAYER> --over <ID>... [OPTIONS]")]
    Install(InstallArgs),

    /// Remove a protocol chain entry, or a layer with every chain that holds it (like
    /// WSCDeinstallProvider). Built-in base entries cannot be removed.
    Remove {
        /// The catalog id of the chain or of the layer's own entry (see `sockdup catalog`).
        #[arg(value_name = "ID")]
        id: u32,
    },

    /// Delete the catalog file: only the built-in base entries remain.
    Reset,

    /// Install a provider library (a shared library exporting WSPStartup, e.g. a layered
    /// provider written in C against sockdup/ws2spi.h) as a layer with a chain over each ID.
    ///
    /// The file is checked without starting it: it must be a shared library that itself
    /// defines WSPStartup (one that only imports it, e.g. from libsockdup, is refused). The
    /// catalog keeps its absolute path and a provider GUID; a process loads it (dlopen) and
    /// starts it (WSPStartup with the chain's entry) when it first uses one of its chains.
    /// The provider libraries of a chain must be next to each other (built-in layers may be
    /// above and below them). Prints the new ids.
    #[command(after_long_help = "Example:\n  \
        cc -shared -fPIC -I crates/sockdup-ffi/include examples/c/counting_lsp.c -o libcounting_lsp.so\n  \
        sockdup catalog install-library ./libcounting_lsp.so --over 1001 --name counting")]
    InstallLibrary(InstallLibraryArgs),
}

/// The arguments of `sockdup catalog install-library`.
#[derive(Debug, clap::Args)]
struct InstallLibraryArgs {
    /// The shared library (made absolute in the catalog).
    #[arg(value_name = "PATH")]
    path: PathBuf,

    /// The catalog ids of the entries to go over: base entries (1001-1007) or protocol chains.
    #[arg(long, value_name = "ID", num_args = 1.., value_delimiter = ',', required = true)]
    over: Vec<u32>,

    /// A name for people [default: the file's name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// The library hands out handles of its own (WPUCreateSocketHandle) instead of the
    /// descriptors below it (its chains lose XP1_IFS_HANDLES).
    #[arg(long)]
    non_ifs: bool,
}

/// The arguments of `sockdup catalog install`.
#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// The layer implementation: one of the layer kinds listed below.
    #[arg(value_name = "LAYER")]
    kind: String,

    /// The catalog ids of the entries to go over: base entries (1001-1007) or protocol chains.
    #[arg(long, value_name = "ID", num_args = 1.., value_delimiter = ',', required = true)]
    over: Vec<u32>,

    /// A name for people; it shows in the protocol name of the layer's entries [default: the
    /// layer kind].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// The layer hands out handles of its own instead of the base provider's descriptors
    /// (its chains lose XP1_IFS_HANDLES).
    #[arg(long)]
    non_ifs: bool,

    /// A setting of the layer, kept in its config map; may be repeated. An unknown key or a bad
    /// value is refused, naming the valid keys (see the examples below).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
}

/// The long help of `sockdup catalog install` after the options: examples, then the layer
/// kinds and their settings, from the library's registry of layers (so a new layer kind shows
/// here without a change to this file).
fn install_help() -> String {
    let kinds = layers::kinds();
    let kinds = match kinds.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "none".to_owned(),
    };
    format!(
        "Examples:\n  \
         sockdup catalog install trace --over 1001 1003\n  \
         sockdup catalog install fault --over 1102 --name flaky --set fail.connect=10061 --set delay.send=50\n  \
         sockdup catalog install policy --over 1001 --set connect=10.0.0.0/8,127.0.0.1:8080\n\n\
         Layer kinds: {kinds}. Provider libraries (layers in C, ws2spi.h) are installed with \
         `sockdup catalog install-library`.\n\n\
         Settings (--set KEY=VALUE), checked at install and whenever the catalog is read:\n{}",
        layers::settings_help().trim_end()
    )
}

/// Splits `KEY=VALUE` at the first `=`.
fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, _)) if key.trim().is_empty() => {
            Err(format!("{text:?} has an empty key: write KEY=VALUE"))
        }
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("{text:?} has no '=': write KEY=VALUE")),
    }
}

/// Runs `sockdup catalog`.
pub(crate) fn run(args: &Args) -> Result<(), CliError> {
    match &args.action {
        None => list(args.json),
        Some(Action::Install(install_args)) => install(install_args),
        Some(Action::Remove { id }) => remove(*id),
        Some(Action::Reset) => reset(),
        Some(Action::InstallLibrary(library_args)) => install_library(library_args),
    }
}

/// The catalog file that install, remove and reset change.
fn path_to_change() -> Result<PathBuf, CliError> {
    sockdup::catalog_path().ok_or_else(|| {
        CliError::failed(
            "there is no catalog file to change: SOCKDUP_CATALOG, XDG_CONFIG_HOME and HOME are \
             all unset; set SOCKDUP_CATALOG to the path of the catalog file",
        )
    })
}

/// Reads the catalog file at `path`.
fn load(path: &Path) -> Result<Catalog, CliError> {
    sockdup::load_catalog_from(path).map_err(|e| CliError::sockdup("reading the catalog", e))
}

/// Writes `text` to standard output; a reader that stopped early (`| head`) is not an error.
fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::failed(format!(
            "writing to standard output failed: {e}"
        ))),
    }
}

/// `sockdup catalog [--json]`.
fn list(json: bool) -> Result<(), CliError> {
    let path = sockdup::catalog_path();
    let catalog = match &path {
        Some(path) => load(path)?,
        None => Catalog::builtin(),
    };
    let entries = catalog.all_entries();
    if json {
        let array: Vec<_> = entries.iter().map(record::to_json).collect();
        return print(&format!("{}\n", serde_json::Value::Array(array)));
    }
    let mut s = String::new();
    match &path {
        Some(path) => {
            let state = match path.try_exists() {
                Ok(true) => "exists",
                Ok(false) => "does not exist: built-in base entries only",
                Err(_) => "cannot be checked",
            };
            let _ = writeln!(s, "Catalog file: {} ({state})", path.display());
        }
        None => {
            let _ = writeln!(
                s,
                "Catalog file: none (SOCKDUP_CATALOG, XDG_CONFIG_HOME and HOME are unset): \
                 built-in base entries only"
            );
        }
    }
    let chains = catalog.chains().len();
    let layers = catalog.layers().len();
    let _ = writeln!(
        s,
        "{} entries, in WSCEnumProtocols order: {chains} protocol chain{} (newest first), {} base \
         entries, {layers} hidden layer entr{}",
        entries.len(),
        if chains == 1 { "" } else { "s" },
        entries.len().saturating_sub(chains + layers),
        if layers == 1 { "y" } else { "ies" },
    );
    for info in &entries {
        s.push('\n');
        describe(&mut s, &catalog, info);
    }
    print(&s)
}

/// What a protocol chain says about its entry: "chain N: [...]", "base" or "layered".
fn chain_summary(info: &ProtocolInfo) -> String {
    let chain = &info.protocol_chain;
    let hidden = info.provider_flags & PFL_HIDDEN != 0;
    match chain.len {
        LAYERED_PROTOCOL if hidden => "layered (hidden)".to_owned(),
        LAYERED_PROTOCOL => "layered".to_owned(),
        BASE_PROTOCOL => "base".to_owned(),
        n if n > 1 && n as usize <= MAX_PROTOCOL_CHAIN => {
            let ids: Vec<String> = chain.used().iter().map(u32::to_string).collect();
            format!("chain {n}: [{}]", ids.join(", "))
        }
        n => format!("invalid chain length {n}"),
    }
}

/// A layer as people know it: `trace "name"`.
fn layer_label(layer: &Layer) -> String {
    format!("{} {:?}", layer.kind, layer.name)
}

/// The human-readable description of one entry, appended to `s`.
fn describe(s: &mut String, catalog: &Catalog, info: &ProtocolInfo) {
    let _ = writeln!(s, "Catalog entry {}", info.catalog_entry_id);
    let mut field = |name: &str, value: String| {
        let _ = writeln!(s, "  {name:<16}{value}");
    };
    field("chain", chain_summary(info));
    if let Some(layers) = chain_layers(catalog, info) {
        field("layers", layers);
    }
    if let Some(layer) = own_layer(catalog, info) {
        field("layer", layer);
    }
    for (name, value) in protocol_fields(info) {
        field(name, value);
    }
}

/// For a chain: its layers, top first, and the base entry under them.
fn chain_layers(catalog: &Catalog, info: &ProtocolInfo) -> Option<String> {
    if info.protocol_chain.len <= 1 {
        return None;
    }
    let (base, layers) = info.protocol_chain.used().split_last()?;
    let layers: Vec<String> = layers
        .iter()
        .map(|id| match catalog.layer(*id) {
            Some(layer) => format!("{id} {}", layer_label(layer)),
            None => id.to_string(),
        })
        .collect();
    Some(format!(
        "{} (top first), over base entry {base}",
        layers.join(", ")
    ))
}

/// For a layer's own entry: its kind, name, handles and settings.
fn own_layer(catalog: &Catalog, info: &ProtocolInfo) -> Option<String> {
    if info.protocol_chain.len != LAYERED_PROTOCOL {
        return None;
    }
    let layer = catalog.layer(info.catalog_entry_id)?;
    let config = if layer.config.is_empty() {
        "no settings".to_owned()
    } else {
        layer
            .config
            .iter()
            .map(|(k, v)| format!("{}={v:?}", k.escape_debug()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "{}, {}, {config}",
        layer_label(layer),
        if layer.ifs {
            "IFS (hands out the base provider's descriptors)"
        } else {
            "non-IFS (hands out handles of its own)"
        }
    ))
}

/// The fields every entry has: provider, flags, family, type, protocol, whether hidden.
fn protocol_fields(info: &ProtocolInfo) -> [(&'static str, String); 7] {
    let layered = info.protocol_chain.len == LAYERED_PROTOCOL;
    let hidden = info.provider_flags & PFL_HIDDEN != 0;
    [
        (
            "provider",
            format!("{:?}  {}", info.protocol_name, info.provider_id),
        ),
        (
            "service flags",
            format!(
                "{}  {}",
                hex(info.service_flags1),
                flag_list(&service_flag_names(info.service_flags1))
            ),
        ),
        (
            "provider flags",
            format!(
                "{}  {}",
                hex(info.provider_flags),
                flag_list(&provider_flag_names(info.provider_flags))
            ),
        ),
        (
            "family",
            named(
                info.address_family,
                record::family_name(info.address_family),
            ),
        ),
        (
            "type",
            named(info.socket_type, record::socket_type_name(info.socket_type)),
        ),
        (
            "protocol",
            if layered {
                format!("{}  none (a layer's own entry)", info.protocol)
            } else {
                named(
                    info.protocol,
                    record::protocol_name(info.address_family, info.protocol),
                )
            },
        ),
        (
            "hidden",
            if hidden {
                "yes (PFL_HIDDEN: WSAEnumProtocols does not list it; sockets never use it)"
                    .to_owned()
            } else {
                "no".to_owned()
            },
        ),
    ]
}

/// Checks a layer's name: it goes into `szProtocol`, so no control characters (NUL would end
/// the name).
fn check_name(name: &str) -> Result<(), CliError> {
    if name.trim().is_empty() {
        return Err(CliError::Usage(
            "--name is empty: give the layer a name people will recognize".to_owned(),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(CliError::Usage(format!(
            "--name {name:?} holds control characters: use printable text"
        )));
    }
    Ok(())
}

/// `sockdup catalog install`.
fn install(args: &InstallArgs) -> Result<(), CliError> {
    if args.kind == library::LIBRARY_KIND {
        return Err(CliError::Usage(
            "a provider library is installed with `sockdup catalog install-library PATH --over ID`, \
             which checks the file"
                .to_owned(),
        ));
    }
    let name = args.name.as_deref().unwrap_or(&args.kind);
    check_name(name)?;
    let mut config = BTreeMap::new();
    for (key, value) in &args.settings {
        if config.insert(key.clone(), value.clone()).is_some() {
            return Err(CliError::Usage(format!(
                "--set gives {key:?} more than once: give each setting once"
            )));
        }
    }
    for (i, id) in args.over.iter().enumerate() {
        if args.over[..i].contains(id) {
            return Err(CliError::Usage(format!(
                "--over names {id} more than once: a layer goes over each entry once"
            )));
        }
    }
    let over = args
        .over
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let context = format!("installing a {:?} layer over {over}", args.kind);
    let path = path_to_change()?;
    let (catalog, (layer_id, chain_ids)) = sockdup::update_catalog_at(&path, |c| {
        let ids = c.install(&args.kind, name, !args.non_ifs, config, &args.over)?;
        Ok((c.clone(), ids))
    })
    .map_err(|e| CliError::sockdup(context, e))?;

    let mut s = format!(
        "Installed layer {layer_id} ({} {name:?}, {}) in {}\n",
        args.kind,
        if args.non_ifs { "non-IFS" } else { "IFS" },
        path.display()
    );
    for (chain_id, over_id) in chain_ids.iter().zip(&args.over) {
        let summary = catalog
            .entry(*chain_id)
            .map(|info| format!("{}  {:?}", chain_summary(&info), info.protocol_name))
            .unwrap_or_default();
        let _ = writeln!(s, "  chain {chain_id} over {over_id}: {summary}");
    }
    print(&s)
}

/// `sockdup catalog install-library`.
fn install_library(args: &InstallLibraryArgs) -> Result<(), CliError> {
    let context = format!("installing the provider library {}", args.path.display());
    sockdup_capi::provider::check_library(&args.path)
        .map_err(|e| CliError::sockdup(&context, e))?;
    let file = std::fs::canonicalize(&args.path).map_err(|e| {
        CliError::failed(format!("{context}: its absolute path cannot be found: {e}"))
    })?;
    let text = file.to_str().ok_or_else(|| {
        CliError::failed(format!("{context}: the path is not UTF-8: rename the file"))
    })?;
    let default_name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("library")
        .to_owned();
    let name = args.name.clone().unwrap_or(default_name);
    check_name(&name)?;
    let config = BTreeMap::from([(library::PATH_KEY.to_owned(), text.to_owned())]);
    let path = path_to_change()?;
    let (catalog, (layer_id, chain_ids)) = sockdup::update_catalog_at(&path, |c| {
        let ids = c.install(
            library::LIBRARY_KIND,
            &name,
            !args.non_ifs,
            config,
            &args.over,
        )?;
        Ok((c.clone(), ids))
    })
    .map_err(|e| CliError::sockdup(&context, e))?;
    let mut s = format!(
        "Installed layer {layer_id} (provider library {name:?}, {}, {}) in {}\n",
        file.display(),
        if args.non_ifs { "non-IFS" } else { "IFS" },
        path.display()
    );
    for (chain_id, over_id) in chain_ids.iter().zip(&args.over) {
        let summary = catalog
            .entry(*chain_id)
            .map(|info| format!("{}  {:?}", chain_summary(&info), info.protocol_name))
            .unwrap_or_default();
        let _ = writeln!(s, "  chain {chain_id} over {over_id}: {summary}");
    }
    print(&s)
}

/// `sockdup catalog remove`.
fn remove(id: u32) -> Result<(), CliError> {
    let path = path_to_change()?;
    let (before, catalog) = sockdup::update_catalog_at(&path, |c| {
        let before = c.clone();
        c.remove(id)?;
        Ok((before, c.clone()))
    })
    .map_err(|e| CliError::sockdup(format!("removing catalog entry {id}"), e))?;

    let mut s = match before.layer(id) {
        Some(layer) => {
            let gone: Vec<String> = before
                .chains()
                .iter()
                .filter(|c| c.entries.contains(&id))
                .map(|c| c.id.to_string())
                .collect();
            format!(
                "Removed layer {id} ({}) and {} from {}\n",
                layer_label(layer),
                if gone.is_empty() {
                    "no chains".to_owned()
                } else {
                    format!(
                        "its chain{} {}",
                        if gone.len() == 1 { "" } else { "s" },
                        gone.join(", ")
                    )
                },
                path.display()
            )
        }
        None => format!("Removed chain {id} from {}\n", path.display()),
    };
    for layer in before.layers() {
        if layer.id != id && catalog.layer(layer.id).is_none() {
            let _ = writeln!(
                s,
                "Removed layer {} ({}) too: it is in no chain now",
                layer.id,
                layer_label(layer)
            );
        }
    }
    print(&s)
}

/// `sockdup catalog reset`.
fn reset() -> Result<(), CliError> {
    let path = path_to_change()?;
    let s = match std::fs::remove_file(&path) {
        Ok(()) => format!(
            "Removed {}: only the built-in base entries remain\n",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
            "There is no catalog file {}: only the built-in base entries are installed\n",
            path.display()
        ),
        Err(e) => {
            return Err(CliError::failed(format!(
                "removing the catalog file {} failed: {e}",
                path.display()
            )));
        }
    };
    print(&s)
}
