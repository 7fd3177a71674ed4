//! Backend health for siplb: what state a server is in and why.
//!
//! This crate knows nothing about routing or the proxy's wire path; the proxy reads the state
//! of each server from here when it builds a routing table. Probers and the fall/rise state
//! machine live here too.
#![forbid(unsafe_code)]

/// Whether a server takes part in hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Passing its probes (every server starts up until probing says otherwise).
    Up,
    /// Failed `fall` probes in a row.
    Down,
    /// Taken out of hashing by an operator (or by `drained = true` in the config).
    Drained,
}

impl ServerState {
    /// Whether requests may be hashed to a server in this state.
    pub fn takes_traffic(self) -> bool {
        matches!(self, ServerState::Up)
    }

    /// The name used in logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Drained => "drained",
        }
    }
}
