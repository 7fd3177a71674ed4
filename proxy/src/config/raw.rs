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
pub type Str = Spanned<String>;

/// An integer value with its position in the file.
pub type Int = Spanned<i64>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<Spanned<RawListen>>,
    pub ops: Option<RawOps>,
    pub health: Option<Spanned<RawHealth>>,
    pub routing: Option<RawRouting>,
    pub log: Option<RawLog>,
    /// `[[pool]]` tables, in file order.
    #[serde(default)]
    pub pool: Vec<Spanned<RawPool>>,
    /// `[[route]]` tables, in file order.
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

/// `[listen]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    #[serde(default)]
    pub udp: Vec<Str>,
    #[serde(default)]
    pub tcp: Vec<Str>,
    #[serde(default)]
    pub tls: Vec<Spanned<RawTlsListen>>,
    pub advertise: Option<Str>,
    pub workers: Option<Int>,
}

/// One `[listen] tls` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsListen {
    pub address: Str,
    pub cert: Str,
    pub key: Str,
}

/// `[ops]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOps {
    pub listen: Option<Str>,
    pub admin_token_file: Option<Str>,
}

/// `[health]`, and a pool's `health = { ... }` override: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub probe: Option<Str>,
    pub interval: Option<Str>,
    pub timeout: Option<Str>,
    pub fall: Option<Int>,
    pub rise: Option<Int>,
}

/// `[routing]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub no_route: Option<Int>,
    pub retry_after: Option<Str>,
    pub server_header: Option<Str>,
    pub branch_key_file: Option<Str>,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Str>,
    pub format: Option<Str>,
}

/// One `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: Str,
    pub role: Option<Str>,
    pub pair: Option<Str>,
    pub failover: Option<Str>,
    pub failback_after: Option<Str>,
    pub min_up: Option<Int>,
    pub health: Option<Spanned<RawHealth>>,
    /// Optional to serde so that a pool without servers gets our "empty pool" error, with the
    /// others, rather than a lone "missing field".
    pub servers: Option<Spanned<Vec<Spanned<RawServer>>>>,
}

/// One entry of a pool's `servers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub address: Str,
    pub transport: Option<Str>,
    pub weight: Option<Int>,
    pub id: Option<Str>,
    pub drained: Option<bool>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub methods: Option<Spanned<Vec<Str>>>,
    pub domain: Option<Str>,
    pub uri_user_param: Option<Str>,
    pub pool: Option<Str>,
    pub pools: Option<Spanned<Vec<Str>>>,
    pub key: Option<Str>,
}
