//! The messages between a source and a target's inbox, as bytes.
//!
//! Each is one `SOCK_SEQPACKET` message of little-endian `u32` words. A request carries its
//! descriptors in `SCM_RIGHTS`; the inbox answers every request with one reply.
//!
//! ```text
//! request: MAGIC, op (PUSH | CANCEL), count, then for CANCEL `count` tickets
//! reply:   MAGIC, status (0 or a Winsock code), inbox pid, inbox nonce, count, `count` tickets,
//!          then, when status != 0, UTF-8 text: the error's kind name, a space, its message
//! ```
//!
//! A refusal thus reaches the source with its [`ErrorKind`] (e.g. `inbox-full`), rebuilt by
//! [`Reply::into_result`] with [`Error::remote`].

use crate::error::{Error, ErrorKind};

/// `"SDP2"`, the first word of every message (version 2: replies carry the error's kind).
pub const MAGIC: u32 = u32::from_le_bytes(*b"SDP2");
/// Linux's `SCM_MAX_FD`: the most descriptors one message may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 253;
/// The largest message either side sends.
pub const MAX_MESSAGE: usize = 4096;
/// The longest error text a reply carries, in bytes.
const MAX_TEXT: usize = MAX_MESSAGE - 5 * 4 - MAX_FDS_PER_MESSAGE * 4;

/// What a source asks of an inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Keep the `count` descriptors attached to this message and give each a ticket.
    Push {
        /// How many descriptors the `SCM_RIGHTS` message carries.
        count: u32,
    },
    /// Withdraw tickets this source was given (closing their descriptors).
    Cancel {
        /// The tickets.
        tickets: Vec<u32>,
    },
}

const OP_PUSH: u32 = 1;
const OP_CANCEL: u32 = 2;

/// An inbox's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// 0, or the Winsock code of the failure.
    pub status: i32,
    /// The inbox's process id, as it sees itself.
    pub pid: u32,
    /// The inbox's run nonce.
    pub nonce: u32,
    /// For a successful push, one ticket per descriptor, in order.
    pub tickets: Vec<u32>,
    /// For a failure, the [`ErrorKind`]'s name and the message, separated by a space.
    pub text: String,
}

fn words(bytes: &[u8]) -> Option<Vec<u32>> {
    (bytes.len() % 4 == 0).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

fn put(out: &mut Vec<u8>, w: u32) {
    out.extend_from_slice(&w.to_le_bytes());
}

fn malformed(what: &str) -> Error {
    Error::new(
        ErrorKind::ProtocolViolation,
        format!(
            "received a malformed sockdup {what}: the peer is not a compatible sockdup inbox or source"
        ),
    )
}

impl Request {
    /// The request as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        self.encode_into(&mut out);
        out
    }

    /// Appends the request's bytes to `out` (what [`encode`](Self::encode) gives, into a
    /// buffer the caller keeps).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let out = &mut *out;
        put(out, MAGIC);
        match self {
            Self::Push { count } => {
                put(out, OP_PUSH);
                put(out, *count);
            }
            Self::Cancel { tickets } => {
                put(out, OP_CANCEL);
                put(out, tickets.len() as u32);
                tickets.iter().for_each(|&t| put(out, t));
            }
        }
    }

    /// Parses a request.
    ///
    /// # Errors
    /// `WSAENETDOWN` if the bytes are not a sockdup request.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let w = words(bytes).ok_or_else(|| malformed("request"))?;
        match w.as_slice() {
            [MAGIC, OP_PUSH, count] => Ok(Self::Push { count: *count }),
            [MAGIC, OP_CANCEL, count, tickets @ ..] if *count as usize == tickets.len() => {
                Ok(Self::Cancel {
                    tickets: tickets.to_vec(),
                })
            }
            _ => Err(malformed("request")),
        }
    }
}

