//! The last error of the SPI functions this process's tables export, per thread, and the
//! wrapper every such function's body runs in ([`spi_call`]): a provider library above passes
//! only an error's code up, and the provider that called it gets the whole error back.

use std::cell::RefCell;

use sockdup::Error;

use super::LPINT;
use crate::guard;

thread_local! {
    /// The last error a function of this process's tables failed with, on this thread: a provider
    /// library above passes only its code up, and the provider that called it gets the whole
    /// error back from here ([`take_last_error`]).
    static LAST: RefCell<Option<Error>> = const { RefCell::new(None) };
}

/// Runs an SPI function's body: `*errno` and the return value `failed` on failure, and the error
/// remembered for [`take_last_error`].
///
/// # Safety
/// `errno` is NULL or points at a writable `int`.
pub(crate) unsafe fn spi_call<T>(
    errno: LPINT,
    failed: T,
    body: impl FnOnce() -> Result<T, Error>,
) -> T {
    let body = || {
        body().inspect_err(|e| {
            let copy = Error::with_code(e.kind(), e.code(), e.message());
            LAST.with(|l| *l.borrow_mut() = Some(copy));
        })
    };
    // SAFETY: passed on under this function's own contract.
    unsafe { guard::spi(errno, failed, body) }
}

/// Forgets the remembered error (before calling into a provider library).
pub(crate) fn clear_last_error() {
    LAST.with(|l| l.borrow_mut().take());
}

/// The error a function of this process's tables failed with on this thread, if its code is
/// `code` (what a provider library above passed up).
pub(crate) fn take_last_error(code: i32) -> Option<Error> {
    LAST.with(|l| l.borrow_mut().take())
        .filter(|e| e.code() == code)
}
