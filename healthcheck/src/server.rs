//! One server's health: the fall/rise state machine (sans-io: time is passed in).
//!
//! A server starts up. `fall` failures in a row take it down, `rise` successes in a row bring
//! it back; anything in between changes nothing, so a server that flaps on every probe keeps
//! its state instead of dragging its pool along. Every transition keeps its reason — a
//! timeout is a timeout, a refused port is a refused port, a reply code is a reply code (a
//! timeout is never reported as a 408) — with when it happened and the last probe's RTT.
//!
//! On top of fall/rise, a server may be kept out of hashing for a time ([`crate::damping`]):
//! backing off after a 503 with `Retry-After` that its probe confirmed, or held after flapping.

use std::fmt;
use std::time::{Duration, Instant};

use crate::damping::{Ordinal, Short};
use crate::{Damping, ServerState};

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
    /// The wire path saw the server answer a request with 503 and `Retry-After` of this many
    /// seconds (RFC 3261 §20.33): it asks to be left alone that long, which the supervisor
    /// grants only if the probe that follows fails too.
    Passive503RetryAfter(u32),
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
            Failure::Passive503RetryAfter(s) => {
                write!(f, "answered a request with 503, Retry-After: {s}")
            }
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
    /// It answered a request 503 with `Retry-After` and the probe that followed failed: out
    /// of hashing for new work for `backoff`.
    Backoff { backoff: Duration },
    /// It came back (`rise` met) after going down for the `downs`-th time in a row, each time
    /// within `window` of its return before: held out of hashing for `hold`.
    Held {
        downs: u32,
        window: Duration,
        hold: Duration,
    },
    /// Its backoff or hold ran out and its last `rise` probes passed.
    OutOver,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Start => f.write_str("not probed yet"),
            Reason::Probes { code: Some(c) } => write!(f, "probes answered {c}"),
            Reason::Probes { code: None } => f.write_str("probes connected"),
            Reason::Failed(fail) => fail.fmt(f),
            Reason::Operator => f.write_str("operator"),
            Reason::Backoff { backoff } => write!(
                f,
                "answered 503 with Retry-After and a probe failed: backing off {}",
                Short(*backoff)
            ),
            Reason::Held {
                downs,
                window,
                hold,
            } => write!(
                f,
                "flapping (down the {} time in {}): held {}",
                Ordinal(*downs),
                Short(*window),
                Short(*hold)
            ),
            Reason::OutOver => f.write_str("backoff or hold over, probes pass"),
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

/// `d` after `now`, or as far as the clock goes (a `max_backoff` of centuries is no panic).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

/// Why a server that its probes call up is kept out of hashing, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Backoff(Instant),
    Held(Instant),
}

impl Out {
    fn until(self) -> Instant {
        match self {
            Out::Backoff(at) | Out::Held(at) => at,
        }
    }
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
    damping: Damping,
    /// A `Retry-After` the server answered with, waiting for the next probe's verdict.
    busy: Option<Duration>,
    /// A backoff or hold keeping the server out while its probes call it up.
    out: Option<Out>,
    /// When the server last went down, and last came back (`rise` met).
    went_down: Option<Instant>,
    came_back: Option<Instant>,
    /// Downs in a row, each within `flap_window` of the return before (1 after a lone down).
    downs: u32,
}

