//! `sockdup inspect`: decode a `WSAPROTOCOL_INFOW` record and print it.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;

use sockdup::ProtocolInfo;
use sockdup::flags::{provider_flag_names, service_flag_names};
use sockdup::wire::{BASE_PROTOCOL, LAYERED_PROTOCOL, TEXT_PREFIX};

use crate::CliError;
use crate::record::{self, Origin, flag_list, hex, named};

/// The most input read from a file or stdin: a record's text form is well under 1 KiB.
const MAX_INPUT: u64 = 64 * 1024;

/// The arguments of `sockdup inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The record: its text form (starting with "sockdup1:"), a file holding the 628 raw bytes
    /// or the text form, or "-" for standard input (the default).
    #[arg(value_name = "RECORD|FILE|-")]
    input: Option<OsString>,

    /// Print one JSON object whose keys are the field names of sockdup::ProtocolInfo
    /// (service_flags1 .. protocol_name); numbers are plain decimal.
    #[arg(long, conflicts_with = "raw")]
    json: bool,

    /// Write the record's 628-byte WSAPROTOCOL_INFOW form (as WSADuplicateSocketW fills it in)
    /// to standard output (not to a terminal).
    #[arg(long)]
    raw: bool,
}

/// Runs `sockdup inspect`.
pub(crate) fn run(args: &Args) -> Result<(), CliError> {
    if args.json && args.raw {
        // clap refuses this already; keep the check next to the code that relies on it.
        return Err(CliError::Usage(
            "--json and --raw cannot be used together: choose one output".to_owned(),
        ));
    }
    if args.raw && io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "--raw writes 628 binary bytes: redirect standard output to a file or a pipe"
                .to_owned(),
        ));
    }
    let info = load(args.input.as_deref())?;
    let out: Vec<u8> = if args.raw {
        info.to_bytes().to_vec()
    } else if args.json {
        format!("{}\n", record::to_json(&info)).into_bytes()
    } else {
        describe(&info).into_bytes()
    };
    let mut stdout = io::stdout().lock();
    match stdout.write_all(&out).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::failed(format!(
            "writing to standard output failed: {e}"
        ))),
    }
}

/// Reads and decodes the record named by the command's argument.
fn load(input: Option<&OsStr>) -> Result<ProtocolInfo, CliError> {
    let text = input.and_then(OsStr::to_str);
    match (input, text) {
        (_, Some(t)) if t.trim_start().starts_with(TEXT_PREFIX) => t
            .parse()
            .map_err(|e| CliError::sockdup("decoding the record given as text", e)),
        (None, _) | (_, Some("-")) => {
            let stdin = io::stdin();
            if input.is_none() && stdin.is_terminal() {
                return Err(CliError::Usage(
                    "no record given: pass its text form (starting with \"sockdup1:\"), a file, \
                     or pipe it on standard input (see `sockdup inspect --help`)"
                        .to_owned(),
                ));
            }
            let bytes = read_limited(stdin.lock(), "standard input")?;
            decode(&bytes, "standard input")
        }
        (Some(path), _) => {
            let path = Path::new(path);
            let shown = path.display();
            let file = std::fs::File::open(path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    CliError::failed(format!(
                        "there is no file {shown:?}: give a file holding a record, a record's \
                         text form (it starts with \"sockdup1:\"), or \"-\" for standard input"
                    ))
                } else {
                    CliError::failed(format!("opening {shown:?} failed: {e}"))
                }
            })?;
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(CliError::failed(format!(
                    "{shown:?} is a directory: give a file holding a record"
                )));
            }
            let what = format!("file {shown:?}");
            let bytes = read_limited(file, &what)?;
            decode(&bytes, &what)
        }
    }
}

/// Reads all of `source`, refusing more than [`MAX_INPUT`] bytes.
fn read_limited(source: impl Read, what: &str) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    source
        .take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::failed(format!("reading {what} failed: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(CliError::failed(format!(
            "{what} holds more than {MAX_INPUT} bytes: a record is 628 raw bytes, or one line of \
             text starting with \"sockdup1:\""
        )));
    }
    Ok(bytes)
}

/// Decodes `bytes` in either form ([`ProtocolInfo::from_raw_or_text`]).
fn decode(bytes: &[u8], what: &str) -> Result<ProtocolInfo, CliError> {
    ProtocolInfo::from_raw_or_text(bytes).map_err(|e| {
        CliError::sockdup(
            format!("decoding the record in {what} ({} bytes)", bytes.len()),
            e,
        )
    })
}

/// A catalog id, with the name of sockdup's base entry if it is one.
fn entry_label(id: u32) -> String {
    match sockdup::catalog::base_entry(id) {
        Some(entry) => format!("{id} ({:?})", entry.protocol_name),
        None => id.to_string(),
    }
}

