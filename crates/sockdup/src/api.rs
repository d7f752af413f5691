//! The API: duplicate and redeem, the calls applications make (`WSADuplicateSocketW`,
//! `WSASocketW` with a protocol info).
//!
//! Redemption routes here, in one place for one record and for many: a base record is claimed
//! from this run's table ([`transfer`](crate::transfer)); a record of a protocol chain goes up
//! through that chain's layers ([`spi`](crate::spi)), as the source's duplicate came down.

use std::os::fd::{AsFd, OwnedFd};

use sockdup_core::catalog;
use sockdup_core::error::{Error, ErrorKind};
use sockdup_core::wire::ProtocolInfo;

use crate::startup::Runtime;
use crate::sync::lock;
use crate::sys::InboxAddress;
use crate::{spi, transfer};

/// Duplicates `socket` for process `target_pid` (`WSPDuplicateSocket`): when this returns, the
/// target holds a descriptor of the same socket, which it claims with [`socket_from_info`] and
/// the returned record. This process may close its own descriptor, or exit, at once.
///
/// The target must run sockdup ([`startup`](crate::startup)) and allow this process's user; a
/// target equal to this process works without IPC.
///
/// # Errors
/// [`NotStarted`](ErrorKind::NotStarted) without [`startup`](crate::startup);
/// [`NotASocket`](ErrorKind::NotASocket); [`InvalidPid`](ErrorKind::InvalidPid) for pid 0;
/// [`NoSuchProcess`](ErrorKind::NoSuchProcess); [`TargetNotStarted`](ErrorKind::TargetNotStarted);
/// [`Squatter`](ErrorKind::Squatter) on its inbox address;
/// [`RefusedByTarget`](ErrorKind::RefusedByTarget) by its policy;
/// [`InboxFull`](ErrorKind::InboxFull); [`TargetOutOfDescriptors`](ErrorKind::TargetOutOfDescriptors);
/// [`PeerClosed`](ErrorKind::PeerClosed) or [`PeerTimedOut`](ErrorKind::PeerTimedOut) if the
/// target does not answer. See the [crate docs](crate#errors).
#[doc(
    alias = "WSPDuplicateSocket",
    alias = "WSADuplicateSocketW",
    alias = "WSADuplicateSocket"
)]
pub fn duplicate_socket<S: AsFd>(socket: &S, target_pid: u32) -> Result<ProtocolInfo, Error> {
    let mut records = duplicate_sockets(std::slice::from_ref(socket), target_pid)?;
    records.pop().ok_or_else(|| {
        Error::new(
            ErrorKind::ProtocolViolation,
            "the target's inbox answered with no ticket",
        )
    })
}

/// Duplicates many sockets for one target in as few messages as possible (253 descriptors per
/// message, Linux's `SCM_MAX_FD`); returns one record per socket, in order.
///
/// All or nothing: if a later message fails, the duplicates already delivered are withdrawn
/// from the target before the error returns.
///
/// # Errors
/// As [`duplicate_socket`]; every socket is checked before any is sent.
#[doc(alias = "WSPDuplicateSocket")]
pub fn duplicate_sockets<S: AsFd>(
    sockets: &[S],
    target_pid: u32,
) -> Result<Vec<ProtocolInfo>, Error> {
    let rt = Runtime::current()?;
    transfer::duplicate(&rt, sockets, target_pid)
}

/// Redeems a record made by [`duplicate_socket`] for this process (`WSPSocket` with a
/// protocol info): returns this process's new descriptor of the same socket, close-on-exec.
/// Each record works once. A record of a protocol chain ([`spi::Socket::duplicate`]) is
/// redeemed through the same chain of this process's catalog, so each layer sees it.
///
/// # Errors
/// [`NotStarted`](ErrorKind::NotStarted) without [`startup`](crate::startup); for a record this
/// process cannot redeem, a kind that says why: [`MalformedRecord`](ErrorKind::MalformedRecord),
/// [`NotSockdupRecord`](ErrorKind::NotSockdupRecord), [`WrongProcess`](ErrorKind::WrongProcess),
/// [`EarlierRun`](ErrorKind::EarlierRun), [`AlreadyRedeemed`](ErrorKind::AlreadyRedeemed),
/// [`Expired`](ErrorKind::Expired), [`Cancelled`](ErrorKind::Cancelled),
/// [`UnknownCatalogEntry`](ErrorKind::UnknownCatalogEntry) (a chain this catalog lacks), or
/// [`NoDescriptor`](ErrorKind::NoDescriptor) (a chain with a non-IFS layer: use
/// [`spi::Socket::from_info`]). A failed attempt changes nothing: the real target can still
/// redeem the record.
#[doc(alias = "WSPSocket", alias = "WSASocketW", alias = "WSASocket")]
pub fn socket_from_info(info: &ProtocolInfo) -> Result<OwnedFd, Error> {
    redeem_one(&*Runtime::current()?, info)
}

/// [`socket_from_info`] with the runtime already looked up (once for many records).
pub(crate) fn redeem_one(rt: &Runtime, info: &ProtocolInfo) -> Result<OwnedFd, Error> {
    let one = std::slice::from_ref(info);
    if through_chains(one) {
        return spi::redeem_fds(rt, one)?
            .pop()
            .ok_or_else(|| Error::new(ErrorKind::NotSockdupRecord, "the record redeemed nothing"));
    }
    transfer::claim(rt, info)
}

/// Redeems many records at once (`WSPSocket` for each), all or nothing: the descriptors come
/// back in the order of `infos`. Base records and records of protocol chains may be mixed.
///
/// # Errors
/// As [`socket_from_info`]; the message names the first record that cannot be redeemed, by
/// its index, and then none is redeemed.
#[doc(alias = "WSPSocket")]
pub fn sockets_from_info(infos: &[ProtocolInfo]) -> Result<Vec<OwnedFd>, Error> {
    let rt = Runtime::current()?;
    redeem(&rt, infos)
}

/// [`sockets_from_info`] with the runtime already looked up.
pub(crate) fn redeem(rt: &Runtime, infos: &[ProtocolInfo]) -> Result<Vec<OwnedFd>, Error> {
    if through_chains(infos) {
        return spi::redeem_fds(rt, infos);
    }
    transfer::claim_all(rt, infos)
}

/// The one routing decision of redemption, for one record and for a batch: base records are
/// claimed from the table (all at once, under one lock); if any record names a protocol
/// chain, the batch goes through the dispatcher, which takes each chain record up through its
/// layers and still claims the base records from the table, all or nothing.
fn through_chains(infos: &[ProtocolInfo]) -> bool {
    !infos
        .iter()
        .all(|i| catalog::is_base_id(i.catalog_entry_id))
}

/// Where process `pid`'s inbox listens, given the runtime directory this process uses
/// (`SOCKDUP_RUNTIME_DIR`), for diagnostics.
pub fn inbox_address(pid: u32) -> InboxAddress {
    let dir = std::env::var_os("SOCKDUP_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from);
    InboxAddress::for_pid(pid, dir.as_deref())
}

/// How many duplicates wait in this process's inbox, not yet redeemed.
///
/// # Errors
/// [`NotStarted`](ErrorKind::NotStarted) without [`startup`](crate::startup).
pub fn pending() -> Result<usize, Error> {
    Ok(lock(&Runtime::current()?.table).len())
}
