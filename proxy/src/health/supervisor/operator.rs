//! Operator commands in the supervisor, as the fleet shares them
//! ([`crate::cluster::operator`]): each command applied is stamped, a forwarded one with its
//! origin's stamp; this replica's operator state goes out in its view; and what a peer's view
//! holds that this replica missed is adopted through the same path as an admin command, with an
//! event that says from which peer.

use std::time::Instant;

use healthcheck::ServerState;

use super::Supervisor;
use crate::cluster::operator::{adoptions, Subject};
use crate::cluster::{self, Exchange, OperatorView, Round};
use crate::health::{Applied, Op, OpError, Source};

impl Supervisor {
    /// Applies an operator command from `source` and stamps it: a local one one past the
    /// highest seq seen, a forwarded one with its origin's stamp (refused when an even newer
    /// command on the same pool or server was applied: it stands).
    pub(super) fn command(
        &mut self,
        op: Op,
        source: Source,
        now: Instant,
    ) -> Result<Applied, OpError> {
        let target = op.target();
        let (forwarded, note) = match source {
            Source::Local => (None, String::new()),
            Source::Forwarded(stamp) => {
                if !self.ledger.admits(&target, &stamp) {
                    let own = self.ledger.stamp_of(&target).cloned().unwrap_or_default();
                    return Err(OpError::Superseded {
                        what: describe(&target),
                        seq: own.seq,
                        origin: own.origin,
                    });
                }
                let note = format!(" (forwarded by {})", stamp.origin);
                (Some(stamp), note)
            }
        };
        let message = self.operate(op, now, &note)?;
        let stamp = match forwarded {
            Some(stamp) => stamp,
            None => self.ledger.next(&cluster::self_url(&self.cfg)),
        };
        self.ledger.record(target, stamp.clone());
        Ok(Applied { message, stamp })
    }

    /// Adopts from `round` every operator command a peer holds with a newer stamp than this
    /// replica's for the same pool or server. True when routing changed.
    pub(super) fn adopt(&mut self, round: &Round, now: Instant) -> bool {
        let views: Vec<(&str, &OperatorView)> = round
            .answers
            .iter()
            .filter(|a| a.result == Exchange::Ok)
            .filter_map(|a| Some((a.url.as_str(), a.view.as_ref()?.operator.as_ref()?)))
            .collect();
        for (_, v) in &views {
            self.ledger.see(v.seq);
        }
        let mut changed = false;
        for a in adoptions(&self.ledger, views) {
            if self.operator_holds(&a.target) != Some(a.on) {
                let op = match (&a.target, a.on) {
                    (Subject::Pool(p), true) => Op::Failover(p.clone()),
                    (Subject::Pool(p), false) => Op::Failback(p.clone()),
                    (Subject::Server(id), true) => Op::Drain(id.clone()),
                    (Subject::Server(id), false) => Op::Undrain(id.clone()),
                };
                let note = format!(" (adopted from {})", a.from);
                match self.operate(op, now, &note) {
                    Ok(answer) => {
                        tracing::info!(peer = %a.from, seq = a.stamp.seq, origin = %a.stamp.origin, answer = %answer, "operator command adopted from a peer");
                        changed = true;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %a.from, seq = a.stamp.seq, error = %e, "operator command held by a peer cannot be applied here");
                    }
                }
            }
            self.ledger.record(a.target, a.stamp);
        }
        changed
    }

    /// What this replica holds of `target`: the pool failed over by an operator, the server
    /// drained; `None` when it knows no such pool or server.
    fn operator_holds(&self, target: &Subject) -> Option<bool> {
        match target {
            Subject::Pool(name) => {
                let i = self.cfg.pools.iter().position(|p| p.name == *name)?;
                Some(self.pools[i].forced())
            }
            Subject::Server(id) => self
                .servers
                .get(id.as_str())
                .map(|e| e.health.state() == ServerState::Drained),
        }
    }

    /// This replica's operator state, for its view and `/status`.
    pub(in crate::health) fn operator_view(&self) -> OperatorView {
        let newest = self.ledger.newest(&cluster::self_url(&self.cfg));
        let failed_over = self
            .cfg
            .pools
            .iter()
            .zip(&self.pools)
            .filter(|(_, f)| f.forced())
            .map(|(p, _)| p.name.clone())
            .collect();
        let drained = self
            .cfg
            .pools
            .iter()
            .flat_map(|p| &p.servers)
            .filter(|s| self.operator_holds(&Subject::Server(s.id.clone())) == Some(true))
            .map(|s| s.id.clone())
            .collect();
        OperatorView {
            seq: newest.seq,
            origin: newest.origin,
            failed_over,
            drained,
            stamps: self.ledger.stamped(),
        }
    }
}

/// `pool "a"`, `server "b1"`.
fn describe(target: &Subject) -> String {
    match target {
        Subject::Pool(p) => format!("pool {p:?}"),
        Subject::Server(id) => format!("server {id:?}"),
    }
}
