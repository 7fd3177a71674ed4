//! Configuration: `config.toml` → raw serde structs → validated [`Config`].
//!
//! The flow is file → [`raw`] (serde, `deny_unknown_fields`, spans kept) → [`validate`] →
//! [`Config`]. Only a validated `Config` ever reaches the routing table, so the router never has
//! to ask whether a pool exists or a pair is symmetric. Every rejection is a [`ConfigError`] that
//! names the file, the line, the key and what is accepted; validation collects all of them, so
//! `siplb check` shows every mistake at once.

pub mod duration;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{load, parse, summary};

/// A validated configuration: what the routing table and the probers are built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config came from (for `/status` and error messages).
    pub path: PathBuf,
    /// `[listen]`: where siplb receives SIP.
    pub listen: Listen,
    /// `[ops]`: the ops HTTP endpoint.
    pub ops: Ops,
    /// `[health]`: the defaults every pool inherits.
    pub health: Health,
    /// `[routing]`: answers when siplb cannot route.
    pub routing: Routing,
    pub log: Log,
    /// `[[pool]]` in file order.
    pub pools: Vec<PoolConfig>,
    /// `[[route]]` in file order; the first that matches wins.
    pub routes: Vec<RouteConfig>,
}

/// `[listen]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// UDP listener addresses (port 0: any free port).
    pub udp: Vec<SocketAddr>,
    /// TCP listener addresses (parsed now; served by a later release).
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners (parsed now; served by a later release).
    pub tls: Vec<TlsListen>,
    /// `host[:port]` written into our Via (and later Record-Route). `None`: the address the
    /// first UDP listener is actually bound to (so `127.0.0.1:0` works in tests).
    pub advertise: Option<HostPort>,
    /// Worker sockets per UDP address (SO_REUSEPORT). Default: the number of cores.
    pub workers: usize,
}

/// One `[listen] tls` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsListen {
    /// Address to listen on.
    pub address: SocketAddr,
    /// Certificate chain (PEM); a relative path in the file is resolved against its directory.
    pub cert: PathBuf,
    /// Private key (PEM); a relative path in the file is resolved against its directory.
    pub key: PathBuf,
}

/// A `host[:port]` as written into SIP headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host as written: a name, an IPv4 address or a bracketed IPv6 reference (`[::1]`).
    pub host: String,
    /// The port, when one was written (1..=65535).
    pub port: Option<u16>,
}

impl HostPort {
    /// The port, or SIP's default 5060.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(5060)
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{}", self.host, p),
            None => f.write_str(&self.host),
        }
    }
}

/// `[ops]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ops {
    /// Where the ops HTTP endpoint listens; `None` turns it off.
    pub listen: Option<SocketAddr>,
    /// File holding the admin bearer token (a relative path in the file is resolved against
    /// its directory). `None`: the token comes from `SIPLB_ADMIN_TOKEN`, or the admin API is
    /// off.
    pub admin_token_file: Option<PathBuf>,
}

/// Probe settings: `[health]`, or a pool's `health = { ... }` override merged over it.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// How a server is probed.
    pub probe: ProbeKind,
    /// Time between two probes of one server (> 0).
    pub interval: Duration,
    /// How long a probe may take (> 0, <= `interval`).
    pub timeout: Duration,
    /// Failed probes in a row that mark a server down (>= 1).
    pub fall: u32,
    /// Good probes in a row that bring a server back up (>= 1).
    pub rise: u32,
}

/// How a server is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// A SIP OPTIONS request; any final response counts as alive.
    Options,
    /// A TCP (or TLS port) connect, the check Microsoft's load-balancer guidance uses on 5061.
    TcpConnect,
}

/// `[routing]`: answers siplb gives when it cannot route.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Status for a request no route matches: 404 (default) or 403.
    pub no_route: u16,
    /// `Retry-After` in the 503 sent when no server of the serving pool is up.
    pub retry_after: Duration,
    /// The `Server` header of siplb's own answers; empty for none (default `siplb`).
    pub server_header: String,
    /// The secret siplb's Via branches are keyed with, shared by replicas: the content of
    /// `branch_key_file` (trimmed) or of `SIPLB_BRANCH_KEY`; `None` for a random key per process.
    pub branch_key: Option<BranchSecret>,
}

