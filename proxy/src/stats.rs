//! Wire-path metrics, resolved once per routing table so that counting a message is one atomic
//! add: no label formatting, no registry lookup, no allocation. Every label value comes from a
//! fixed list or the config — never a user, a Call-ID or a client address.

use metrics::Counter;

/// Methods counted by name; anything else counts as `other`.
pub const METHODS: [&str; 16] = [
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

/// The index of `method` in [`METHODS`], or `METHODS.len()` for `other`.
pub fn method_index(method: &[u8]) -> usize {
    METHODS
        .iter()
        .position(|m| m.as_bytes() == method)
        .unwrap_or(METHODS.len())
}

/// `siplb_requests_total{method, pool}` for one pool.
#[derive(Debug, Clone)]
pub struct PoolCounters {
    requests: Vec<Counter>,
}

impl PoolCounters {
    pub fn new(pool: &str) -> Self {
        let requests = METHODS
            .iter()
            .copied()
            .chain(std::iter::once("other"))
            .map(|m| metrics::counter!("siplb_requests_total", "method" => m, "pool" => pool.to_string()))
            .collect();
        PoolCounters { requests }
    }

    /// Counts one request forwarded to this pool.
    pub fn request(&self, method: &[u8]) {
        if let Some(c) = self.requests.get(method_index(method)) {
            c.increment(1);
        }
    }
}

/// Counts a response relayed back towards a client, by class.
pub fn response(code: u16) {
    const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];
    let class = CLASSES
        .get(usize::from(code / 100).saturating_sub(1))
        .copied()
        .unwrap_or("other");
    metrics::counter!("siplb_responses_total", "class" => class).increment(1);
}

/// Counts an answer siplb gave itself.
pub fn reply(code: u16) {
    let code = match code {
        400 => "400",
        403 => "403",
        404 => "404",
        483 => "483",
        503 => "503",
        _ => "other",
    };
    metrics::counter!("siplb_replies_total", "code" => code).increment(1);
}

/// Registers every metric siplb exports, with its HELP text; counters start at 0 so that rates
/// and alerts work before the first event.
pub fn register() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "siplb_requests_total",
        "Requests forwarded, by method and by the pool they went to"
    );
    describe_counter!(
        "siplb_responses_total",
        "Responses relayed back towards clients, by status class"
    );
    describe_counter!(
        "siplb_replies_total",
        "Answers siplb gave itself (400, 403, 404, 483, 503)"
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
    describe_counter!("siplb_config_reloads_total", "Config reloads, by result");
    for reason in crate::core::DropReason::ALL {
        metrics::counter!("siplb_drops_total", "reason" => reason.as_str()).increment(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!("siplb_config_reloads_total", "result" => result).increment(0);
    }
    metrics::counter!("siplb_table_swaps_total").increment(0);
    metrics::counter!("siplb_send_errors_total").increment(0);
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
        .install_recorder()?;
    register();
    metrics::describe_counter!(
        "siplb_passive_signals_shed_total",
        "Passive health signals (a 503 from a server, an ICMP error on a forward) dropped because \
         the health supervisor had a full queue of them; probe results are never dropped"
    );
    metrics::counter!("siplb_passive_signals_shed_total").increment(0);
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
mod tests {
    use super::*;

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
}