/// A field's name and its value as shown.
type Field = (&'static str, String);

/// The human-readable listing: every field on its own line, then what the record is.
fn describe(info: &ProtocolInfo) -> String {
    let origin = record::origin(info);
    let sockdup_dup = matches!(origin, Origin::Sockdup { .. }) && info.service_flags3 != 0;
    let wine = matches!(origin, Origin::Wine);
    let mut s = String::new();
    let fields = [
        service_fields(info, sockdup_dup, wine),
        provider_fields(info),
        chain_fields(info),
        socket_fields(info),
        tail_fields(info, sockdup_dup),
    ];
    for (name, value) in fields.into_iter().flatten() {
        let _ = writeln!(s, "{name:<24}{value}");
    }
    s.push('\n');
    s.push_str(&wrap(&summary(info, &origin), 100));
    s
}

/// `service_flags1` to `service_flags4`; what flags 3 and 4 hold depends on who made the
/// record (a sockdup duplicate, Wine).
fn service_fields(info: &ProtocolInfo, sockdup_dup: bool, wine: bool) -> Vec<Field> {
    vec![
        (
            "service_flags1",
            format!(
                "{}  {}",
                hex(info.service_flags1),
                flag_list(&service_flag_names(info.service_flags1))
            ),
        ),
        (
            "service_flags2",
            format!("{}  (reserved)", hex(info.service_flags2)),
        ),
        (
            "service_flags3",
            if sockdup_dup {
                format!(
                    "{}  (sockdup: the target's process id)",
                    info.service_flags3
                )
            } else if wine {
                format!(
                    "{}  (Wine: the socket's handle in the target process)",
                    hex(info.service_flags3)
                )
            } else {
                format!("{}  (reserved)", hex(info.service_flags3))
            },
        ),
        (
            "service_flags4",
            if sockdup_dup {
                format!(
                    "{}  (sockdup: the nonce of the target inbox's run)",
                    hex(info.service_flags4)
                )
            } else if wine {
                format!("{}  (Wine's duplicate magic)", hex(info.service_flags4))
            } else {
                format!("{}  (reserved)", hex(info.service_flags4))
            },
        ),
    ]
}

/// `provider_flags`, `provider_id` and `catalog_entry_id`.
fn provider_fields(info: &ProtocolInfo) -> Vec<Field> {
    vec![
        (
            "provider_flags",
            format!(
                "{}  {}",
                hex(info.provider_flags),
                flag_list(&provider_flag_names(info.provider_flags))
            ),
        ),
        (
            "provider_id",
            match record::provider_name(info) {
                Some(name) => format!("{}  ({name})", info.provider_id),
                None => info.provider_id.to_string(),
            },
        ),
        (
            "catalog_entry_id",
            match sockdup::catalog::base_entry(info.catalog_entry_id) {
                Some(entry) if info.provider_id == sockdup::catalog::BASE_PROVIDER_ID => format!(
                    "{}  (sockdup base entry {:?})",
                    info.catalog_entry_id, entry.protocol_name
                ),
                _ => info.catalog_entry_id.to_string(),
            },
        ),
    ]
}

/// `protocol_chain.len` and `protocol_chain.entries`, the chain top layer first.
fn chain_fields(info: &ProtocolInfo) -> Vec<Field> {
    let chain = &info.protocol_chain;
    let len = match chain.len {
        LAYERED_PROTOCOL => {
            format!("{LAYERED_PROTOCOL}  (LAYERED_PROTOCOL: a layered provider's own entry)")
        }
        BASE_PROTOCOL => format!("{BASE_PROTOCOL}  (BASE_PROTOCOL: a base provider's entry)"),
        n => format!("{n}  (a protocol chain of {n} providers, top layer first)"),
    };
    let all = chain
        .entries
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let used = chain.used();
    let entries = match chain.len {
        LAYERED_PROTOCOL => format!("[{all}]  (none in use)"),
        BASE_PROTOCOL => format!("[{all}]  (Winsock ignores them for a base entry)"),
        _ => {
            let last = used.len().saturating_sub(1);
            let path = used
                .iter()
                .enumerate()
                .map(|(i, &id)| match i {
                    0 => format!("{} (top layer)", entry_label(id)),
                    i if i == last => format!("{} (base)", entry_label(id)),
                    _ => entry_label(id),
                })
                .collect::<Vec<_>>()
                .join(" -> ");
            format!("[{all}]  ({path})")
        }
    };
    vec![
        ("protocol_chain.len", len),
        ("protocol_chain.entries", entries),
    ]
}

/// From `version` to `protocol_max_offset`: what kind of socket the record describes.
fn socket_fields(info: &ProtocolInfo) -> Vec<Field> {
    vec![
        ("version", info.version.to_string()),
        (
            "address_family",
            named(
                info.address_family,
                record::family_name(info.address_family),
            ),
        ),
        ("max_sockaddr", format!("{}  (bytes)", info.max_sockaddr)),
        ("min_sockaddr", format!("{}  (bytes)", info.min_sockaddr)),
        (
            "socket_type",
            named(info.socket_type, record::socket_type_name(info.socket_type)),
        ),
        (
            "protocol",
            named(
                info.protocol,
                record::protocol_name(info.address_family, info.protocol),
            ),
        ),
        ("protocol_max_offset", info.protocol_max_offset.to_string()),
    ]
}

/// From `network_byte_order` to `protocol_name`.
fn tail_fields(info: &ProtocolInfo, sockdup_dup: bool) -> Vec<Field> {
    vec![
        (
            "network_byte_order",
            named(
                info.network_byte_order,
                match info.network_byte_order {
                    0 => Some("BIGENDIAN"),
                    1 => Some("LITTLEENDIAN"),
                    _ => None,
                },
            ),
        ),
        (
            "security_scheme",
            named(
                info.security_scheme,
                (info.security_scheme == 0).then_some("SECURITY_PROTOCOL_NONE"),
            ),
        ),
        (
            "message_size",
            format!(
                "{}  ({})",
                info.message_size,
                record::message_size_meaning(info.message_size)
            ),
        ),
        (
            "provider_reserved",
            if sockdup_dup {
                format!(
                    "{}  (sockdup: the ticket of the duplicate in the target's inbox)",
                    hex(info.provider_reserved)
                )
            } else {
                format!("{}  (provider context)", hex(info.provider_reserved))
            },
        ),
        ("protocol_name", format!("{:?}", info.protocol_name)),
    ]
}

/// `text` broken into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line_len > 0 && line_len + 1 + len > width {
            out.push('\n');
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += len;
    }
    out.push('\n');
    out
}

