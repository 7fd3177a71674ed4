//! The operator's state across the fleet: which pools an operator holds failed over and which
//! servers are drained, with the version of the last command on each, so that a replica that
//! missed a command (down, cut off, restarted) adopts it at its next exchange.
//!
//! Versions are Lamport stamps ([`Stamp`]): a command given on this replica gets
//! `seq = the highest seq seen + 1` and this replica's URL as `origin` (the tie-break); a
//! command forwarded by a peer keeps the peer's stamp. Each pool and each server carries the
//! stamp of the last command on it ([`Ledger`]), and a replica adopts, per pool and per server,
//! what a peer's view says when that peer's stamp for it is newer than its own
//! ([`adoptions`]). Stamping each one apart, rather than the whole state at once, keeps two
//! commands given on two replicas at the same time (a failover on one, a drain on the other)
//! both, and lets a replica that missed one command and then received the next still catch up
//! on the first.
//!
//! Only operator commands are in it: an automatic failover (the fleet's verdict) is each
//! replica's own conclusion and is never adopted. A replica that starts has no stamp (seq 0),
//! so at its first exchange it adopts every command its peers hold.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The version of an operator command: ordered by `seq`, then by `origin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Stamp {
    /// The Lamport clock.
    pub(crate) seq: u64,
    /// The ops URL of the replica the command was given to.
    pub(crate) origin: String,
}

/// What an operator command is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    /// A pool (failover, failback).
    Pool(String),
    /// A server by id (drain, undrain).
    Server(String),
}

/// One pool's or server's stamp, as a view publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamped {
    /// `pool` or `server`.
    pub(crate) kind: String,
    /// The pool's name or the server's id.
    pub(crate) name: String,
    pub(crate) seq: u64,
    pub(crate) origin: String,
}

impl Stamped {
    fn target(&self) -> Option<Subject> {
        match self.kind.as_str() {
            "pool" => Some(Subject::Pool(self.name.clone())),
            "server" => Some(Subject::Server(self.name.clone())),
            _ => None,
        }
    }
}

/// The operator state in `/cluster/view` (`operator`) and `/status` (`cluster.operator`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OperatorView {
    /// The newest stamp this replica holds (0 before any command).
    pub(crate) seq: u64,
    pub(crate) origin: String,
    /// Pools an operator holds failed over (never one the fleet's verdict moved).
    pub(crate) failed_over: Vec<String>,
    /// Servers drained (by an operator, or by the config).
    pub(crate) drained: Vec<String>,
    /// The stamp of the last command on each pool and server one was given for.
    #[serde(default)]
    pub(crate) stamps: Vec<Stamped>,
}

impl OperatorView {
    /// What the view says of `target`: failed over (a pool) or drained (a server).
    pub(crate) fn says(&self, target: &Subject) -> bool {
        match target {
            Subject::Pool(p) => self.failed_over.contains(p),
            Subject::Server(s) => self.drained.contains(s),
        }
    }
}

/// This replica's stamps: the last command's on each pool and server, and the highest seq
/// seen anywhere.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    stamps: HashMap<Subject, Stamp>,
    seen: u64,
}

impl Ledger {
    /// The stamp a command given on this replica (`me`) gets: one past the highest seen.
    pub(crate) fn next(&mut self, me: &str) -> Stamp {
        self.seen += 1;
        Stamp {
            seq: self.seen,
            origin: me.to_string(),
        }
    }

    /// Notes a seq seen elsewhere (a view, a forwarded command).
    pub(crate) fn see(&mut self, seq: u64) {
        self.seen = self.seen.max(seq);
    }

    /// Whether a command stamped `stamp` on `target` is not older than the last one applied:
    /// an equal stamp is the same command again (idempotent).
    pub(crate) fn admits(&self, target: &Subject, stamp: &Stamp) -> bool {
        self.stamps.get(target).is_none_or(|s| stamp >= s)
    }

    /// The stamp of the last command on `target`.
    pub(crate) fn stamp_of(&self, target: &Subject) -> Option<&Stamp> {
        self.stamps.get(target)
    }

    /// Records `stamp` as the last command on `target`.
    pub(crate) fn record(&mut self, target: Subject, stamp: Stamp) {
        self.see(stamp.seq);
        self.stamps.insert(target, stamp);
    }

    /// The newest stamp held, or seq 0 from `me`.
    pub(crate) fn newest(&self, me: &str) -> Stamp {
        self.stamps.values().max().cloned().unwrap_or(Stamp {
            seq: 0,
            origin: me.to_string(),
        })
    }

