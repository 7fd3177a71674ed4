//! Backend health for siplb: what state a server is in and why, and where a pool's users are
//! served.
//!
//! - [`server`]: the per-server fall/rise state machine, with the reason of every transition;
//! - [`pool`]: pool failover to the paired pool, automatic with a failback hold time, or manual;
//! - [`probe`]: SIP OPTIONS (over UDP, TCP or TLS), TCP connect and TLS handshake probers;
//! - [`quorum`]: the fleet's verdict on a pool from the views of several replicas and a witness.
//!
//! The state machines are plain data with time passed in, so they are tested without clocks or
//! sockets. This crate knows nothing about routing or the proxy's wire path.
#![forbid(unsafe_code)]

pub mod pool;
pub mod probe;
pub mod quorum;
pub mod server;

pub use pool::{FailoverChange, FailoverReason, Mode, PoolFailover};
pub use probe::{ProbeKind, ProbeNow, ProbeSettings, Target, TlsClient, Transport};
pub use server::{Failure, Outcome, Reason, ServerHealth, Thresholds, TlsFailure, Transition};

/// Whether a server takes part in hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
