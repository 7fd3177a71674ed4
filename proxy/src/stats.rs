//! Wire-path metrics, resolved ahead of time — requests, relayed responses and replies once per
//! routing table ([`Counters`]), drops once per worker ([`drop_counters`]) — so that counting a
//! message is one atomic add: no label formatting, no registry lookup, no allocation. Every
//! label value comes from a fixed list or the config — never a user, a Call-ID or a client
//! address.
//!
//! The core never counts: its outcome carries a [`Count`] (what a successful send stands for)
//! and the I/O shell hands it to [`Counters::count`] once the kernel has taken the datagram.
//! This module knows nothing of the core; the core's vocabulary (drop reasons, refusals) comes
//! here as label strings and indices.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::Counter;

/// Methods counted by name; anything else counts as `other`.
pub(crate) const METHODS: [&str; 16] = [
    "REGISTER",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "SUBSCRIBE",
    "NOTIFY",
    "BENOTIFY",
    "SERVICE",
    "MESSAGE",
    "INFO",
    "REFER",
    "PRACK",
    "UPDATE",
    "PUBLISH",
];

/// Response classes counted by name; anything else counts as `other`.
const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "other"];

/// The codes of siplb's own answers; anything else counts as `other`.
const REPLY_CODES: [&str; 10] = [
    "400", "403", "404", "416", "420", "483", "503", "505", "513", "other",
];

/// [`METHODS`]' indices of the requests no response answers.
const ACK: usize = 2;
const BENOTIFY: usize = 8;

/// The index of `method` in [`METHODS`], or `METHODS.len()` for `other`.
pub(crate) fn method_index(method: &[u8]) -> usize {
    METHODS
        .iter()
        .position(|m| m.as_bytes() == method)
        .unwrap_or(METHODS.len())
}

/// What one datagram the kernel took stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A request forwarded to pool `pool`, method by [`method_index`]; `server` is the index in
    /// that pool of the server it went to (`None` for a request a server sent towards a client).
    Request {
        pool: usize,
        method: usize,
        server: Option<usize>,
    },
    /// A response relayed towards a client; `from` is the `(pool, server)` it came from when
    /// that is a configured server.
    Response {
        code: u16,
        from: Option<(usize, usize)>,
    },
    /// An answer siplb gave itself.
    Reply { code: u16 },
}

/// The response classes a server's answers are counted by.
pub(crate) const SERVER_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

/// One server's traffic: requests forwarded to it and its responses relayed, by class. Plain
/// atomics, one add per message; a new routing table takes over the cells of the servers the
/// previous one had (same pool, same id), so counts survive health changes and reloads.
/// `/metrics` gets them by [`Counters::publish`] when it is scraped (`siplb_forwarded_total`,
/// `siplb_server_responses_total`), `/status` reads them.
#[derive(Debug)]
pub(crate) struct ServerCells {
    pool: Arc<str>,
    server: Arc<str>,
    forwarded: AtomicU64,
    responses: [AtomicU64; 6],
    /// Requests that wait for an answer (all but ACK and BENOTIFY) forwarded since the
    /// server's last response: how the supervisor hears a server that swallows requests.
    unanswered: AtomicU64,
    /// What [`Counters::publish`] handed to the recorder so far: forwarded, then the classes.
    published: [AtomicU64; 7],
    /// The recorder's counters for these, resolved at the first publish.
    handles: OnceLock<[Counter; 7]>,
}

/// What one server's cells say now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub(crate) forwarded: u64,
    /// By [`SERVER_CLASSES`].
    pub(crate) responses: [u64; 6],
}

/// What `/status` says of one server's traffic (filled in by the ops endpoint).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct TrafficStatus {
    /// Requests forwarded to the server since siplb started (or since it joined its pool).
    pub(crate) forwarded: u64,
    /// Its responses relayed, by class (`1xx` … `6xx`).
    pub(crate) responses: std::collections::BTreeMap<&'static str, u64>,
    /// Requests forwarded per second over the last few seconds; `None` until the ops endpoint
    /// has a sample that old.
    pub(crate) rate: Option<f64>,
    /// The server's part of what its pool was forwarded over the same seconds (0 to 1);
    /// `None` when the pool was forwarded nothing.
    pub(crate) share: Option<f64>,
    /// Its weight over the weights of the pool's servers taking users now (up, not drained);
    /// 0 for a server not taking users.
    pub(crate) expected_share: f64,
}

