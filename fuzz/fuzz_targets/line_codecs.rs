//! Any bytes through `LineBuffer`, cut into chunks, with a small line bound (so that the
//! too-long path is reached); each line through every line codec (handoff, upgrade, demo) and
//! `ErrorReport::parse`. Nothing panics, and every message that parses survives `encode` and
//! back unchanged.
//!
//! The first two bytes choose the chunk size (1..=256) and the line bound (1..=1024).
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use sockdup_core::line::{ErrorReport, LineBuffer, LineMessage};
use sockdup_core::proto::{demo, handoff, upgrade};

/// Parses `line` as `M`; what parses must encode to one line that parses back, and encoding
/// is then a fixed point. Encoders normalise what cannot cross as it is (the demo's texts turn
/// a `\r` into a space, its step labels any whitespace into `_`), so the message itself comes
/// back unchanged only from a line without whitespace other than ' ' and without control
/// characters.
fn round_trip<M: LineMessage + PartialEq + Debug>(line: &str) {
    if let Ok(message) = M::parse(line) {
        let encoded = message.encode();
        let body = encoded
            .strip_suffix('\n')
            .expect("an encoded message ends in \\n");
        assert!(!body.contains('\n'), "one message is one line: {encoded:?}");
        let again = M::parse(body).expect("encode output parses");
        assert_eq!(again.encode(), encoded);
        if !line
            .chars()
            .any(|c| c != ' ' && (c.is_whitespace() || c.is_control()))
        {
            assert_eq!(again, message);
        }
    }
}

fn each_codec(line: &str) {
    round_trip::<handoff::ToWorker>(line);
    round_trip::<handoff::FromWorker>(line);
    round_trip::<upgrade::ToOld>(line);
    round_trip::<upgrade::ToNew>(line);
    round_trip::<demo::Request>(line);
    // demo::Reply carries an `Error` (no `PartialEq`): parsed and encoded only.
    if let Ok(reply) = demo::Reply::parse(line) {
        let _ = demo::Reply::parse(reply.encode().trim_end_matches('\n'));
    }
    if let Ok(report) = ErrorReport::parse(line) {
        let mut encoded = String::new();
        report.encode_into(&mut encoded);
        assert_eq!(
            ErrorReport::parse(&encoded).expect("encode output parses"),
            report
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [chunk, bound, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) + 1;
    let bound = usize::from(*bound) * 4 + 1;
    let mut buffer = LineBuffer::new(bound);
    for piece in rest.chunks(chunk) {
        buffer.extend(piece);
        loop {
            match buffer.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= bound);
                    each_codec(&line);
                }
                Ok(None) => break,
                // The stream is out of step: a reader stops here.
                Err(_) => return,
            }
        }
    }
    assert!(buffer.partial().len() <= bound);
});
