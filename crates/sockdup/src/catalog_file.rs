//! Where the catalog file lives, reading it, and replacing it atomically.
//!
//! The path is `SOCKDUP_CATALOG` if set, else `$XDG_CONFIG_HOME/sockdup/catalog.json`, else
//! `$HOME/.config/sockdup/catalog.json`. A missing file means the built-in base entries only.
//!
//! This floor is below the SPI, which owns the layer kinds: every read and write here takes a
//! [`Check`] from the caller (the SPI's registry check, passed down by `catalog_api` and the
//! dispatcher), run on what is read and on what is about to be written, beside the core's
//! structural validation.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sockdup_core::catalog::Catalog;
use sockdup_core::error::{Error, ErrorKind};

/// A check of a catalog beyond the core's structural validation: the SPI's registry of layers
/// (`spi::layers::check_catalog`), handed down by a floor that can see it.
pub(crate) type Check = fn(&Catalog) -> Result<(), Error>;

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
pub(crate) fn load_catalog(check: Check) -> Result<Catalog, Error> {
    match catalog_path() {
        Some(path) => load_catalog_from(&path, check),
        None => Ok(Catalog::builtin()),
    }
}

/// Reads the catalog file at `path`, and `check`s it; built-in entries only if it does not
/// exist.
///
/// # Errors
/// `WSAEINVAL` naming the file and the entry at fault if it is invalid (see
/// [`Catalog::from_json`]) or `check` refuses it (its error's kind is kept);
/// [`ErrorKind::InvalidCatalog`] if the path is a directory; an OS error if it cannot be read.
pub(crate) fn load_catalog_from(path: &Path, check: Check) -> Result<Catalog, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Catalog::from_json(&text)
            .and_then(|c| check(&c).map(|()| c))
            .map_err(|e| {
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
/// Nothing is written if `catalog` is not valid (the core's structural validation, then
/// `check`).
///
/// # Errors
/// The error of [`Catalog::validate`] or `check`, naming the file; an OS error (with its
/// Winsock mapping) if the directory cannot be created or written.
pub(crate) fn save_catalog_to(path: &Path, catalog: &Catalog, check: Check) -> Result<(), Error> {
    catalog
        .validate()
        .and_then(|()| check(catalog))
        .map_err(|e| e.context(format!("not writing the catalog file {}", path.display())))?;
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
/// `check` runs on the catalog read and on the changed one; nothing is written if it or
/// `change` fails.
///
/// # Errors
/// As [`load_catalog_from`] and [`save_catalog_to`], or `change`'s error; a changed catalog
/// that `check` refuses as [`ErrorKind::InvalidCatalog`] (an unknown layer kind) is
/// [`ErrorKind::CatalogChangeRefused`], as the change is what is wrong (a refused setting stays
/// [`ErrorKind::InvalidLayerSetting`]).
pub(crate) fn update_catalog_at<T>(
    path: &Path,
    check: Check,
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
    let mut catalog = load_catalog_from(path, check)?;
    let out = change(&mut catalog)?;
    check(&catalog).map_err(|e| match e.kind() {
        ErrorKind::InvalidCatalog => Error::new(ErrorKind::CatalogChangeRefused, e.message()),
        _ => e,
    })?;
    save_catalog_to(path, &catalog, check)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A check that refuses every layer of kind "bad", as the SPI's registry would.
    fn no_bad(c: &Catalog) -> Result<(), Error> {
        match c.layers().iter().find(|l| l.kind == "bad") {
            Some(l) => Err(Error::new(
                ErrorKind::InvalidLayerSetting,
                format!("layer {} is bad", l.id),
            )),
            None => Ok(()),
        }
    }

    #[test]
    fn save_then_load_and_missing_is_builtin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/catalog.json");
        assert_eq!(
            load_catalog_from(&path, no_bad).unwrap(),
            Catalog::builtin()
        );
        let mut c = Catalog::builtin();
        c.install("trace", "t", true, BTreeMap::new(), &[1001])
            .unwrap();
        save_catalog_to(&path, &c, no_bad).unwrap();
        assert_eq!(load_catalog_from(&path, no_bad).unwrap(), c);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::write(&path, "{ not json").unwrap();
        let e = load_catalog_from(&path, no_bad).unwrap_err();
        assert_eq!(e.code(), 10022);
        assert_eq!(e.kind(), ErrorKind::InvalidCatalog);
        assert!(e.message().contains("catalog.json"), "{e}");
        let e = load_catalog_from(path.parent().unwrap(), no_bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidCatalog);
    }

    #[test]
    fn the_check_runs_on_every_read_and_write_and_nothing_is_written_when_it_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let mut bad = Catalog::builtin();
        bad.install("bad", "b", true, BTreeMap::new(), &[1001])
            .unwrap();
        let e = save_catalog_to(&path, &bad, no_bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
        assert!(
            e.message().contains("not writing") && e.message().contains("catalog.json"),
            "{e}"
        );
        assert!(!path.exists(), "a refused save writes nothing");
        let e = update_catalog_at(&path, no_bad, |c| {
            c.install("bad", "b", true, BTreeMap::new(), &[1001])
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
        assert!(!path.exists(), "a refused change writes nothing");
        // A file the check refuses (written by hand): refused on load, naming the file.
        std::fs::write(&path, bad.to_json()).unwrap();
        let e = load_catalog_from(&path, no_bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
        assert!(
            e.message().contains("catalog.json") && e.message().contains("is bad"),
            "{e}"
        );
        let e = update_catalog_at(&path, no_bad, |c| c.remove(1101)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), bad.to_json());
        // A change the check refuses as an invalid catalog: a refused change.
        let refuse_all: Check = |c| match c.layers().is_empty() {
            true => Ok(()),
            false => Err(Error::new(ErrorKind::InvalidCatalog, "no layers here")),
        };
        std::fs::remove_file(&path).unwrap();
        let e = update_catalog_at(&path, refuse_all, |c| {
            c.install("trace", "t", true, BTreeMap::new(), &[1001])
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CatalogChangeRefused);
        assert!(e.message().contains("no layers here"), "{e}");
        assert!(!path.exists());
    }
}
