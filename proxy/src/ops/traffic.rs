//! Per-server traffic for `/status` and the page: the counts the wire path keeps
//! ([`ServerCells`](crate::stats::ServerCells)), a rate over the last few seconds, each
//! server's share of its pool next to the share its weight asks for.
//!
//! The rate is not computed per message: a ticker of the ops endpoint samples every server's
//! forwarded count once a second ([`Window::sample`]) and keeps the samples of the last
//! [`SPAN`]; a `/status` request compares the counts now with the oldest sample it has.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::health::Status;
use crate::stats::{Counters, TrafficStatus, SERVER_CLASSES};
use crate::table::RoutingTable;

/// How often the ticker samples.
pub(super) const TICK: Duration = Duration::from_secs(1);

/// How far back the rate and the shares look.
pub(super) const SPAN: Duration = Duration::from_secs(5);

/// Every server's forwarded count at one instant, by (pool, server id).
struct Sample {
    at: Instant,
    forwarded: HashMap<(Arc<str>, Arc<str>), u64>,
}

/// The samples of the last [`SPAN`] (and one older, the base of the window).
#[derive(Default)]
pub(super) struct Window {
    samples: Mutex<VecDeque<Sample>>,
}

impl Window {
    /// Samples every server's forwarded count now.
    pub(super) fn sample(&self, counters: &Counters, now: Instant) {
        let forwarded = counters
            .servers
            .iter()
            .flatten()
            .map(|c| {
                let (pool, id) = c.labels();
                ((pool.clone(), id.clone()), c.read().forwarded)
            })
            .collect();
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back(Sample { at: now, forwarded });
        // Keep one sample at least SPAN old: the base of the window.
        while samples
            .get(1)
            .is_some_and(|s| now.saturating_duration_since(s.at) >= SPAN)
        {
            samples.pop_front();
        }
    }