impl ServerCells {
    /// Cells at zero for server `id` of pool `pool`.
    pub(crate) fn new(pool: &str, id: &str) -> Self {
        ServerCells {
            pool: Arc::from(pool),
            server: Arc::from(id),
            forwarded: AtomicU64::new(0),
            responses: Default::default(),
            unanswered: AtomicU64::new(0),
            published: Default::default(),
            handles: OnceLock::new(),
        }
    }

    /// The pool's name and the server's id.
    pub(crate) fn labels(&self) -> (&Arc<str>, &Arc<str>) {
        (&self.pool, &self.server)
    }

    /// Requests waiting for an answer forwarded since the server's last response, and the
    /// responses it sent in all, read together for the supervisor's silence watch.
    pub(crate) fn silence(&self) -> (u64, u64) {
        let unanswered = self.unanswered.load(Ordering::Relaxed);
        let responses = self
            .responses
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum();
        (unanswered, responses)
    }

    /// The counts now.
    pub(crate) fn read(&self) -> Traffic {
        Traffic {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            responses: std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed)),
        }
    }

    /// Hands what was counted since the last publish to the recorder. Concurrent publishers
    /// never count a message twice: each adds only what lies beyond the highest value
    /// published so far.
    fn publish(&self) {
        let handles = self.handles.get_or_init(|| {
            let (pool, server) = (self.pool.to_string(), self.server.to_string());
            std::array::from_fn(|i| match i {
                0 => metrics::counter!("siplb_forwarded_total", "pool" => pool.clone(), "server" => server.clone()),
                _ => metrics::counter!(
                    "siplb_server_responses_total",
                    "pool" => pool.clone(),
                    "server" => server.clone(),
                    "class" => SERVER_CLASSES[i - 1]
                ),
            })
        });
        let now = self.read();
        let values = std::iter::once(now.forwarded).chain(now.responses);
        for ((value, published), handle) in values.zip(&self.published).zip(handles) {
            let before = published.fetch_max(value, Ordering::Relaxed);
            handle.increment(value.saturating_sub(before));
        }
    }
}

/// `siplb_requests_total`, `siplb_responses_total` and `siplb_replies_total`, resolved once,
/// and each server's [`ServerCells`].
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    /// Per pool, per method (`other` last).
    requests: Vec<Vec<Counter>>,
    responses: Vec<Counter>,
    replies: Vec<Counter>,
    /// Per pool, per server, in the order of the table's pools and servers.
    pub(crate) servers: Vec<Vec<Arc<ServerCells>>>,
}

