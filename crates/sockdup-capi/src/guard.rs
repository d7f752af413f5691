//! The boundary: the per-thread last error (`WSAGetLastError`) and the guards every exported
//! function runs its body in, so that an error becomes a Winsock code and a panic never crosses
//! into C.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use sockdup::Error;

use crate::types::WSASYSCALLFAILURE;

thread_local! {
    static LAST_ERROR: Cell<i32> = const { Cell::new(0) };
}

/// This thread's last error (`WSAGetLastError`).
pub fn last_error() -> i32 {
    // `try_with`: a call from a thread-local destructor, after this one's, must not panic.
    LAST_ERROR.try_with(Cell::get).unwrap_or(0)
}

/// Sets this thread's last error (`WSASetLastError`).
pub fn set_last_error(code: i32) {
    let _ = LAST_ERROR.try_with(|c| c.set(code));
}

/// Runs `body`, turning an error into its Winsock code and a panic into `WSASYSCALLFAILURE`
/// (10107); nothing unwinds out of it. The failure's message is kept for [`last_message`].
pub fn catch<T>(body: impl FnOnce() -> Result<T, Error>) -> Result<T, i32> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            set_last_message(e.to_string());
            Err(e.code())
        }
        Err(_) => {
            set_last_message("a panic inside libsockdup (a bug: please report it)".to_owned());
            Err(WSASYSCALLFAILURE)
        }
    }
}

/// For an API function (`WSA*`): runs `body` under [`catch`]; on failure sets this thread's
/// last error and returns `failed` (`SOCKET_ERROR`, `INVALID_SOCKET`, ...).
pub fn api<T>(failed: T, body: impl FnOnce() -> Result<T, Error>) -> T {
    match catch(body) {
        Ok(v) => v,
        Err(code) => {
            set_last_error(code);
            failed
        }
    }
}

/// For an SPI function (`WSP*`, `WSC*`, `WPU*`): runs `body` under [`catch`]; on failure writes
/// the code to `*errno` (when `errno` is not NULL) and returns `failed`.
///
/// # Safety
/// `errno` is NULL or points at a writable `int`.
pub unsafe fn spi<T>(errno: *mut i32, failed: T, body: impl FnOnce() -> Result<T, Error>) -> T {
    match catch(body) {
        Ok(v) => v,
        Err(code) => {
            if !errno.is_null() {
                // SAFETY: by this function's contract `errno` is NULL or points at a writable
                // int; NULL was ruled out. `write_unaligned` needs no alignment.
                unsafe { errno.write_unaligned(code) };
            }
            failed
        }
    }
}

thread_local! {
    static LAST_MESSAGE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn set_last_message(message: String) {
    let _ = LAST_MESSAGE.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            *m = message;
        }
    });
}

/// The message of this thread's last failed call (what went wrong and what to do), which
/// `sockdup_last_error_message` gives C callers.
pub fn last_message() -> String {
    LAST_MESSAGE
        .try_with(|m| m.try_borrow().map(|m| m.clone()).unwrap_or_default())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockdup::ErrorKind;

    #[test]
    fn an_error_becomes_its_code_and_the_last_error() {
        let r = api(-1, || Err(Error::new(ErrorKind::NotASocket, "no")));
        assert_eq!(r, -1);
        assert_eq!(last_error(), 10038);
        assert!(last_message().starts_with("no"), "{}", last_message());
    }

    #[test]
    fn a_panic_does_not_unwind() {
        let r: i32 = api(-1, || panic!("boom"));
        assert_eq!(r, -1);
        assert_eq!(last_error(), WSASYSCALLFAILURE);
    }

    #[test]
    fn the_last_error_is_per_thread() {
        set_last_error(5);
        std::thread::spawn(|| assert_eq!(last_error(), 0))
            .join()
            .expect("thread");
        assert_eq!(last_error(), 5);
    }
}
