//! Configuration: `config.toml` → raw serde structs → validated [`Config`].
//!
//! The flow is file → `raw` (serde, `deny_unknown_fields`, spans kept) → `validate` →
//! [`Config`]. Only a validated `Config` ever reaches the routing table, so the router never has
//! to ask whether a pool exists or a pair is symmetric. Every rejection is a [`ConfigError`] that
//! names the file, the line, the key and what is accepted; validation collects all of them, so
//! `siplb check` shows every mistake at once.

pub(crate) mod duration;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::parse;
pub(crate) use validate::{load, summary};

/// How a server is probed, and who moves a pool's users to its pair: the config speaks
/// healthcheck's own vocabulary (`probe = "options" | "tcp-connect" | "tls-connect"`,
/// `failover = "auto" | "manual"`), so nothing maps one enum onto another.
pub use healthcheck::{Damping, Mode, ProbeKind};

/// A validated configuration: what the routing table and the probers are built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config came from (for `/status` and error messages).
    pub(crate) path: PathBuf,
    /// `[listen]`: where siplb receives SIP.
    pub(crate) listen: Listen,
    /// `[ops]`: the ops HTTP endpoint.
    pub(crate) ops: Ops,
    /// `[health]`: the defaults every pool inherits.
    pub(crate) health: Health,
    /// `[routing]`: answers when siplb cannot route.
    pub(crate) routing: Routing,
    pub(crate) log: Log,
    /// `[connections]`: limits and timeouts of TCP and TLS connections.
    pub(crate) connections: Connections,
    /// `[dns]`: how the names servers and pools are given by are resolved.
    pub(crate) dns: Dns,
    /// `[cluster]`: the replicas (and witness) whose views of the pools decide automatic
    /// failover with this one's; `None`: this replica decides alone.
    pub(crate) cluster: Option<Cluster>,
    /// `[[pool]]` in file order.
    pub(crate) pools: Vec<PoolConfig>,
    /// `[[route]]` in file order; the first that matches wins.
    pub(crate) routes: Vec<RouteConfig>,
}

/// `[listen]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// UDP listener addresses (port 0: any free port).
    pub(crate) udp: Vec<SocketAddr>,
    /// TCP listener addresses.
    pub(crate) tcp: Vec<SocketAddr>,
    /// TLS listeners: address, certificate chain and key.
    pub(crate) tls: Vec<TlsListen>,
    /// `host[:port]` written into our Via (and later Record-Route). `None`: the address the
    /// first UDP listener is actually bound to (so `127.0.0.1:0` works in tests).
    pub(crate) advertise: Option<HostPort>,
    /// Worker sockets per UDP address (SO_REUSEPORT). Default: the number of cores.
    pub(crate) workers: usize,
    /// Layer-4 passthrough listeners: TLS that must end at the servers, whose connections
    /// siplb places by the client's IP without reading them.
    pub(crate) passthrough: Vec<Passthrough>,
    /// After SIGTERM: how long UDP keeps being forwarded and client flows keep working, with
    /// the TCP and TLS listeners closed, before siplb exits (default 10 s; 0 exits at once).
    pub(crate) shutdown_grace: Duration,
}

/// `[listen] shutdown_grace` when the file does not give it.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Listen {
    /// What siplb's Via names: `advertise`, or the address the first UDP listener is bound to.
    pub(crate) fn advertise_or(&self, first_bound: SocketAddr) -> HostPort {
        self.advertise
            .clone()
            .unwrap_or_else(|| HostPort::from(first_bound))
    }
}

/// `[connections]`: what a TCP or TLS client connection may cost siplb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// Client connections open at once, over every TCP and TLS listener (default 10,000);
    /// one more is closed as soon as it is accepted.
    pub(crate) max: usize,
    /// Client connections open at once from one IP address (default 256).
    pub(crate) max_per_ip: usize,
    /// A client connection that reads nothing for this long is closed (default 1800 s, what
    /// Microsoft requires of load balancers in front of Lync).
    pub(crate) idle_timeout: Duration,
    /// A message that has started must complete its header block within this time (default
    /// 10 s): a client that trickles a header byte by byte (slowloris) is cut off.
    pub(crate) header_timeout: Duration,
    /// A client's TLS handshake must complete within this time (default 5 s); so must siplb's
    /// connect (and handshake) to a TCP or TLS server.
    pub(crate) handshake_timeout: Duration,
    /// The largest header block accepted on a connection (default 64 KiB).
    pub(crate) max_header_bytes: usize,
    /// The largest body accepted on a connection (default 1 MiB).
    pub(crate) max_body_bytes: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max: 10_000,
            max_per_ip: 256,
            idle_timeout: Duration::from_secs(1800),
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_header_bytes: 65_536,
            max_body_bytes: 1_048_576,
        }
    }
}

