//! A one-screen, human summary of a validated [`Config`], printed by `siplb check`.
//!
//! It shows the configuration after defaults and overrides are applied, so an operator sees
//! what siplb will actually do, not just what the file says.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::super::duration::format_duration;
use super::super::{Config, Health, Mode, PoolConfig, PoolDns, PoolTls, Role, RouteConfig};
use super::certs;

/// Describes `cfg` in a few lines: listeners (for a TLS listener, its certificate's subject,
/// alternative names and expiry, read from the file now), advertise, ops, health defaults, each
/// pool with its settings and servers, and each route with its conditions, pools and key.
pub(crate) fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "configuration {}", cfg.path.display());

    let l = &cfg.listen;
    let list = |addrs: Vec<String>| {
        if addrs.is_empty() {
            "-".to_string()
        } else {
            addrs.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "listen    udp {} | tcp {} | tls {} | {} worker{} per UDP address",
        list(l.udp.iter().map(ToString::to_string).collect()),
        list(l.tcp.iter().map(ToString::to_string).collect()),
        list(l.tls.iter().map(|t| t.address.to_string()).collect()),
        l.workers,
        if l.workers == 1 { "" } else { "s" },
    );
    for p in &l.passthrough {
        let _ = writeln!(
            out,
            "listen    passthrough {} -> pool {} (TLS to the servers unread, by client IP; idle \
             timeout {})",
            p.address,
            p.pool,
            format_duration(p.idle_timeout)
        );
    }
    let now = SystemTime::now();
    for t in &l.tls {
        let _ = writeln!(
            out,
            "tls       {}  cert {}  key {}",
            t.address,
            t.cert.display(),
            t.key.display()
        );
        let _ = writeln!(out, "            {}", certificate(&t.cert, now));
    }
    let advertise = match &l.advertise {
        Some(hp) => hp.to_string(),
        None => "(the first UDP listener's bound address)".to_string(),
    };
    let _ = writeln!(out, "advertise {advertise}");
    let ops_listen = cfg
        .ops
        .listen
        .map_or("off".to_string(), |a| format!("http://{a}"));
    let token = cfg
        .ops
        .admin_token_file
        .as_ref()
        .map_or("none".to_string(), |p| p.display().to_string());
    let _ = writeln!(out, "ops       {ops_listen} | admin token file: {token}");
    if let Some(c) = &cfg.cluster {
        let peers: Vec<&str> = c.peers.iter().map(|p| p.url.as_str()).collect();
        let witness = c.witness.as_ref().map_or("none", |w| w.url.as_str());
        let observers = 1 + c.observers().count();
        let _ = writeln!(
            out,
            "cluster   peers {} | witness {witness} | failover by a majority of {observers} \
             observers ({} must answer)",
            if peers.is_empty() {
                "-".to_string()
            } else {
                peers.join(", ")
            },
            observers / 2 + 1
        );
    }
    let _ = writeln!(out, "health    {}", health(&cfg.health));
    let _ = writeln!(
        out,
        "routing   no route -> {} | no server up -> 503 with Retry-After {}",
        cfg.routing.no_route,
        cfg.routing.retry_after.as_secs()
    );

    let _ = writeln!(out, "\npools ({})", cfg.pools.len());
    for pool in &cfg.pools {
        let pair = pool
            .pair
            .as_deref()
            .map_or("no pair".to_string(), |p| format!("pair {p}"));
        let failover = match pool.failover {
            Mode::Auto => {
                format!(
                    "failover auto (failback after {})",
                    format_duration(pool.failback_after)
                )
            }
            Mode::Manual => "failover manual".to_string(),
        };
        let _ = writeln!(
            out,
            "  {}  {}, {pair}, {failover}, min_up {}",
            pool.name,
            pool.role.as_str(),
            pool.min_up
        );
        if pool.health != cfg.health {
            let _ = writeln!(
                out,
                "    health {} (overrides [health])",
                health(&pool.health)
            );
        }
        if let Some(line) = tls_line(pool) {
            let _ = writeln!(out, "    {line}");
        }
        let id_width = pool.servers.iter().map(|s| s.id.len()).max().unwrap_or(0);
        let addr_width = pool
            .servers
            .iter()
            .map(|s| s.address.to_string().len())
            .max()
            .unwrap_or(0);
        for s in &pool.servers {
            let name = s
                .server_name
                .as_ref()
                .map_or(String::new(), |n| format!("  server name {n}"));
            let _ = writeln!(
                out,
                "    {:id_width$}  {:addr_width$}  {:3}  weight {}{}{name}",
                s.id,
                s.address.to_string(),
                s.transport.as_str(),
                s.weight,
                if s.drained { "  drained" } else { "" },
            );
        }
        for n in &pool.named {
            let _ = writeln!(
                out,
                "    {}  {}:{} (by name)  {}  weight {}{}",
                n.id,
                n.name,
                n.port,
                n.transport.as_str(),
                n.weight,
                if n.drained { "  drained" } else { "" },
            );
        }
        match &pool.dns {
            Some(PoolDns::Srv { name, transport }) => {
                let _ = writeln!(
                    out,
                    "    servers of SRV {name} ({}; ids target:port, weights and priorities \
                     from the records)",
                    transport.as_str()
                );
            }
            Some(PoolDns::All {
                name,
                port,
                transport,
            }) => {
                let _ = writeln!(
                    out,
                    "    one server per address of {name}, port {port} ({}; ids IP:port)",
                    transport.as_str()
                );
            }
            None => {}
        }
    }
    if cfg.pools.iter().any(PoolConfig::uses_dns) {
        let servers = if cfg.dns.nameservers.is_empty() {
            "those of /etc/resolv.conf".to_string()
        } else {
            let list: Vec<String> = cfg
                .dns
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect();
            list.join(", ")
        };
        let _ = writeln!(
            out,
            "\ndns       names asked again every {}, timeout {}, nameservers {servers}",
            format_duration(cfg.dns.refresh),
            format_duration(cfg.dns.timeout)
        );
    }

    let _ = writeln!(out, "\nroutes ({}, first match wins)", cfg.routes.len());
    for (i, route) in cfg.routes.iter().enumerate() {
        let _ = writeln!(out, "  route[{i}]  {}", route_line(route, &cfg.pools));
    }
    out
}

