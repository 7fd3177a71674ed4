//! `[[route]]`: match conditions, the home pool candidates and the key.
//!
//! The pools of one route share a role: the role decides which key a route without `key`
//! reads (`Role::default_key`), and one route spreads users over pools that do one job.
//!
//! Conditions are normalised here so that the router compares without allocating: methods to
//! upper case (SIP methods are case-sensitive tokens, and every method siplb routes is an
//! upper-case one), domains to lower case (hosts are case-insensitive), `user=` values to lower
//! case (compared case-insensitively, RFC 3261 §19.1.4).

use toml::Spanned;

use super::super::raw::{RawRoute, Str};
use super::super::{KeyKind, PoolConfig, Role, RouteConfig};
use super::pools::defined_pools;
use super::values;
use super::Ctx;

/// Checks every route against the validated pools.
pub(super) fn routes(
    ctx: &mut Ctx<'_>,
    raw: &[Spanned<RawRoute>],
    pools: &[PoolConfig],
) -> Vec<RouteConfig> {
    if raw.is_empty() {
        ctx.error_at_line(
            1,
            "route",
            "no route defined; add at least one [[route]] with pool = \"...\" or pools = [...] \
             (a route without conditions matches every request)",
        );
    }
    raw.iter()
        .enumerate()
        .map(|(i, route)| route_config(ctx, i, route, pools))
        .collect()
}

fn route_config(
    ctx: &mut Ctx<'_>,
    i: usize,
    route: &Spanned<RawRoute>,
    pools: &[PoolConfig],
) -> RouteConfig {
    let r = route.get_ref();
    let prefix = format!("route[{i}]");

    let methods = r.methods.as_ref().map(|list| {
        if list.get_ref().is_empty() {
            ctx.error(
                list.span(),
                format!("{prefix}.methods"),
                "methods is empty, which would match nothing; list SIP methods, e.g. \
                 [\"REGISTER\", \"INVITE\"], or leave methods out to match every method",
            );
        }
        let mut methods = Vec::new();
        for (j, m) in list.get_ref().iter().enumerate() {
            let name = m.get_ref();
            if !name.is_empty() && name.bytes().all(is_token_byte) {
                methods.push(name.to_ascii_uppercase());
            } else {
                ctx.error(
                    m.span(),
                    format!("{prefix}.methods[{j}]"),
                    format!(
                        "\"{name}\" is not a SIP method; use a method name such as REGISTER, \
                         INVITE or SUBSCRIBE"
                    ),
                );
            }
        }
        methods
    });

    let domain = r
        .domain
        .as_ref()
        .and_then(|d| match values::check_host(d.get_ref()) {
            Ok(()) => Some(d.get_ref().to_ascii_lowercase()),
            Err(why) => {
                ctx.error(
                    d.span(),
                    format!("{prefix}.domain"),
                    format!(
                        "{why}; use the request-URI host to match, e.g. contoso.com (no port, \
                         no user)"
                    ),
                );
                None
            }
        });

    let uri_user_param = r.uri_user_param.as_ref().and_then(|u| {
        let v = u.get_ref();
        if !v.is_empty() && v.bytes().all(is_token_byte) {
            Some(v.to_ascii_lowercase())
        } else {
            ctx.error(
                u.span(),
                format!("{prefix}.uri_user_param"),
                format!(
                    "\"{v}\" is not a user= parameter value; use a token such as phone or \
                     dialstring"
                ),
            );
            None
        }
    });

    let home = home_pools(ctx, &prefix, route, pools);

    let keys = [
        ("to-aor", KeyKind::ToAor),
        ("from-aor", KeyKind::FromAor),
        ("ruri-aor", KeyKind::RuriAor),
        ("call-id", KeyKind::CallId),
        ("source-ip", KeyKind::SourceIp),
    ];
    let key = r
        .key
        .as_ref()
        .and_then(|k| values::choice(ctx, k, &format!("{prefix}.key"), "key", &keys));

    RouteConfig {
        methods,
        domain,
        uri_user_param,
        pools: home,
        key,
    }
}

/// Exactly one of `pool` and `pools`, naming known pools, each once. Both are checked even
/// when both are given, so that one run reports every mistake.
fn home_pools(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    route: &Spanned<RawRoute>,
    pools: &[PoolConfig],
) -> Vec<String> {
    let r = route.get_ref();
    let mut home = Vec::new();
    if let Some(p) = &r.pool {
        if known_pool(ctx, p, &format!("{prefix}.pool"), pools) {
            home.push(p.get_ref().clone());
        }
    }
    if let Some(list) = &r.pools {
        if list.get_ref().is_empty() {
            ctx.error(
                list.span(),
                format!("{prefix}.pools"),
                format!(
                    "pools is empty; list at least one pool ({})",
                    defined_pools(pools)
                ),
            );
        }
        let mut listed: Vec<&str> = Vec::new();
        // The first listed pool's name and role: the others must have it too.
        let mut first: Option<(&str, Role)> = None;
        for (j, p) in list.get_ref().iter().enumerate() {
            let key = format!("{prefix}.pools[{j}]");
            if listed.contains(&p.get_ref().as_str()) {
                ctx.error(
                    p.span(),
                    key,
                    format!(
                        "pool \"{}\" is listed twice; list each pool once",
                        p.get_ref()
                    ),
                );
                continue;
            }
            listed.push(p.get_ref());
            if known_pool(ctx, p, &key, pools) && r.pool.is_none() {
                home.push(p.get_ref().clone());
            }
            let Some(role) = role_of(pools, p.get_ref()) else {
                continue;
            };
            match first {
                None => first = Some((p.get_ref(), role)),
                Some((first_name, first_role)) if first_role != role => ctx.error(
                    p.span(),
                    key,
                    format!(
                        "{prefix} spreads users over pools of different roles: \"{first_name}\" \
                         is {} and \"{}\" is {}; list pools of one role (the role picks the \
                         route's default key), or give each role a route of its own",
                        first_role.as_str(),
                        p.get_ref(),
                        role.as_str()
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    match (&r.pool, &r.pools) {
        (None, None) => ctx.error(
            route.span(),
            format!("{prefix}.pool"),
            "the route names no pool; set pool = \"name\" or pools = [\"name\", ...]",
        ),
        (Some(_), Some(list)) => ctx.error(
            list.span(),
            format!("{prefix}.pools"),
            "the route sets both pool and pools; keep one: pool = \"name\" for one home pool, \
             pools = [...] to spread users over several",
        ),
        _ => {}
    }
    home
}

/// The role of the defined pool `name`.
fn role_of(pools: &[PoolConfig], name: &str) -> Option<Role> {
    pools.iter().find(|p| p.name == name).map(|p| p.role)
}

/// Whether `name` is a defined pool; records an error naming the defined ones when not.
fn known_pool(ctx: &mut Ctx<'_>, name: &Str, key: &str, pools: &[PoolConfig]) -> bool {
    if pools.iter().any(|p| p.name == *name.get_ref()) {
        return true;
    }
    ctx.error(
        name.span(),
        key,
        format!(
            "unknown pool \"{}\"; {}",
            name.get_ref(),
            defined_pools(pools)
        ),
    );
    false
}

/// RFC 3261 §25.1 `token` characters, which SIP methods and parameter values are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}