/// Secret bytes (at least 16) that never show in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct BranchSecret(pub Vec<u8>);

impl std::fmt::Debug for BranchSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BranchSecret({} bytes)", self.0.len())
    }
}

/// `[log]`: how siplb logs. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// A `tracing` filter: a level (`error` … `trace`) or directives such as `siplb=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Lync server roles a pool can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `front-end`: registrar, presence, IM and conferencing (the default).
    FrontEnd,
    /// `edge`: remote access and federation.
    Edge,
    /// `mediation`: calls to and from the PSTN.
    Mediation,
    /// `director`: the authentication and redirection tier in front of Front End pools.
    Director,
}

impl Role {
    /// The name used in `config.toml` and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::FrontEnd => "front-end",
            Role::Edge => "edge",
            Role::Mediation => "mediation",
            Role::Director => "director",
        }
    }
}

/// Who moves a pool's users to its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverMode {
    /// siplb fails over when the pool is down and fails back after `failback_after`.
    Auto,
    /// Only an operator does (Lync's `Invoke-CsPoolFailOver` / `Invoke-CsPoolFailBack`).
    Manual,
}

/// One `[[pool]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Unique name: letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// The pool's role; a pool pairs only with a pool of the same role.
    pub role: Role,
    /// Name of the paired pool; pairs are symmetric (checked).
    pub pair: Option<String>,
    /// Who moves the pool's users to its pair.
    pub failover: FailoverMode,
    /// Automatic mode: how long the home pool must stay up before its users go home.
    pub failback_after: Duration,
    /// The pool is down when fewer servers than this are up.
    pub min_up: usize,
    /// `[health]` with this pool's overrides applied.
    pub health: Health,
    /// At least one server, in file order.
    pub servers: Vec<ServerConfig>,
}

/// Transport siplb uses towards a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `udp` (the default).
    Udp,
    /// `tcp`.
    Tcp,
    /// `tls`.
    Tls,
}

impl Transport {
    /// The name used in `config.toml` and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One server of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// HRW identity; defaults to the address as written. Unique across all pools.
    pub id: String,
    /// `IP:port` of the server; never a name, so every instance agrees without DNS.
    pub address: SocketAddr,
    /// Transport siplb uses towards the server.
    pub transport: Transport,
    /// Relative share of the pool's users (default 1, at least 1).
    pub weight: u32,
    /// Start drained: out of hashing until an operator undrains it.
    pub drained: bool,
}

/// Where a route's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `to-aor`: the To header's address of record.
    ToAor,
    /// `from-aor`: the From header's address of record.
    FromAor,
    /// `ruri-aor`: the request-URI's user@host.
    RuriAor,
    /// `call-id`: the Call-ID, so every request of one call lands on one server.
    CallId,
    /// `source-ip`: the client's IP address.
    SourceIp,
}

impl KeyKind {
    /// The name used in `config.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::ToAor => "to-aor",
            KeyKind::FromAor => "from-aor",
            KeyKind::RuriAor => "ruri-aor",
            KeyKind::CallId => "call-id",
            KeyKind::SourceIp => "source-ip",
        }
    }
}

/// One `[[route]]`. Every condition given must hold for the route to match.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Upper-case method names; `None` matches every method.
    pub methods: Option<Vec<String>>,
    /// Lower-case request-URI host; `None` matches every host.
    pub domain: Option<String>,
    /// The request-URI `user=` parameter value (e.g. `phone`), lower-cased; compared
    /// case-insensitively.
    pub uri_user_param: Option<String>,
    /// Home pool candidates: one name for `pool = ...`, several for `pools = [...]`.
    pub pools: Vec<String>,
    /// `None`: To AOR for REGISTER, From AOR otherwise.
    pub key: Option<KeyKind>,
}

/// What can be wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{}: {}: {}", path.display(), line, key, message)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line of the offending key (0 when the file could not be read at all).
    pub line: usize,
    /// Dotted key path, e.g. `route[1].pools` or `pool[0].servers[2].address`.
    pub key: String,
    /// What was wrong and what is accepted.
    pub message: String,
}

impl ConfigError {
    /// An error about `key` at `line` of the file at `path`.
    pub(crate) fn new(
        path: &Path,
        line: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }
}
