//! The fleet: replicas that share their views of the pools so that none fails a pool over on
//! its own view alone.
//!
//! Every replica probes every server itself and publishes its own view of each pool (up or
//! down, since when) at `GET /cluster/view` on its ops endpoint, behind the `[cluster]` token
//! ([`View`]). The exchange task ([`run`]) asks every peer and the witness for theirs once per
//! `[health] interval` and hands the round ([`Round`]) to the health supervisor, which counts
//! the views with [`healthcheck::quorum::Tally`] ([`tally`]): an automatic failover or failback
//! follows the fleet's verdict, and a replica that alone sees a pool down turns itself not
//! ready instead of moving its users.
//!
//! An observer whose answer is missing (timeout, refused, wrong token, garbled) or that runs
//! another config ([`digest`]) has no vote in the round; without a quorum nothing moves.
//!
//! Operator commands reach the fleet two ways: the replica an operator asked forwards the
//! command to every peer at once ([`forward`]), and each view carries the operator state with
//! its stamps ([`OperatorView`]), which a replica that missed a command adopts at its next
//! exchange ([`operator`]).

mod client;
mod exchange;
mod forward;
pub(crate) mod operator;

use std::time::SystemTime;

use healthcheck::quorum::Tally;
use serde::{Deserialize, Serialize};

use crate::config::{Cluster, Config};

pub(crate) use exchange::run;
pub(crate) use forward::{forward, segment, FORWARDED, OPERATOR_SEQ};
pub(crate) use operator::OperatorView;

/// What `GET /cluster/view` answers: this replica's own view of every pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct View {
    /// The replica's ops endpoint (`[ops] listen`).
    pub(crate) replica: String,
    /// [`digest`] of the replica's config: views count only between replicas that agree.
    pub(crate) config_digest: String,
    /// The siplb version the replica runs.
    pub(crate) version: String,
    pub(crate) pools: Vec<PoolView>,
    /// The operator's commands as this replica holds them; absent from an observer that
    /// routes nothing (a witness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) operator: Option<OperatorView>,
}

/// The URL this replica goes by among its peers: `http://` and its `[ops] listen` (what its
/// peers name in their `peers`). Empty without an ops endpoint.
pub(crate) fn self_url(cfg: &Config) -> String {
    cfg.ops
        .listen
        .map(|a| format!("http://{a}"))
        .unwrap_or_default()
}

/// One pool as one replica's own probes see it (not where its users are served).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PoolView {
    pub(crate) name: String,
    /// At least `min_up` of its servers are up, by this replica's probes.
    pub(crate) up: bool,
    /// Since when (RFC 3339).
    pub(crate) since: String,
}

/// What the routing of a config depends on, as a short hex string: xxh3 of its pools and
/// routes as validated (defaults filled in, so two files that say the same thing in other
/// words agree). `[listen]`, `[ops]`, `[cluster]` and `[log]` differ between replicas and are
/// not in it.
pub(crate) fn digest(cfg: &Config) -> String {
    let text = format!("{:?}\n{:?}", cfg.pools, cfg.routes);
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// How one exchange with one observer went (the `result` label of
/// `siplb_cluster_exchanges_total`, and `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exchange {
    /// Its view arrived, from the same config: it votes.
    Ok,
    /// No answer within the interval.
    Timeout,
    /// No connection, or it broke.
    Refused,
    /// `401`: it holds another cluster token.
    Unauthorized,
    /// Another answer than `200` or `401` (e.g. `404`: it has no `[cluster]`).
    HttpError,
    /// Not HTTP, or not a view.
    Garbled,
    /// A view from another config ([`digest`]).
    OtherConfig,
}

impl Exchange {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Exchange::Ok => "ok",
            Exchange::Timeout => "timeout",
            Exchange::Refused => "refused",
            Exchange::Unauthorized => "unauthorized",
            Exchange::HttpError => "http_error",
            Exchange::Garbled => "garbled",
            Exchange::OtherConfig => "other_config",
        }
    }
}

