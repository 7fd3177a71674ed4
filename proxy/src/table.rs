//! The routing table: config and health frozen into one immutable value.
//!
//! The wire path loads the current table from an `ArcSwap` and routes against it without a
//! lock. Whatever changes routing — a probe result, an operator's drain or failover, a config
//! reload — builds a new table aside with [`RoutingTable::build`] and swaps it in whole, so a
//! message is always routed against one consistent view.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use healthcheck::ServerState;

use crate::config::{Config, HostPort, KeyKind, Mode, Role, Transport};
use crate::hrw;
use crate::sip::uri::UriFacts;
use crate::stats::PoolCounters;

/// One backend server as routing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub id: String,
    pub address: SocketAddr,
    pub transport: Transport,
    pub weight: u32,
    /// `hrw::id_hash(id)`, computed once.
    pub id_hash: u64,
    pub state: ServerState,
}

/// One pool: its servers and where its users are served now.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub role: Role,
    /// Index of the paired pool.
    pub pair: Option<usize>,
    pub failover: Mode,
    pub min_up: usize,
    pub servers: Vec<Server>,
    pub id_hash: u64,
    /// This pool's users are served by its pair.
    pub failed_over: bool,
    /// Requests forwarded to this pool, by method.
    pub counters: PoolCounters,
}

impl Pool {
    /// How many servers take traffic.
    pub fn up_count(&self) -> usize {
        self.servers
            .iter()
            .filter(|s| s.state.takes_traffic())
            .count()
    }

    /// A pool is up while at least `min_up` of its servers are.
    pub fn is_up(&self) -> bool {
        self.up_count() >= self.min_up
    }
}

/// One `[[route]]`, with pool names resolved to indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub methods: Option<Vec<String>>,
    pub domain: Option<String>,
    pub uri_user_param: Option<String>,
    pub pools: Vec<usize>,
    pub key: Option<KeyKind>,
}

impl Route {
    /// The key this route reads for a request of `method`.
    pub fn key_for(&self, method: &[u8]) -> KeyKind {
        self.key.unwrap_or(if method == b"REGISTER" {
            KeyKind::ToAor
        } else {
            KeyKind::FromAor
        })
    }