/// `subject CN=sip.contoso.com | SANs DNS:sip.contoso.com, IP:10.0.0.5 | expires
/// 2036-11-27T12:00:00Z (in 3650 days)`, or why the file cannot be read now.
fn certificate(cert: &Path, now: SystemTime) -> String {
    let facts = match certs::describe(cert, now) {
        Ok(f) => f,
        Err(why) => return format!("unreadable now: {why}"),
    };
    let sans = if facts.sans.is_empty() {
        "none".to_string()
    } else {
        facts.sans.join(", ")
    };
    let days = |d: Duration| d.as_secs() / 86_400;
    let left = match facts.not_after.at.duration_since(now) {
        Ok(d) => format!("in {} days", days(d)),
        Err(e) => format!("{} days ago", days(e.duration())),
    };
    let mut line = format!(
        "subject {} | SANs {sans} | expires {} ({left})",
        facts.subject, facts.not_after.text
    );
    if facts.not_before.at > now {
        let _ = write!(line, " | not valid before {}", facts.not_before.text);
    }
    line
}

/// `tls ca ca.pem | server name fe.contoso.com | client cert lb.crt (key lb.key)`, for a pool
/// with TLS servers or a `tls` table; `None` otherwise.
fn tls_line(pool: &PoolConfig) -> Option<String> {
    let tls = &pool.tls;
    if !pool.has_tls_servers() && *tls == PoolTls::default() {
        return None;
    }
    let ca = match &tls.ca {
        Some(path) => path.display().to_string(),
        None => format!("{} (system bundle)", tls.ca_file().display()),
    };
    let name = tls.server_name.as_deref().unwrap_or(if pool.uses_dns() {
        "each server's IP address, or the name it was found by"
    } else {
        "each server's IP address"
    });
    let client = match &tls.client_cert {
        Some(c) => format!("{} (key {})", c.cert.display(), c.key.display()),
        None => "none".to_string(),
    };
    Some(format!(
        "tls ca {ca} | server name {name} | client cert {client}"
    ))
}

/// `options every 1s, timeout 500ms, fall 2, rise 2`.
fn health(h: &Health) -> String {
    let probe = h.probe.as_str();
    format!(
        "{probe} every {}, timeout {}, fall {}, rise {}",
        format_duration(h.interval),
        format_duration(h.timeout),
        h.fall,
        h.rise
    )
}

/// `methods REGISTER, INVITE; domain contoso.com -> pools fe-dc1, fe-dc2; key to-aor`.
fn route_line(r: &RouteConfig, defined: &[PoolConfig]) -> String {
    let mut conditions = Vec::new();
    if let Some(methods) = &r.methods {
        conditions.push(format!("methods {}", methods.join(", ")));
    }
    if let Some(domain) = &r.domain {
        conditions.push(format!("domain {domain}"));
    }
    if let Some(user) = &r.uri_user_param {
        conditions.push(format!("user={user}"));
    }
    let when = if conditions.is_empty() {
        "every request".to_string()
    } else {
        conditions.join("; ")
    };
    let pools = match r.pools.as_slice() {
        [one] => format!("pool {one}"),
        many => format!("pools {} (by key)", many.join(", ")),
    };
    // A route's pools share a role, which picks the key when the route names none.
    let role = r
        .pools
        .first()
        .and_then(|name| defined.iter().find(|p| p.name == *name))
        .map_or(Role::FrontEnd, |p| p.role);
    let key = match (r.key, role) {
        (Some(k), _) => k.as_str().to_string(),
        (None, Role::FrontEnd) => "default (To AOR for REGISTER, From AOR otherwise)".to_string(),
        (None, Role::Edge) => "default (source-ip, for an edge pool)".to_string(),
        (None, role) => format!(
            "default ({}, for a {} pool)",
            role.default_key(b"").as_str(),
            role.as_str()
        ),
    };
    format!("{when} -> {pools}; key {key}")
}
