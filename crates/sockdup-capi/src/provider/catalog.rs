//! `WSCEnumProtocols` and `WSCGetProviderPath`: how a layered provider finds the provider below
//! it, as on Windows. Both read the catalog of this process's run (the one its sockets use),
//! or the catalog file when sockdup is not started.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use sockdup::catalog::{BASE_PROVIDER_ID, Catalog};
use sockdup::spi::library::library_path;
use sockdup::{Error, ErrorKind};

use super::LPINT;
use super::last::spi_call;
use crate::ptr;
use crate::types::*;

/// A byte of this copy of the library that nothing can interpose: its address tells which
/// loaded object this code is in.
static MARKER: u8 = 0;

/// The start of the loaded object holding address `addr`, and its file name.
fn object_of(addr: usize) -> Option<(usize, PathBuf)> {
    // SAFETY: Dl_info is plain data; all zeroes is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and writes `info`.
    if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0 {
        return None;
    }
    let name = if info.dli_fname.is_null() {
        PathBuf::new()
    } else {
        // SAFETY: dli_fname is a NUL-terminated string owned by the loader, alive while the
        // object is loaded (it is: it holds `addr`).
        let c = unsafe { CStr::from_ptr(info.dli_fname) };
        PathBuf::from(std::ffi::OsStr::new(
            std::str::from_utf8(c.to_bytes()).unwrap_or(""),
        ))
    };
    Some((info.dli_fbase as usize, name))
}

/// The process's first definition of symbol `name`, when it is in another loaded object than
/// this code: this copy of sockdup is then not the process's, and forwards the call there.
pub(crate) fn primary(name: &CStr) -> Option<usize> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
    if found == 0 {
        return None;
    }
    let (theirs, _) = object_of(found)?;
    let (ours, _) = object_of(std::ptr::addr_of!(MARKER) as usize)?;
    (theirs != ours).then_some(found)
}

/// The file that holds the base provider serving this process: this library, or, when this code
/// is inside an executable (a Rust program; executables cannot be `dlopen`ed), a
/// `libsockdup.so` whose `WSPStartup` forwards to it: `SOCKDUP_LIBRARY`, else beside the
/// executable (or in its parent directory, for test binaries in `target/*/deps`).
///
/// # Errors
/// [`ErrorKind::ProviderFailedInit`] when no such file is found, saying what to do.
pub fn base_library_path() -> Result<PathBuf, Error> {
    let exe = std::fs::canonicalize("/proc/self/exe").ok();
    if let Some((_, file)) = object_of(std::ptr::addr_of!(MARKER) as usize) {
        let file = std::fs::canonicalize(&file).unwrap_or(file);
        if !file.as_os_str().is_empty() && Some(&file) != exe.as_ref() {
            return Ok(file);
        }
    }
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("SOCKDUP_LIBRARY") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        candidates.push(dir.join("libsockdup.so"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("libsockdup.so"));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::new(
            ErrorKind::ProviderFailedInit,
            "this program holds sockdup itself, and a provider library needs a libsockdup.so to load \
             the base provider through (it forwards to this program's): build it (cargo build -p \
             sockdup-ffi) and set SOCKDUP_LIBRARY to its path, or put it beside the program",
        )
    })
}

/// This process's catalog: its run's, or the catalog file's when sockdup is not started.
fn catalog() -> Result<Catalog, Error> {
    sockdup::spi::process_catalog().or_else(|_| sockdup::load_catalog())
}

