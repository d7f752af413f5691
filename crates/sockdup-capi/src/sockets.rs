//! The process's `SOCKET` table: which `sockdup::spi::Socket` serves each `SOCKET` value.

/// Closes every socket the table holds (the last `WSACleanup`).
pub(crate) fn close_all() {}
