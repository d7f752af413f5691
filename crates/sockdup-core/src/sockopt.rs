//! The socket options a provider can get and set, and the `FD_*` network event bits: the
//! vocabulary the SPI and the syscall layer share.

/// The socket options a provider can get and set (a typed subset of `SOL_SOCKET`/`IPPROTO_TCP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SockOpt {
    /// `SO_KEEPALIVE` (0 or 1).
    KeepAlive,
    /// `SO_REUSEADDR` (0 or 1).
    ReuseAddr,
    /// `TCP_NODELAY` (0 or 1).
    NoDelay,
    /// `SO_RCVBUF`, in bytes.
    RecvBufferSize,
    /// `SO_SNDBUF`, in bytes.
    SendBufferSize,
}

/// `FD_READ`: `WSAEventSelect` network event bits.
pub const FD_READ: u32 = 0x01;
/// `FD_WRITE`
pub const FD_WRITE: u32 = 0x02;
/// `FD_ACCEPT`
pub const FD_ACCEPT: u32 = 0x08;
/// `FD_CONNECT`
pub const FD_CONNECT: u32 = 0x10;
/// `FD_CLOSE`
pub const FD_CLOSE: u32 = 0x20;
/// `FD_OOB`: urgent (out-of-band) data arrived.
pub const FD_OOB: u32 = 0x04;

/// `FD_READ_BIT`: the index of `FD_READ` in `WSANETWORKEVENTS::iErrorCode`.
pub const FD_READ_BIT: usize = 0;
/// `FD_WRITE_BIT`
pub const FD_WRITE_BIT: usize = 1;
/// `FD_OOB_BIT`
pub const FD_OOB_BIT: usize = 2;
/// `FD_ACCEPT_BIT`
pub const FD_ACCEPT_BIT: usize = 3;
/// `FD_CONNECT_BIT`
pub const FD_CONNECT_BIT: usize = 4;
/// `FD_CLOSE_BIT`
pub const FD_CLOSE_BIT: usize = 5;
/// `FD_MAX_EVENTS`: the length of `WSANETWORKEVENTS::iErrorCode`.
pub const FD_MAX_EVENTS: usize = 10;
/// Every network event bit `WSAEventSelect` accepts here.
pub const FD_ALL_EVENTS: u32 = FD_READ | FD_WRITE | FD_OOB | FD_ACCEPT | FD_CONNECT | FD_CLOSE;
