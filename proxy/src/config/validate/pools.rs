//! `[[pool]]`: names, roles, failover settings, health overrides, servers and pairs.
//!
//! Server ids and server addresses are unique across all pools: an id is a server's identity
//! in the hash and in the health table (health survives a reload by id), and one address in
//! two places would make the "is this Route hop a configured server" check and the health of
//! that server ambiguous.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::super::raw::{RawPool, RawServer};
use super::super::{
    Health, Mode, NamedServer, PoolConfig, PoolDns, ProbeKind, Role, ServerConfig, Transport,
};
use super::dns::{host_name_port, srv_name};
use super::values::{self, AddrUse, Seen};
use super::Ctx;

mod tls;

/// `failback_after` when not given.
const DEFAULT_FAILBACK_AFTER: Duration = Duration::from_secs(30);

/// Checks every pool and the pairs between them. `base_health` is the validated `[health]`.
pub(super) fn pools(
    ctx: &mut Ctx<'_>,
    raw: &[Spanned<RawPool>],
    base_health: &Health,
) -> Vec<PoolConfig> {
    if raw.is_empty() {
        ctx.error_at_line(
            1,
            "pool",
            "no pool defined; add at least one [[pool]] with a name and servers = [...]",
        );
    }
    let mut servers = ServerChecks::default();
    let mut first_index: HashMap<String, (usize, usize)> = HashMap::new();
    let mut pools = Vec::with_capacity(raw.len());
    for (i, pool) in raw.iter().enumerate() {
        let p = pool.get_ref();
        let name = p.name.get_ref();
        check_name(ctx, &p.name, &format!("pool[{i}].name"));
        let line = ctx.line_of(p.name.span().start);
        if let Some((_, first_line)) = first_index.get(name) {
            let message = format!(
                "pool \"{name}\" is already defined at line {first_line}; pool names must be unique"
            );
            ctx.error(p.name.span(), format!("pool[{i}].name"), message);
        } else {
            first_index.insert(name.clone(), (i, line));
        }
        pools.push(pool_config(ctx, i, pool, base_health, &mut servers));
    }
    check_pairs(ctx, raw, &pools, &first_index);
    pools
}

/// Every UDP server must be reachable from a UDP listener of its own address family: siplb
/// sends to a server from a socket of the server's family, so an IPv6 server with only IPv4
/// listeners (or the reverse, or none) could never be reached. TCP and TLS servers are reached
/// over connections siplb opens, which need no listener.
pub(super) fn check_families(ctx: &mut Ctx<'_>, raw: &[Spanned<RawPool>], udp: &[SocketAddr]) {
    let (has_v4, has_v6) = (
        udp.iter().any(SocketAddr::is_ipv4),
        udp.iter().any(SocketAddr::is_ipv6),
    );
    for (i, pool) in raw.iter().enumerate() {
        let Some(servers) = &pool.get_ref().servers else {
            continue;
        };
        for (j, server) in servers.get_ref().iter().enumerate() {
            let server = server.get_ref();
            if server
                .transport
                .as_ref()
                .is_some_and(|t| t.get_ref() != "udp")
            {
                continue;
            }
            let Some(address) = values::server_addr(server.address.get_ref()) else {
                continue; // reported where the address is checked
            };
            let (family, example) = match address {
                SocketAddr::V4(_) if !has_v4 => ("IPv4", "\"0.0.0.0:5060\""),
                SocketAddr::V6(_) if !has_v6 => ("IPv6", "\"[::]:5060\""),
                _ => continue,
            };
            let id = server.id.as_ref().unwrap_or(&server.address).get_ref();
            let message = format!(
                "server \"{id}\" of pool \"{}\" has the {family} address {address}, but no \
                 [listen] udp address is {family}, so siplb could not send to it; add an \
                 {family} UDP listener to [listen] udp (e.g. {example})",
                pool.get_ref().name.get_ref()
            );
            ctx.error(
                server.address.span(),
                format!("pool[{i}].servers[{j}].address"),
                message,
            );
        }
    }
}