    /// Every stamp, pools then servers, each by name (a stable order for the view).
    pub(crate) fn stamped(&self) -> Vec<Stamped> {
        let mut all: Vec<Stamped> = self
            .stamps
            .iter()
            .map(|(t, s)| {
                let (kind, name) = match t {
                    Subject::Pool(p) => ("pool", p),
                    Subject::Server(id) => ("server", id),
                };
                Stamped {
                    kind: kind.into(),
                    name: name.clone(),
                    seq: s.seq,
                    origin: s.origin.clone(),
                }
            })
            .collect();
        all.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        all
    }
}

/// One thing to adopt from a peer's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Adoption {
    pub(crate) target: Subject,
    /// Failed over (a pool) or drained (a server), as the peer says.
    pub(crate) on: bool,
    pub(crate) stamp: Stamp,
    /// The peer's URL.
    pub(crate) from: String,
}

/// What to adopt from `views` (each peer's URL and operator state): for each pool and server,
/// the newest stamp among the views when it is newer than this replica's, with what that view
/// says of it. Stamps equal to this replica's change nothing; seq 0 never wins (no command).
pub(crate) fn adoptions<'a>(
    ledger: &Ledger,
    views: impl IntoIterator<Item = (&'a str, &'a OperatorView)>,
) -> Vec<Adoption> {
    let mut best: HashMap<Subject, Adoption> = HashMap::new();
    for (url, view) in views {
        for s in &view.stamps {
            let Some(target) = s.target() else { continue };
            let stamp = Stamp {
                seq: s.seq,
                origin: s.origin.clone(),
            };
            if stamp.seq == 0 || ledger.stamp_of(&target).is_some_and(|own| &stamp <= own) {
                continue;
            }
            if best.get(&target).is_some_and(|b| b.stamp >= stamp) {
                continue;
            }
            let on = view.says(&target);
            best.insert(
                target.clone(),
                Adoption {
                    target,
                    on,
                    stamp,
                    from: url.to_string(),
                },
            );
        }
    }
    let mut out: Vec<Adoption> = best.into_values().collect();
    out.sort_by(|a, b| a.stamp.cmp(&b.stamp));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "http://127.0.0.1:9061";
    const R2: &str = "http://127.0.0.1:9062";
    const R3: &str = "http://127.0.0.1:9063";

    fn stamp(seq: u64, origin: &str) -> Stamp {
        Stamp {
            seq,
            origin: origin.into(),
        }
    }

    fn pool(name: &str) -> Subject {
        Subject::Pool(name.into())
    }

    fn server(id: &str) -> Subject {
        Subject::Server(id.into())
    }

    /// A view holding `ledger`'s stamps, with these pools failed over and servers drained.
    fn view(ledger: &Ledger, me: &str, failed_over: &[&str], drained: &[&str]) -> OperatorView {
        let newest = ledger.newest(me);
        OperatorView {
            seq: newest.seq,
            origin: newest.origin,
            failed_over: failed_over.iter().map(|s| s.to_string()).collect(),
            drained: drained.iter().map(|s| s.to_string()).collect(),
            stamps: ledger.stamped(),
        }
    }

    #[test]
    fn a_local_command_is_one_past_the_highest_seq_seen_with_the_url_breaking_ties() {
        let mut l = Ledger::default();
        assert_eq!(l.next(R1), stamp(1, R1));
        l.see(7);
        assert_eq!(l.next(R1), stamp(8, R1), "Lamport: past what a peer showed");
        l.see(3);
        assert_eq!(l.next(R1), stamp(9, R1), "an older seq changes nothing");
        assert!(stamp(9, R2) > stamp(9, R1), "same seq: the URL decides");
        assert!(stamp(10, R1) > stamp(9, R2), "the seq decides first");
    }

    #[test]
    fn a_newer_stamp_is_adopted_an_equal_or_older_one_is_not() {
        let mut r1 = Ledger::default();
        let s = r1.next(R1);
        r1.record(pool("a"), s.clone());
        let theirs = view(&r1, R1, &["a"], &[]);

        // A replica that never saw a command (it just started: seq 0) adopts it.
        let fresh = Ledger::default();
        assert_eq!(
            adoptions(&fresh, [(R1, &theirs)]),
            vec![Adoption {
                target: pool("a"),
                on: true,
                stamp: s.clone(),
                from: R1.into()
            }]
        );
        // One that applied it (forwarded: same stamp) has nothing to adopt.
        let mut same = Ledger::default();
        same.record(pool("a"), s);
        assert!(adoptions(&same, [(R1, &theirs)]).is_empty());
        // One holding a newer command on the pool keeps it.
        let mut newer = Ledger::default();
        newer.record(pool("a"), stamp(2, R2));
        assert!(adoptions(&newer, [(R1, &theirs)]).is_empty());
        assert!(
            !newer.admits(&pool("a"), &stamp(1, R1)),
            "a late forward is refused"
        );
        assert!(
            newer.admits(&pool("a"), &stamp(2, R2)),
            "the same one again is fine"
        );
    }

    #[test]
    fn a_failback_is_adopted_as_the_end_of_the_forced_failover() {
        // r1 failed pool a over (seq 1) and back (seq 2); r3 saw only the failover.
        let mut r1 = Ledger::default();
        let first = r1.next(R1);
        r1.record(pool("a"), first.clone());
        let back = r1.next(R1);
        r1.record(pool("a"), back.clone());
        let mut r3 = Ledger::default();
        r3.record(pool("a"), first);
        let got = adoptions(&r3, [(R1, &view(&r1, R1, &[], &[]))]);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].on, &got[0].stamp), (false, &back), "failed back");
    }

    #[test]
    fn commands_on_two_replicas_at_once_are_both_kept() {
        // r1 fails pool a over while r2 drains server b1, each stamped seq 1.
        let mut r1 = Ledger::default();
        let s1 = r1.next(R1);
        r1.record(pool("a"), s1.clone());
        let mut r2 = Ledger::default();
        let s2 = r2.next(R2);
        r2.record(server("b1"), s2.clone());
        let v1 = view(&r1, R1, &["a"], &[]);
        let v2 = view(&r2, R2, &[], &["b1"]);
        // r3 hears both: it takes each.
        let r3 = Ledger::default();
        let got = adoptions(&r3, [(R1, &v1), (R2, &v2)]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got
            .iter()
            .any(|a| a.target == pool("a") && a.on && a.from == R1));
        assert!(got
            .iter()
            .any(|a| a.target == server("b1") && a.on && a.from == R2));
        // Each of r1 and r2 takes the other's, and neither undoes its own.
        assert_eq!(adoptions(&r1, [(R2, &v2)]).len(), 1);
        assert_eq!(adoptions(&r2, [(R1, &v1)])[0].target, pool("a"));
    }

    #[test]
    fn a_replica_that_missed_one_command_and_got_the_next_catches_up_on_the_first() {
        // r3 was down for the failover (seq 1, r1); back, it got the drain forwarded (seq 2, r2).
        let mut r1 = Ledger::default();
        r1.record(pool("a"), stamp(1, R1));
        r1.record(server("a1"), stamp(2, R2));
        let mut r3 = Ledger::default();
        r3.record(server("a1"), stamp(2, R2));
        let got = adoptions(&r3, [(R1, &view(&r1, R1, &["a"], &["a1"]))]);
        assert_eq!(
            got,
            vec![Adoption {
                target: pool("a"),
                on: true,
                stamp: stamp(1, R1),
                from: R1.into()
            }]
        );
    }

    #[test]
    fn the_newest_of_several_views_wins_and_ties_go_to_the_higher_url() {
        let mut old = Ledger::default();
        old.record(pool("a"), stamp(4, R3));
        let mut new = Ledger::default();
        new.record(pool("a"), stamp(5, R1));
        let mut tie = Ledger::default();
        tie.record(pool("a"), stamp(5, R2));
        let views = [
            (R3, view(&old, R3, &["a"], &[])),
            (R1, view(&new, R1, &[], &[])),
            (R2, view(&tie, R2, &["a"], &[])),
        ];
        let got = adoptions(&Ledger::default(), views.iter().map(|(u, v)| (*u, v)));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].on, got[0].from.as_str()), (true, R2));
    }

    #[test]
    fn seq_zero_and_unknown_kinds_are_never_adopted() {
        let v = OperatorView {
            seq: 0,
            origin: R1.into(),
            failed_over: vec!["a".into()],
            drained: vec![],
            stamps: vec![
                Stamped {
                    kind: "pool".into(),
                    name: "a".into(),
                    seq: 0,
                    origin: R1.into(),
                },
                Stamped {
                    kind: "route".into(),
                    name: "x".into(),
                    seq: 9,
                    origin: R1.into(),
                },
            ],
        };
        assert!(adoptions(&Ledger::default(), [(R1, &v)]).is_empty());
    }
}