/// `[dns]`: how siplb resolves the names in server addresses and pools' `srv` and `dns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// How often every name is asked again (default 30 s). Only an answer that differs from
    /// the last one changes the servers.
    pub(crate) refresh: Duration,
    /// How long one lookup may take before it counts as failed (default 5 s).
    pub(crate) timeout: Duration,
    /// DNS servers to ask (`IP:port`); empty: those of `/etc/resolv.conf`.
    pub(crate) nameservers: Vec<SocketAddr>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            nameservers: Vec::new(),
        }
    }
}

/// One `[listen] tls` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsListen {
    /// Address to listen on.
    pub(crate) address: SocketAddr,
    /// Certificate chain (PEM); a relative path in the file is resolved against its directory.
    pub(crate) cert: PathBuf,
    /// Private key (PEM); a relative path in the file is resolved against its directory.
    pub(crate) key: PathBuf,
}

/// One `[listen] passthrough` entry: connections accepted at `address` are placed on a server
/// of `pool` (or of its pair when the pool is failed over) by HRW over the client's IP, and
/// their bytes are copied both ways unread — TLS ends at the server, as behind Microsoft's
/// hardware load balancer for Lync.
#[derive(Debug, Clone, PartialEq)]
pub struct Passthrough {
    /// Address to listen on (TCP; port 0 picks a free port).
    pub(crate) address: SocketAddr,
    /// The home pool; its servers' addresses are where the bytes go (their TLS port).
    pub(crate) pool: String,
    /// A connection with no byte in either direction for this long is closed (default 1800 s,
    /// the least Microsoft allows a load balancer in front of Lync).
    pub(crate) idle_timeout: Duration,
}

/// A `host[:port]` as written into SIP headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host as written: a name, an IPv4 address or a bracketed IPv6 reference (`[::1]`).
    pub(crate) host: String,
    /// The port, when one was written (1..=65535).
    pub(crate) port: Option<u16>,
}

impl HostPort {
    /// The port, or SIP's default 5060.
    pub(crate) fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(5060)
    }
}

impl From<SocketAddr> for HostPort {
    /// The Via `host:port` for a bound address (IPv6 in brackets).
    fn from(addr: SocketAddr) -> Self {
        let host = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        HostPort {
            host,
            port: Some(addr.port()),
        }
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
    pub(crate) listen: Option<SocketAddr>,
    /// File holding the admin bearer token (a relative path in the file is resolved against
    /// its directory). `None`: the token comes from `SIPLB_ADMIN_TOKEN`, or the admin API is
    /// off.
    pub(crate) admin_token_file: Option<PathBuf>,
}

/// `[cluster]`: the other replicas of this fleet, an optional witness, and the token they
/// authenticate each other with.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The other replicas' ops endpoints, in file order.
    pub(crate) peers: Vec<Observer>,
    /// A third vantage point that breaks ties (its ops endpoint).
    pub(crate) witness: Option<Observer>,
    /// The shared bearer token: `token_file`'s content (trimmed), or `SIPLB_CLUSTER_TOKEN`.
    pub(crate) token: ClusterToken,
}

impl Cluster {
    /// Every other observer: the peers in file order, then the witness.
    pub(crate) fn observers(&self) -> impl Iterator<Item = &Observer> {
        self.peers.iter().chain(self.witness.as_ref())
    }
}

/// Another observer's ops endpoint, `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observer {
    /// The URL as written, without a trailing `/`: the name the observer goes by in logs,
    /// metrics and `/status`.
    pub(crate) url: String,
    /// `HOST:PORT`, what is connected to.
    pub(crate) authority: String,
}

/// The cluster token; never shown in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(pub(crate) String);

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterToken({} bytes)", self.0.len())
    }
}

