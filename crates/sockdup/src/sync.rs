//! Locking without poisoning: a panic while a lock is held leaves the data as it was, and the
//! next user goes on with it (every sockdup table stays consistent between statements).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