/// What the record is, in a sentence or two.
fn summary(info: &ProtocolInfo, origin: &Origin) -> String {
    match origin {
        Origin::Sockdup { entry } => {
            let mut s = if info.service_flags3 == 0 && info.provider_reserved == 0 {
                format!(
                    "sockdup's base catalog entry {} itself, not a duplicate: it names no target \
                     process and holds no ticket.",
                    info.catalog_entry_id
                )
            } else {
                format!(
                    "A sockdup duplicate of a {} socket, made for process {} \
                     (service_flags3) during the inbox run with nonce {} (service_flags4), \
                     ticket {} (provider_reserved). Process {} redeems it once with \
                     sockdup::socket_from_info (WSASocketW with FROM_PROTOCOL_INFO); anywhere \
                     else, a second time, after it expired, or after that process restarted \
                     sockdup, redeeming fails with WSAEINVAL (10022).",
                    entry.protocol_name.trim_start_matches("sockdup Linux "),
                    info.service_flags3,
                    hex(info.service_flags4),
                    hex(info.provider_reserved),
                    info.service_flags3,
                )
            };
            let mut differing = differing_fields(info, entry);
            if !differing.is_empty() {
                differing.sort_unstable();
                let _ = write!(
                    s,
                    " Note: {} differ{} from catalog entry {}: the record was altered, or made \
                     by another version of sockdup.",
                    differing.join(", "),
                    if differing.len() == 1 { "s" } else { "" },
                    info.catalog_entry_id
                );
            }
            s
        }
        Origin::Wine => format!(
            "Looks like a record from Wine's WSADuplicateSocket: service_flags3 holds the \
             socket's handle ({}) in the target process and service_flags4 Wine's magic \
             0xff00ff00. sockdup cannot redeem it (WSAEINVAL 10022).",
            hex(info.service_flags3)
        ),
        Origin::Unknown => format!(
            "Not a sockdup duplicate: catalog entry {} with provider {} is not one of sockdup's \
             base entries, so sockdup::socket_from_info refuses it (WSAEINVAL 10022).",
            info.catalog_entry_id, info.provider_id
        ),
    }
}

/// The fields, other than the three a duplicate fills in, where `info` differs from `entry`.
fn differing_fields(info: &ProtocolInfo, entry: &ProtocolInfo) -> Vec<String> {
    let base = ProtocolInfo {
        service_flags3: info.service_flags3,
        service_flags4: info.service_flags4,
        provider_reserved: info.provider_reserved,
        ..entry.clone()
    };
    if base == *info {
        return Vec::new();
    }
    let (a, b) = (record::to_json(info), record::to_json(&base));
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a
            .iter()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    }
}