/// Probe settings: `[health]`, or a pool's `health = { ... }` override merged over it.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// How a server is probed: SIP OPTIONS over the server's transport (an answer 500, 503 or
    /// 504 counts as a failure, any other final answer as alive; no answer within `timeout` is
    /// a failure), a TCP connect, or a TLS handshake (`tls-connect`, TLS servers only).
    pub(crate) probe: ProbeKind,
    /// Time between two probes of one server (> 0).
    pub(crate) interval: Duration,
    /// How long a probe may take (> 0, <= `interval`).
    pub(crate) timeout: Duration,
    /// Failed probes in a row that mark a server down (>= 1).
    pub(crate) fall: u32,
    /// Good probes in a row that bring a server back up (>= 1).
    pub(crate) rise: u32,
    /// `flap_window`, `flap_hold` and `max_backoff`: how long a flapping server is held out and
    /// a busy one (503 with `Retry-After`, its probe failing too) backs off.
    pub(crate) damping: Damping,
}

/// `[routing]`: answers siplb gives when it cannot route.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Status for a request no route matches: 404 (default) or 403.
    pub(crate) no_route: u16,
    /// `Retry-After` in the 503 sent when no server of the serving pool is up.
    pub(crate) retry_after: Duration,
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
    pub(crate) level: String,
    pub(crate) format: LogFormat,
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::FrontEnd => "front-end",
            Role::Edge => "edge",
            Role::Mediation => "mediation",
            Role::Director => "director",
        }
    }

    /// The key a route to pools of this role reads when it names none:
    /// - front-end: the To AOR for REGISTER, the From AOR for everything else, so a user's
    ///   registration and the requests they send meet on one server;
    /// - mediation: the Call-ID, so every request of one call reaches one Mediation server;
    /// - edge and director: the source IP (connection affinity, as Microsoft's load-balancing
    ///   guidance has for those roles).
    pub(crate) fn default_key(self, method: &[u8]) -> KeyKind {
        match self {
            Role::FrontEnd if method == b"REGISTER" => KeyKind::ToAor,
            Role::FrontEnd => KeyKind::FromAor,
            Role::Mediation => KeyKind::CallId,
            Role::Edge | Role::Director => KeyKind::SourceIp,
        }
    }
}

/// One `[[pool]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Unique name: letters, digits, `.`, `_` and `-`.
    pub(crate) name: String,
    /// The pool's role; a pool pairs only with a pool of the same role.
    pub(crate) role: Role,
    /// Name of the paired pool; pairs are symmetric (checked).
    pub(crate) pair: Option<String>,
    /// Who moves the pool's users to its pair.
    pub(crate) failover: Mode,
    /// Automatic mode: how long the home pool must stay up before its users go home.
    pub(crate) failback_after: Duration,
    /// The pool is down when fewer servers than this are up.
    pub(crate) min_up: usize,
    /// `[health]` with this pool's overrides applied.
    pub(crate) health: Health,
    /// How siplb opens TLS to the pool's `transport = "tls"` servers (defaults when the file
    /// has no `tls = { ... }`).
    pub(crate) tls: PoolTls,
    /// The servers given by IP address, in file order. With `named` and `dns` they are the
    /// pool's servers; at least one of the three is given.
    pub(crate) servers: Vec<ServerConfig>,
    /// The servers of `servers` given by host name, in file order: each becomes a server once
    /// its name resolves.
    pub(crate) named: Vec<NamedServer>,
    /// `srv = ...` or `dns = ...`: servers that follow DNS records.
    pub(crate) dns: Option<PoolDns>,
}

impl PoolConfig {
    /// Whether some of the pool's servers come from DNS.
    pub(crate) fn uses_dns(&self) -> bool {
        !self.named.is_empty() || self.dns.is_some()
    }

    /// Whether some of the pool's servers, given or from DNS, are `transport = "tls"`.
    pub(crate) fn has_tls_servers(&self) -> bool {
        self.dns.as_ref().map(PoolDns::transport) == Some(Transport::Tls)
            || self.servers.iter().any(|s| s.transport == Transport::Tls)
            || self.named.iter().any(|s| s.transport == Transport::Tls)
    }
}

/// A server whose `address` is `host:port`: its IP address is the name's, asked again every
/// `[dns] refresh`.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedServer {
    /// The host name, lower-case, without a trailing dot.
    pub(crate) name: String,
    pub(crate) port: u16,
    /// HRW identity; defaults to the address as written (`name:port`), so a server whose
    /// record changes keeps its users.
    pub(crate) id: String,
    pub(crate) transport: Transport,
    pub(crate) weight: u32,
    pub(crate) drained: bool,
    /// The name its certificate must carry (`transport = "tls"`); `None`: the pool's
    /// `tls.server_name`, else the host name.
    pub(crate) server_name: Option<String>,
}

