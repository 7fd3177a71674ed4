//! Builds siplb configurations as TOML text, in the words of DESIGN.md's configuration contract.
//!
//! By default a config listens on `127.0.0.1:0` with no `advertise` (siplb advertises the bound
//! address); [`Config::listen`] and [`Config::advertise`] change that.
//! By default there is no `[ops]`, and probes are frequent and tolerant (`fall` high), so a
//! backend busy answering a load run is never taken for dead; health and failover tests set
//! their own `[health]` and pool options.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::backend::Backend;

/// A `[[pool]] servers` entry.
#[derive(Debug, Clone)]
pub struct Server {
    pub id: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub drained: bool,
}

impl Server {
    pub fn of(backend: &Backend) -> Server {
        Server {
            id: backend.id().to_string(),
            address: backend.addr(),
            weight: 1,
            drained: false,
        }
    }

    pub fn weight(mut self, weight: u32) -> Server {
        self.weight = weight;
        self
    }

    pub fn drained(mut self) -> Server {
        self.drained = true;
        self
    }
}

/// A `[[route]]`.
#[derive(Debug, Clone)]
pub struct Route {
    pub methods: Option<Vec<String>>,
    pub domain: Option<String>,
    pub pools: Vec<String>,
    pub key: Option<String>,
}

impl Route {
    /// A route to one pool (`pool = "..."`).
    pub fn to(pool: &str) -> Route {
        Route::over(&[pool])
    }

    /// A route whose home pool is chosen by HRW among `pools` (`pools = [...]`).
    pub fn over(pools: &[&str]) -> Route {
        Route {
            methods: None,
            domain: None,
            pools: pools.iter().map(|p| p.to_string()).collect(),
            key: None,
        }
    }

    pub fn domain(mut self, domain: &str) -> Route {
        self.domain = Some(domain.to_string());
        self
    }

    pub fn methods(mut self, methods: &[&str]) -> Route {
        self.methods = Some(methods.iter().map(|m| m.to_string()).collect());
        self
    }

    /// `to-aor | from-aor | ruri-aor | call-id | source-ip`.
    pub fn key(mut self, key: &str) -> Route {
        self.key = Some(key.to_string());
        self
    }
}

/// `[health]` settings.
#[derive(Debug, Clone)]
pub struct Health {
    pub probe: String,
    pub interval: String,
    pub timeout: String,
    pub fall: u32,
    pub rise: u32,
}

impl Health {
    /// OPTIONS probes with these settings.
    pub fn options(interval: &str, timeout: &str, fall: u32, rise: u32) -> Health {
        Health {
            probe: "options".into(),
            interval: interval.into(),
            timeout: timeout.into(),
            fall,
            rise,
        }
    }
}

/// A `[[pool]]`: its servers and, optionally, its pair and failover settings.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    /// `front-end` (written when `None`), `edge`, `mediation` or `director`.
    pub role: Option<String>,
    pub servers: Vec<Server>,
    pub pair: Option<String>,
    /// `auto` or `manual`.
    pub failover: Option<String>,
    pub failback_after: Option<String>,
    pub min_up: Option<usize>,
}

impl Pool {
    pub fn new(name: &str, servers: Vec<Server>) -> Pool {
        Pool {
            name: name.into(),
            role: None,
            servers,
            pair: None,
            failover: None,
            failback_after: None,
            min_up: None,
        }
    }

    /// `role = "..."`: `front-end`, `edge`, `mediation` or `director`.
    pub fn role(mut self, role: &str) -> Pool {
        self.role = Some(role.into());
        self
    }

    pub fn pair(mut self, pair: &str) -> Pool {
        self.pair = Some(pair.into());
        self
    }

    pub fn manual(mut self) -> Pool {
        self.failover = Some("manual".into());
        self
    }

    pub fn failback_after(mut self, d: &str) -> Pool {
        self.failback_after = Some(d.into());
        self
    }

    pub fn min_up(mut self, n: usize) -> Pool {
        self.min_up = Some(n);
        self
    }
}

