//! Locking without poisoning: a panic while a lock is held leaves the data as it was, and the
//! next user goes on with it (every sockdup table stays consistent between statements). And the
//! hasher of maps whose keys are the process's own numbers.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A hasher for maps keyed by numbers this process chooses or already trusts (its connection
/// ids, the pids it duplicates to), not input an attacker picks: SipHash's flood resistance buys
/// nothing there and costs a few dozen nanoseconds per insert, lookup and removal on the
/// acceptor's per-connection path. A multiply by an odd constant (Fibonacci hashing) spreads
/// consecutive keys over a table's buckets and its control bytes (the high bits).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MulHasher(u64);

const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for MulHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for integer keys; correct for anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(FIBONACCI);
    }
}

/// The `BuildHasher` of [`MulHasher`], for `HashMap::with_hasher` and the map's type.
pub(crate) type MulHash = std::hash::BuildHasherDefault<MulHasher>;
