//! The file's config plus the DNS answers → the config the routing table and the probes are
//! built from: every server given by name, every SRV record and every address of a `dns`
//! pool becomes a [`ServerConfig`] with an IP address. A pure function, so that the same file
//! and the same answers give the same servers on every replica.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{first_usable, Answer, Answers, Lookup};
use crate::config::{Config, PoolDns, ServerConfig, Transport};
use crate::table::Local;

/// Weight of an SRV record of weight `w`. HRW has no zero share, and RFC 2782 gives a weight-0
/// record "a very small chance" next to weighted ones: records of weight 1 or more weigh 100
/// times their weight and a weight-0 record weighs 1, so it takes about 1 % of what a weight-1
/// record takes; when every record of a priority has weight 0 they share equally.
pub(crate) fn srv_weight(w: u16) -> u32 {
    match w {
        0 => 1,
        w => u32::from(w) * 100,
    }
}

/// Records one round of lookups in `answers` (its events go to `events`) and, when an answer
/// in use changed, gives `cfg` expanded with the new answers ([`expand`]); `None` when nothing
/// changed.
pub(crate) fn record_round(
    answers: &std::sync::Mutex<Answers>,
    events: &crate::events::Events,
    results: Vec<(Lookup, Result<Answer, String>)>,
    cfg: &Config,
    local: &Local,
) -> Option<Config> {
    let mut answers = answers.lock().unwrap_or_else(|e| e.into_inner());
    let recorded = answers.record(results, std::time::SystemTime::now());
    for event in recorded.events {
        events.record(event);
    }
    recorded.changed.then(|| expand(cfg, &answers, local))
}

/// `cfg` with the servers its names resolve to added to each pool after the servers given by
/// address: named servers in file order, then SRV records (by priority, target, port) or a
/// name's addresses (ascending, IPv4 first). A name never resolved adds nothing yet. A UDP
/// server takes the first address of a family siplb has a UDP listener of (in `local`); an
/// address or id already used by an earlier server is skipped, so two names that resolve to one
/// server make one server.
pub(crate) fn expand(cfg: &Config, answers: &Answers, local: &Local) -> Config {
    let mut out = cfg.clone();
    let mut addresses: HashSet<SocketAddr> = HashSet::new();
    let mut ids: HashSet<String> = HashSet::new();
    for pool in &cfg.pools {
        addresses.extend(pool.servers.iter().map(|s| s.address));
        ids.extend(pool.servers.iter().map(|s| s.id.clone()));
        ids.extend(pool.named.iter().map(|s| s.id.clone()));
    }
    let (v4, v6) = (
        local.udp.iter().any(SocketAddr::is_ipv4),
        local.udp.iter().any(SocketAddr::is_ipv6),
    );
    let reachable = |transport: Transport, a: &SocketAddr| {
        transport != Transport::Udp || (!v4 && !v6) || if a.is_ipv4() { v4 } else { v6 }
    };
    for pool in &mut out.pools {
        let tls_name = |transport: Transport, name: &str| {
            (transport == Transport::Tls && pool.tls.server_name.is_none())
                .then(|| name.to_string())
        };
        let mut added = Vec::new();
        for n in &pool.named {
            let Some(Answer::Host(ips)) = answers.get(&Lookup::Host(n.name.clone())) else {
                continue;
            };
            let Some(address) = first_usable(ips, n.port, |a| reachable(n.transport, a)) else {
                continue;
            };
            if !addresses.insert(address) {
                continue;
            }
            added.push(ServerConfig {
                id: n.id.clone(),
                address,
                transport: n.transport,
                weight: n.weight,
                drained: n.drained,
                server_name: n
                    .server_name
                    .clone()
                    .or_else(|| tls_name(n.transport, &n.name)),
                priority: 0,
            });
        }
        match &pool.dns {
            Some(PoolDns::Srv { name, transport }) => {
                let Some(Answer::Srv(targets)) = answers.get(&Lookup::Srv(name.clone())) else {
                    pool.servers.extend(added);
                    continue;
                };
                for t in targets {
                    let id = format!("{}:{}", t.target, t.port);
                    let found = first_usable(&t.addrs, t.port, |a| reachable(*transport, a));
                    let Some(address) = found else { continue };
                    if ids.contains(&id) || !addresses.insert(address) {
                        continue;
                    }
                    ids.insert(id.clone());
                    added.push(ServerConfig {
                        id,
                        address,
                        transport: *transport,
                        weight: srv_weight(t.weight),
                        drained: false,
                        server_name: tls_name(*transport, &t.target),
                        priority: t.priority,
                    });
                }
            }
            Some(PoolDns::All {
                name,
                port,
                transport,
            }) => {
                if let Some(Answer::Host(ips)) = answers.get(&Lookup::Host(name.clone())) {
                    for &ip in ips {
                        let address = SocketAddr::new(ip, *port);
                        let id = address.to_string();
                        if !reachable(*transport, &address)
                            || ids.contains(&id)
                            || !addresses.insert(address)
                        {
                            continue;
                        }
                        ids.insert(id.clone());
                        added.push(ServerConfig {
                            id,
                            address,
                            transport: *transport,
                            weight: 1,
                            drained: false,
                            server_name: tls_name(*transport, name),
                            priority: 0,
                        });
                    }
                }
            }
            None => {}
        }
        pool.servers.extend(added);
    }
    out
}
