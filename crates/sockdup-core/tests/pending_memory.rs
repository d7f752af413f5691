//! The inbox's table holding 100 000 pending duplicates: its memory per entry stays small, and
//! a second flood after the first expired costs nothing more. (The process test
//! `a_hundred_thousand_pending_duplicates_cost_bounded_memory_and_all_go_away` measures a real
//! target, descriptors included, as far as `RLIMIT_NOFILE` lets it; this one measures the table
//! alone, at the full 100 000, without descriptors.) One test in this binary, so no other test
//! allocates while it measures.

use std::time::{Duration, Instant};

use sockdup_core::inbox::{Inbox, Limits};
use sockdup_core::message::MAX_FDS_PER_MESSAGE;

const PENDING: u32 = 100_000;

/// The bound per pending duplicate: a slot of the ticket map and of the deadline set, with the
/// spare room of tables that double as they grow (measured: 93 bytes in the first flood, 142
/// once the tables have grown to their final size).
const BYTES_PER_PENDING: u64 = 256;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// Pushes `PENDING` tokens from source 1, in messages of at most 253 as the inbox gets them.
fn flood(inbox: &mut Inbox<u32>, now: Instant) {
    let mut next = 0u32;
    while next < PENDING {
        let n = (PENDING - next).min(MAX_FDS_PER_MESSAGE as u32);
        let batch: Vec<u32> = (next..next + n).collect();
        let tickets = inbox.handle_push(now, 1, batch).map_err(|e| e.0).unwrap();
        assert_eq!(tickets.len(), n as usize);
        next += n;
    }
}

#[test]
fn an_inbox_table_of_a_hundred_thousand_pending_duplicates_stays_small() {
    let ttl = Duration::from_secs(300);
    let limits = Limits {
        ttl: Some(ttl),
        capacity: PENDING as usize,
        per_source: Some(PENDING as usize),
    };
    let mut inbox: Inbox<u32> = Inbox::new(4242, 7, 1, limits);
    let t0 = Instant::now();
    let before = rss_bytes();
    flood(&mut inbox, t0);
    let full = rss_bytes();
    assert_eq!(inbox.len(), PENDING as usize);
    let per = full.saturating_sub(before) / u64::from(PENDING);
    eprintln!(
        "{PENDING} pending: RSS {} -> {} KiB, {per} bytes each (bound {BYTES_PER_PENDING})",
        before / 1024,
        full / 1024
    );
    assert!(per < BYTES_PER_PENDING, "{per} bytes per pending duplicate");
    // Full: one more is refused and handed back.
    let (e, back) = inbox.handle_push(t0, 2, vec![0]).unwrap_err();
    assert_eq!(e.kind(), sockdup_core::ErrorKind::InboxFull);
    assert_eq!(back, [0]);
    // They all expire at their time-to-live and the table empties.
    let expired = inbox.handle_timeout(t0 + ttl);
    assert_eq!(expired.len(), PENDING as usize);
    drop(expired);
    assert!(inbox.is_empty());
    assert_eq!(inbox.pending_from(1), 0);
    // Further floods reuse the tables. The hash tables grow once more in the first few (the
    // marks removed entries leave behind make one rehash double a table), then memory is
    // flat, and every flood stays within the bound per pending duplicate.
    let mut now = t0 + ttl;
    let mut settled = None;
    for round in 2..=8 {
        now += Duration::from_secs(1);
        flood(&mut inbox, now);
        let peak = rss_bytes();
        now += ttl;
        assert_eq!(inbox.handle_timeout(now).len(), PENDING as usize);
        let per = peak.saturating_sub(before) / u64::from(PENDING);
        eprintln!(
            "flood {round}: RSS {} KiB at its peak, {per} bytes per pending duplicate",
            peak / 1024
        );
        assert!(
            per < BYTES_PER_PENDING,
            "flood {round}: {per} bytes per pending duplicate"
        );
        if round == 4 {
            settled = Some(peak);
        }
        if let Some(settled) = settled {
            assert!(
                peak <= settled + 256 * 1024,
                "flood {round} grew memory from {} to {} KiB",
                settled / 1024,
                peak / 1024
            );
        }
    }
}
