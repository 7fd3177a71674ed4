//! The routing table: config and health frozen into one immutable value.
//!
//! The wire path loads the current table from an `ArcSwap` and routes against it without a
//! lock. Whatever changes routing — a probe result, an operator's drain or failover, a config
//! reload — builds a new table aside with [`RoutingTable::build`] and swaps it in whole, so a
//! message is always routed against one consistent view.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use healthcheck::ServerState;

use crate::config::{Config, HostPort, KeyKind, Role, Transport};
use crate::hrw;
use crate::sip::branch::{self, BranchKey};
use crate::sip::response::Refusal;
use crate::stats::{self, Counters, ServerCells};

/// The bit of a method in [`Route`]'s `method_bits`: by its [`stats::method_index`]; the
/// last, `other`, stands for every method siplb does not count by name.
fn method_bit(index: usize) -> u32 {
    1 << index.min(stats::METHODS.len())
}

/// The bits a route must have one of to take a request of this method (by its
/// [`stats::method_index`]): the method's own and, for CANCEL and ACK, INVITE's — they follow
/// their INVITE (RFC 3261 §16.11).
fn wanted_bits(index: usize) -> u32 {
    let name = stats::METHODS.get(index).copied();
    if name == Some("CANCEL") || name == Some("ACK") {
        method_bit(index) | method_bit(stats::method_index(b"INVITE"))
    } else {
        method_bit(index)
    }
}

/// The addresses siplb's listeners are bound to, by transport: what siplb recognises as itself
/// in a Via or a Route, and what its own Via names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
}

impl From<Vec<SocketAddr>> for Local {
    /// UDP listeners only.
    fn from(udp: Vec<SocketAddr>) -> Self {
        Local {
            udp,
            ..Local::default()
        }
    }
}

impl Local {
    /// The listeners of one transport.
    pub fn of(&self, transport: Transport) -> &[SocketAddr] {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
            Transport::Tls => &self.tls,
        }
    }

    /// Every listener address.
    pub fn all(&self) -> impl Iterator<Item = &SocketAddr> + Clone {
        self.udp.iter().chain(&self.tcp).chain(&self.tls)
    }

    /// The first address of all, for the default `advertise`.
    pub fn first(&self) -> Option<SocketAddr> {
        self.all().next().copied()
    }
}

/// One backend server as routing sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Server {
    pub(crate) id: String,
    pub(crate) address: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) weight: u32,
    /// `hrw::id_hash(id)`, computed once.
    pub(crate) id_hash: u64,
    pub(crate) state: ServerState,
    /// SRV priority (0 unless the server comes from an SRV record): a server takes users only
    /// while no server of its pool with a lower value takes traffic.
    pub(crate) priority: u16,
}

/// One pool: its servers and where its users are served now.
#[derive(Debug, Clone)]
pub struct Pool {
    pub(crate) name: String,
    pub(crate) role: Role,
    /// Index of the paired pool.
    pub(crate) pair: Option<usize>,
    pub(crate) servers: Vec<Server>,
    pub(crate) id_hash: u64,
    /// This pool's users are served by its pair.
    pub(crate) failed_over: bool,
    /// Its servers have more than one SRV priority.
    pub(crate) tiered: bool,
}

impl Pool {
    /// How many servers take traffic.
    pub(crate) fn up_count(&self) -> usize {
        self.servers
            .iter()
            .filter(|s| s.state.takes_traffic())
            .count()
    }
}

/// One `[[route]]`, with pool names resolved to indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub(crate) methods: Option<Vec<String>>,
    /// `methods` as bits by [`stats::method_index`], for the methods siplb counts by name;
    /// the others (extension methods) are found by name in `methods`.
    method_bits: u32,
    pub(crate) domain: Option<String>,
    pub(crate) uri_user_param: Option<String>,
    pub pools: Vec<usize>,
    /// The `key` the route names; `None` leaves it to `role`.
    pub(crate) key: Option<KeyKind>,
    /// The role of the route's pools (validation makes them share one); it picks the key when
    /// the route names none.
    pub(crate) role: Role,
}

/// Why a route reads the key it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRule {
    /// The route names its `key`.
    Route,
    /// The route names none: the default of its pools' role ([`Role::default_key`]).
    RoleDefault(Role),
}

