//! The handoff line protocol (being moved here).
