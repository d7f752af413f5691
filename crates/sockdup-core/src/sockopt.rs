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