    /// Fills in the traffic of every server of `status` from `table`'s counters now and the
    /// oldest sample.
    pub(super) fn fill(&self, status: &mut Status, table: &RoutingTable, now: Instant) {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let base = samples
            .front()
            .filter(|s| now.saturating_duration_since(s.at) >= TICK / 2);
        for pool in &mut status.pools {
            let Some(pi) = table.pool_index(&pool.name) else {
                continue;
            };
            let tp = &table.pools[pi];
            let taking: u64 = tp
                .servers
                .iter()
                .filter(|s| s.state.takes_traffic())
                .map(|s| u64::from(s.weight))
                .sum();
            // (server index in the table, its counts now, forwarded over the window).
            let rows: Vec<_> = pool
                .servers
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    // The same config made both, so the same place, but for a reload in
                    // between.
                    let si = match tp.servers.get(i) {
                        Some(s) if s.id == st.id => i,
                        _ => tp.servers.iter().position(|s| s.id == st.id)?,
                    };
                    let cells = table.counters.servers.get(pi)?.get(si)?;
                    let now_counts = cells.read();
                    let delta = base.map(|b| {
                        let (p, id) = cells.labels();
                        let before = b
                            .forwarded
                            .get(&(p.clone(), id.clone()))
                            .copied()
                            .unwrap_or(0);
                        now_counts.forwarded.saturating_sub(before)
                    });
                    Some((si, now_counts, delta))
                })
                .collect();
            let pool_delta: Option<u64> =
                base.map(|_| rows.iter().flatten().filter_map(|r| r.2).sum());
            let secs = base.map(|b| now.saturating_duration_since(b.at).as_secs_f64());
            for (st, row) in pool.servers.iter_mut().zip(rows) {
                let Some((si, counts, delta)) = row else {
                    continue;
                };
                let server = &tp.servers[si];
                let expected_share = if server.state.takes_traffic() && taking > 0 {
                    f64::from(server.weight) / taking as f64
                } else {
                    0.0
                };
                let rate = delta.zip(secs).map(|(d, s)| d as f64 / s);
                let share = delta
                    .zip(pool_delta)
                    .filter(|&(_, total)| total > 0)
                    .map(|(d, total)| d as f64 / total as f64);
                st.traffic = Some(TrafficStatus {
                    forwarded: counts.forwarded,
                    responses: SERVER_CLASSES
                        .iter()
                        .copied()
                        .zip(counts.responses)
                        .collect::<BTreeMap<_, _>>(),
                    rate,
                    share,
                    expected_share,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Count;

    const CFG: &str = r#"
[listen]
udp = ["127.0.0.1:5060"]
[[pool]]
name = "fe"
servers = [
  { address = "127.0.0.1:5071", id = "a" },
  { address = "127.0.0.1:5072", id = "b", weight = 3 },
  { address = "127.0.0.1:5073", id = "c", drained = true },
]
[[route]]
pool = "fe"
"#;

    /// What the supervisor would say of `table`'s pools and servers, traffic left out.
    fn status_of(table: &RoutingTable) -> Status {
        use crate::health::{PoolStatus, ServerStatus};
        let pools = table
            .pools
            .iter()
            .map(|p| PoolStatus {
                name: p.name.clone(),
                role: p.role.as_str(),
                pair: None,
                state: "up",
                serving: p.name.clone(),
                mode: "auto",
                operator_failover: false,
                since: String::new(),
                reason: None,
                min_up: 1,
                servers_up: p.up_count(),
                servers: p
                    .servers
                    .iter()
                    .map(|s| ServerStatus {
                        id: s.id.clone(),
                        address: s.address.to_string(),
                        transport: s.transport.as_str(),
                        weight: s.weight,
                        state: s.state.as_str(),
                        since: String::new(),
                        reason: String::new(),
                        last_rtt_ms: None,
                        last_probe: None,
                        traffic: None,
                        out: Default::default(),
                    })
                    .collect(),
            })
            .collect();
        Status {
            table_version: table.version,
            cluster: None,
            pools,
        }
    }

    fn forward(t: &RoutingTable, server: usize, n: usize) {
        for _ in 0..n {
            t.counters.count(Count::Request {
                pool: 0,
                method: 0,
                server: Some(server),
            });
        }
    }

    #[test]
    fn rate_and_share_come_from_the_counts_over_the_window() {
        let cfg = crate::config::parse(std::path::Path::new("t.toml"), CFG).expect("valid");
        let table = RoutingTable::unbound(&cfg, &crate::table::ConfigHealth);
        let status = |window: &Window, now| {
            let mut s = status_of(&table);
            window.fill(&mut s, &table, now);
            s.pools[0]
                .servers
                .iter()
                .map(|s| s.traffic.clone().expect("filled"))
                .collect::<Vec<_>>()
        };
        let window = Window::default();
        let t0 = Instant::now();
        forward(&table, 0, 10);
        let before = status(&window, t0);
        assert_eq!(before[0].forwarded, 10);
        assert_eq!(before[0].rate, None, "no sample yet");
        assert_eq!(before[0].share, None);
        assert_eq!(before[0].expected_share, 0.25);
        assert_eq!(before[1].expected_share, 0.75);
        assert_eq!(before[2].expected_share, 0.0, "drained");

        window.sample(&table.counters, t0);
        forward(&table, 0, 10);
        forward(&table, 1, 30);
        table.counters.count(Count::Response {
            code: 486,
            from: Some((0, 1)),
        });
        let after = status(&window, t0 + Duration::from_secs(2));
        assert_eq!(after[0].forwarded, 20);
        assert_eq!(after[0].rate, Some(5.0));
        assert_eq!(after[1].rate, Some(15.0));
        assert_eq!(after[0].share, Some(0.25));
        assert_eq!(after[1].share, Some(0.75));
        assert_eq!(after[2].share, Some(0.0));
        assert_eq!(after[1].responses["4xx"], 1);
        assert_eq!(after[1].responses.len(), 6);
    }

    #[test]
    fn the_window_keeps_one_sample_older_than_its_span() {
        let window = Window::default();
        let counters = Counters::new(["fe"]);
        let t0 = Instant::now();
        for i in 0..20 {
            window.sample(&counters, t0 + TICK * i);
        }
        let samples = window
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = t0 + TICK * 19;
        assert_eq!(samples.len(), 6, "SPAN / TICK + 1");
        assert!(now.saturating_duration_since(samples[0].at) >= SPAN);
        assert!(now.saturating_duration_since(samples[1].at) < SPAN);
    }
}