impl KeyRule {
    /// Says why, for `siplb route` and `/route`: `route's key`, or `default for a mediation
    /// pool` (for a Front End pool, with the method's part of the rule).
    pub(crate) fn describe(self, method: &[u8]) -> String {
        match self {
            KeyRule::Route => "route's key".to_string(),
            KeyRule::RoleDefault(Role::FrontEnd) if method == b"REGISTER" => {
                "default for a front-end pool: To AOR for REGISTER".to_string()
            }
            KeyRule::RoleDefault(Role::FrontEnd) => {
                "default for a front-end pool: From AOR for all but REGISTER".to_string()
            }
            KeyRule::RoleDefault(Role::Edge) => "default for an edge pool".to_string(),
            KeyRule::RoleDefault(role) => format!("default for a {} pool", role.as_str()),
        }
    }
}

impl Route {
    /// The key this route reads for a request of `method`: its own `key`, else its role's
    /// default ([`Role::default_key`]).
    pub(crate) fn key_for(&self, method: &[u8]) -> KeyKind {
        match self.key {
            Some(key) => key,
            None => self.role.default_key(method),
        }
    }

    /// Why the route reads the key [`Route::key_for`] gives.
    pub(crate) fn key_rule(&self) -> KeyRule {
        match self.key {
            Some(_) => KeyRule::Route,
            None => KeyRule::RoleDefault(self.role),
        }
    }

    /// Whether a request with this method (`wanted`: its [`wanted_bits`], found once for all
    /// routes) and request-URI matches (`ruri`: its host and `user=` parameter, when it
    /// could be read). A method counted by name is one bit test, another is looked up by name.
    /// CANCEL and ACK match the routes INVITE matches, so they follow their INVITE (RFC 3261
    /// §16.11). Hosts and `user=` compare case-insensitively.
    fn matches(&self, wanted: u32, method: &[u8], ruri: Option<RuriFacts<'_>>) -> bool {
        if let Some(methods) = &self.methods {
            let other = wanted == method_bit(stats::METHODS.len());
            let hit = self.method_bits & wanted != 0
                && (!other || methods.iter().any(|m| m.as_bytes() == method));
            if !hit {
                return false;
            }
        }
        if let Some(domain) = &self.domain {
            if !ruri.is_some_and(|u| u.host.eq_ignore_ascii_case(domain.as_bytes())) {
                return false;
            }
        }
        if let Some(want) = &self.uri_user_param {
            let got = ruri.and_then(|u| u.user_param);
            if !got.is_some_and(|g| g.eq_ignore_ascii_case(want.as_bytes())) {
                return false;
            }
        }
        true
    }

    /// Whether matching needs the request-URI parsed.
    fn needs_ruri(&self) -> bool {
        self.domain.is_some() || self.uri_user_param.is_some() || self.key == Some(KeyKind::RuriAor)
    }
}

/// What routes match on in a request-URI, as bytes of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuriFacts<'a> {
    pub(crate) host: &'a [u8],
    pub(crate) user_param: Option<&'a [u8]>,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) route: usize,
    /// The user's home pool.
    pub(crate) home: usize,
    /// The pool serving the home pool's users now (the pair when failed over).
    pub(crate) serving: usize,
    /// The chosen server of the serving pool, `None` when none is up.
    pub(crate) server: Option<usize>,
}

/// Where a key of a known home pool goes: [`Decision`] without the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The home pool.
    pub(crate) home: usize,
    /// The pool serving the home pool's users now (the pair when failed over).
    pub(crate) serving: usize,
    /// The chosen server of the serving pool, `None` when none takes traffic.
    pub(crate) server: Option<usize>,
}

/// What the table builder needs to know about health; `None` means "no news": a server starts
/// up (or drained, if its config says so) and a pool starts at home.
pub trait HealthView {
    fn server_state(&self, id: &str) -> Option<ServerState>;
    fn failed_over(&self, pool: &str) -> bool;
}

/// Every server up (or drained per config), every pool at home.
pub struct ConfigHealth;

impl HealthView for ConfigHealth {
    fn server_state(&self, _: &str) -> Option<ServerState> {
        None
    }
    fn failed_over(&self, _: &str) -> bool {
        false
    }
}