impl Counters {
    /// The counters of a routing table whose pools are named `pools`, in order.
    pub(crate) fn new<'a>(pools: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with(pools, |name, labels| {
            let labels: Vec<metrics::Label> = labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                .collect();
            metrics::counter!(name, labels)
        })
    }

    /// Builds the counters with `make(metric, labels)`.
    fn with<'a>(
        pools: impl IntoIterator<Item = &'a str>,
        mut make: impl FnMut(&'static str, &[(&'static str, String)]) -> Counter,
    ) -> Self {
        let requests = pools
            .into_iter()
            .map(|pool| {
                METHODS
                    .iter()
                    .copied()
                    .chain(std::iter::once("other"))
                    .map(|m| {
                        make(
                            "siplb_requests_total",
                            &[("method", m.to_string()), ("pool", pool.to_string())],
                        )
                    })
                    .collect()
            })
            .collect();
        let responses = CLASSES
            .iter()
            .map(|c| make("siplb_responses_total", &[("class", c.to_string())]))
            .collect();
        let replies = REPLY_CODES
            .iter()
            .map(|c| make("siplb_replies_total", &[("code", c.to_string())]))
            .collect();
        Counters {
            requests,
            responses,
            replies,
            servers: Vec::new(),
        }
    }

    /// The same counters with `servers` (per pool, per server) as the servers' cells.
    pub(crate) fn with_servers(mut self, servers: Vec<Vec<Arc<ServerCells>>>) -> Self {
        self.servers = servers;
        self
    }

    fn cells(&self, pool: usize, server: usize) -> Option<&ServerCells> {
        self.servers
            .get(pool)
            .and_then(|p| p.get(server))
            .map(|c| &**c)
    }

    /// Hands every server's counts to the recorder (`siplb_forwarded_total`,
    /// `siplb_server_responses_total`): what `/metrics` does before it renders.
    pub(crate) fn publish(&self) {
        for cells in self.servers.iter().flatten() {
            cells.publish();
        }
    }

    /// Counts one datagram the kernel took.
    pub(crate) fn count(&self, c: Count) {
        let counter = match c {
            Count::Request {
                pool,
                method,
                server,
            } => {
                if let Some(cells) = server.and_then(|s| self.cells(pool, s)) {
                    cells.forwarded.fetch_add(1, Ordering::Relaxed);
                    if method != ACK && method != BENOTIFY {
                        cells.unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.requests.get(pool).and_then(|p| p.get(method))
            }
            Count::Response { code, from } => {
                let class = usize::from(code / 100)
                    .wrapping_sub(1)
                    .min(CLASSES.len() - 1);
                if let Some(cells) = from.and_then(|(p, s)| self.cells(p, s)) {
                    if let Some(cell) = cells.responses.get(class) {
                        cell.fetch_add(1, Ordering::Relaxed);
                    }
                    cells.unanswered.store(0, Ordering::Relaxed);
                }
                self.responses.get(class)
            }
            Count::Reply { code } => {
                let text = [code / 100, code / 10 % 10, code % 10].map(|d| b'0' + d as u8);
                let at = REPLY_CODES
                    .iter()
                    .position(|c| c.as_bytes() == text)
                    .unwrap_or(REPLY_CODES.len() - 1);
                self.replies.get(at)
            }
        };
        if let Some(counter) = counter {
            counter.increment(1);
        }
    }
}

/// `siplb_drops_total{reason}`, one counter per label of `reasons`, resolved once and
/// registered at 0.
pub(crate) fn drop_counters(reasons: &[&'static str]) -> Vec<Counter> {
    reasons
        .iter()
        .map(|&r| {
            let c = metrics::counter!("siplb_drops_total", "reason" => r);
            c.increment(0);
            c
        })
        .collect()
}

/// Registers every metric siplb exports, with its HELP text; counters start at 0 so that rates
/// and alerts work before the first event. (Drop counters are registered by the workers, which
/// know the reasons.)
pub(crate) fn register() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "siplb_requests_total",
        "Requests forwarded (sends the kernel took), by method and by the pool they went to"
    );
    describe_counter!(
        "siplb_responses_total",
        "Responses relayed back towards clients (sends the kernel took), by status class"
    );
    describe_counter!(
        "siplb_forwarded_total",
        "Requests forwarded to each server (sends the kernel took or a connection queued), by \
         pool and server id"
    );
    describe_counter!(
        "siplb_server_responses_total",
        "Responses from each server relayed back towards clients, by pool, server id and status \
         class"
    );
    describe_counter!(
        "siplb_replies_total",
        "Answers siplb gave itself (sends the kernel took), by status code"
    );
    describe_counter!("siplb_drops_total", "Datagrams not forwarded, by reason");
    describe_counter!("siplb_send_errors_total", "Sends the kernel refused");
    describe_gauge!(
        "siplb_server_up",
        "1 while the server takes users (up, not drained)"
    );
    describe_gauge!(
        "siplb_pool_up",
        "1 while at least min_up of the pool's servers are up"
    );
    describe_gauge!(
        "siplb_pool_failed_over",
        "1 while the pool's users are served by its pair"
    );
    describe_histogram!(
        "siplb_probe_rtt_seconds",
        Unit::Seconds,
        "Round-trip time of successful probes"
    );
    describe_counter!(
        "siplb_table_swaps_total",
        "Routing tables built and swapped in"
    );
    describe_histogram!(
        "siplb_table_build_seconds",
        Unit::Seconds,
        "Time the health supervisor spent building each routing table it swapped in (config and \
         health frozen into one table; probe results and commands wait meanwhile)"
    );
    describe_counter!("siplb_config_reloads_total", "Config reloads, by result");
    describe_counter!(
        "siplb_passive_signals_shed_total",
        "Passive health signals (a 503 from a server, an ICMP error on a forward) dropped because \
         the health supervisor had a full queue of them; probe results are never dropped"
    );
    describe_gauge!(
        "siplb_connections",
        "Client connections open, by TCP or TLS listener"
    );
    describe_gauge!(
        "siplb_backend_connections",
        "Connections open from siplb to TCP and TLS servers, by transport"
    );
    describe_gauge!(
        "siplb_flows",
        "Client flows (TCP and TLS client connections) open"
    );
    describe_counter!(
        "siplb_connection_refusals_total",
        "Client connections refused or cut, by listener and reason (max, max_per_ip, idle, \
         header_timeout, handshake_timeout, handshake_failed, too_large, bad_content_length)"
    );
    describe_counter!(
        "siplb_connection_queue_full_total",
        "Messages dropped because the connection they were for had a full send queue"
    );
    for result in ["ok", "error"] {
        metrics::counter!("siplb_config_reloads_total", "result" => result).increment(0);
    }
    metrics::counter!("siplb_table_swaps_total").increment(0);
    metrics::counter!("siplb_send_errors_total").increment(0);
    metrics::counter!("siplb_passive_signals_shed_total").increment(0);
}

