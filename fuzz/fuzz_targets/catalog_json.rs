//! A catalog file's contents, any text: `Catalog::from_json` never panics, and a catalog that
//! loads survives `to_json` and back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockdup_core::catalog::Catalog;

fuzz_target!(|text: &str| {
    if let Ok(catalog) = Catalog::from_json(text) {
        let again = Catalog::from_json(&catalog.to_json()).expect("to_json output loads");
        assert_eq!(again, catalog);
    }
});
