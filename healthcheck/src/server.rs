//! One server's health: the fall/rise state machine (sans-io: time is passed in).
//!
//! A server starts up. `fall` failures in a row take it down, `rise` successes in a row bring
//! it back; anything in between changes nothing, so a server that flaps on every probe keeps
//! its state instead of dragging its pool along. Every transition keeps its reason — a
//! timeout is a timeout, a refused port is a refused port, a reply code is a reply code (a
//! timeout is never reported as a 408) — with when it happened and the last probe's RTT.

use std::fmt;
use std::time::{Duration, Instant};

use crate::ServerState;

/// Why a probe (or a passive signal) says a server is not serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the probe timeout.
    Timeout,
    /// The port is closed: a TCP RST, or an ICMP port unreachable for UDP.
    Refused,
    /// The server answered with this failure status (5xx).
    Reply(u16),
    /// The network said no in another way (no route, host unreachable…).
    Unreachable,
    /// The wire path saw the server answer a request with 503.
    Passive503,
    /// The wire path's send to the server drew an ICMP port unreachable.
    PassiveRefused,
    /// Requests forwarded to the server went unanswered past the probe timeout, several in a
    /// row (it may have hung); only ever a reason to probe at once, never a failure counted.
    Silent,
    /// A TCP or TLS connection closed before the probe's answer arrived.
    Closed,
    /// The server's answer to a probe could not be read as SIP (or was too large).
    Garbled,
    /// The TLS handshake failed (or the server refused siplb's client certificate).
    Tls(TlsFailure),
}

/// Why a TLS handshake with a server failed, as far as siplb can tell from its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate does not chain to the configured CA.
    UnknownIssuer,
    /// The server's certificate does not name the server (the configured `server_name`, or
    /// its IP address).
    NameMismatch,
    /// The server's certificate has expired or is not valid yet.
    Expired,
    /// Something else is wrong with the server's certificate.
    BadCertificate,
    /// The server refused siplb's client certificate, or wanted one and got none (MTLS).
    ClientCertificate,
    /// The peer does not speak TLS, or the handshake failed in another way.
    Handshake,
    /// siplb has no TLS settings for this server (its pool's `tls` files could not be loaded).
    NoSettings,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::UnknownIssuer => "server certificate not issued by the configured CA",
            TlsFailure::NameMismatch => "server certificate does not name the server",
            TlsFailure::Expired => "server certificate expired or not yet valid",
            TlsFailure::BadCertificate => "server certificate refused",
            TlsFailure::ClientCertificate => "server refused siplb's client certificate",
            TlsFailure::Handshake => "handshake failed",
            TlsFailure::NoSettings => "no TLS settings for this server",
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("probe timed out"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::Reply(code) => write!(f, "probe answered {code}"),
            Failure::Unreachable => f.write_str("unreachable"),
            Failure::Passive503 => f.write_str("answered a request with 503"),
            Failure::PassiveRefused => f.write_str("port unreachable on forward"),
            Failure::Silent => f.write_str("forwarded requests unanswered"),
            Failure::Closed => f.write_str("connection closed before an answer"),
            Failure::Garbled => f.write_str("unreadable answer"),
            Failure::Tls(why) => write!(f, "tls: {why}"),
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered: in `rtt`, with `code` for SIP probes (`None` for a connect).
    Alive {
        rtt: Duration,
        code: Option<u16>,
    },
    Failed(Failure),
}

/// Why a server is in its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not probed yet: servers start up.
    Start,
    /// `rise` probes in a row succeeded (the last one's code, for SIP probes).
    Probes { code: Option<u16> },
    /// `fall` failures in a row; the last one's cause.
    Failed(Failure),
    /// An operator drained or undrained it.
    Operator,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Start => f.write_str("not probed yet"),
            Reason::Probes { code: Some(c) } => write!(f, "probes answered {c}"),
            Reason::Probes { code: None } => f.write_str("probes connected"),
            Reason::Failed(fail) => fail.fmt(f),
            Reason::Operator => f.write_str("operator"),
        }
    }
}

/// A change of state, to log and to rebuild the routing table on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: ServerState,
    pub to: ServerState,
    pub reason: Reason,
}

/// How many results in a row change a server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub fall: u32,
    pub rise: u32,
}

/// One server's health.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerHealth {
    up: bool,
    drained: bool,
    ok_run: u32,
    fail_run: u32,
    /// When the current state began.
    pub since: Instant,
    pub reason: Reason,
    /// The last successful probe's round-trip time.
    pub last_rtt: Option<Duration>,
    /// The last probe's result, good or bad.
    pub last_outcome: Option<Outcome>,
}

impl ServerHealth {
    /// A server as it starts: up (or drained, when its config says so).
    pub fn new(now: Instant, drained: bool) -> Self {
        ServerHealth {
            up: true,
            drained,
            ok_run: 0,
            fail_run: 0,
            since: now,
            reason: if drained {
                Reason::Operator
            } else {
                Reason::Start
            },
            last_rtt: None,
            last_outcome: None,
        }
    }

    /// The state routing sees: drained wins over up/down.
    pub fn state(&self) -> ServerState {
        match (self.drained, self.up) {
            (true, _) => ServerState::Drained,
            (false, true) => ServerState::Up,
            (false, false) => ServerState::Down,
        }
    }

