//! The raw form of `config.toml`: serde structs that mirror the file key for key.
//!
//! This is the first step of file → raw → validated [`Config`](super::Config). serde checks
//! only the shape here: every struct denies unknown keys, and a key of the wrong TOML type is a
//! deserialisation error. Everything with a meaning (durations, addresses, enum names, ranges,
//! cross references) stays a string or a wide integer wrapped in [`Spanned`], so that
//! [`validate`](super::validate) can check it, collect every mistake at once and name the line
//! each one is on. Integers are `i64` so that `weight = -1` gets our message ("at least 1"),
//! not serde's.

use serde::Deserialize;
use toml::Spanned;

/// A string value with its position in the file.
pub(crate) type Str = Spanned<String>;

/// An integer value with its position in the file.
pub(crate) type Int = Spanned<i64>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) listen: Option<Spanned<RawListen>>,
    pub(crate) ops: Option<RawOps>,
    pub(crate) health: Option<Spanned<RawHealth>>,
    pub(crate) routing: Option<RawRouting>,
    pub(crate) log: Option<RawLog>,
    pub(crate) connections: Option<RawConnections>,
    /// `[dns]`: how names of servers and pools are resolved.
    pub(crate) dns: Option<RawDns>,
    /// `[cluster]`: the other replicas and the witness whose views of the pools count.
    pub(crate) cluster: Option<Spanned<RawCluster>>,
    /// `[[pool]]` tables, in file order.
    #[serde(default)]
    pub(crate) pool: Vec<Spanned<RawPool>>,
    /// `[[route]]` tables, in file order.
    #[serde(default)]
    pub(crate) route: Vec<Spanned<RawRoute>>,
}

/// `[listen]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    #[serde(default)]
    pub(crate) udp: Vec<Str>,
    #[serde(default)]
    pub(crate) tcp: Vec<Str>,
    #[serde(default)]
    pub(crate) tls: Vec<Spanned<RawTlsListen>>,
    pub(crate) advertise: Option<Str>,
    pub(crate) workers: Option<Int>,
    pub(crate) shutdown_grace: Option<Str>,
    /// `passthrough = [...]`: TLS passed through to a pool's servers unread.
    #[serde(default)]
    pub(crate) passthrough: Vec<Spanned<RawPassthrough>>,
}

/// One `[listen] passthrough` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassthrough {
    pub(crate) address: Str,
    pub(crate) pool: Str,
    pub(crate) idle_timeout: Option<Str>,
}

/// One `[listen] tls` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTlsListen {
    pub(crate) address: Str,
    pub(crate) cert: Str,
    pub(crate) key: Str,
}

/// `[connections]`: limits and timeouts of TCP and TLS connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnections {
    pub(crate) max: Option<Int>,
    pub(crate) max_per_ip: Option<Int>,
    pub(crate) idle_timeout: Option<Str>,
    pub(crate) header_timeout: Option<Str>,
    pub(crate) handshake_timeout: Option<Str>,
    pub(crate) max_header_bytes: Option<Int>,
    pub(crate) max_body_bytes: Option<Int>,
}

/// `[dns]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub(crate) refresh: Option<Str>,
    pub(crate) timeout: Option<Str>,
    pub(crate) nameservers: Option<Spanned<Vec<Str>>>,
}

/// `[ops]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOps {
    pub(crate) listen: Option<Str>,
    pub(crate) admin_token_file: Option<Str>,
}

/// `[cluster]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    /// The other replicas' ops endpoints, `http://HOST:PORT`.
    #[serde(default)]
    pub(crate) peers: Vec<Str>,
    /// A third vantage point's ops endpoint, `http://HOST:PORT`.
    pub(crate) witness: Option<Str>,
    /// The file holding the token replicas authenticate each other with.
    pub(crate) token_file: Option<Str>,
}

/// `[health]`, and a pool's `health = { ... }` override: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) probe: Option<Str>,
    pub(crate) interval: Option<Str>,
    pub(crate) timeout: Option<Str>,
    pub(crate) fall: Option<Int>,
    pub(crate) rise: Option<Int>,
    pub(crate) flap_window: Option<Str>,
    pub(crate) flap_hold: Option<Str>,
    pub(crate) max_backoff: Option<Str>,
}

/// `[routing]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouting {
    pub(crate) no_route: Option<Int>,
    pub(crate) retry_after: Option<Str>,
    pub(crate) server_header: Option<Str>,
    pub(crate) branch_key_file: Option<Str>,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) level: Option<Str>,
    pub(crate) format: Option<Str>,
}

/// One `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) name: Str,
    pub(crate) role: Option<Str>,
    pub(crate) pair: Option<Str>,
    pub(crate) failover: Option<Str>,
    pub(crate) failback_after: Option<Str>,
    pub(crate) min_up: Option<Int>,
    pub(crate) health: Option<Spanned<RawHealth>>,
    /// How siplb opens TLS to the pool's `transport = "tls"` servers.
    pub(crate) tls: Option<Spanned<RawPoolTls>>,
    /// `srv = "_sip._udp.fe.contoso.com"`: the pool's servers are the targets of these SRV
    /// records.
    pub(crate) srv: Option<Str>,
    /// `dns = "fe.contoso.com:5060"`: one server per address the name resolves to.
    pub(crate) dns: Option<Str>,
    /// The transport of the servers `srv` or `dns` give.
    pub(crate) transport: Option<Str>,
    /// Optional to serde so that a pool without servers gets our "empty pool" error, with the
    /// others, rather than a lone "missing field".
    pub(crate) servers: Option<Spanned<Vec<Spanned<RawServer>>>>,
}

/// One entry of a pool's `servers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) address: Str,
    pub(crate) transport: Option<Str>,
    pub(crate) weight: Option<Int>,
    pub(crate) id: Option<Str>,
    pub(crate) drained: Option<bool>,
    /// The name this server's TLS certificate must carry (overrides the pool's).
    pub(crate) server_name: Option<Str>,
}

/// A pool's `tls = { ca, server_name, cert, key }`: every key optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoolTls {
    pub(crate) ca: Option<Str>,
    pub(crate) server_name: Option<Str>,
    pub(crate) cert: Option<Str>,
    pub(crate) key: Option<Str>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) methods: Option<Spanned<Vec<Str>>>,
    pub(crate) domain: Option<Str>,
    pub(crate) uri_user_param: Option<Str>,
    pub(crate) pool: Option<Str>,
    pub(crate) pools: Option<Spanned<Vec<Str>>>,
    pub(crate) key: Option<Str>,
}