impl ServerHealth {
    /// A server as it starts: up (or drained, when its config says so), with the default
    /// [`Damping`].
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
            damping: Damping::DEFAULT,
            busy: None,
            out: None,
            went_down: None,
            came_back: None,
            downs: 0,
        }
    }

    /// Adopts these damping settings (from now on; a backoff or hold under way keeps its end).
    pub fn set_damping(&mut self, damping: Damping) {
        self.damping = damping;
    }

    /// The state routing sees: drained wins over down, down over a backoff or hold.
    pub fn state(&self) -> ServerState {
        match (self.drained, self.up, self.out) {
            (true, _, _) => ServerState::Drained,
            (false, false, _) => ServerState::Down,
            (false, true, Some(Out::Backoff(_))) => ServerState::Backoff,
            (false, true, Some(Out::Held(_))) => ServerState::Held,
            (false, true, None) => ServerState::Up,
        }
    }

    /// Until when a backoff keeps the server out, while one does.
    pub fn backoff_until(&self) -> Option<Instant> {
        match self.out {
            Some(Out::Backoff(at)) => Some(at),
            _ => None,
        }
    }

    /// Until when a hold keeps the flapping server out, while one does.
    pub fn held_until(&self) -> Option<Instant> {
        match self.out {
            Some(Out::Held(at)) => Some(at),
            _ => None,
        }
    }

    /// When [`ServerHealth::tick`] may next change something: the end of a backoff or hold.
    pub fn deadline(&self) -> Option<Instant> {
        self.out.map(Out::until)
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
                    let reason = self.come_back(now).unwrap_or(Reason::Probes { code });
                    return self.changed(before, reason, now);
                }
                return self.tick(th, now);
            }
            Outcome::Failed(failure) => {
                self.ok_run = 0;
                self.fail_run = self.fail_run.saturating_add(1);
                if self.up && self.fail_run >= th.fall {
                    self.up = false;
                    self.go_down(now);
                    return self.changed(before, Reason::Failed(failure), now);
                }
            }
        }
        None
    }

    /// Ends a backoff or hold that has run out, when the server's last `rise` probes passed
    /// (otherwise it stays out until they do).
    pub fn tick(&mut self, th: Thresholds, now: Instant) -> Option<Transition> {
        let out = self.out?;
        if now < out.until() || self.ok_run < th.rise {
            return None;
        }
        let before = self.state();
        self.out = None;
        self.changed(before, Reason::OutOver, now)
    }

    /// The server answered a request 503 with `Retry-After: asked`: the next probe result
    /// decides whether it backs off ([`ServerHealth::take_busy`]).
    pub fn busy(&mut self, asked: Duration) {
        self.busy = Some(self.busy.map_or(asked, |b| b.max(asked)));
    }

    /// The backoff a `Retry-After` asked for, when this probe result confirms it (it failed);
    /// any probe result settles it, so a passing one leaves the 503 only counted.
    pub fn take_busy(&mut self, outcome: &Outcome) -> Option<Duration> {
        let asked = self.busy.take()?;
        matches!(outcome, Outcome::Failed(_)).then(|| self.damping.backoff(asked))
    }

    /// Takes a server that is up out of hashing for `backoff` (a backoff under way is only
    /// lengthened); it returns once that has run out and `rise` probes in a row pass. A server
    /// down, held or drained is left as it is.
    pub fn back_off(&mut self, backoff: Duration, now: Instant) -> Option<Transition> {
        let until = later(now, backoff);
        match self.state() {
            ServerState::Up => {
                self.out = Some(Out::Backoff(until));
                self.ok_run = 0;
                self.changed(ServerState::Up, Reason::Backoff { backoff }, now)
            }
            ServerState::Backoff => {
                if self.out.is_some_and(|o| o.until() < until) {
                    self.out = Some(Out::Backoff(until));
                }
                None
            }
            _ => None,
        }
    }

    /// Counts a down towards flapping: another in a row when it comes within `flap_window` of
    /// the server's last return, else the first. A hold under way ends (the next return sets
    /// a longer one).
    fn go_down(&mut self, now: Instant) {
        let soon = self
            .came_back
            .is_some_and(|at| now.duration_since(at) < self.damping.flap_window);
        self.downs = if soon {
            self.downs.saturating_add(1)
        } else {
            1
        };
        self.went_down = Some(now);
        if matches!(self.out, Some(Out::Held(_))) {
            self.out = None;
        }
    }

    /// The server's probes call it back: held when it is flapping (the reason, then), kept out
    /// when a backoff is still running.
    fn come_back(&mut self, now: Instant) -> Option<Reason> {
        self.came_back = Some(now);
        if self
            .went_down
            .is_some_and(|at| now.duration_since(at) >= self.damping.flap_window)
        {
            // Down for a whole window: that was no flap.
            self.downs = 1;
        }
        if self.out.is_some_and(|o| o.until() <= now) {
            self.out = None;
        }
        let hold = self.damping.hold(self.downs)?;
        let until = later(now, hold);
        if self.out.is_none_or(|o| o.until() < until) {
            self.out = Some(Out::Held(until));
        }
        Some(Reason::Held {
            downs: self.downs,
            window: self.damping.flap_window,
            hold,
        })
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
    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_503_with_retry_after_backs_off_only_when_the_probe_after_it_fails() {
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        // Busy, and the probe passes: the 503 is only counted.
        h.busy(Duration::from_secs(5));
        assert_eq!(h.take_busy(&OK), None);
        assert_eq!(h.record(OK, TH, t0), None);
        assert_eq!(h.take_busy(&TIMEOUT), None, "settled by the probe before");
        assert_eq!(h.state(), ServerState::Up);
        // Busy, and the probe fails: out at once, before `fall`.
        h.busy(Duration::from_secs(5));
        let backoff = h.take_busy(&TIMEOUT).expect("the failed probe confirms it");
        assert_eq!(h.record(TIMEOUT, TH, secs(t0, 1)), None, "1 of fall = 2");
        let t = h.back_off(backoff, secs(t0, 1)).unwrap();
        assert_eq!((t.from, t.to), (ServerState::Up, ServerState::Backoff));
        assert_eq!(
            t.reason,
            Reason::Backoff {
                backoff: Duration::from_secs(5)
            }
        );
        assert!(!ServerState::Backoff.takes_traffic());
        assert_eq!(h.backoff_until(), Some(secs(t0, 6)));
        assert_eq!(h.deadline(), Some(secs(t0, 6)));
        // Probes pass at once: still out until the Retry-After has run.
        for s in 2..5 {
            assert_eq!(h.record(OK, TH, secs(t0, s)), None);
        }
        assert_eq!(h.tick(TH, secs(t0, 5)), None);
        assert_eq!(h.state(), ServerState::Backoff);
        let back = h.tick(TH, secs(t0, 6)).expect("run out, rise met");
        assert_eq!((back.to, back.reason), (ServerState::Up, Reason::OutOver));
        assert_eq!(h.deadline(), None);
    }

    #[test]
    fn a_backoff_ends_only_once_rise_probes_pass_and_is_capped() {
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        h.set_damping(Damping {
            max_backoff: Duration::from_secs(30),
            ..Damping::DEFAULT
        });
        h.busy(Duration::from_secs(3600));
        let backoff = h.take_busy(&TIMEOUT).unwrap();
        assert_eq!(backoff, Duration::from_secs(30), "capped at max_backoff");
        h.record(TIMEOUT, TH, t0);
        h.back_off(backoff, t0).unwrap();
        // Run out, but the probes have not passed `rise` times since.
        assert_eq!(h.tick(TH, secs(t0, 30)), None);
        assert_eq!(h.record(OK, TH, secs(t0, 31)), None);
        assert_eq!(h.record(OK, TH, secs(t0, 32)), None);
        let back = h.record(OK, TH, secs(t0, 33)).expect("the 3rd of rise = 3");
        assert_eq!(
            (back.from, back.to),
            (ServerState::Backoff, ServerState::Up)
        );
        // Failing `fall` probes in a backoff takes it down, as ever.
        h.busy(Duration::from_secs(10));
        let backoff = h.take_busy(&TIMEOUT).unwrap();
        h.record(TIMEOUT, TH, secs(t0, 40));
        h.back_off(backoff, secs(t0, 40)).unwrap();
        let down = h.record(TIMEOUT, TH, secs(t0, 41)).unwrap();
        assert_eq!(
            (down.from, down.to),
            (ServerState::Backoff, ServerState::Down)
        );
        // Only a server that is up backs off.
        assert_eq!(h.back_off(backoff, secs(t0, 42)), None);
        assert_eq!(h.state(), ServerState::Down);
    }

    /// Down at `down`, then `rise` (1) passing probes at `up`.
    fn cycle(h: &mut ServerHealth, down: Instant, up: Instant) -> Transition {
        let th = Thresholds { fall: 1, rise: 1 };
        h.record(TIMEOUT, th, down).expect("down");
        h.record(OK, th, up).expect("back")
    }

    #[test]
    fn a_flapping_server_is_held_twice_as_long_at_each_flap() {
        let th = Thresholds { fall: 1, rise: 1 };
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        // Down once and back: exactly as without damping.
        let back = cycle(&mut h, secs(t0, 1), secs(t0, 2));
        assert_eq!(back.to, ServerState::Up);
        assert_eq!(back.reason, Reason::Probes { code: Some(200) });
        // Down again 3 s after it came back: held 10 s.
        let held = cycle(&mut h, secs(t0, 5), secs(t0, 6));
        assert_eq!((held.from, held.to), (ServerState::Down, ServerState::Held));
        assert_eq!(
            held.reason.to_string(),
            "flapping (down the 2nd time in 60s): held 10s"
        );
        assert_eq!(h.held_until(), Some(secs(t0, 16)));
        assert_eq!(h.tick(th, secs(t0, 15)), None);
        let up = h.tick(th, secs(t0, 16)).unwrap();
        assert_eq!((up.to, up.reason), (ServerState::Up, Reason::OutOver));
        // The 3rd and 4th downs in a row: 20 s, then 40 s.
        cycle(&mut h, secs(t0, 20), secs(t0, 21));
        assert_eq!(h.held_until(), Some(secs(t0, 41)));
        // Down again while held: that is a flap too.
        h.record(TIMEOUT, th, secs(t0, 30)).unwrap();
        assert_eq!(h.held_until(), None);
        let held = h.record(OK, th, secs(t0, 31)).unwrap();
        assert_eq!(held.to, ServerState::Held);
        assert_eq!(h.held_until(), Some(secs(t0, 71)));
        assert!(
            held.reason.to_string().contains("4th time"),
            "{}",
            held.reason
        );
    }

    #[test]
    fn a_window_without_a_flap_starts_afresh() {
        let th = Thresholds { fall: 1, rise: 1 };
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        cycle(&mut h, secs(t0, 1), secs(t0, 2));
        cycle(&mut h, secs(t0, 3), secs(t0, 4));
        assert_eq!(h.tick(th, secs(t0, 14)).unwrap().to, ServerState::Up);
        // Up for a whole window, then down and back: not a flap.
        let back = cycle(&mut h, secs(t0, 74), secs(t0, 75));
        assert_eq!(back.to, ServerState::Up);
        // A flap after it is the 2nd down again: the first hold, not a doubled one.
        cycle(&mut h, secs(t0, 80), secs(t0, 81));
        assert_eq!(h.held_until(), Some(secs(t0, 91)));
        h.tick(th, secs(t0, 91)).unwrap();
        // Down for a whole window, even soon after a return: back without a hold.
        let back = cycle(&mut h, secs(t0, 92), secs(t0, 152));
        assert_eq!(back.to, ServerState::Up);
        // flap_window = 0: never held.
        let mut h = ServerHealth::new(t0, false);
        h.set_damping(Damping {
            flap_window: Duration::ZERO,
            ..Damping::DEFAULT
        });
        for s in 0..10 {
            let back = cycle(&mut h, secs(t0, 2 * s), secs(t0, 2 * s + 1));
            assert_eq!(back.to, ServerState::Up);
        }
    }
    #[test]
    fn an_endless_backoff_or_hold_is_no_panic() {
        let t0 = Instant::now();
        let mut h = ServerHealth::new(t0, false);
        h.set_damping(Damping {
            flap_window: Duration::MAX,
            flap_hold: Duration::MAX,
            max_backoff: Duration::MAX,
        });
        h.busy(Duration::MAX);
        let backoff = h.take_busy(&TIMEOUT).unwrap();
        h.record(TIMEOUT, TH, t0);
        assert_eq!(h.back_off(backoff, t0).unwrap().to, ServerState::Backoff);
        let mut h = ServerHealth::new(t0, false);
        h.set_damping(Damping {
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::MAX,
            max_backoff: Duration::MAX,
        });
        cycle(&mut h, secs(t0, 1), secs(t0, 2));
        assert_eq!(
            cycle(&mut h, secs(t0, 3), secs(t0, 4)).to,
            ServerState::Held
        );
    }
}