/// One observer's part of a round.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The observer's URL as configured.
    pub(crate) url: String,
    pub(crate) result: Exchange,
    /// Its view when `result` is [`Exchange::Ok`].
    pub(crate) view: Option<View>,
    /// When it last answered with a view of the same config.
    pub(crate) last_ok: Option<SystemTime>,
    /// Whether its config is this replica's; `None` before it ever sent a view.
    pub(crate) config_matches: Option<bool>,
}

/// One exchange round: every other observer's answer, peers then witness.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Round {
    pub(crate) answers: Vec<Answer>,
}

impl Round {
    /// What observer `url` says of pool `pool`: `Some(up)` when it sent a view of the same
    /// config that names the pool.
    pub(crate) fn says(&self, url: &str, pool: &str) -> Option<bool> {
        let answer = self.answers.iter().find(|a| a.url == url)?;
        let view = answer
            .view
            .as_ref()
            .filter(|_| answer.result == Exchange::Ok)?;
        view.pools.iter().find(|p| p.name == pool).map(|p| p.up)
    }
}

/// The fleet's count for pool `pool`: this replica's own view (`own_up`) and every configured
/// observer's in `round` (none of them counts when there is no round).
pub(crate) fn tally(cluster: &Cluster, round: Option<&Round>, pool: &str, own_up: bool) -> Tally {
    let others = cluster
        .observers()
        .map(|o| round.and_then(|r| r.says(&o.url, pool)));
    Tally::count(own_up, others)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterToken, Observer};
    use healthcheck::quorum::Verdict;

    fn observer(url: &str) -> Observer {
        Observer {
            url: url.into(),
            authority: url.trim_start_matches("http://").into(),
        }
    }

    fn view(pool: &str, up: bool) -> Option<View> {
        Some(View {
            replica: "r".into(),
            config_digest: "d".into(),
            version: "v".into(),
            pools: vec![PoolView {
                name: pool.into(),
                up,
                since: String::new(),
            }],
            operator: None,
        })
    }

    fn answer(url: &str, result: Exchange, view: Option<View>) -> Answer {
        Answer {
            url: url.into(),
            result,
            view,
            last_ok: None,
            config_matches: None,
        }
    }

    #[test]
    fn only_views_of_the_same_config_vote() {
        let cluster = Cluster {
            peers: vec![observer("http://p1:1"), observer("http://p2:1")],
            witness: Some(observer("http://w:1")),
            token: ClusterToken("t".into()),
        };
        let round = Round {
            answers: vec![
                answer("http://p1:1", Exchange::Ok, view("a", true)),
                answer("http://p2:1", Exchange::OtherConfig, view("a", true)),
                answer("http://w:1", Exchange::Ok, view("b", true)),
            ],
        };
        let t = tally(&cluster, Some(&round), "a", false);
        assert_eq!(
            (t.observers, t.answered, t.down),
            (4, 2, 1),
            "p2 runs another config, the witness does not know pool a"
        );
        assert_eq!(t.verdict(), Verdict::Undecided, "2 of 4 is no quorum");
        let t = tally(&cluster, None, "a", false);
        assert_eq!((t.observers, t.answered), (4, 1));
    }

    #[test]
    fn the_digest_follows_pools_and_routes_not_listeners() {
        let text = |udp: &str, extra: &str| {
            format!(
                "[listen]\nudp = [\"{udp}\"]\n[[pool]]\nname = \"a\"\n{extra}\
                 servers = [{{ address = \"127.0.0.1:5071\" }}]\n[[route]]\npool = \"a\"\n"
            )
        };
        let parse =
            |t: &str| crate::config::parse(std::path::Path::new("d.toml"), t).expect("valid");
        let base = digest(&parse(&text("127.0.0.1:5060", "")));
        assert_eq!(base.len(), 16);
        assert_eq!(base, digest(&parse(&text("127.0.0.1:5999", ""))));
        assert_eq!(
            base,
            digest(&parse(&text("127.0.0.1:5060", "role = \"front-end\"\n"))),
            "the default written out"
        );
        assert_ne!(
            base,
            digest(&parse(&text("127.0.0.1:5060", "failback_after = \"7s\"\n")))
        );
    }
}