    /// Whether a request with this method and request-URI matches. CANCEL and ACK match the
    /// routes INVITE matches, so they follow their INVITE (RFC 3261 §16.11).
    pub fn matches(&self, method: &[u8], ruri: Option<&UriFacts>) -> bool {
        if let Some(methods) = &self.methods {
            let follows_invite = method == b"CANCEL" || method == b"ACK";
            let hit = methods
                .iter()
                .any(|m| m.as_bytes() == method || (follows_invite && m == "INVITE"));
            if !hit {
                return false;
            }
        }
        if let Some(domain) = &self.domain {
            if ruri.map(|u| u.host.as_str()) != Some(domain.as_str()) {
                return false;
            }
        }
        if let Some(want) = &self.uri_user_param {
            let got = ruri.and_then(|u| u.user_param.as_deref());
            if !got.is_some_and(|g| g.eq_ignore_ascii_case(want)) {
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

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub route: usize,
    /// The user's home pool.
    pub home: usize,
    /// The pool serving the home pool's users now (the pair when failed over).
    pub serving: usize,
    /// The chosen server of the serving pool, `None` when none is up.
    pub server: Option<usize>,
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
    pub version: u64,
    /// The `host[:port]` siplb writes into its Via.
    pub advertise: HostPort,
    /// `Via: SIP/2.0/UDP <advertise>;branch=z9hG4bK-lb`, ready to be completed per message.
    pub via_prefix: Vec<u8>,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    pub no_route: u16,
    pub retry_after_secs: u64,
    /// Whether any route reads the request-URI.
    pub needs_ruri: bool,
    servers_by_addr: HashMap<SocketAddr, (usize, usize)>,
    server_ips: HashSet<IpAddr>,
    local: Vec<SocketAddr>,
}

/// The branch prefix of every Via siplb writes: RFC 3261's magic cookie and our mark.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bK-lb";

impl RoutingTable {
    /// Builds a table from a validated config, the addresses siplb listens on (`local`), the
    /// address it advertises, and what health says.
    pub fn build(
        cfg: &Config,
        advertise: HostPort,
        local: Vec<SocketAddr>,
        version: u64,
        health: &dyn HealthView,
    ) -> RoutingTable {
        let index: HashMap<&str, usize> = cfg
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut servers_by_addr = HashMap::new();
        let mut server_ips = HashSet::new();
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
                        server_ips.insert(s.address.ip());
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
                        }
                    })
                    .collect();
                Pool {
                    name: p.name.clone(),
                    role: p.role,
                    pair: p.pair.as_deref().and_then(|n| index.get(n).copied()),
                    failover: p.failover,
                    min_up: p.min_up,
                    servers,
                    id_hash: hrw::id_hash(&p.name),
                    failed_over: health.failed_over(&p.name),
                    counters: PoolCounters::new(&p.name),
                }
            })
            .collect();
        let routes: Vec<Route> = cfg
            .routes
            .iter()
            .map(|r| Route {
                methods: r.methods.clone(),
                domain: r.domain.clone(),
                uri_user_param: r.uri_user_param.clone(),
                pools: r
                    .pools
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect(),
                key: r.key,
            })
            .collect();
        let mut via_prefix = format!("Via: SIP/2.0/UDP {advertise};branch=").into_bytes();
        via_prefix.extend_from_slice(BRANCH_PREFIX);
        RoutingTable {
            version,
            needs_ruri: routes.iter().any(Route::needs_ruri),
            advertise,
            via_prefix,
            pools,
            routes,
            no_route: cfg.routing.no_route,
            retry_after_secs: cfg.routing.retry_after.as_secs(),
            servers_by_addr,
            server_ips,
            local,
        }
    }

    /// The first route that matches, if any.
    pub fn match_route(&self, method: &[u8], ruri: Option<&UriFacts>) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(method, ruri))
    }

    /// The pool that serves `home`'s users now.
    pub fn serving(&self, home: usize) -> usize {
        let pool = &self.pools[home];
        match pool.pair {
            Some(pair) if pool.failed_over => pair,
            _ => home,
        }
    }

    /// Routes a key (a [`hrw::key_hash`]) through route `route`: home pool by HRW over the
    /// route's pools, serving pool, then server by weighted HRW over the serving pool's servers
    /// that take traffic.
    pub fn decide(&self, route: usize, key: u64) -> Decision {
        let r = &self.routes[route];
        let home_at =
            hrw::pick(key, r.pools.iter().map(|&p| (self.pools[p].id_hash, 1))).unwrap_or_default();
        let home = r.pools[home_at];
        let serving = self.serving(home);
        let servers = &self.pools[serving].servers;
        let up = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.takes_traffic());
        let server = hrw::pick(key, up.clone().map(|(_, s)| (s.id_hash, s.weight)))
            .and_then(|n| up.clone().nth(n).map(|(i, _)| i));
        Decision {
            route,
            home,
            serving,
            server,
        }
    }

    /// The addresses siplb listens on.
    pub fn local(&self) -> &[SocketAddr] {
        &self.local
    }

    /// The server at `(pool, server)` indices.
    pub fn server(&self, pool: usize, server: usize) -> &Server {
        &self.pools[pool].servers[server]
    }

    /// The configured server listening at `addr`, as `(pool, server)` indices.
    pub fn server_at(&self, addr: SocketAddr) -> Option<(usize, usize)> {
        self.servers_by_addr.get(&addr).copied()
    }

    /// Whether `ip` is the address of a configured server.
    pub fn is_server_ip(&self, ip: IpAddr) -> bool {
        self.server_ips.contains(&ip)
    }

    /// Whether `host:port` (as written in a URI or Via) names this siplb instance.
    pub fn is_us(&self, host: &str, port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        if host.eq_ignore_ascii_case(&self.advertise.host)
            && port == self.advertise.port_or_default()
        {
            return true;
        }
        let ip = host.trim_start_matches('[').trim_end_matches(']');
        ip.parse::<IpAddr>()
            .is_ok_and(|ip| self.local.iter().any(|l| l.ip() == ip && l.port() == port))
    }
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

    fn facts(host: &str, user_param: Option<&str>) -> UriFacts {
        UriFacts {
            user: None,
            host: host.into(),
            port: None,
            user_param: user_param.map(Into::into),
            lr: false,
        }
    }

    #[test]
    fn routes_match_in_order_and_cancel_follows_invite() {
        let t = table(&ConfigHealth);
        let phone = facts("gw.contoso.com", Some("PHONE"));
        let fe = facts("contoso.com", None);
        assert_eq!(t.match_route(b"INVITE", Some(&phone)), Some(0));
        assert_eq!(t.match_route(b"INVITE", Some(&fe)), Some(1));
        assert_eq!(t.match_route(b"CANCEL", Some(&fe)), Some(1));
        assert_eq!(t.match_route(b"ACK", Some(&fe)), Some(1));
        assert_eq!(t.match_route(b"MESSAGE", Some(&fe)), None);
        assert_eq!(
            t.match_route(b"INVITE", Some(&facts("fabrikam.com", None))),
            None
        );
        assert!(t.needs_ruri);
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

    #[test]
    fn knows_itself_and_its_servers() {
        let t = table(&ConfigHealth);
        assert!(t.is_us("LB.contoso.com", None));
        assert!(t.is_us("127.0.0.1", Some(5060)));
        assert!(!t.is_us("127.0.0.1", Some(5071)));
        assert_eq!(t.server_at("127.0.0.1:5082".parse().unwrap()), Some((1, 1)));
        assert!(t.is_server_ip("127.0.0.1".parse().unwrap()));
        assert_eq!(
            t.via_prefix,
            b"Via: SIP/2.0/UDP lb.contoso.com:5060;branch=z9hG4bK-lb"
        );
    }
}