/// One pool except its pair, which needs all the others.
fn pool_config(
    ctx: &mut Ctx<'_>,
    i: usize,
    pool: &Spanned<RawPool>,
    base_health: &Health,
    seen: &mut ServerChecks,
) -> PoolConfig {
    let p = pool.get_ref();
    let prefix = format!("pool[{i}]");
    let roles = [
        ("front-end", Role::FrontEnd),
        ("edge", Role::Edge),
        ("mediation", Role::Mediation),
        ("director", Role::Director),
    ];
    let role = p
        .role
        .as_ref()
        .and_then(|r| values::choice(ctx, r, &format!("{prefix}.role"), "role", &roles));
    let modes = [("auto", Mode::Auto), ("manual", Mode::Manual)];
    let failover = p.failover.as_ref().and_then(|f| {
        values::choice(
            ctx,
            f,
            &format!("{prefix}.failover"),
            "failover mode",
            &modes,
        )
    });
    let failback_after = p
        .failback_after
        .as_ref()
        .and_then(|d| values::duration(ctx, d, &format!("{prefix}.failback_after")));
    let health = match &p.health {
        Some(h) => super::health(
            ctx,
            h.get_ref(),
            &format!("{prefix}.health"),
            base_health,
            "from [health]",
        ),
        None => base_health.clone(),
    };

    let dns = pool_dns(ctx, &prefix, p);
    // A wrong srv or dns is reported alone, not as a pool without servers too.
    let dns_written = p.srv.is_some() || p.dns.is_some();
    let mut servers = Vec::new();
    let mut named = Vec::new();
    match &p.servers {
        None if dns_written => {}
        None => ctx.error(
            pool.span(),
            format!("{prefix}.servers"),
            format!(
                "pool \"{}\" has no servers; add servers = [{{ address = \"IP:port\" }}, ...], \
                 or srv = \"_sip._udp.NAME\" or dns = \"NAME:port\"",
                p.name.get_ref()
            ),
        ),
        Some(list) if list.get_ref().is_empty() && !dns_written => ctx.error(
            list.span(),
            format!("{prefix}.servers"),
            "a pool needs at least one server; add { address = \"IP:port\" } entries",
        ),
        Some(list) => {
            for (j, server) in list.get_ref().iter().enumerate() {
                let key = format!("{prefix}.servers[{j}]");
                let Some(s) = server_config(ctx, &key, server.get_ref(), seen) else {
                    continue;
                };
                let transport = match &s {
                    Given::Address(s) => s.transport,
                    Given::Name(n) => n.transport,
                };
                if health.probe == ProbeKind::TlsConnect && transport != Transport::Tls {
                    tls_connect_needs_tls(ctx, &key, p, server.get_ref(), transport);
                }
                match s {
                    Given::Address(s) => servers.push(s),
                    Given::Name(n) => named.push(n),
                }
            }
        }
    }
    if let (Some(d), ProbeKind::TlsConnect) = (&dns, health.probe) {
        let transport = d.transport();
        if transport != Transport::Tls {
            ctx.error(
                pool.span(),
                format!("{prefix}.transport"),
                format!(
                    "pool \"{}\" is probed with tls-connect, a TLS handshake, but the servers \
                     of {} use \"{}\"; set transport = \"tls\", or probe the pool another way",
                    p.name.get_ref(),
                    d.name(),
                    transport.as_str()
                ),
            );
        }
    }

    let mut min_up = 1;
    if let (Some(m), true) = (&p.min_up, dns.is_some()) {
        // How many servers the records give is known only at run time.
        let accepted = "use a whole number of 1 or more: the pool is down when fewer servers \
                        than this are up";
        let key = format!("{prefix}.min_up");
        if let Some(n) = values::int_in(ctx, m, &key, 1, i64::from(u32::MAX), accepted) {
            min_up = n as usize;
        }
    } else if let Some(m) = &p.min_up {
        let count = p.servers.as_ref().map_or(0, |l| l.get_ref().len());
        // An empty pool is already an error; do not add a range error that cannot be met.
        if count > 0 {
            let accepted = format!(
                "use 1 to {count} (the number of servers in this pool): the pool is down when \
                 fewer servers than this are up"
            );
            let key = format!("{prefix}.min_up");
            if let Some(n) = values::int_in(ctx, m, &key, 1, count as i64, &accepted) {
                // In 1..=count by the check above.
                min_up = n as usize;
            }
        }
    }

    let name_line = ctx.line_of(p.name.span().start);
    let uses_tls = servers.iter().any(|s| s.transport == Transport::Tls)
        || named.iter().any(|s| s.transport == Transport::Tls)
        || dns.as_ref().map(PoolDns::transport) == Some(Transport::Tls);
    let tls = tls::pool_tls(ctx, &prefix, p.tls.as_ref(), name_line, uses_tls);

    PoolConfig {
        name: p.name.get_ref().clone(),
        role: role.unwrap_or(Role::FrontEnd),
        pair: p.pair.as_ref().map(|n| n.get_ref().clone()),
        failover: failover.unwrap_or(Mode::Auto),
        failback_after: failback_after.unwrap_or(DEFAULT_FAILBACK_AFTER),
        min_up,
        health,
        tls,
        servers,
        named,
        dns,
    }
}

