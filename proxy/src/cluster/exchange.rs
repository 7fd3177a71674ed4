//! The exchange task: once per `[health] interval`, every peer and the witness are asked for
//! their view at the same time, each within the interval, and the round goes to the
//! supervisor. Each exchange is counted; an observer's change of result is logged once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;

use super::client::{self, GetError};
use super::{digest, Answer, Exchange, Round, View};
use crate::config::{Config, Observer};

/// How long the task waits before looking at the config again when it has no `[cluster]`.
const IDLE: Duration = Duration::from_secs(1);

/// What the task remembers of an observer between rounds.
#[derive(Default)]
struct Memory {
    result: Option<Exchange>,
    last_ok: Option<SystemTime>,
    config_matches: Option<bool>,
}

/// Runs the exchange for as long as the task lives: `config` gives the config in effect
/// (read again every round, so a reload changes the peers, the token and the interval) and
/// `deliver` hands each round to the supervisor.
pub(crate) async fn run(
    config: impl Fn() -> Arc<Config> + Send + 'static,
    deliver: impl Fn(Round) + Send + 'static,
) {
    let mut memory: HashMap<String, Memory> = HashMap::new();
    loop {
        let cfg = config();
        let Some(cluster) = &cfg.cluster else {
            memory.clear();
            tokio::time::sleep(IDLE).await;
            continue;
        };
        let interval = cfg.health.interval;
        let next = tokio::time::Instant::now() + interval;
        let ours = digest(&cfg);
        let mut asks = JoinSet::new();
        for (i, o) in cluster.observers().enumerate() {
            let (o, token, ours) = (o.clone(), cluster.token.0.clone(), ours.clone());
            asks.spawn(async move { (i, ask(&o, &token, interval, &ours).await) });
        }
        let mut results: Vec<Option<(Exchange, Option<View>)>> =
            vec![None; cluster.observers().count()];
        while let Some(done) = asks.join_next().await {
            if let Ok((i, result)) = done {
                results[i] = Some(result);
            }
        }
        memory.retain(|url, _| cluster.observers().any(|o| &o.url == url));
        let mut round = Round::default();
        for (o, result) in cluster.observers().zip(results) {
            // A task that panicked or was cancelled brought nothing back.
            let (result, view) = result.unwrap_or((Exchange::Garbled, None));
            metrics::counter!("siplb_cluster_exchanges_total",
                "peer" => o.url.clone(), "result" => result.as_str())
            .increment(1);
            let m = memory.entry(o.url.clone()).or_default();
            note_change(&o.url, m.result, result);
            m.result = Some(result);
            match result {
                Exchange::Ok => {
                    m.last_ok = Some(SystemTime::now());
                    m.config_matches = Some(true);
                }
                Exchange::OtherConfig => m.config_matches = Some(false),
                _ => {}
            }
            round.answers.push(Answer {
                url: o.url.clone(),
                result,
                view: view.filter(|_| result == Exchange::Ok),
                last_ok: m.last_ok,
                config_matches: m.config_matches,
            });
        }
        deliver(round);
        tokio::time::sleep_until(next).await;
    }
}

/// Logs an observer's change of result: once when it starts failing, once when it is back.
fn note_change(url: &str, before: Option<Exchange>, now: Exchange) {
    if before == Some(now) {
        return;
    }
    match (before, now) {
        (_, Exchange::Ok) => tracing::info!(peer = %url, "cluster peer answers with its view"),
        (_, Exchange::OtherConfig) => tracing::warn!(
            peer = %url,
            "cluster peer runs another config (digest differs): its view does not count"
        ),
        (_, result) => tracing::warn!(
            peer = %url,
            result = result.as_str(),
            "cluster peer gives no view: it does not count until it does"
        ),
    }
}

/// Asks one observer for its view within `timeout`.
async fn ask(o: &Observer, token: &str, timeout: Duration, ours: &str) -> (Exchange, Option<View>) {
    let answer =
        tokio::time::timeout(timeout, client::get(&o.authority, "/cluster/view", token)).await;
    let (code, body) = match answer {
        Err(_) => return (Exchange::Timeout, None),
        Ok(Err(GetError::Unreachable(e))) => {
            tracing::debug!(peer = %o.url, error = %e, "cluster peer not reached");
            return (Exchange::Refused, None);
        }
        Ok(Err(GetError::NotHttp)) => return (Exchange::Garbled, None),
        Ok(Ok(answer)) => answer,
    };
    match code {
        200 => {}
        401 => return (Exchange::Unauthorized, None),
        _ => return (Exchange::HttpError, None),
    }
    match serde_json::from_slice::<View>(&body) {
        Ok(view) if view.config_digest == ours => (Exchange::Ok, Some(view)),
        Ok(_) => (Exchange::OtherConfig, None),
        Err(_) => (Exchange::Garbled, None),
    }
}
