//! The recent events an operator wants to read first: a server's health changing, a pool
//! failing over or back, a drain or undrain, a config reload applied or refused, a DNS answer
//! changing or failing — each with its reason. `/status` and the status page show the last [`KEEP`] of them, newest first.
//!
//! [`Events`] is a bounded ring behind a lock. Events are rare (a few per health change or
//! operator command, never per message), so the lock costs nothing that matters; the wire path
//! never records one.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

/// How many events the ring keeps.
pub(crate) const KEEP: usize = 50;

/// What kind of thing happened. Serialised in lower case (`health`, `failover`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A server went up or down (probes, or a passive signal such as a 503).
    Health,
    /// A pool's users moved to its pair.
    Failover,
    /// A pool's users went home.
    Failback,
    /// A server was taken out of hashing.
    Drain,
    /// A drained server was put back.
    Undrain,
    /// A config reload was applied or refused.
    Reload,
    /// A DNS name's answer changed, or the name stopped or started resolving again.
    Dns,
}

impl Kind {
    /// The name `/status` gives it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Health => "health",
            Kind::Failover => "failover",
            Kind::Failback => "failback",
            Kind::Drain => "drain",
            Kind::Undrain => "undrain",
            Kind::Reload => "reload",
            Kind::Dns => "dns",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Event {
    /// When it happened, RFC 3339 UTC.
    pub(crate) at: String,
    pub(crate) kind: Kind,
    /// The pool it concerns (a server's pool for a server event), when one.
    pub(crate) pool: Option<String>,
    /// The server it concerns (its id), when one.
    pub(crate) server: Option<String>,
    /// What happened and why.
    pub(crate) message: String,
}

impl Event {
    /// An event of `kind` happening now.
    pub(crate) fn now(kind: Kind, message: impl Into<String>) -> Event {
        Event {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
            pool: None,
            server: None,
            message: message.into(),
        }
    }

    /// The same event, about pool `pool`.
    pub(crate) fn pool(mut self, pool: &str) -> Event {
        self.pool = Some(pool.to_string());
        self
    }

    /// The same event, about server `id`.
    pub(crate) fn server(mut self, id: &str) -> Event {
        self.server = Some(id.to_string());
        self
    }
}

/// The last [`KEEP`] events.
#[derive(Debug, Default)]
pub(crate) struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Events {
    /// Keeps `event`, forgetting the oldest when [`KEEP`] are kept already.
    pub(crate) fn record(&self, event: Event) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The events kept, newest first.
    pub(crate) fn recent(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_fifty_newest_first() {
        let events = Events::default();
        for i in 0..(KEEP + 23) {
            events.record(Event::now(Kind::Health, format!("event {i}")).server("s1"));
        }
        let recent = events.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(
            recent[0].message,
            format!("event {}", KEEP + 22),
            "newest first"
        );
        assert_eq!(recent[KEEP - 1].message, "event 23", "the oldest kept");
        assert!(recent.iter().all(|e| e.server.as_deref() == Some("s1")));
    }

    #[test]
    fn events_serialise_with_their_kind_in_lower_case() {
        let e = Event::now(Kind::Failover, "pool down, pair up").pool("fe-dc1");
        let json = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(json["kind"], "failover");
        assert_eq!(json["kind"], e.kind.as_str());
        assert_eq!(json["pool"], "fe-dc1");
        assert_eq!(json["server"], serde_json::Value::Null);
        let at = json["at"].as_str().unwrap_or_default();
        assert!(humantime::parse_rfc3339(at).is_ok(), "{at:?} is RFC 3339");
    }
}
