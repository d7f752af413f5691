//! The upgrade line protocol (being moved here).
