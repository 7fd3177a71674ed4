//! Where users are: a sweep registers every user once and reads, from what the backends
//! received, which server got each; two placements compared say who moved and where to.
//!
//! A placement is `user → server id`. It is taken from the peers' records only (requests
//! received since the sweep began, see [`Farm::mark`]), never from siplb's own view.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::client::Client;
use crate::farm::{self, Farm};

/// `user → server id`.
pub type Placement = BTreeMap<String, String>;

/// Registers every user once through `siplb` (each must get a 200) and returns where each went.
pub fn sweep(farm: &Farm, client: &mut Client, siplb: SocketAddr, users: &[String]) -> Placement {
    let mark = farm.mark();
    farm::register_all(client, siplb, users);
    let placed = farm.users_since(&mark, siplb);
    assert_eq!(
        placed.len(),
        users.len(),
        "every user answered 200 but only {} of {} reached a backend",
        placed.len(),
        users.len()
    );
    placed
}

/// The users whose server differs between `before` and `after`: `user → (was, now)`.
pub fn moved(before: &Placement, after: &Placement) -> BTreeMap<String, (String, String)> {
    before
        .iter()
        .filter_map(|(user, was)| {
            let now = after.get(user)?;
            (now != was).then(|| (user.clone(), (was.clone(), now.clone())))
        })
        .collect()
}

/// The users `placement` puts on any of `servers`.
pub fn users_on(placement: &Placement, servers: &[&str]) -> Vec<String> {
    placement
        .iter()
        .filter(|(_, s)| servers.contains(&s.as_str()))
        .map(|(u, _)| u.clone())
        .collect()
}

/// Asserts `users` are spread evenly over `servers` in `placement`: each server gets its share
/// within `tolerance` (a fraction), and no user is anywhere else.
pub fn assert_spread(
    what: &str,
    placement: &Placement,
    users: &[String],
    servers: &[&str],
    tolerance: f64,
) {
    let mut counts: BTreeMap<&str, usize> = servers.iter().map(|s| (*s, 0)).collect();
    for u in users {
        let s = placement
            .get(u)
            .unwrap_or_else(|| panic!("{what}: user {u} is not placed"));
        match counts.get_mut(s.as_str()) {
            Some(n) => *n += 1,
            None => panic!("{what}: user {u} is on {s}, not on any of {servers:?}"),
        }
    }
    eprintln!("{what}: {counts:?}");
    let share = users.len() as f64 / servers.len() as f64;
    for (s, n) in counts {
        farm::assert_near(&format!("{what}: users on {s}"), n, share, tolerance);
    }
}
