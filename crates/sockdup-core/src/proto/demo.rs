//! The demo line protocol (being moved here).
