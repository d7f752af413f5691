//! The sockdup command (and the test servers built here) load provider libraries (C layers): they export sockdup's C entry points
//! (`WSPStartup`, `WSCEnumProtocols`, ...), so that a library's references bind to the
//! program's one copy of sockdup (see `sockdup_capi::provider`).

fn main() {
    for pattern in ["WSP*", "WSC*", "WPU*", "WSA*", "closesocket", "sockdup_*"] {
        println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol={pattern}");
    }
}