    /// Records one probe result or passive signal.
    pub fn record(&mut self, outcome: Outcome, th: Thresholds, now: Instant) -> Option<Transition> {
        self.last_outcome = Some(outcome);
        let before = self.state();
        match outcome {
            Outcome::Alive { rtt, code } => {
                self.last_rtt = Some(rtt);
                self.fail_run = 0;
                self.ok_run = self.ok_run.saturating_add(1);
                // Up since start, and now the probes say why.
                if self.up && self.reason == Reason::Start {
                    self.reason = Reason::Probes { code };
                }
                if !self.up && self.ok_run >= th.rise {
                    self.up = true;
                    return self.changed(before, Reason::Probes { code }, now);
                }
            }
            Outcome::Failed(failure) => {
                self.ok_run = 0;
                self.fail_run = self.fail_run.saturating_add(1);
                if self.up && self.fail_run >= th.fall {
                    self.up = false;
                    return self.changed(before, Reason::Failed(failure), now);
                }
            }
        }
        None
    }

    /// A sign of failure that brings a verdict nearer but never makes one: it counts as one
    /// failure towards `fall` only while the server is up and more than one failure is still
    /// needed, so the next failed probe may complete the verdict and a passing one clears it.
    /// True when it counted.
    pub fn suspect(&mut self, th: Thresholds) -> bool {
        if !self.up || self.fail_run + 1 >= th.fall {
            return false;
        }
        self.ok_run = 0;
        self.fail_run += 1;
        true
    }

    /// Takes the server out of hashing (`true`) or puts it back.
    pub fn set_drained(&mut self, drained: bool, now: Instant) -> Option<Transition> {
        let before = self.state();
        self.drained = drained;
        self.changed(before, Reason::Operator, now)
    }

    fn changed(&mut self, before: ServerState, reason: Reason, now: Instant) -> Option<Transition> {
        let after = self.state();
        if after == before {
            return None;
        }
        self.since = now;
        self.reason = reason;
        Some(Transition {
            from: before,
            to: after,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds { fall: 2, rise: 3 };
    const OK: Outcome = Outcome::Alive {
        rtt: Duration::from_millis(3),
        code: Some(200),
    };
    const TIMEOUT: Outcome = Outcome::Failed(Failure::Timeout);

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        assert_eq!(h.state(), ServerState::Up);
        assert_eq!(h.record(TIMEOUT, TH, t0), None);
        let down = h
            .record(
                Outcome::Failed(Failure::Refused),
                TH,
                t0 + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!((down.from, down.to), (ServerState::Up, ServerState::Down));
        assert_eq!(
            down.reason,
            Reason::Failed(Failure::Refused),
            "the cause is the last failure, not a 408"
        );
        assert_eq!(h.since, t0 + Duration::from_secs(1));
        assert_eq!(h.record(OK, TH, t0), None);
        assert_eq!(h.record(OK, TH, t0), None);
        let up = h.record(OK, TH, t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(
            (up.to, up.reason),
            (ServerState::Up, Reason::Probes { code: Some(200) })
        );
        assert_eq!(h.last_rtt, Some(Duration::from_millis(3)));
    }

    #[test]
    fn a_flapping_server_keeps_its_state() {
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        for _ in 0..50 {
            assert_eq!(h.record(TIMEOUT, TH, t0), None);
            assert_eq!(h.record(OK, TH, t0), None);
        }
        assert_eq!(h.state(), ServerState::Up);
        h.record(TIMEOUT, TH, t0);
        h.record(TIMEOUT, TH, t0);
        for _ in 0..50 {
            assert_eq!(h.record(OK, TH, t0), None);
            assert_eq!(h.record(OK, TH, t0), None);
            assert_eq!(h.record(Outcome::Failed(Failure::Reply(503)), TH, t0), None);
        }
        assert_eq!(h.state(), ServerState::Down);
    }

    #[test]
    fn a_suspicion_brings_the_verdict_nearer_but_never_makes_it() {
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        assert!(h.suspect(TH), "one of fall = 2 failures");
        assert!(
            !h.suspect(TH),
            "a second would complete fall: it does not count"
        );
        assert_eq!(h.state(), ServerState::Up);
        let down = h
            .record(TIMEOUT, TH, t0)
            .expect("the failed probe completes it");
        assert_eq!(down.reason, Reason::Failed(Failure::Timeout));
        // A passing probe clears a suspicion.
        let mut h = ServerHealth::new(t0, false);
        h.suspect(TH);
        assert_eq!(h.record(OK, TH, t0), None);
        assert_eq!(h.record(TIMEOUT, TH, t0), None, "the run began again");
        // With fall = 1 a suspicion never counts: a probe alone decides.
        let one = Thresholds { fall: 1, rise: 1 };
        assert!(!ServerHealth::new(t0, false).suspect(one));
    }

    #[test]
    fn drained_wins_and_probes_go_on_underneath() {
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        let t = h.set_drained(true, t0).unwrap();
        assert_eq!((t.to, t.reason), (ServerState::Drained, Reason::Operator));
        assert_eq!(h.set_drained(true, t0), None);
        h.record(TIMEOUT, TH, t0);
        assert_eq!(
            h.record(TIMEOUT, TH, t0),
            None,
            "no visible change while drained"
        );
        let t = h.set_drained(false, t0).unwrap();
        assert_eq!(
            t.to,
            ServerState::Down,
            "undrained into what the probes say"
        );
    }
}