/// `WSCEnumProtocols`: every catalog entry, hidden layer entries too, of the protocols listed in
/// the 0-terminated `lpiProtocols` (all for NULL). The count, or `SOCKET_ERROR` with
/// `WSAENOBUFS` and the size needed in `*lpdwBufferLength` for a NULL or short buffer.
///
/// # Safety
/// `lpiProtocols` is NULL or 0-terminated; `lpProtocolBuffer` is NULL or holds
/// `*lpdwBufferLength` bytes; `lpdwBufferLength` and `lpErrno` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSCEnumProtocols(
    lpiProtocols: *mut i32,
    lpProtocolBuffer: *mut WSAPROTOCOL_INFOW,
    lpdwBufferLength: *mut DWORD,
    lpErrno: LPINT,
) -> i32 {
    if let Some(p) = primary(c"WSCEnumProtocols") {
        type F = unsafe extern "C" fn(*mut i32, *mut WSAPROTOCOL_INFOW, *mut DWORD, LPINT) -> i32;
        // SAFETY: the process's first `WSCEnumProtocols` is sockdup's own (another copy of
        // this function), with this signature.
        let f: F = unsafe { std::mem::transmute(p) };
        // SAFETY: the arguments are passed on under this function's own contract.
        return unsafe { f(lpiProtocols, lpProtocolBuffer, lpdwBufferLength, lpErrno) };
    }
    // SAFETY: the pointers are the caller's, valid by this function's contract.
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let mut wanted = Vec::new();
            if !lpiProtocols.is_null() {
                for i in 0..256 {
                    let p = lpiProtocols.add(i).read_unaligned();
                    if p == 0 {
                        break;
                    }
                    wanted.push(p);
                }
            }
            let entries: Vec<_> = catalog()?
                .all_entries()
                .into_iter()
                .filter(|e| wanted.is_empty() || wanted.contains(&e.protocol))
                .collect();
            let need = entries.len() * std::mem::size_of::<WSAPROTOCOL_INFOW>();
            let have = if lpdwBufferLength.is_null() {
                return Err(fault("lpdwBufferLength"));
            } else {
                lpdwBufferLength.read_unaligned() as usize
            };
            if lpProtocolBuffer.is_null() || have < need {
                ptr::write(lpdwBufferLength, need as DWORD, "lpdwBufferLength")?;
                return Err(Error::new(
                    ErrorKind::OutOfMemory,
                    format!(
                        "WSCEnumProtocols: the buffer holds {have} bytes, the {} entries need {need}: \
                         call again with a buffer of *lpdwBufferLength bytes",
                        entries.len()
                    ),
                ));
            }
            for (i, e) in entries.iter().enumerate() {
                ptr::write_info(
                    lpProtocolBuffer.add(i),
                    &WSAPROTOCOL_INFOW::from_info(e),
                    "lpProtocolBuffer",
                )?;
            }
            ptr::write(lpdwBufferLength, need as DWORD, "lpdwBufferLength")?;
            Ok(entries.len() as i32)
        })
    }
}

/// The library of the provider with GUID `id`: a provider library's installed path, or for the
/// built-in entries the file holding the base provider ([`base_library_path`]).
///
/// # Errors
/// `WSAEINVAL` (`unknown-catalog-entry`) for a GUID no entry has.
pub fn provider_path(id: sockdup::Guid) -> Result<PathBuf, Error> {
    let catalog = catalog()?;
    if let Some(layer) = catalog.layers().iter().find(|l| l.provider_id == id) {
        return match library_path(layer) {
            Some(p) => Ok(p.to_path_buf()),
            None => base_library_path(),
        };
    }
    if id == BASE_PROVIDER_ID {
        return base_library_path();
    }
    Err(Error::new(
        ErrorKind::UnknownCatalogEntry,
        format!("WSCGetProviderPath: no catalog entry of this process has provider GUID {id}"),
    ))
}