/// A pool's `srv` or `dns`, with the transport of the servers they give: the pool's
/// `transport`, else the one an SRV name's labels say, else UDP.
fn pool_dns(ctx: &mut Ctx<'_>, prefix: &str, p: &RawPool) -> Option<PoolDns> {
    let transports = [
        ("udp", Transport::Udp),
        ("tcp", Transport::Tcp),
        ("tls", Transport::Tls),
    ];
    let transport = p.transport.as_ref().and_then(|t| {
        values::choice(
            ctx,
            t,
            &format!("{prefix}.transport"),
            "transport",
            &transports,
        )
    });
    match (&p.srv, &p.dns) {
        (Some(_), Some(dns)) => {
            ctx.error(
                dns.span(),
                format!("{prefix}.dns"),
                "a pool follows one kind of record: give srv = \"_sip._udp.NAME\" (SRV records) \
                 or dns = \"NAME:port\" (every address of a name), not both",
            );
            None
        }
        (Some(srv), None) => match srv_name(srv.get_ref()) {
            Ok((name, from_name)) => {
                let transport = match (transport, from_name, &p.transport) {
                    (Some(t), _, _) => t,
                    (None, Some(t), None) => t,
                    (None, None, None) => {
                        ctx.error(
                            srv.span(),
                            format!("{prefix}.srv"),
                            format!(
                                "\"{}\" names no transport siplb knows (_udp, _tcp, _tls, or \
                                 _sips._tcp); give the pool's transport = \"udp\", \"tcp\" or \
                                 \"tls\"",
                                srv.get_ref()
                            ),
                        );
                        return None;
                    }
                    // The pool's transport was wrong: already reported.
                    (None, _, Some(_)) => return None,
                };
                Some(PoolDns::Srv { name, transport })
            }
            Err(message) => {
                ctx.error(srv.span(), format!("{prefix}.srv"), message);
                None
            }
        },
        (None, Some(dns)) => match host_name_port(dns.get_ref()) {
            Some((name, port)) => Some(PoolDns::All {
                name,
                port,
                transport: transport.unwrap_or(Transport::Udp),
            }),
            None => {
                ctx.error(
                    dns.span(),
                    format!("{prefix}.dns"),
                    format!(
                        "\"{}\" is not a host name with a port; use NAME:port, e.g. \
                         fe.contoso.com:5060 (one server per address of the name)",
                        dns.get_ref()
                    ),
                );
                None
            }
        },
        (None, None) => {
            if let Some(t) = &p.transport {
                ctx.error(
                    t.span(),
                    format!("{prefix}.transport"),
                    "a pool's transport applies to the servers its srv or dns records give; \
                     this pool has neither: give transport = \"...\" on each server instead",
                );
            }
            None
        }
    }
}

