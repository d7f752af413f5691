//! `ProtocolInfo::from_bytes` on any bytes: never panics, and what parses survives
//! `to_bytes` and back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockdup_core::ProtocolInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = ProtocolInfo::from_bytes(data) {
        let again = ProtocolInfo::from_bytes(&info.to_bytes()).expect("to_bytes output parses");
        assert_eq!(info, again);
    }
});
