//! Where the catalog file lives, reading it, and replacing it atomically.
//!
//! The path is `SOCKDUP_CATALOG` if set, else `$XDG_CONFIG_HOME/sockdup/catalog.json`, else
//! `$HOME/.config/sockdup/catalog.json`. A missing file means the built-in base entries only.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sockdup_core::catalog::Catalog;
use sockdup_core::error::{Error, ErrorKind};

/// The catalog file this process uses (it need not exist).
pub fn catalog_path() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("SOCKDUP_CATALOG")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("sockdup/catalog.json")))
        .or_else(|| var("HOME").map(|d| d.join(".config/sockdup/catalog.json")))
}

/// Reads this process's catalog ([`catalog_path`]); built-in entries only if there is no file.
///
/// # Errors
/// As [`load_catalog_from`].
pub fn load_catalog() -> Result<Catalog, Error> {
    match catalog_path() {
        Some(path) => load_catalog_from(&path),
        None => Ok(Catalog::builtin()),
    }
}

/// Reads the catalog file at `path`; built-in entries only if it does not exist.
///
/// # Errors
/// `WSAEINVAL` naming the file and the entry at fault if it is invalid (see
/// [`Catalog::from_json`]): [`ErrorKind::InvalidCatalog`], or
/// [`ErrorKind::InvalidLayerSetting`] for a layer setting its kind does not take (naming the
/// key); [`ErrorKind::InvalidCatalog`] if the path is a directory; an OS error if it cannot be
/// read.
pub fn load_catalog_from(path: &Path) -> Result<Catalog, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Catalog::from_json(&text).map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "{}: {} (fix the file, or `sockdup catalog reset` to start over)",
                    path.display(),
                    e.message()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Catalog::builtin()),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => Err(Error::new(
            ErrorKind::InvalidCatalog,
            format!(
                "the catalog path {} is a directory: point SOCKDUP_CATALOG at a file",
                path.display()
            ),
        )),
        Err(e) => Err(Error::from_errno(
            e,
            &format!("reading the catalog file {}", path.display()),
        )),
    }
}

/// Replaces the catalog file at `path` atomically: the new contents go to a temporary file in
/// the same directory, are flushed to disk, and are renamed over the old file, so a crash
/// leaves either the old catalog or the new one, never a mix.
///
/// # Errors
/// An OS error (with its Winsock mapping) if the directory cannot be created or written.
pub fn save_catalog_to(path: &Path, catalog: &Catalog) -> Result<(), Error> {
    let mut json = catalog.to_json();
    json.push('\n');
    write_atomically(path, json.as_bytes())
        .map_err(|e| Error::from_errno(e, &format!("writing the catalog file {}", path.display())))
}

/// Replaces the file at `path` with `contents` atomically (temporary file in the same
/// directory, `fsync`, rename, directory `fsync`), creating the directory if needed: a crash
/// leaves the old contents or the new ones, never a mix.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}-{:08x}.tmp",
        path.file_name()
            .map_or("file".into(), |n| n.to_string_lossy()),
        std::process::id(),
        crate::sys::random_u32()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Loads the catalog at `path`, lets `change` modify it, and saves it, holding an exclusive
/// lock (`flock` on `PATH.lock`) throughout, so concurrent changes do not overwrite each other.
/// Nothing is written if `change` fails.
///
/// # Errors
/// As [`load_catalog_from`] and [`save_catalog_to`], or `change`'s error.
pub fn update_catalog_at<T>(
    path: &Path,
    change: impl FnOnce(&mut Catalog) -> Result<T, Error>,
) -> Result<T, Error> {
    let lock_path = path.with_file_name(format!(
        "{}.lock",
        path.file_name()
            .map_or("catalog".into(), |n| n.to_string_lossy())
    ));
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::from_errno(e, &format!("creating {}", dir.display())))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            Error::from_errno(
                e,
                &format!("opening the catalog lock {}", lock_path.display()),
            )
        })?;
    crate::sys::lock_exclusive(&lock).map_err(|e| Error::from_errno(e, "locking the catalog"))?;
    let mut catalog = load_catalog_from(path)?;
    let out = change(&mut catalog)?;
    save_catalog_to(path, &catalog)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn save_then_load_and_missing_is_builtin() {
        let dir = std::env::temp_dir().join(format!("sockdup-catalog-unit-{}", std::process::id()));
        let path = dir.join("nested/catalog.json");
        assert_eq!(load_catalog_from(&path).unwrap(), Catalog::builtin());
        let mut c = Catalog::builtin();
        c.install("trace", "t", true, BTreeMap::new(), &[1001])
            .unwrap();
        save_catalog_to(&path, &c).unwrap();
        assert_eq!(load_catalog_from(&path).unwrap(), c);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::write(&path, "{ not json").unwrap();
        let e = load_catalog_from(&path).unwrap_err();
        assert_eq!(e.code(), 10022);
        assert_eq!(e.kind(), ErrorKind::InvalidCatalog);
        assert!(e.message().contains("catalog.json"), "{e}");
        // A hand-edited setting the layer does not take: refused, naming the key.
        let mut f = Catalog::builtin();
        f.install("fault", "f", true, BTreeMap::new(), &[1001])
            .unwrap();
        let edited = f
            .to_json()
            .replace("\"config\": {}", "\"config\": {\"fail.conect\": \"10050\"}");
        assert_ne!(edited, f.to_json());
        std::fs::write(&path, edited).unwrap();
        let e = load_catalog_from(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
        assert!(
            e.message().contains("catalog.json") && e.message().contains("\"fail.conect\""),
            "{e}"
        );
        let e = load_catalog_from(path.parent().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidCatalog);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