/// How often the health supervisor publishes its gauges even when nothing changed. The exporter
/// forgets a gauge nobody refreshed for three of these, which is how a server or pool removed by
/// a reload leaves `/metrics`.
pub(crate) const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Installs the Prometheus recorder for the whole process, registers every metric ([`register`])
/// and keeps histograms trimmed. Call once, before the proxy starts, inside the runtime.
pub(crate) fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_REFRESH * 3))
        .set_buckets_for_metric(
            Matcher::Full("siplb_probe_rtt_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("siplb_table_build_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        )?
        .install_recorder()?;
    register();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Counters whose values a test can read: `metric{labels}` → value.
    pub(crate) struct Probe {
        cells: HashMap<String, Arc<AtomicU64>>,
    }

    impl Probe {
        pub(crate) fn get(&self, key: &str) -> u64 {
            self.cells
                .get(key)
                .map_or(u64::MAX, |c| c.load(Ordering::Relaxed))
        }

        pub(crate) fn total(&self) -> u64 {
            self.cells.values().map(|c| c.load(Ordering::Relaxed)).sum()
        }
    }

    /// Counters for `pools` backed by atomics a test can read.
    pub(crate) fn probed<'a>(pools: impl IntoIterator<Item = &'a str>) -> (Counters, Probe) {
        let mut cells = HashMap::new();
        let counters = Counters::with(pools, |name, labels| {
            let key = format!(
                "{name}{{{}}}",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let cell = Arc::new(AtomicU64::new(0));
            cells.insert(key, cell.clone());
            Counter::from_arc(cell)
        });
        (counters, Probe { cells })
    }

    #[test]
    fn methods_map_to_a_bounded_set() {
        assert_eq!(METHODS[method_index(b"REGISTER")], "REGISTER");
        assert_eq!(
            method_index(b"register"),
            METHODS.len(),
            "methods are case-sensitive"
        );
        assert_eq!(method_index(b"X-ANYTHING"), METHODS.len());
    }

    #[test]
    fn each_count_lands_on_its_labels() {
        let (c, p) = probed(["fe", "med"]);
        c.count(Count::Request {
            pool: 1,
            method: method_index(b"INVITE"),
            server: None,
        });
        c.count(Count::Request {
            pool: 0,
            method: method_index(b"X-FOO"),
            server: None,
        });
        c.count(Count::Response {
            code: 180,
            from: None,
        });
        c.count(Count::Response {
            code: 699,
            from: None,
        });
        c.count(Count::Response {
            code: 999,
            from: None,
        });
        c.count(Count::Reply { code: 420 });
        c.count(Count::Reply { code: 299 });
        assert_eq!(p.get("siplb_requests_total{method=INVITE,pool=med}"), 1);
        assert_eq!(p.get("siplb_requests_total{method=other,pool=fe}"), 1);
        assert_eq!(p.get("siplb_responses_total{class=1xx}"), 1);
        assert_eq!(p.get("siplb_responses_total{class=6xx}"), 1);
        assert_eq!(p.get("siplb_responses_total{class=other}"), 1);
        assert_eq!(p.get("siplb_replies_total{code=420}"), 1);
        assert_eq!(p.get("siplb_replies_total{code=other}"), 1);
        assert_eq!(p.total(), 7);
    }

    #[test]
    fn each_server_counts_what_went_to_it_and_what_came_from_it() {
        let (c, p) = probed(["fe", "med"]);
        let cells = |pool: &str, ids: &[&str]| -> Vec<Arc<ServerCells>> {
            ids.iter()
                .map(|id| Arc::new(ServerCells::new(pool, id)))
                .collect()
        };
        let c = c.with_servers(vec![cells("fe", &["fe1", "fe2"]), cells("med", &["med1"])]);
        let invite = method_index(b"INVITE");
        for server in [Some(1), Some(1), Some(0), None] {
            c.count(Count::Request {
                pool: 0,
                method: invite,
                server,
            });
        }
        // An index no table has (a stale count) counts nowhere per server.
        c.count(Count::Request {
            pool: 1,
            method: invite,
            server: Some(7),
        });
        for (code, from) in [
            (200, Some((0, 1))),
            (180, Some((0, 1))),
            (503, Some((1, 0))),
            (999, Some((1, 0))),
            (200, None),
        ] {
            c.count(Count::Response { code, from });
        }
        let read = |p: usize, s: usize| c.servers[p][s].read();
        assert_eq!(read(0, 0).forwarded, 1);
        assert_eq!(read(0, 1).forwarded, 2);
        assert_eq!(read(1, 0).forwarded, 0);
        assert_eq!(read(0, 1).responses, [1, 1, 0, 0, 0, 0]);
        assert_eq!(
            read(1, 0).responses,
            [0, 0, 0, 0, 1, 0],
            "a code past 6xx counts in no class of a server"
        );
        assert_eq!(read(0, 0).responses, [0; 6]);
        assert_eq!(c.servers[0][1].labels().1.as_ref(), "fe2");
        // The pool and class counters count as before.
        assert_eq!(p.get("siplb_requests_total{method=INVITE,pool=fe}"), 4);
        assert_eq!(p.get("siplb_requests_total{method=INVITE,pool=med}"), 1);
        assert_eq!(p.get("siplb_responses_total{class=2xx}"), 2);
        assert_eq!(p.get("siplb_responses_total{class=other}"), 1);
    }

    #[test]
    fn a_server_s_unanswered_count_runs_from_its_last_response_and_skips_ack_and_benotify() {
        assert_eq!(METHODS[ACK], "ACK");
        assert_eq!(METHODS[BENOTIFY], "BENOTIFY");
        let (c, _) = probed(["fe"]);
        let c = c.with_servers(vec![vec![Arc::new(ServerCells::new("fe", "fe1"))]]);
        let send = |m: &[u8]| {
            c.count(Count::Request {
                pool: 0,
                method: method_index(m),
                server: Some(0),
            })
        };
        for m in [&b"INVITE"[..], b"ACK", b"BENOTIFY", b"REGISTER", b"SERVICE"] {
            send(m);
        }
        assert_eq!(
            c.servers[0][0].silence(),
            (3, 0),
            "ACK and BENOTIFY wait for nothing"
        );
        c.count(Count::Response {
            code: 180,
            from: Some((0, 0)),
        });
        assert_eq!(c.servers[0][0].silence(), (0, 1), "any answer ends the run");
        send(b"BYE");
        assert_eq!(c.servers[0][0].silence(), (1, 1));
    }
}
