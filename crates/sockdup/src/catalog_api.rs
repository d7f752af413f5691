//! The catalog file, checked: reading and writing it through `catalog_file` (floor 2), with
//! every layer checked against the SPI's registry of layer kinds
//! ([`spi::layers::check_catalog`]) on each read and before each write. The SPI sits above the
//! catalog file's floor, so the check is joined to the file's I/O here, on a floor that sees
//! both.

use std::path::Path;

use sockdup_core::catalog::Catalog;
use sockdup_core::error::Error;

use crate::catalog_file;
use crate::spi::layers::check_catalog;

/// Reads this process's catalog ([`catalog_path`](crate::catalog_path)); built-in entries only
/// if there is no file.
///
/// # Errors
/// As [`load_catalog_from`].
pub fn load_catalog() -> Result<Catalog, Error> {
    catalog_file::load_catalog(check_catalog)
}

/// Reads the catalog file at `path`; built-in entries only if it does not exist.
///
/// # Errors
/// `WSAEINVAL` naming the file and the entry at fault if it is invalid:
/// [`ErrorKind::InvalidCatalog`](crate::ErrorKind::InvalidCatalog) for its structure (see
/// [`Catalog::from_json`]) or a layer kind this sockdup does not implement;
/// [`ErrorKind::InvalidLayerSetting`](crate::ErrorKind::InvalidLayerSetting) for a layer setting
/// its kind does not take or a bad value (naming the key and listing the valid ones);
/// `InvalidCatalog` if the path is a directory; an OS error if it cannot be read.
pub fn load_catalog_from(path: &Path) -> Result<Catalog, Error> {
    catalog_file::load_catalog_from(path, check_catalog)
}

/// Replaces the catalog file at `path` atomically: the new contents go to a temporary file in
/// the same directory, are flushed to disk, and are renamed over the old file, so a crash
/// leaves either the old catalog or the new one, never a mix. A catalog that is not valid (as
/// [`load_catalog_from`] would refuse it) is not written.
///
/// # Errors
/// As [`load_catalog_from`] for an invalid catalog; an OS error (with its Winsock mapping) if
/// the directory cannot be created or written.
pub fn save_catalog_to(path: &Path, catalog: &Catalog) -> Result<(), Error> {
    catalog_file::save_catalog_to(path, catalog, check_catalog)
}

/// Loads the catalog at `path`, lets `change` modify it, and saves it, holding an exclusive
/// lock (`flock` on `PATH.lock`) throughout, so concurrent changes do not overwrite each other.
/// Nothing is written if `change` fails or leaves a catalog that is not valid.
///
/// # Errors
/// As [`load_catalog_from`] and [`save_catalog_to`], or `change`'s error; a change that leaves
/// a layer kind this sockdup does not implement is
/// [`ErrorKind::CatalogChangeRefused`](crate::ErrorKind::CatalogChangeRefused), one that leaves
/// a bad layer setting [`ErrorKind::InvalidLayerSetting`](crate::ErrorKind::InvalidLayerSetting)
/// (naming the key and listing the valid ones).
pub fn update_catalog_at<T>(
    path: &Path,
    change: impl FnOnce(&mut Catalog) -> Result<T, Error>,
) -> Result<T, Error> {
    catalog_file::update_catalog_at(path, check_catalog, change)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sockdup_core::error::ErrorKind;

    use super::*;

    fn fault(key: &str) -> BTreeMap<String, String> {
        [(key.to_owned(), "10050".to_owned())].into()
    }

    #[test]
    fn a_bad_setting_or_kind_is_refused_on_save_and_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let e = update_catalog_at(&path, |c| {
            c.install("fault", "f", true, fault("fail.conect"), &[1001])
        })
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.code()),
            (ErrorKind::InvalidLayerSetting, 10022)
        );
        assert!(
            e.message().contains("\"fail.conect\"")
                && e.message().contains("fail.CALL")
                && e.message().contains("string_to_address"),
            "{e}"
        );
        assert!(!path.exists(), "a refused install writes nothing");
        let e = update_catalog_at(&path, |c| {
            c.install("magic", "x", true, BTreeMap::new(), &[1001])
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CatalogChangeRefused);
        assert!(
            e.message().contains("no layer kind \"magic\"")
                && e.message().contains("trace, policy, fault"),
            "{e}"
        );
        assert!(!path.exists(), "a refused install writes nothing");
        let mut magic = Catalog::builtin();
        magic
            .install("magic", "x", true, BTreeMap::new(), &[1001])
            .unwrap();
        assert_eq!(
            save_catalog_to(&path, &magic).unwrap_err().kind(),
            ErrorKind::InvalidCatalog
        );
        assert!(!path.exists(), "a refused save writes nothing");

        // A hand-edited setting the layer does not take: refused on load, naming the key.
        update_catalog_at(&path, |c| {
            c.install("fault", "f", true, fault("fail.connect"), &[1001])
        })
        .unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, good.replace("fail.connect", "fail.conect")).unwrap();
        let e = load_catalog_from(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidLayerSetting);
        assert!(
            e.message().contains("catalog.json")
                && e.message().contains("catalog entry 1101")
                && e.message().contains("\"fail.conect\""),
            "{e}"
        );
        std::fs::write(&path, good.replace("\"fault\"", "\"magic\"")).unwrap();
        let e = load_catalog_from(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidCatalog);
        assert!(e.message().contains("no layer kind \"magic\""), "{e}");
    }
}