/// The immutable routing table.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Increases with every table built by a process.
    pub(crate) version: u64,
    /// The `host[:port]` siplb writes into its Via.
    pub advertise: HostPort,
    /// `Via: SIP/2.0/UDP <host:port>;branch=z9hG4bK-lb`, ready to be completed per message,
    /// for a message going to an IPv4 address (`[0]`) and to an IPv6 one (`[1]`); see
    /// [`RoutingTable::via_prefix`], by transport (udp, tcp, tls) and family (v4, v6).
    via_prefixes: [[Vec<u8>; 2]; 3],
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    /// The answer to a request no route matches.
    pub(crate) no_route: Refusal,
    pub(crate) retry_after_secs: u64,
    /// The `Server` header of siplb's answers; empty for none.
    pub(crate) server_header: String,
    /// What siplb's branches are keyed with.
    pub(crate) branch_key: BranchKey,
    /// Whether any route reads the request-URI.
    pub(crate) needs_ruri: bool,
    /// The wire-path counters of this table's pools.
    pub(crate) counters: Counters,
    servers_by_addr: HashMap<SocketAddr, (usize, usize)>,
    local: Local,
}

/// The branch key of a process whose config names none: drawn once, so that every table the
/// process builds verifies the branches of the ones before it.
fn process_branch_key() -> BranchKey {
    static KEY: OnceLock<BranchKey> = OnceLock::new();
    *KEY.get_or_init(|| {
        tracing::info!(
            "no [routing] branch_key_file and no SIPLB_BRANCH_KEY: Via branches are keyed with a \
             random key of this process; replicas will not verify each other's responses"
        );
        BranchKey::random()
    })
}