/// A whole siplb config.
#[derive(Debug, Clone)]
pub struct Config {
    workers: usize,
    listen: Vec<String>,
    advertise: Option<String>,
    no_route: Option<u16>,
    retry_after: Option<String>,
    server_header: Option<String>,
    branch_key_file: Option<String>,
    health: Health,
    ops: bool,
    pools: Vec<Pool>,
    routes: Vec<Route>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// One UDP worker (messages from one client are handled in order), nothing else yet.
    pub fn new() -> Config {
        Config {
            workers: 1,
            listen: vec!["127.0.0.1:0".to_string()],
            advertise: None,
            no_route: None,
            retry_after: None,
            server_header: None,
            branch_key_file: None,
            health: Health::options("200ms", "150ms", 25, 1),
            ops: false,
            pools: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// The common case: one pool `fe` of these backends, one catch-all route to it.
    pub fn single_pool(backends: &[Backend]) -> Config {
        Config::new()
            .pool("fe", backends.iter().map(Server::of).collect())
            .route(Route::to("fe"))
    }

    pub fn workers(mut self, n: usize) -> Config {
        self.workers = n;
        self
    }

    /// `[listen] udp`: the addresses to listen on (default `["127.0.0.1:0"]`), e.g.
    /// `"[::1]:0"` for an IPv6 listener.
    pub fn listen(mut self, addrs: &[&str]) -> Config {
        self.listen = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    /// `[listen] advertise`: the `host[:port]` siplb writes into its Via.
    pub fn advertise(mut self, host_port: &str) -> Config {
        self.advertise = Some(host_port.to_string());
        self
    }

    /// `[routing] server_header`: the `Server` value of siplb's own answers (`""`: none).
    pub fn server_header(mut self, value: &str) -> Config {
        self.server_header = Some(value.to_string());
        self
    }

    /// `[routing] branch_key_file`: the file holding the key siplb's branches are made with.
    pub fn branch_key_file(mut self, path: &str) -> Config {
        self.branch_key_file = Some(path.to_string());
        self
    }

    pub fn no_route(mut self, status: u16) -> Config {
        self.no_route = Some(status);
        self
    }

    pub fn retry_after(mut self, duration: &str) -> Config {
        self.retry_after = Some(duration.to_string());
        self
    }

    pub fn pool(self, name: &str, servers: Vec<Server>) -> Config {
        self.pool_with(Pool::new(name, servers))
    }

    pub fn pool_with(mut self, pool: Pool) -> Config {
        self.pools.push(pool);
        self
    }

    pub fn health(mut self, health: Health) -> Config {
        self.health = health;
        self
    }

    /// Turns on the ops endpoint on `127.0.0.1:0` (its address is printed as `listening ops`).
    pub fn ops(mut self) -> Config {
        self.ops = true;
        self
    }

    pub fn route(mut self, route: Route) -> Config {
        self.routes.push(route);
        self
    }

    /// The TOML text of one replica of a fleet (`[cluster]`, README "Fleet"): its ops endpoint
    /// at `ops` (every replica must name the others before they start, so it cannot be port 0)
    /// and a `[cluster]` naming `peers`' ops endpoints; the token and witness lines, if any, go
    /// after it.
    pub fn render_replica(&self, ops: SocketAddr, peers: &[SocketAddr]) -> String {
        let text = self.render();
        let fixed = text.replace(
            "[ops]\nlisten = \"127.0.0.1:0\"",
            &format!("[ops]\nlisten = \"{ops}\""),
        );
        assert_ne!(fixed, text, "the ops line is where the harness writes it");
        let peers: Vec<String> = peers.iter().map(|p| format!("\"http://{p}\"")).collect();
        format!("{fixed}\n[cluster]\npeers = [{}]\n", peers.join(", "))
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "[listen]\nudp = {}\nworkers = {}",
            list(&self.listen),
            self.workers
        );
        if let Some(a) = &self.advertise {
            let _ = writeln!(t, "advertise = {}", quote(a));
        }
        t.push('\n');
        let h = &self.health;
        let _ = writeln!(
            t,
            "[health]\nprobe = {}\ninterval = {}\ntimeout = {}\nfall = {}\nrise = {}\n",
            quote(&h.probe),
            quote(&h.interval),
            quote(&h.timeout),
            h.fall,
            h.rise
        );
        if self.ops {
            t.push_str("[ops]\nlisten = \"127.0.0.1:0\"\n\n");
        }
        if self.no_route.is_some()
            || self.retry_after.is_some()
            || self.server_header.is_some()
            || self.branch_key_file.is_some()
        {
            t.push_str("[routing]\n");
            if let Some(s) = self.no_route {
                let _ = writeln!(t, "no_route = {s}");
            }
            if let Some(d) = &self.retry_after {
                let _ = writeln!(t, "retry_after = {}", quote(d));
            }
            if let Some(v) = &self.server_header {
                let _ = writeln!(t, "server_header = {}", quote(v));
            }
            if let Some(p) = &self.branch_key_file {
                let _ = writeln!(t, "branch_key_file = {}", quote(p));
            }
            t.push('\n');
        }
        for p in &self.pools {
            let _ = writeln!(
                t,
                "[[pool]]\nname = {}\nrole = {}",
                quote(&p.name),
                quote(p.role.as_deref().unwrap_or("front-end"))
            );
            if let Some(pair) = &p.pair {
                let _ = writeln!(t, "pair = {}", quote(pair));
            }
            if let Some(f) = &p.failover {
                let _ = writeln!(t, "failover = {}", quote(f));
            }
            if let Some(d) = &p.failback_after {
                let _ = writeln!(t, "failback_after = {}", quote(d));
            }
            if let Some(n) = p.min_up {
                let _ = writeln!(t, "min_up = {n}");
            }
            t.push_str("servers = [\n");
            for s in &p.servers {
                let _ = write!(
                    t,
                    "  {{ id = {}, address = \"{}\", transport = \"udp\", weight = {}",
                    quote(&s.id),
                    s.address,
                    s.weight
                );
                if s.drained {
                    t.push_str(", drained = true");
                }
                t.push_str(" },\n");
            }
            t.push_str("]\n\n");
        }
        for r in &self.routes {
            t.push_str("[[route]]\n");
            if let Some(m) = &r.methods {
                let _ = writeln!(t, "methods = {}", list(m));
            }
            if let Some(d) = &r.domain {
                let _ = writeln!(t, "domain = {}", quote(d));
            }
            match r.pools.as_slice() {
                [one] => {
                    let _ = writeln!(t, "pool = {}", quote(one));
                }
                many => {
                    let _ = writeln!(t, "pools = {}", list(many));
                }
            }
            if let Some(k) = &r.key {
                let _ = writeln!(t, "key = {}", quote(k));
            }
            t.push('\n');
        }
        t
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", quoted.join(", "))
}
