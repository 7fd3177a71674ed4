//! The exchange task: once per `[health] interval`, every peer and the witness are asked for
//! their view at the same time, each within the interval, and the round goes to the
//! supervisor. Each exchange is counted; an observer's change of result is logged once.
//!
//! When this replica's own view of a pool changes, the supervisor says so (`hurry`) and the
//! task asks at once, then every [`HURRY_GAP`] for [`HURRY_ROUNDS`] intervals: the peers' probes
//! see a lost pool at their own moments within an interval, and each replica's verdict should
//! follow theirs as they come, not one exchange interval later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::client::{self, GetError};
use super::{digest, Answer, Exchange, Round, View};
use crate::config::{Config, Observer};

/// How long the task waits before looking at the config again when it has no `[cluster]`.
const IDLE: Duration = Duration::from_secs(1);

/// After a change of this replica's own view, rounds follow one another this far apart
/// (at least: a round lasts as long as its slowest answer), or a tenth of the interval when
/// that is longer...
const HURRY_GAP: Duration = Duration::from_millis(100);

/// ...for this many intervals after the change.
const HURRY_ROUNDS: u32 = 2;

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
    hurry: Arc<Notify>,
) {
    let mut memory: HashMap<String, Memory> = HashMap::new();
    // Until when rounds follow one another HURRY_GAP apart.
    let mut hurried_until: Option<tokio::time::Instant> = None;
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
        // Within a hurry, the next round comes a gap later; otherwise at the interval. Either
        // way a change of this replica's own view starts one at once, and a hurry.
        let wake = match hurried_until {
            Some(until) if tokio::time::Instant::now() < until => {
                tokio::time::Instant::now() + HURRY_GAP.max(interval / 10)
            }
            _ => {
                hurried_until = None;
                next
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = hurry.notified() => {
                tracing::debug!("own view of a pool changed: asking the cluster peers now");
                hurried_until = Some(tokio::time::Instant::now() + interval * HURRY_ROUNDS);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cluster, ClusterToken};
    use std::sync::Mutex;

    /// A config with a 10 s interval and one peer that refuses (nothing listens on port 9).
    fn config() -> Arc<Config> {
        let text = "[listen]\nudp = [\"127.0.0.1:5060\"]\n[health]\ninterval = \"10s\"\ntimeout = \"1s\"\n[[pool]]\nname = \"a\"\n\
                    servers = [{ address = \"127.0.0.1:5071\" }]\n[[route]]\npool = \"a\"\n";
        let mut cfg = crate::config::parse(std::path::Path::new("x.toml"), text).expect("valid");
        cfg.cluster = Some(Cluster {
            peers: vec![Observer {
                url: "http://127.0.0.1:9".into(),
                authority: "127.0.0.1:9".into(),
            }],
            witness: None,
            token: ClusterToken("t".into()),
        });
        Arc::new(cfg)
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_the_own_view_asks_at_once_then_often_for_two_intervals_then_at_the_interval(
    ) {
        let cfg = config();
        let start = tokio::time::Instant::now();
        let rounds: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let hurry = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            move || cfg.clone(),
            {
                let rounds = rounds.clone();
                move |_| rounds.lock().unwrap().push(start.elapsed())
            },
            hurry.clone(),
        ));
        let count_until = |secs: u64| {
            let rounds = rounds.clone();
            async move {
                tokio::time::sleep_until(start + Duration::from_secs(secs)).await;
                rounds.lock().unwrap().len()
            }
        };
        // Unhurried: one round at once, the next 10 s later.
        assert_eq!(
            count_until(3).await,
            1,
            "one round in the first 3 s of a 10 s interval"
        );
        hurry.notify_one();
        let before = count_until(4).await;
        assert!(
            before >= 2,
            "the change asked at once: {:?}",
            rounds.lock().unwrap()
        );
        let hurried = count_until(22).await;
        // A tenth of the 10 s interval apart, for two intervals from the change at 3 s.
        assert!(
            (18..=23).contains(&(hurried - before)),
            "rounds 1 s apart for two intervals after the change: {} between 4 s and 22 s",
            hurried - before
        );
        let later = count_until(50).await;
        assert!(
            later - hurried <= 4,
            "back to one round an interval: {} rounds between 22 s and 50 s",
            later - hurried
        );
        task.abort();
    }
}