impl RoutingTable {
    /// A table for `cfg` as written, with nothing bound: its `[listen] udp` addresses count as
    /// siplb's own and it advertises `[listen] advertise` or the first of them. For
    /// `siplb route` and for routing in tests and benchmarks.
    pub fn unbound(cfg: &Config, health: &dyn HealthView) -> RoutingTable {
        let local = Local {
            udp: cfg.listen.udp.clone(),
            tcp: cfg.listen.tcp.clone(),
            tls: cfg.listen.tls.iter().map(|t| t.address).collect(),
        };
        let first = local.first();
        let advertise = cfg
            .listen
            .advertise_or(first.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5060))));
        RoutingTable::build(cfg, advertise, local, 1, health)
    }

    /// Builds a table from a validated config, the addresses siplb listens on (`local`), the
    /// address it advertises, and what health says.
    pub fn build(
        cfg: &Config,
        advertise: HostPort,
        local: impl Into<Local>,
        version: u64,
        health: &dyn HealthView,
    ) -> RoutingTable {
        let local = local.into();
        let index: HashMap<&str, usize> = cfg
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut servers_by_addr = HashMap::new();
        let pools: Vec<Pool> = cfg
            .pools
            .iter()
            .enumerate()
            .map(|(pi, p)| {
                let servers = p
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(si, s)| {
                        servers_by_addr.insert(s.address, (pi, si));
                        let default = if s.drained {
                            ServerState::Drained
                        } else {
                            ServerState::Up
                        };
                        Server {
                            id: s.id.clone(),
                            address: s.address,
                            transport: s.transport,
                            weight: s.weight,
                            id_hash: hrw::id_hash(&s.id),
                            state: health.server_state(&s.id).unwrap_or(default),
                            priority: s.priority,
                        }
                    })
                    .collect::<Vec<Server>>();
                Pool {
                    tiered: servers.iter().any(|s| s.priority != servers[0].priority),
                    name: p.name.clone(),
                    role: p.role,
                    pair: p.pair.as_deref().and_then(|n| index.get(n).copied()),
                    servers,
                    id_hash: hrw::id_hash(&p.name),
                    failed_over: health.failed_over(&p.name),
                }
            })
            .collect();
        let routes: Vec<Route> = cfg
            .routes
            .iter()
            .map(|r| {
                let route_pools: Vec<usize> = r
                    .pools
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect();
                let method_bits = r.methods.iter().flatten().fold(0, |bits, m| {
                    bits | method_bit(stats::method_index(m.as_bytes()))
                });
                Route {
                    methods: r.methods.clone(),
                    method_bits,
                    domain: r.domain.clone(),
                    uri_user_param: r.uri_user_param.clone(),
                    // Validation gives every route at least one pool, all of one role.
                    role: route_pools
                        .first()
                        .map_or(Role::FrontEnd, |&p| cfg.pools[p].role),
                    pools: route_pools,
                    key: r.key,
                }
            })
            .collect();
        let via = |transport: Transport, sent_by: &HostPort| {
            let token = transport.as_str().to_ascii_uppercase();
            let mut prefix = format!("Via: SIP/2.0/{token} {sent_by};branch=").into_bytes();
            prefix.extend_from_slice(branch::PREFIX);
            prefix
        };
        // An address of one family in the Via is no use to a server of the other: a message
        // for such a server names siplb's listener of the server's family instead, so a server
        // answering at the sent-by port (RFC 3261 §18.2.2) reaches siplb whatever the ports. A
        // name is written for every family. Over TCP and TLS the Via names the port of siplb's
        // listener of that transport (a server that loses the connection opens a new one
        // there), over UDP the advertised port.
        let advertised_ip = parse_ip(advertise.host.as_bytes());
        let of = |transport: Transport, v6: bool| {
            let listeners = local.of(transport);
            let own_family = |l: &&SocketAddr| l.is_ipv6() == v6;
            match advertised_ip {
                Some(ip) if ip.is_ipv6() != v6 => listeners
                    .iter()
                    .find(own_family)
                    .or_else(|| local.udp.iter().find(own_family))
                    .map_or_else(
                        || via(transport, &advertise),
                        |&a| via(transport, &HostPort::from(a)),
                    ),
                _ => match (transport, listeners.first()) {
                    (Transport::Udp, _) | (_, None) => via(transport, &advertise),
                    (_, Some(l)) => via(
                        transport,
                        &HostPort {
                            host: advertise.host.clone(),
                            port: Some(l.port()),
                        },
                    ),
                },
            }
        };
        let via_prefixes =
            [Transport::Udp, Transport::Tcp, Transport::Tls].map(|t| [of(t, false), of(t, true)]);
        let branch_key = match &cfg.routing.branch_key {
            Some(secret) => BranchKey::from_secret(&secret.0),
            None => process_branch_key(),
        };
        RoutingTable {
            version,
            needs_ruri: routes.iter().any(Route::needs_ruri),
            advertise,
            via_prefixes,
            counters: Counters::new(pools.iter().map(|p| p.name.as_str())).with_servers(
                pools
                    .iter()
                    .map(|p| {
                        p.servers
                            .iter()
                            .map(|s| Arc::new(ServerCells::new(&p.name, &s.id)))
                            .collect()
                    })
                    .collect(),
            ),
            pools,
            routes,
            no_route: Refusal::NoRoute {
                forbidden: cfg.routing.no_route == 403,
            },
            retry_after_secs: cfg.routing.retry_after.as_secs(),
            server_header: cfg.routing.server_header.clone(),
            branch_key,
            servers_by_addr,
            local,
        }
    }

    /// The start of siplb's Via for a message sent to `to`: it names `[listen] advertise` (by
    /// default the first listener), or siplb's listener of `to`'s family when the advertised
    /// address is of the other family.
    pub(crate) fn via_prefix(&self, to: SocketAddr, transport: Transport) -> &[u8] {
        let t = match transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        };
        &self.via_prefixes[t][usize::from(to.is_ipv6())]
    }

    /// The first route that matches, if any.
    /// The `host:port` siplb's Via names for a hop of this transport to `to`.
    pub(crate) fn sent_by(&self, to: SocketAddr, transport: Transport) -> &[u8] {
        let prefix = self.via_prefix(to, transport);
        let head = b"Via: SIP/2.0/UDP ".len();
        let tail = b";branch=".len() + branch::PREFIX.len();
        &prefix[head..prefix.len() - tail]
    }

    /// The server whose id is `name` (any case), or `name:port` — the id a server given by
    /// host name has by default — with `port` (5060 when `None`).
    pub(crate) fn server_named(&self, name: &[u8], port: Option<u16>) -> Option<(usize, usize)> {
        let port = port.unwrap_or(5060);
        let is = |id: &[u8]| {
            if id.eq_ignore_ascii_case(name) {
                return true;
            }
            let (Some(host), Some(rest)) = (id.get(..name.len()), id.get(name.len()..)) else {
                return false;
            };
            host.eq_ignore_ascii_case(name)
                && rest.first() == Some(&b':')
                && std::str::from_utf8(&rest[1..])
                    .ok()
                    .and_then(|p| p.parse::<u16>().ok())
                    == Some(port)
        };
        self.pools.iter().enumerate().find_map(|(p, pool)| {
            pool.servers
                .iter()
                .position(|s| is(s.id.as_bytes()))
                .map(|s| (p, s))
        })
    }

    /// The pool of a configured server at this IP address, whatever the port (a server opens
    /// connections from ports of its own).
    pub(crate) fn pool_at_ip(&self, ip: IpAddr) -> Option<usize> {
        self.pools
            .iter()
            .position(|p| p.servers.iter().any(|s| s.address.ip() == ip))
    }

    pub(crate) fn match_route(&self, method: &[u8], ruri: Option<RuriFacts<'_>>) -> Option<usize> {
        let wanted = wanted_bits(stats::method_index(method));
        self.routes
            .iter()
            .position(|r| r.matches(wanted, method, ruri))
    }

    /// The pool that serves `home`'s users now.
    pub(crate) fn serving(&self, home: usize) -> usize {
        let pool = &self.pools[home];
        match pool.pair {
            Some(pair) if pool.failed_over => pair,
            _ => home,
        }
    }

    /// Routes a key (a [`hrw::key_hash`]) through route `route`: home pool by HRW over the
    /// route's pools, then [`RoutingTable::decide_pool`].
    pub(crate) fn decide(&self, route: usize, key: u64) -> Decision {
        let r = &self.routes[route];
        let home = hrw::best(key, r.pools.iter().map(|&p| (p, self.pools[p].id_hash, 1)))
            .unwrap_or_default();
        let placed = self.decide_pool(home, key);
        Decision {
            route,
            home: placed.home,
            serving: placed.serving,
            server: placed.server,
        }
    }

    /// Places a key whose home pool is known (a passthrough listener's pool): serving pool (the
    /// pair when `home` is failed over), then server by weighted HRW over the serving pool's
    /// servers that take traffic. The one place the rule is written; [`RoutingTable::decide`]
    /// uses it.
    pub(crate) fn decide_pool(&self, home: usize, key: u64) -> Placement {
        let serving = self.serving(home);
        Placement {
            home,
            serving,
            server: self.next_server(serving, key, &[]),
        }
    }

    /// The server of `pool` that HRW ranks first for `key` among those that take traffic and
    /// are not in `tried`: with `tried` empty the server [`RoutingTable::decide_pool`] chooses,
    /// and then, as servers are added to `tried`, the next ones in HRW order (a rendezvous
    /// ranking over fewer candidates keeps the others' order).
    ///
    /// Only the servers of the lowest SRV priority among the candidates compete (RFC 2782:
    /// a higher priority value is a backup); without SRV servers every priority is 0.
    pub(crate) fn next_server(&self, pool: usize, key: u64, tried: &[usize]) -> Option<usize> {
        let candidates = || {
            self.pools[pool]
                .servers
                .iter()
                .enumerate()
                .filter(|(i, s)| s.state.takes_traffic() && !tried.contains(i))
        };
        let priority = match self.pools[pool].tiered {
            true => candidates().map(|(_, s)| s.priority).min()?,
            false => 0,
        };
        let up = candidates()
            .filter(|(_, s)| !self.pools[pool].tiered || s.priority == priority)
            .map(|(i, s)| (i, s.id_hash, s.weight));
        hrw::best(key, up)
    }

    /// How many servers the table holds, in all its pools.
    pub fn server_count(&self) -> usize {
        self.pools.iter().map(|p| p.servers.len()).sum()
    }

    /// The index of the pool named `name`.
    pub(crate) fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// The addresses siplb listens on.
    pub(crate) fn local(&self) -> &Local {
        &self.local
    }

    /// The server at `(pool, server)` indices.
    pub(crate) fn server(&self, pool: usize, server: usize) -> &Server {
        &self.pools[pool].servers[server]
    }

    /// Takes over the traffic counts ([`ServerCells`]) of every server `prev` has too — the
    /// same id in a pool of the same name — so that a new table counts on where the one
    /// before it left off; a server new to the pool starts at zero.
    pub(crate) fn carry_traffic(&mut self, prev: &RoutingTable) {
        let old: HashMap<(&str, &str), &Arc<ServerCells>> = prev
            .counters
            .servers
            .iter()
            .flatten()
            .map(|c| {
                let (pool, id) = c.labels();
                ((&**pool, &**id), c)
            })
            .collect();
        for cells in self.counters.servers.iter_mut().flatten() {
            let (pool, id) = cells.labels();
            if let Some(&kept) = old.get(&(&**pool, &**id)) {
                *cells = kept.clone();
            }
        }
    }

    /// The configured server listening at `addr`, as `(pool, server)` indices.
    pub(crate) fn server_at(&self, addr: SocketAddr) -> Option<(usize, usize)> {
        self.servers_by_addr.get(&addr).copied()
    }

    /// Whether `host:port` (as written in a URI or Via) names this siplb instance.
    pub(crate) fn is_us(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        if host.eq_ignore_ascii_case(self.advertise.host.as_bytes())
            && (port == self.advertise.port_or_default()
                || self.local.all().any(|l| l.port() == port))
        {
            return true;
        }
        parse_ip(host).is_some_and(|ip| self.local.all().any(|l| l.ip() == ip && l.port() == port))
    }
}

