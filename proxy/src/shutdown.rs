//! How `siplb` (the run command) stops: SIGTERM begins a graceful stop, SIGINT (or a second
//! SIGTERM) stops at once; either way the process exits 0.
//!
//! A graceful stop turns `/readyz` to 503 (`siplb is shutting down`) and closes the TCP, TLS and
//! passthrough listeners ([`Proxy::begin_shutdown`]); UDP keeps being forwarded and client flows
//! already open (passthrough connections among them) keep working for `[listen]
//! shutdown_grace`. With a UDP listener siplb waits the whole grace — UDP has no flows to count,
//! and a server may still answer a client's transaction within it; with only TCP, TLS and
//! passthrough listeners it stops as soon as the last client flow closes. When to stop
//! is a plain function ([`next_step`]); [`drain`] only waits on the clock, the signals and the
//! flow count, and logs every step.

use std::time::Duration;

use tokio::time::Instant;

use crate::server::Proxy;

/// How often the flow count is read during the grace.
const POLL: Duration = Duration::from_millis(100);

/// The least time between two "client flows left" log lines.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A signal that stops siplb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM: a graceful stop (the first time), at once (the second).
    Term,
    /// SIGINT (Ctrl-C): at once.
    Int,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }
}

/// SIGTERM and SIGINT, listened for from the moment this is made (so one that arrives before
/// [`drain`] waits is not lost).
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening. Must run inside a tokio runtime.
    pub(crate) fn listen() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Signal::Term,
                _ = self.int.recv() => Signal::Int,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Int
        }
    }
}

/// What a graceful stop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep serving.
    Wait,
    /// `shutdown_grace` has passed.
    GraceOver,
    /// Only TCP, TLS and passthrough listeners, and the last client flow has closed.
    LastFlowClosed,
}

/// The step of a graceful stop `elapsed` into a `grace`, with `flows` client flows open;
/// `udp` says whether siplb has UDP listeners (then it waits the whole grace).
pub(crate) fn next_step(elapsed: Duration, grace: Duration, udp: bool, flows: usize) -> Step {
    if elapsed >= grace {
        Step::GraceOver
    } else if !udp && flows == 0 {
        Step::LastFlowClosed
    } else {
        Step::Wait
    }
}

/// Publishes `siplb_shutting_down` (the exporter forgets a gauge not set for a while, so this
/// runs at every poll of a graceful stop, and on the ops endpoint's gauge tick before one).
fn publish_gauge(proxy: &Proxy) {
    let v = if proxy.shutting_down() { 1.0 } else { 0.0 };
    metrics::gauge!("siplb_shutting_down").set(v);
}

/// Keeps `siplb_shutting_down` published until the task is dropped.
pub(crate) async fn refresh_gauge(proxy: std::sync::Arc<Proxy>) {
    let mut tick = tokio::time::interval(crate::stats::GAUGE_REFRESH);
    loop {
        tick.tick().await;
        publish_gauge(&proxy);
    }
}

/// Waits for a signal and, for SIGTERM, serves out the graceful stop; returns when siplb should
/// stop (the caller then stops the proxy and exits 0).
pub(crate) async fn drain(proxy: &Proxy, signals: &mut Signals) {
    let first = signals.next().await;
    if first == Signal::Int {
        tracing::info!(signal = first.name(), "stopping at once");
        return;
    }
    let grace = proxy.config().listen.shutdown_grace;
    let udp = !proxy.udp().is_empty();
    let started = Instant::now();
    tracing::info!(
        signal = first.name(),
        grace = %humantime::format_duration(grace),
        flows = proxy.client_flows(),
        udp,
        "shutdown started: not ready; UDP and open client flows are served until the grace ends"
    );
    let closed = proxy.begin_shutdown().unwrap_or(0);
    publish_gauge(proxy);
    tracing::info!(
        closed,
        "TCP, TLS and passthrough listeners closed: new connections are refused"
    );
    let mut poll = tokio::time::interval(POLL);
    let mut reported = started;
    loop {
        tokio::select! {
            s = signals.next() => {
                tracing::info!(signal = s.name(), flows = proxy.client_flows(),
                    "second signal during the grace: stopping at once");
                return;
            }
            _ = poll.tick() => {}
        }
        let flows = proxy.client_flows();
        match next_step(started.elapsed(), grace, udp, flows) {
            Step::Wait => {}
            Step::GraceOver => {
                tracing::info!(flows, "shutdown grace over");
                return;
            }
            Step::LastFlowClosed => {
                tracing::info!("last client flow closed");
                return;
            }
        }
        publish_gauge(proxy);
        if reported.elapsed() >= REPORT_EVERY {
            reported = Instant::now();
            let left = grace.saturating_sub(started.elapsed());
            tracing::info!(flows, grace_left = %humantime::format_duration(Duration::from_secs(left.as_secs())),
                "shutting down: client flows left");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn with_udp_listeners_siplb_waits_the_whole_grace() {
        let early = Duration::from_secs(1);
        assert_eq!(next_step(early, GRACE, true, 0), Step::Wait);
        assert_eq!(next_step(early, GRACE, true, 3), Step::Wait);
        assert_eq!(next_step(GRACE, GRACE, true, 0), Step::GraceOver);
        assert_eq!(next_step(GRACE * 2, GRACE, true, 3), Step::GraceOver);
    }

    #[test]
    fn with_only_stream_listeners_siplb_stops_when_the_last_flow_closes() {
        let early = Duration::from_secs(1);
        assert_eq!(next_step(early, GRACE, false, 2), Step::Wait);
        assert_eq!(next_step(early, GRACE, false, 0), Step::LastFlowClosed);
        assert_eq!(next_step(GRACE, GRACE, false, 2), Step::GraceOver);
    }

    #[test]
    fn a_zero_grace_stops_at_once() {
        assert_eq!(
            next_step(Duration::ZERO, Duration::ZERO, true, 5),
            Step::GraceOver
        );
    }
}
