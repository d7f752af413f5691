//! The line protocol between an acceptor and its workers, over the workers' standard input
//! (acceptor to worker) and standard output (worker to acceptor):
//!
//! ```text
//! worker:   pid PID          once, after sockdup::startup()
//! acceptor: conn ID RECORD   a connection duplicated for this worker, as a text record
//! worker:   ok ID            redeemed: the acceptor may close its descriptor
//! worker:   fail ID CODE     could not redeem (the acceptor gives the connection to another)
//! worker:   done ID          the connection is finished (for least-outstanding dispatch)
//! ```

/// A line from a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Line {
    Pid(u32),
    Redeemed(u64),
    Failed(u64, i32),
    Done(u64),
}

pub(crate) fn to_acceptor(line: &Line) -> String {
    match line {
        Line::Pid(pid) => format!("pid {pid}"),
        Line::Redeemed(id) => format!("ok {id}"),
        Line::Failed(id, code) => format!("fail {id} {code}"),
        Line::Done(id) => format!("done {id}"),
    }
}

/// Parses a worker's line; `None` for anything else.
pub(crate) fn from_worker(text: &str) -> Option<Line> {
    let mut w = text.split_whitespace();
    let line = match (w.next()?, w.next()?.parse::<u64>().ok()?, w.next()) {
        ("pid", pid, None) => Line::Pid(u32::try_from(pid).ok()?),
        ("ok", id, None) => Line::Redeemed(id),
        ("fail", id, Some(code)) => Line::Failed(id, code.parse().ok()?),
        ("done", id, None) => Line::Done(id),
        _ => return None,
    };
    w.next().is_none().then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_garbage_is_none() {
        for l in [
            Line::Pid(42),
            Line::Redeemed(7),
            Line::Failed(7, 10022),
            Line::Done(9),
        ] {
            assert_eq!(from_worker(&to_acceptor(&l)), Some(l));
        }
        for bad in [
            "",
            "pid",
            "pid x",
            "pid 1 2",
            "hello world",
            "ok -1",
            "fail 1",
            "pid 99999999999",
        ] {
            assert_eq!(from_worker(bad), None, "{bad}");
        }
    }
}