/// `probe = "tls-connect"` is a TLS handshake: a server that does not speak TLS cannot pass it.
fn tls_connect_needs_tls(
    ctx: &mut Ctx<'_>,
    key: &str,
    pool: &RawPool,
    server: &RawServer,
    transport: Transport,
) {
    let from = match pool
        .health
        .as_ref()
        .and_then(|h| h.get_ref().probe.as_ref())
    {
        Some(_) => "",
        None => " (from [health])",
    };
    let (span, key) = match &server.transport {
        Some(t) => (t.span(), format!("{key}.transport")),
        None => (server.address.span(), format!("{key}.address")),
    };
    ctx.error(
        span,
        key,
        format!(
            "pool \"{}\" is probed with tls-connect{from}, a TLS handshake, but this server's \
             transport is \"{}\"; set transport = \"tls\", or probe the pool another way, \
             e.g. health = {{ probe = \"options\" }}",
            pool.name.get_ref(),
            transport.as_str()
        ),
    );
}

/// Ids and addresses seen so far, across all pools.
#[derive(Default)]
struct ServerChecks {
    addresses: Seen,
    ids: HashMap<String, (String, usize)>,
}

/// A server as the file gives it: by IP address, or by host name.
enum Given {
    Address(ServerConfig),
    Name(NamedServer),
}

/// One server; `None` when its address is unusable (the error is recorded).
fn server_config(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    s: &RawServer,
    seen: &mut ServerChecks,
) -> Option<Given> {
    let addr_key = format!("{prefix}.address");
    let name = match s.address.get_ref().parse::<std::net::SocketAddr>() {
        Ok(_) => None,
        Err(_) => host_name_port(s.address.get_ref()),
    };
    let address = match name {
        Some(_) => None,
        None => values::socket_addr(ctx, &s.address, &addr_key, AddrUse::Server),
    };
    let address_is_new = match address {
        Some(a) => seen
            .addresses
            .check(ctx, a, s.address.span(), &addr_key, "server"),
        None => true,
    };
    let transports = [
        ("udp", Transport::Udp),
        ("tcp", Transport::Tcp),
        ("tls", Transport::Tls),
    ];
    let transport = s.transport.as_ref().and_then(|t| {
        values::choice(
            ctx,
            t,
            &format!("{prefix}.transport"),
            "transport",
            &transports,
        )
    });
    let mut weight = 1;
    if let Some(w) = &s.weight {
        let key = format!("{prefix}.weight");
        if *w.get_ref() == 0 {
            ctx.error(
                w.span(),
                key,
                "weight = 0 is not accepted; use 1 or more, and to take a server out of hashing \
                 use drained = true",
            );
        } else {
            let accepted = "use a whole number from 1 to 4294967295: the server's relative \
                            share of the pool's users";
            if let Some(n) = values::int_in(ctx, w, &key, 1, i64::from(u32::MAX), accepted) {
                // In 1..=u32::MAX by the check above.
                weight = n as u32;
            }
        }
    }
    // The id defaults to the address exactly as written.
    let (id, id_span, id_key) = match &s.id {
        Some(id) => (id.get_ref().clone(), id.span(), format!("{prefix}.id")),
        None => (s.address.get_ref().clone(), s.address.span(), addr_key),
    };
    // A defaulted id repeats a repeated address: that mistake is already reported.
    if s.id.is_some() || address_is_new {
        check_id(ctx, &id, id_span, &id_key, s.id.is_some(), &mut seen.ids);
    }
    // A transport already reported as wrong says nothing about server_name.
    let transport_known = s.transport.is_none() || transport.is_some();
    let transport = transport.unwrap_or(Transport::Udp);
    let server_name = tls::server_name_of(
        ctx,
        &format!("{prefix}.server_name"),
        s.server_name.as_ref().filter(|_| transport_known),
        transport,
    );
    let drained = s.drained.unwrap_or(false);
    if let Some((name, port)) = name {
        return Some(Given::Name(NamedServer {
            name,
            port,
            id,
            transport,
            weight,
            drained,
            server_name,
        }));
    }
    Some(Given::Address(ServerConfig {
        id,
        address: address?,
        transport,
        weight,
        drained,
        server_name,
        priority: 0,
    }))
}