impl Reply {
    /// The reply as bytes; an over-long text is cut at a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 4 * self.tickets.len());
        for w in [
            MAGIC,
            self.status as u32,
            self.pid,
            self.nonce,
            self.tickets.len() as u32,
        ] {
            put(&mut out, w);
        }
        self.tickets.iter().for_each(|&t| put(&mut out, t));
        let mut end = self.text.len().min(MAX_TEXT);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&self.text.as_bytes()[..end]);
        out
    }

    /// Parses a reply.
    ///
    /// # Errors
    /// `WSAENETDOWN` if the bytes are not a sockdup reply.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut reply = Self::default();
        reply.decode_into(bytes)?;
        Ok(reply)
    }

    /// Parses a reply into `self`, in place: its ticket list and text are cleared and refilled,
    /// so a caller that keeps one `Reply` for every request allocates nothing once they are
    /// large enough. On an error `self` holds no meaningful reply.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn decode_into(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let word = |i: usize| {
            bytes
                .get(4 * i..4 * i + 4)
                .and_then(|w| <[u8; 4]>::try_from(w).ok())
                .map(u32::from_le_bytes)
        };
        let (Some(magic), Some(status), Some(pid), Some(nonce), Some(count)) =
            (word(0), word(1), word(2), word(3), word(4))
        else {
            return Err(malformed("reply"));
        };
        if magic != MAGIC || count as usize > MAX_FDS_PER_MESSAGE {
            return Err(malformed("reply"));
        }
        let end = 20 + 4 * count as usize;
        let tickets = bytes.get(20..end).ok_or_else(|| malformed("reply"))?;
        self.status = status as i32;
        self.pid = pid;
        self.nonce = nonce;
        self.tickets.clear();
        self.tickets.extend(
            tickets
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        self.text.clear();
        if bytes.len() > end {
            self.text.push_str(&String::from_utf8_lossy(&bytes[end..]));
        }
        Ok(())
    }

    /// A failed reply from an inbox of process `pid`, run `nonce`, carrying `error`'s code,
    /// kind and message.
    pub fn failure(pid: u32, nonce: u32, error: &Error) -> Self {
        Self {
            status: error.code(),
            pid,
            nonce,
            tickets: Vec::new(),
            text: format!("{} {}", error.kind().name(), error.message()),
        }
    }

    /// The reply as a result: its tickets, or the inbox's error.
    ///
    /// # Errors
    /// The error the inbox reported, with its code, kind and message.
    pub fn into_result(self) -> Result<Self, Error> {
        self.check()?;
        Ok(self)
    }

    /// The inbox's error, if the reply is a failure ([`into_result`](Self::into_result)
    /// without taking the reply).
    ///
    /// # Errors
    /// The error the inbox reported, with its code, kind and message.
    pub fn check(&self) -> Result<(), Error> {
        if self.status == 0 {
            return Ok(());
        }
        let (kind, message) = self.text.split_once(' ').unwrap_or(("", &self.text));
        Err(Error::remote(kind, self.status, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for r in [
            Request::Push { count: 253 },
            Request::Cancel {
                tickets: vec![1, 2, 3],
            },
            Request::Cancel { tickets: vec![] },
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let r = Reply {
            status: 0,
            pid: 9,
            nonce: 7,
            tickets: vec![5; 253],
            text: String::new(),
        };
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        let r = Reply::failure(9, 7, &Error::new(ErrorKind::InboxFull, "full é"));
        let back = Reply::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        let e = back.into_result().unwrap_err();
        assert_eq!(
            (e.code(), e.kind(), e.message()),
            (10055, ErrorKind::InboxFull, "full é")
        );
        let long = Reply {
            text: "é".repeat(MAX_MESSAGE),
            ..r
        };
        assert!(long.encode().len() <= MAX_MESSAGE);
    }

    #[test]
    fn decode_into_a_kept_reply_gives_what_decode_gives() {
        let failure = Reply::failure(9, 7, &Error::new(ErrorKind::InboxFull, "full"));
        let success = Reply {
            status: 0,
            pid: 9,
            nonce: 7,
            tickets: vec![1, 2, 3],
            text: String::new(),
        };
        let mut kept = Reply::default();
        for r in [&success, &failure, &success] {
            kept.decode_into(&r.encode()).unwrap();
            assert_eq!(&kept, r);
            assert_eq!(kept.check().is_ok(), r.status == 0);
        }
        assert!(kept.decode_into(b"SDP2").is_err());
        let mut out = vec![9];
        Request::Push { count: 2 }.encode_into(&mut out);
        assert_eq!(out[1..], Request::Push { count: 2 }.encode()[..]);
    }

    #[test]
    fn refuses_garbage() {
        assert!(Request::decode(b"").is_err());
        assert!(Request::decode(b"SDP2\x01\0\0\0").is_err());
        assert!(Request::decode(&Request::Cancel { tickets: vec![1] }.encode()[..12]).is_err());
        assert!(Reply::decode(b"SDP2").is_err());
        let e = Request::decode(b"").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ProtocolViolation);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Request::decode(&bytes);
            let _ = Reply::decode(&bytes);
            prop_assert_eq!(Reply::default().decode_into(&bytes).is_ok(), Reply::decode(&bytes).is_ok());
        }
    }
}