/// Reads an IP address as a URI or Via writes it: IPv6 with or without brackets. No
/// allocation.
pub(crate) fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let host = host.strip_prefix(b"[").unwrap_or(host);
    let host = host.strip_suffix(b"]").unwrap_or(host);
    if host.len() > 45 {
        return None;
    }
    std::str::from_utf8(host).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    const CFG: &str = r#"
[listen]
udp = ["127.0.0.1:5060"]
[[pool]]
name = "a"
pair = "b"
servers = [{ address = "127.0.0.1:5071" }, { address = "127.0.0.1:5072" }]
[[pool]]
name = "b"
pair = "a"
servers = [{ address = "127.0.0.1:5081" }, { address = "127.0.0.1:5082", drained = true }]
[[pool]]
name = "med"
role = "mediation"
servers = [{ address = "127.0.0.1:5091" }]
[[route]]
uri_user_param = "phone"
pool = "med"
key = "call-id"
[[route]]
methods = ["INVITE"]
domain = "contoso.com"
pools = ["a", "b"]
"#;

    struct FailedOver(&'static str);
    impl HealthView for FailedOver {
        fn server_state(&self, _: &str) -> Option<ServerState> {
            None
        }
        fn failed_over(&self, pool: &str) -> bool {
            pool == self.0
        }
    }

    fn table(health: &dyn HealthView) -> RoutingTable {
        let cfg = parse(Path::new("t.toml"), CFG).expect("valid config");
        let adv = HostPort {
            host: "lb.contoso.com".into(),
            port: Some(5060),
        };
        RoutingTable::build(
            &cfg,
            adv,
            vec!["127.0.0.1:5060".parse().unwrap()],
            1,
            health,
        )
    }

    fn facts<'a>(host: &'a str, user_param: Option<&'a str>) -> RuriFacts<'a> {
        RuriFacts {
            host: host.as_bytes(),
            user_param: user_param.map(str::as_bytes),
        }
    }

    #[test]
    fn routes_match_in_order_and_cancel_follows_invite() {
        let t = table(&ConfigHealth);
        let phone = facts("gw.contoso.com", Some("PHONE"));
        let fe = facts("contoso.com", None);
        assert_eq!(t.match_route(b"INVITE", Some(phone)), Some(0));
        assert_eq!(t.match_route(b"INVITE", Some(fe)), Some(1));
        assert_eq!(t.match_route(b"CANCEL", Some(fe)), Some(1));
        assert_eq!(t.match_route(b"ACK", Some(fe)), Some(1));
        assert_eq!(t.match_route(b"MESSAGE", Some(fe)), None);
        assert_eq!(
            t.match_route(b"INVITE", Some(facts("fabrikam.com", None))),
            None
        );
        assert!(t.needs_ruri);
    }

    #[test]
    fn extension_methods_match_by_name_and_cancel_follows_only_invite() {
        let cfg = parse(
            Path::new("t.toml"),
            "[listen]\nudp = [\"127.0.0.1:5060\"]\n[[pool]]\nname = \"a\"\n\
             servers = [{ address = \"127.0.0.1:5071\" }]\n\
             [[route]]\nmethods = [\"X-FOO\", \"BYE\"]\npool = \"a\"\n\
             [[route]]\nmethods = [\"CANCEL\"]\npool = \"a\"\n",
        )
        .expect("valid config");
        let t = RoutingTable::unbound(&cfg, &ConfigHealth);
        assert_eq!(t.match_route(b"X-FOO", None), Some(0));
        assert_eq!(t.match_route(b"BYE", None), Some(0));
        assert_eq!(t.match_route(b"X-BAR", None), None);
        assert_eq!(
            t.match_route(b"x-foo", None),
            None,
            "methods are case-sensitive"
        );
        assert_eq!(t.match_route(b"CANCEL", None), Some(1));
        assert_eq!(t.match_route(b"ACK", None), None);
        assert_eq!(t.match_route(b"INVITE", None), None);
    }

    #[test]
    fn drained_servers_take_no_users_and_failover_serves_from_the_pair() {
        let t = table(&ConfigHealth);
        for k in 0..2000u64 {
            let d = t.decide(1, k);
            assert_eq!(d.serving, d.home);
            if d.home == 1 {
                assert_eq!(d.server, Some(0), "b's drained server got a user");
            }
        }
        let t = table(&FailedOver("a"));
        let mut served_by_b = 0;
        for k in 0..2000u64 {
            let d = t.decide(1, k);
            if d.home == 0 {
                assert_eq!(d.serving, 1);
                served_by_b += 1;
            }
        }
        assert!(
            served_by_b > 800,
            "about half the users are a's: {served_by_b}"
        );
    }

    struct Down(String);
    impl HealthView for Down {
        fn server_state(&self, id: &str) -> Option<ServerState> {
            (id == self.0).then_some(ServerState::Down)
        }
        fn failed_over(&self, _: &str) -> bool {
            false
        }
    }

    #[test]
    fn a_pool_places_keys_as_its_routes_do_and_ranks_the_fallbacks() {
        let t = table(&ConfigHealth);
        let a = t.pool_index("a").expect("pool a");
        assert_eq!(t.pool_index("nope"), None);
        for k in 0..500u64 {
            let d = t.decide(1, k);
            let p = t.decide_pool(d.home, k);
            assert_eq!((p.home, p.serving, p.server), (d.home, d.serving, d.server));
            // The fallback is the server the key moves to when its own is down.
            let first = t.decide_pool(a, k).server.expect("a server of a");
            let next = t.next_server(a, k, &[first]);
            let down = table(&Down(t.pools[a].servers[first].id.clone()));
            assert_eq!(next, down.decide_pool(a, k).server);
            assert_eq!(t.next_server(a, k, &[0, 1]), None);
        }
        // Failed over: served by the pair, whose drained server takes nothing.
        let t = table(&FailedOver("a"));
        for k in 0..200u64 {
            let p = t.decide_pool(a, k);
            assert_eq!((p.home, p.serving, p.server), (a, 1, Some(0)));
        }
    }

    #[test]
    fn a_via_for_a_server_of_the_other_family_names_the_listener_of_its_family() {
        let cfg = parse(
            Path::new("t.toml"),
            "[listen]\nudp = [\"127.0.0.1:5060\", \"[::1]:5070\"]\n[[pool]]\nname = \"a\"\n\
             servers = [{ address = \"[::1]:5071\" }]\n[[route]]\npool = \"a\"\n",
        )
        .expect("valid config");
        let t = RoutingTable::unbound(&cfg, &ConfigHealth);
        let v4: SocketAddr = "127.0.0.1:5071".parse().unwrap();
        let v6: SocketAddr = "[::1]:5071".parse().unwrap();
        assert_eq!(
            t.via_prefix(v4, Transport::Udp),
            b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-lb"
        );
        assert_eq!(
            t.via_prefix(v6, Transport::Udp),
            b"Via: SIP/2.0/UDP [::1]:5070;branch=z9hG4bK-lb"
        );
        // An advertised name is what every Via says.
        let t = table(&ConfigHealth);
        assert_eq!(
            t.via_prefix(v4, Transport::Udp),
            t.via_prefix(v6, Transport::Udp)
        );
    }

    #[test]
    fn a_route_without_key_reads_the_default_of_its_pools_role() {
        let mut text = String::from("[listen]\nudp = [\"127.0.0.1:5060\"]\n");
        let roles = ["front-end", "mediation", "edge", "director"];
        for (i, role) in roles.iter().enumerate() {
            text += &format!(
                "[[pool]]\nname = \"{role}\"\nrole = \"{role}\"\n\
                 servers = [{{ address = \"127.0.0.1:{}\" }}]\n",
                5071 + i
            );
        }
        for role in roles {
            text += &format!("[[route]]\ndomain = \"{role}.test\"\npool = \"{role}\"\n");
        }
        text += "[[route]]\npool = \"mediation\"\nkey = \"to-aor\"\n";
        let cfg = parse(Path::new("t.toml"), &text).expect("valid config");
        let t = RoutingTable::unbound(&cfg, &ConfigHealth);
        let key = |route: usize, method: &[u8]| t.routes[route].key_for(method);
        let rule = |route: usize, method: &[u8]| t.routes[route].key_rule().describe(method);

        assert_eq!(key(0, b"REGISTER"), KeyKind::ToAor);
        assert_eq!(key(0, b"INVITE"), KeyKind::FromAor);
        assert_eq!(key(0, b"SUBSCRIBE"), KeyKind::FromAor);
        assert_eq!(
            rule(0, b"REGISTER"),
            "default for a front-end pool: To AOR for REGISTER"
        );
        assert_eq!(
            rule(0, b"INVITE"),
            "default for a front-end pool: From AOR for all but REGISTER"
        );
        for method in [&b"REGISTER"[..], b"INVITE", b"BYE", b"CANCEL"] {
            assert_eq!(key(1, method), KeyKind::CallId);
            assert_eq!(key(2, method), KeyKind::SourceIp);
            assert_eq!(key(3, method), KeyKind::SourceIp);
            assert_eq!(key(4, method), KeyKind::ToAor, "a route's key wins");
        }
        assert_eq!(rule(1, b"INVITE"), "default for a mediation pool");
        assert_eq!(rule(2, b"INVITE"), "default for an edge pool");
        assert_eq!(rule(3, b"REGISTER"), "default for a director pool");
        assert_eq!(rule(4, b"INVITE"), "route's key");
        assert_eq!(t.routes[4].key_rule(), KeyRule::Route);
        assert_eq!(
            t.routes[2].key_rule(),
            KeyRule::RoleDefault(Role::Edge),
            "the route takes its pool's role"
        );
    }

    #[test]
    fn knows_itself_and_its_servers() {
        let t = table(&ConfigHealth);
        assert!(t.is_us(b"LB.contoso.com", None));
        assert!(t.is_us(b"127.0.0.1", Some(5060)));
        assert!(!t.is_us(b"127.0.0.1", Some(5071)));
        assert_eq!(t.server_at("127.0.0.1:5082".parse().unwrap()), Some((1, 1)));
        assert_eq!(t.server_at("127.0.0.1:5083".parse().unwrap()), None);
        // By id, or by host and port for a server whose id is `host:port` (a server given by
        // host name: a Record-Route with its name finds it).
        assert_eq!(t.server_named(b"127.0.0.1:5082", None), Some((1, 1)));
        assert_eq!(t.server_named(b"127.0.0.1", Some(5082)), Some((1, 1)));
        assert_eq!(t.server_named(b"127.0.0.1", Some(5083)), None);
        assert_eq!(t.server_named(b"127.0.0.1", None), None);
        assert_eq!(parse_ip(b"[::1]"), parse_ip(b"::1"));
        assert_eq!(
            parse_ip(b"::1"),
            Some(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        );
        assert_eq!(parse_ip(b"host"), None);
        assert_eq!(
            t.via_prefix("127.0.0.1:5071".parse().unwrap(), Transport::Udp),
            b"Via: SIP/2.0/UDP lb.contoso.com:5060;branch=z9hG4bK-lb"
        );
    }

    #[test]
    fn a_new_table_counts_on_where_the_one_before_left_off() {
        let old = table(&ConfigHealth);
        let invite = stats::method_index(b"INVITE");
        old.counters.count(stats::Count::Request {
            pool: 0,
            method: invite,
            server: Some(1),
        });
        let mut new = table(&FailedOver("a"));
        assert_eq!(new.counters.servers[0][1].read().forwarded, 0);
        new.carry_traffic(&old);
        new.counters.count(stats::Count::Request {
            pool: 0,
            method: invite,
            server: Some(1),
        });
        assert_eq!(new.counters.servers[0][1].read().forwarded, 2);
        assert_eq!(old.counters.servers[0][1].read().forwarded, 2, "one cell");
        assert_eq!(new.counters.servers[0][0].read().forwarded, 0);
    }
}
