//! Backend health for siplb: what state a server is in and why, and where a pool's users are
//! served.
//!
//! - [`server`]: the per-server fall/rise state machine, with the reason of every transition,
//!   the backoff a busy server asks for when its probes fail too, and the hold of a flapping one;
//! - [`pool`]: pool failover to the paired pool, automatic with a failback hold time, or manual;
//! - [`probe`]: SIP OPTIONS (over UDP, TCP or TLS), TCP connect and TLS handshake probers;
//! - [`quorum`]: the fleet's verdict on a pool from the views of several replicas and a witness.
//!
//! The state machines are plain data with time passed in, so they are tested without clocks or
//! sockets. This crate knows nothing about routing or the proxy's wire path.
#![forbid(unsafe_code)]

pub mod damping;
pub mod pool;
pub mod probe;
pub mod quorum;
pub mod server;

pub use damping::Damping;
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
    /// Up by its probes, but out of hashing for new work until a `Retry-After` runs out: it
    /// answered a request 503 with `Retry-After` and the probe that followed failed.
    Backoff,
    /// Back by its probes (`rise` met), but held out of hashing a while longer: it went down
    /// again soon after it last came back (flapping).
    Held,
    /// Taken out of hashing by an operator (or by `drained = true` in the config).
    Drained,
}

impl ServerState {
    /// Whether the server is out for health's sake: down, backing off or held (not drained,
    /// which is an operator's choice, and not up).
    pub fn is_out(self) -> bool {
        matches!(
            self,
            ServerState::Down | ServerState::Backoff | ServerState::Held
        )
    }

    /// Whether requests may be hashed to a server in this state.
    pub fn takes_traffic(self) -> bool {
        matches!(self, ServerState::Up)
    }

    /// The name used in logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Backoff => "backoff",
            ServerState::Held => "held",
            ServerState::Drained => "drained",
        }
    }
}
