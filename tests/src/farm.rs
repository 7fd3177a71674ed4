//! A set of backends standing for one or more pools, and the questions asked of a load run:
//! which server got which user, and how evenly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::backend::{Backend, Behaviour};
use crate::client::Client;
use crate::config::Server;
use crate::request::Request;
use crate::sip::Msg;

/// How many requests a load run keeps outstanding.
pub const WINDOW: usize = 200;

/// The longest a load run may take.
pub const LOAD_WITHIN: Duration = Duration::from_secs(60);

/// Backends `<prefix>1 .. <prefix>n`.
pub struct Farm {
    pub backends: Vec<Backend>,
}

impl Farm {
    pub fn start(prefix: &str, n: usize, behaviour: Behaviour) -> Farm {
        Farm {
            backends: (1..=n)
                .map(|i| Backend::start(&format!("{prefix}{i}"), behaviour))
                .collect(),
        }
    }

    /// The servers entries of a pool made of every backend.
    pub fn servers(&self) -> Vec<Server> {
        self.backends.iter().map(Server::of).collect()
    }

    pub fn get(&self, id: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.id() == id)
            .unwrap_or_else(|| panic!("no backend {id}"))
    }

    /// Which backend received requests through `siplb` for each key (`key_of` a request, e.g.
    /// [`Msg::default_key`]). Panics if one key reached two backends through the same siplb:
    /// that would break stickiness.
    pub fn assignment(
        &self,
        siplb: SocketAddr,
        key_of: impl Fn(&Msg) -> Option<String>,
    ) -> BTreeMap<String, String> {
        let through = siplb.to_string();
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for b in &self.backends {
            for d in b.requests() {
                let Some(m) = d.msg() else { continue };
                if m.top_via_sent_by().as_deref() != Some(through.as_str()) {
                    continue;
                }
                let Some(key) = key_of(&m) else { continue };
                if let Some(other) = map.insert(key.clone(), b.id().to_string()) {
                    assert_eq!(
                        other,
                        b.id(),
                        "key {key} reached both {other} and {} through {siplb}",
                        b.id()
                    );
                }
            }
        }
        map
    }

    /// [`Farm::assignment`] by the default key (To AOR for REGISTER, From AOR otherwise).
    pub fn users(&self, siplb: SocketAddr) -> BTreeMap<String, String> {
        self.assignment(siplb, Msg::default_key)
    }

    /// The backend holding `call_id`'s requests; panics unless exactly one has them.
    pub fn holder(&self, call_id: &str) -> &Backend {
        let holders: Vec<&Backend> = self
            .backends
            .iter()
            .filter(|b| !b.with_call_id(call_id).is_empty())
            .collect();
        match holders.as_slice() {
            [one] => one,
            _ => panic!(
                "Call-ID {call_id} reached {} backends: {:?}",
                holders.len(),
                holders.iter().map(|b| b.id()).collect::<Vec<_>>()
            ),
        }
    }
}

/// `n` users `user00000@<domain>`, ...
pub fn users(n: usize, domain: &str) -> Vec<String> {
    (0..n).map(|i| format!("user{i:05}@{domain}")).collect()
}

/// Registers every AOR through `siplb` (flow-controlled) and asserts each got a 200.
pub fn register_all(client: &mut Client, siplb: SocketAddr, aors: &[String]) {
    let reqs: Vec<Request> = aors.iter().map(|a| Request::register(a)).collect();
    let answers = client.transact_many(siplb, &reqs, WINDOW, LOAD_WITHIN);
    let failed: Vec<String> = answers
        .values()
        .filter(|m| m.status() != Some(200))
        .map(|m| m.start.clone())
        .take(5)
        .collect();
    assert!(failed.is_empty(), "non-200 answers, e.g. {failed:?}");
}

/// How many keys each server got.
pub fn tally(assignment: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for server in assignment.values() {
        *counts.entry(server.clone()).or_insert(0) += 1;
    }
    counts
}

/// Asserts `got` is within `tolerance` (a fraction, e.g. 0.10) of `expected`.
pub fn assert_near(what: &str, got: usize, expected: f64, tolerance: f64) {
    let off = (got as f64 - expected).abs() / expected;
    assert!(
        off <= tolerance,
        "{what}: got {got}, expected {expected:.0} ± {:.0}% (off by {:.1}%)",
        tolerance * 100.0,
        off * 100.0
    );
}

impl Farm {
    /// Backends for several pools at once: for `[("a", 2), ("b", 2)]`, `a1 a2 b1 b2`.
    pub fn pools(pools: &[(&str, usize)], behaviour: Behaviour) -> Farm {
        Farm {
            backends: pools
                .iter()
                .flat_map(|(prefix, n)| Farm::start(prefix, *n, behaviour).backends)
                .collect(),
        }
    }

    /// The servers entries of the backends whose ids start with `prefix` (one pool of a farm
    /// made by [`Farm::pools`]).
    pub fn servers_of(&self, prefix: &str) -> Vec<Server> {
        self.backends
            .iter()
            .filter(|b| b.id().starts_with(prefix))
            .map(Server::of)
            .collect()
    }

    /// The backend `id`, to stop, restart or reconfigure it.
    pub fn get_mut(&mut self, id: &str) -> &mut Backend {
        self.backends
            .iter_mut()
            .find(|b| b.id() == id)
            .unwrap_or_else(|| panic!("no backend {id}"))
    }
}
