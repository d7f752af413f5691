//! The text form (`sockdup1:...`) parsed from any string: never panics, and what parses
//! survives `Display` and back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockdup_core::ProtocolInfo;

fuzz_target!(|text: &str| {
    if let Ok(info) = text.parse::<ProtocolInfo>() {
        let shown = info.to_string();
        let again: ProtocolInfo = shown.parse().expect("Display output parses");
        assert_eq!(info, again);
    }
});