/// A pool whose server set follows DNS records.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolDns {
    /// `srv = "_sip._udp.fe.contoso.com"`: one server per SRV record, at its target's address
    /// and port, id `target:port`, weight from the record; the records of the lowest
    /// priority value take the users, higher values only while no lower one has a server up
    /// (RFC 2782, RFC 3263).
    Srv { name: String, transport: Transport },
    /// `dns = "fe.contoso.com:5060"`: one server per address (A and AAAA) of the name, id
    /// `IP:port` (an address record has no other identity), weight 1.
    All {
        name: String,
        port: u16,
        transport: Transport,
    },
}

impl PoolDns {
    /// The name as written in the file.
    pub(crate) fn name(&self) -> &str {
        match self {
            PoolDns::Srv { name, .. } | PoolDns::All { name, .. } => name,
        }
    }

    /// The transport of the servers the records give.
    pub(crate) fn transport(&self) -> Transport {
        match self {
            PoolDns::Srv { transport, .. } | PoolDns::All { transport, .. } => *transport,
        }
    }
}

/// The CA bundle a pool's TLS servers are verified against when its `tls` names no `ca`
/// (Debian's `ca-certificates`).
pub(crate) const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A pool's `tls = { ca, server_name, cert, key }`: how siplb verifies the pool's TLS servers
/// and which certificate it presents to them. Verification is always on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolTls {
    /// PEM file of the CA certificates a server's certificate must chain to (a relative path in
    /// the file is resolved against its directory). `None`: [`SYSTEM_CA_BUNDLE`].
    pub(crate) ca: Option<PathBuf>,
    /// The name every server's certificate must carry, unless the server gives its own
    /// `server_name`. `None`: each server's IP address.
    pub(crate) server_name: Option<String>,
    /// siplb's client certificate, for servers that demand one (MTLS, as Lync servers require
    /// of each other).
    pub(crate) client_cert: Option<ClientCert>,
}

impl PoolTls {
    /// The CA file in effect: `ca`, or the system bundle.
    pub(crate) fn ca_file(&self) -> &Path {
        self.ca
            .as_deref()
            .unwrap_or_else(|| Path::new(SYSTEM_CA_BUNDLE))
    }
}

/// A client certificate chain and its private key, both PEM (checked to match).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCert {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) id: String,
    /// `IP:port` of the server (a [`NamedServer`]'s or a DNS pool's once resolved).
    pub(crate) address: SocketAddr,
    /// Transport siplb uses towards the server.
    pub(crate) transport: Transport,
    /// Relative share of the pool's users (default 1, at least 1).
    pub(crate) weight: u32,
    /// Start drained: out of hashing until an operator undrains it.
    pub(crate) drained: bool,
    /// `transport = "tls"` only: the name the server's certificate must carry, instead of the
    /// pool's `tls.server_name` (or the server's IP address).
    pub(crate) server_name: Option<String>,
    /// SRV priority: a server takes users only while no server of its pool with a lower
    /// value takes traffic. 0 for every server not given by an SRV record.
    pub(crate) priority: u16,
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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) methods: Option<Vec<String>>,
    /// Lower-case request-URI host; `None` matches every host.
    pub(crate) domain: Option<String>,
    /// The request-URI `user=` parameter value (e.g. `phone`), lower-cased; compared
    /// case-insensitively.
    pub(crate) uri_user_param: Option<String>,
    /// Home pool candidates: one name for `pool = ...`, several for `pools = [...]`.
    pub(crate) pools: Vec<String>,
    /// `None`: the default of the pools' role ([`Role::default_key`]).
    pub(crate) key: Option<KeyKind>,
}

/// What can be wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{}: {}: {}", path.display(), line, key, message)]
pub struct ConfigError {
    pub(crate) path: PathBuf,
    /// 1-based line of the offending key (0 when the file could not be read at all).
    pub(crate) line: usize,
    /// Dotted key path, e.g. `route[1].pools` or `pool[0].servers[2].address`.
    pub(crate) key: String,
    /// What was wrong and what is accepted.
    pub(crate) message: String,
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