/// `WSCGetProviderPath`: the provider's library, UTF-16 and NUL-terminated, into
/// `lpszProviderDllPath` (`*lpProviderDllPathLen` units). 0, or `SOCKET_ERROR` with `WSAEFAULT`
/// and the units needed in `*lpProviderDllPathLen` for a NULL or short buffer, `WSAEINVAL` for
/// an unknown GUID.
///
/// # Safety
/// `lpProviderId` is NULL or a GUID; `lpszProviderDllPath` is NULL or holds
/// `*lpProviderDllPathLen` units; the other pointers are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSCGetProviderPath(
    lpProviderId: *mut GUID,
    lpszProviderDllPath: *mut WCHAR,
    lpProviderDllPathLen: LPINT,
    lpErrno: LPINT,
) -> i32 {
    if let Some(p) = primary(c"WSCGetProviderPath") {
        type F = unsafe extern "C" fn(*mut GUID, *mut WCHAR, LPINT, LPINT) -> i32;
        // SAFETY: the process's first `WSCGetProviderPath` is sockdup's own (another copy of
        // this function), with this signature.
        let f: F = unsafe { std::mem::transmute(p) };
        // SAFETY: the arguments are passed on under this function's own contract.
        return unsafe {
            f(
                lpProviderId,
                lpszProviderDllPath,
                lpProviderDllPathLen,
                lpErrno,
            )
        };
    }
    // SAFETY: the pointers are the caller's, valid by this function's contract.
    unsafe {
        spi_call(lpErrno, SOCKET_ERROR, || {
            let id: sockdup::Guid = ptr::read(lpProviderId.cast_const(), "lpProviderId")?.into();
            let path = provider_path(id)?;
            let text = path.to_str().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("the provider path {} is not UTF-8", path.display()),
                )
            })?;
            let units: Vec<u16> = text.encode_utf16().chain([0]).collect();
            let have = ptr::read(lpProviderDllPathLen.cast_const(), "lpProviderDllPathLen")?;
            if lpszProviderDllPath.is_null() || usize::try_from(have).unwrap_or(0) < units.len() {
                ptr::write(
                    lpProviderDllPathLen,
                    units.len() as i32,
                    "lpProviderDllPathLen",
                )?;
                return Err(fault(&format!(
                    "lpszProviderDllPath (the path needs {} WCHARs with its NUL)",
                    units.len()
                )));
            }
            std::ptr::copy_nonoverlapping(units.as_ptr(), lpszProviderDllPath, units.len());
            ptr::write(
                lpProviderDllPathLen,
                units.len() as i32,
                "lpProviderDllPathLen",
            )?;
            Ok(0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_protocols_says_the_size_for_a_null_or_short_buffer() {
        let (mut len, mut err) = (0u32, 0i32);
        // SAFETY: valid pointers to this test's own values; a NULL buffer.
        let r = unsafe {
            WSCEnumProtocols(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut len,
                &mut err,
            )
        };
        assert_eq!((r, err), (SOCKET_ERROR, 10055));
        let n = len as usize / std::mem::size_of::<WSAPROTOCOL_INFOW>();
        assert!(n >= 7 && len as usize % 628 == 0, "{len}");
        let mut buf = vec![WSAPROTOCOL_INFOW::default(); n];
        let mut short = len - 1;
        // SAFETY: the buffer holds `short` < its size bytes.
        let r = unsafe {
            WSCEnumProtocols(std::ptr::null_mut(), buf.as_mut_ptr(), &mut short, &mut err)
        };
        assert_eq!((r, err, short), (SOCKET_ERROR, 10055, len));
        // Only TCP (6): the 0-terminated filter.
        let mut tcp = [6, 0];
        let mut all = len;
        // SAFETY: the buffer holds `all` bytes; the filter is 0-terminated.
        let r = unsafe { WSCEnumProtocols(tcp.as_mut_ptr(), buf.as_mut_ptr(), &mut all, &mut err) };
        assert!(r >= 2, "{r}");
        assert!(buf[..r as usize].iter().all(|e| e.iProtocol == 6));
    }

    #[test]
    fn get_provider_path_refuses_an_unknown_guid_and_null_pointers() {
        let mut id = GUID {
            Data1: 1,
            ..GUID::default()
        };
        let (mut len, mut err) = (260i32, 0i32);
        let mut path = [0u16; 260];
        // SAFETY: valid pointers to this test's own values.
        let r = unsafe { WSCGetProviderPath(&mut id, path.as_mut_ptr(), &mut len, &mut err) };
        assert_eq!((r, err), (SOCKET_ERROR, 10022));
        // SAFETY: a NULL GUID is refused before anything is read.
        let r = unsafe {
            WSCGetProviderPath(std::ptr::null_mut(), path.as_mut_ptr(), &mut len, &mut err)
        };
        assert_eq!((r, err), (SOCKET_ERROR, 10014));
    }
}
