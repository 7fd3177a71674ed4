//! Connection metrics and the connections part of `/status`.
//!
//! Counts are kept in atomics here and copied into the gauges on every change and every
//! [`crate::stats::GAUGE_REFRESH`] (the exporter forgets a gauge nobody refreshed). Label values
//! come from the config (a listener's configured address) or fixed lists, never from a client.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use serde::Serialize;

use crate::config::Transport;
use crate::core::DropReason;

/// How often a listener logs a refusal at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Lets one refusal log line through per [`LOG_EVERY`] (for one listener and reason, [`ListenerStats::refused`]), and says
/// how many refusals went unlogged since the last line. A connection flood is still counted in full
/// (`siplb_connection_refusals_total`); without the gate, 8,000 refusals a second wrote
/// 1.4 MB/s of log lines and doubled the CPU a refusal costs (bench/flood.sh,
/// docs/BENCHMARKS.md "Floods").
struct LogGate {
    started: Instant,
    /// Milliseconds after `started` before which no line is written.
    next_ms: AtomicU64,
    /// Refusals not logged since the last line.
    held: AtomicU64,
}

impl LogGate {
    fn new() -> LogGate {
        LogGate {
            started: Instant::now(),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(unlogged refusals before this one)` when this refusal is to be logged, else
    /// `None` (and it is held for the next line).
    fn pass(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Why a client connection was refused or cut: the `reason` label of
/// `siplb_connection_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `[connections] max` client connections were open.
    Max,
    /// `[connections] max_per_ip` client connections from this IP were open.
    MaxPerIp,
    /// Nothing read for `idle_timeout`.
    Idle,
    /// A started message did not complete its header block within `header_timeout`.
    HeaderTimeout,
    /// The TLS handshake did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// A header block or body over `max_header_bytes` / `max_body_bytes`.
    TooLarge,
    /// A message without a Content-Length, or with one that cannot be read.
    BadContentLength,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::Max,
        Refusal::MaxPerIp,
        Refusal::Idle,
        Refusal::HeaderTimeout,
        Refusal::HandshakeTimeout,
        Refusal::HandshakeFailed,
        Refusal::TooLarge,
        Refusal::BadContentLength,
    ];

    /// The metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::Max => "max",
            Refusal::MaxPerIp => "max_per_ip",
            Refusal::Idle => "idle",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::TooLarge => "too_large",
            Refusal::BadContentLength => "bad_content_length",
        }
    }
}

/// One listener's client connections.
pub(super) struct ListenerStats {
    /// The listener's address as configured (the `listener` label).
    pub(super) label: String,
    pub(super) transport: Transport,
    /// The address actually bound.
    pub(super) bound: std::net::SocketAddr,
    open: AtomicI64,
    gauge: Gauge,
    refusals: Vec<Counter>,
    /// One log gate per refusal reason (the order of `Refusal::ALL`): a flood of one kind
    /// never hides the first line of another.
    gates: Vec<LogGate>,
}

impl ListenerStats {
    pub(super) fn new(
        label: String,
        transport: Transport,
        bound: std::net::SocketAddr,
    ) -> ListenerStats {
        let gauge = metrics::gauge!("siplb_connections", "listener" => label.clone(),
            "transport" => transport.as_str());
        gauge.set(0.0);
        let refusals = Refusal::ALL
            .iter()
            .map(|r| {
                let c = metrics::counter!("siplb_connection_refusals_total",
                    "listener" => label.clone(), "reason" => r.as_str());
                c.increment(0);
                c
            })
            .collect();
        ListenerStats {
            label,
            transport,
            bound,
            open: AtomicI64::new(0),
            gauge,
            refusals,
            gates: Refusal::ALL.iter().map(|_| LogGate::new()).collect(),
        }
    }

    /// A client connection opened (+1) or closed (-1).
    pub(super) fn opened(&self, delta: i64) {
        let n = self.open.fetch_add(delta, Ordering::Relaxed) + delta;
        self.gauge.set(n as f64);
    }

    /// Counts a refusal; `Some(refusals not logged since the last line)` when the caller is to
    /// log this one (at most one line per [`LOG_EVERY`] for this listener and reason).
    pub(super) fn refused(&self, why: Refusal) -> Option<u64> {
        let i = Refusal::ALL.iter().position(|r| *r == why)?;
        if let Some(c) = self.refusals.get(i) {
            c.increment(1);
        }
        self.gates.get(i)?.pass()
    }

    fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// Every connection count and counter of a [`super::Streams`].
pub(super) struct Stats {
    listeners: Mutex<Vec<Weak<ListenerStats>>>,
    /// Backend connections open over TCP (`[0]`) and TLS (`[1]`).
    backends: [AtomicI64; 2],
    backend_gauges: [Gauge; 2],
    flows: AtomicI64,
    flows_gauge: Gauge,
    /// Messages dropped because a connection's queue was full.
    pub(super) queue_full: Counter,
    /// `siplb_drops_total` by [`DropReason`] (index `reason as usize`).
    pub(super) drops: Vec<Counter>,
    /// `siplb_send_errors_total`: datagrams the kernel refused.
    pub(super) send_errors: Counter,
}

impl Stats {
    pub(super) fn new() -> Stats {
        let backend_gauges =
            ["tcp", "tls"].map(|t| metrics::gauge!("siplb_backend_connections", "transport" => t));
        let flows_gauge = metrics::gauge!("siplb_flows");
        let queue_full = metrics::counter!("siplb_connection_queue_full_total");
        queue_full.increment(0);
        Stats {
            listeners: Mutex::new(Vec::new()),
            backends: [AtomicI64::new(0), AtomicI64::new(0)],
            backend_gauges,
            flows: AtomicI64::new(0),
            flows_gauge,
            queue_full,
            drops: crate::stats::drop_counters(&DropReason::ALL.map(DropReason::as_str)),
            send_errors: metrics::counter!("siplb_send_errors_total"),
        }
    }

    /// A listener whose connections count from now on.
    pub(super) fn listener(&self, l: &Arc<ListenerStats>) {
        let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        ls.retain(|w| w.strong_count() > 0);
        ls.push(Arc::downgrade(l));
    }

    /// A backend connection opened (+1) or closed (-1).
    pub(super) fn backend(&self, transport: Transport, delta: i64) {
        let i = usize::from(transport == Transport::Tls);
        let n = self.backends[i].fetch_add(delta, Ordering::Relaxed) + delta;
        self.backend_gauges[i].set(n as f64);
    }

    /// A client flow opened (+1) or closed (-1).
    pub(super) fn flow(&self, delta: i64) {
        let n = self.flows.fetch_add(delta, Ordering::Relaxed) + delta;
        self.flows_gauge.set(n as f64);
    }

    /// Counts a message not sent.
    pub(super) fn dropped(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason as usize) {
            c.increment(1);
        }
    }

    fn live_listeners(&self) -> Vec<Arc<ListenerStats>> {
        let ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        ls.iter().filter_map(Weak::upgrade).collect()
    }

    /// Sets every gauge to its count again.
    pub(super) fn publish(&self) {
        for l in self.live_listeners() {
            l.gauge.set(l.open() as f64);
        }
        for (i, g) in self.backend_gauges.iter().enumerate() {
            g.set(self.backends[i].load(Ordering::Relaxed) as f64);
        }
        self.flows_gauge
            .set(self.flows.load(Ordering::Relaxed) as f64);
    }

    pub(super) fn status(&self) -> StreamStatus {
        StreamStatus {
            listeners: self
                .live_listeners()
                .iter()
                .map(|l| ListenerStatus {
                    address: l.label.clone(),
                    bound: l.bound.to_string(),
                    transport: l.transport.as_str(),
                    connections: l.open().max(0) as u64,
                })
                .collect(),
            backend_connections: BackendStatus {
                tcp: self.backends[0].load(Ordering::Relaxed).max(0) as u64,
                tls: self.backends[1].load(Ordering::Relaxed).max(0) as u64,
            },
            flows: self.flows.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

/// The connections part of `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamStatus {
    /// Each TCP and TLS listener with its open client connections.
    pub(crate) listeners: Vec<ListenerStatus>,
    pub(crate) backend_connections: BackendStatus,
    /// Client flows open.
    pub(crate) flows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListenerStatus {
    /// As configured.
    pub(crate) address: String,
    /// As bound.
    pub(crate) bound: String,
    pub(crate) transport: &'static str,
    /// Client connections open.
    pub(crate) connections: u64,
}

/// Backend connections open, by transport.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BackendStatus {
    pub(crate) tcp: u64,
    pub(crate) tls: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_gate_lets_one_refusal_a_second_through_and_counts_the_rest() {
        let gate = LogGate::new();
        assert_eq!(gate.pass(), Some(0), "the first refusal is logged");
        for _ in 0..999 {
            assert_eq!(gate.pass(), None);
        }
        // A second later (moved back in time rather than waited for).
        gate.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(
            gate.pass(),
            Some(999),
            "the next line says how many went unlogged"
        );
        assert_eq!(gate.pass(), None);
    }
}