/// A server id is used in admin URLs (`/admin/servers/{id}/drain`) and must be unique.
fn check_id(
    ctx: &mut Ctx<'_>,
    id: &str,
    span: Range<usize>,
    key: &str,
    explicit: bool,
    ids: &mut HashMap<String, (String, usize)>,
) {
    if explicit
        && (id.is_empty()
            || id
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c.is_control()))
    {
        ctx.error(
            span.clone(),
            key,
            format!(
                "server id \"{id}\" is not accepted; use a non-empty id without spaces or '/', \
                 e.g. fe1-a"
            ),
        );
    }
    let line = ctx.line_of(span.start);
    if let Some((first_key, first_line)) = ids.get(id) {
        let how = if explicit {
            ""
        } else {
            " (the id defaults to the address)"
        };
        let message = format!(
            "server id \"{id}\"{how} is already used by {first_key} (line {first_line}); server \
             ids must be unique across all pools: set a distinct id = \"...\""
        );
        ctx.error(span, key, message);
    } else {
        ids.insert(id.to_string(), (key.to_string(), line));
    }
}

/// Pool names appear in routes, `/status` and admin URLs: letters, digits, `.`, `_`, `-`.
fn check_name(ctx: &mut Ctx<'_>, name: &Spanned<String>, key: &str) {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !ok {
        ctx.error(
            name.span(),
            key,
            format!(
                "pool name \"{n}\" is not accepted; use letters, digits, '.', '_' and '-', \
                 e.g. fe-dc1"
            ),
        );
    }
}

/// Pairs must name another existing pool of the same role that names this one back.
fn check_pairs(
    ctx: &mut Ctx<'_>,
    raw: &[Spanned<RawPool>],
    pools: &[PoolConfig],
    index: &HashMap<String, (usize, usize)>,
) {
    for (i, pool) in pools.iter().enumerate() {
        let Some(pair_raw) = &raw[i].get_ref().pair else {
            continue;
        };
        let key = format!("pool[{i}].pair");
        let pair = pair_raw.get_ref();
        let span = pair_raw.span();
        if *pair == pool.name {
            ctx.error(
                span,
                key,
                format!(
                    "pool \"{pair}\" cannot pair with itself; name another pool of the same role \
                     ({})",
                    defined_pools(pools)
                ),
            );
            continue;
        }
        let Some(&(j, other_line)) = index.get(pair) else {
            ctx.error(
                span,
                key,
                format!("unknown pool \"{pair}\"; {}", defined_pools(pools)),
            );
            continue;
        };
        let other = &pools[j];
        let symmetric = other.pair.as_deref() == Some(pool.name.as_str());
        if !symmetric {
            let now = match &other.pair {
                Some(p) => format!("pairs with \"{p}\""),
                None => "has no pair".to_string(),
            };
            ctx.error(
                span.clone(),
                key.clone(),
                format!(
                    "pool \"{pair}\" (line {other_line}) {now}; pairs are symmetric: set \
                     pair = \"{}\" in pool \"{pair}\"",
                    pool.name
                ),
            );
        }
        // A symmetric pair with different roles is one mistake: report it once, on the first.
        if other.role != pool.role && (!symmetric || i < j) {
            ctx.error(
                span,
                key,
                format!(
                    "pool \"{}\" is {} but its pair \"{pair}\" is {}; a pool can only pair with a \
                     pool of the same role",
                    pool.name,
                    pool.role.as_str(),
                    other.role.as_str()
                ),
            );
        }
    }
}

/// `defined pools: a, b` (or a note that there are none), for messages naming a pool.
pub(super) fn defined_pools(pools: &[PoolConfig]) -> String {
    if pools.is_empty() {
        return "no pools are defined".to_string();
    }
    let mut names: Vec<&str> = Vec::new();
    for p in pools {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    format!("defined pools: {}", names.join(", "))
}
