//! Validation: raw `config.toml` → [`Config`], or every mistake in it.
//!
//! [`parse`] first lets serde check the shape of the file ([`raw`](super::raw)); a TOML syntax
//! error, an unknown key or a key of the wrong type ends there, alone, because nothing after it
//! can be trusted. Then every value is checked for meaning — durations, addresses, names of
//! roles and probes, ranges, pool references, pairs — and every violation becomes its own
//! [`ConfigError`] naming the line, the dotted key and what is accepted. Errors are collected,
//! not returned at the first, so `siplb check` shows all of them at once, sorted by line.
//!
//! The work is split by section: [`values`] reads single values, [`pools`] checks pools, their
//! servers and pairs, [`routes`] checks routes against the pools, [`certs`] checks the files of
//! `[listen] tls` entries (with [`x509`] reading what a certificate says), [`toml_error`] turns
//! serde's errors into ours, and [`summary`] prints a validated config for humans.

mod certs;
mod cluster;
mod connections;
mod dns;
mod pools;
mod routes;
mod summary;
mod toml_error;
mod values;
mod x509;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::raw::{RawConfig, RawHealth, RawListen, RawLog, RawOps, RawRouting};
use super::{
    BranchSecret, Config, ConfigError, Damping, Health, Listen, Log, LogFormat, Ops, Passthrough,
    PoolConfig, ProbeKind, Routing,
};

pub(crate) use summary::summary;

/// `[health]` when the file leaves a key out.
const DEFAULT_HEALTH: Health = Health {
    probe: ProbeKind::Options,
    interval: Duration::from_secs(1),
    timeout: Duration::from_millis(500),
    fall: 2,
    rise: 2,
    damping: Damping::DEFAULT,
};

/// `[routing]` when the file leaves a key out.
fn default_routing() -> Routing {
    Routing {
        no_route: 404,
        retry_after: Duration::from_secs(30),
        server_header: "siplb".to_string(),
        branch_key: None,
    }
}

/// A passthrough connection's idle timeout when the file gives none: Microsoft's least for a
/// load balancer in front of Lync.
const DEFAULT_PASSTHROUGH_IDLE: Duration = Duration::from_secs(1800);

/// The shortest branch key accepted, in bytes.
const MIN_BRANCH_KEY: usize = 16;

/// The most UDP worker sockets per address we accept.
const MAX_WORKERS: i64 = 256;

/// Reads and validates the configuration file at `path`.
///
/// A file that cannot be read is one error with line 0 and an empty key.
pub(crate) fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) => Err(vec![ConfigError::new(
            path,
            0,
            "",
            format!("cannot read the configuration file: {e}"),
        )]),
    }
}

/// Validates `text`, the contents of the configuration file at `path` (used in error messages
/// and as `Config::path`; relative file paths in the file — TLS certificate and key, admin
/// token file — are resolved against its directory).
///
/// On failure every error found is returned, sorted by line.
pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(vec![toml_error::to_config_error(path, text, &e)]),
    };
    let mut ctx = Ctx {
        path,
        text,
        newlines: memchr::memchr_iter(b'\n', text.as_bytes()).collect(),
        errors: Vec::new(),
    };
    let config = build(&mut ctx, raw);
    if ctx.errors.is_empty() {
        Ok(config)
    } else {
        let mut errors = ctx.errors;
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

/// The worker count when `[listen] workers` is not given: one per core, within 1..=256.
pub(crate) fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, MAX_WORKERS as usize)
}

/// The 1-based line byte `offset` of `text` is on (the last line when past the end).
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// What validation carries around: where the text came from and the errors found so far.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where each line ends in `text`, so that finding a value's line is a binary search and
    /// not a count from the top (a config of 10,000 servers asks for every server's line).
    newlines: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    /// The 1-based line a byte offset of the text is on.
    fn line_of(&self, offset: usize) -> usize {
        // As `line_of`: 1 + the newlines before `offset`.
        1 + self
            .newlines
            .partition_point(|&n| n < offset.min(self.text.len()))
    }

    /// Records an error about the value at `span`.
    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let line = self.line_of(span.start);
        self.error_at_line(line, key, message);
    }

    /// Records an error at a line (for what is missing, and so has no span of its own).
    fn error_at_line(&mut self, line: usize, key: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.path, line, key, message));
    }

    /// The directory relative paths in the file are resolved against.
    fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Checks every section; the returned `Config` is only meaningful when no error was recorded
/// (invalid values are replaced by defaults so that later checks can go on).
fn build(ctx: &mut Ctx<'_>, raw: RawConfig) -> Config {
    let listen = listen(ctx, raw.listen.as_ref());
    let ops = ops(ctx, raw.ops.as_ref());
    let health = match &raw.health {
        Some(h) => health(ctx, h.get_ref(), "health", &DEFAULT_HEALTH, "the default"),
        None => DEFAULT_HEALTH,
    };
    let routing = routing(ctx, raw.routing.as_ref());
    let log = log(ctx, raw.log.as_ref());
    let connections = connections::connections(ctx, raw.connections.as_ref());
    let dns = dns::dns(ctx, raw.dns.as_ref());
    let cluster = cluster::cluster(ctx, raw.cluster.as_ref());
    let pools = pools::pools(ctx, &raw.pool, &health);
    // With no UDP listener written, a UDP server is unreachable; with UDP listeners written
    // but none valid, or no listener at all, the error is already the listeners'.
    let no_udp_written = raw
        .listen
        .as_ref()
        .is_none_or(|l| l.get_ref().udp.is_empty());
    let streams_only = no_udp_written && !(listen.tcp.is_empty() && listen.tls.is_empty());
    if !listen.udp.is_empty() || streams_only {
        pools::check_families(ctx, &raw.pool, &listen.udp);
    }
    passthrough_pools(ctx, raw.listen.as_ref(), &pools);
    let routes = routes::routes(ctx, &raw.route, &pools);
    Config {
        path: ctx.path.to_path_buf(),
        listen,
        ops,
        health,
        routing,
        log,
        connections,
        dns,
        cluster,
        pools,
        routes,
    }
}

/// `[log]`: a filter `tracing` accepts, and `text` or `json`.
fn log(ctx: &mut Ctx<'_>, raw: Option<&RawLog>) -> Log {
    let mut log = Log {
        level: "info".into(),
        format: LogFormat::Text,
    };
    let Some(raw) = raw else { return log };
    if let Some(level) = &raw.level {
        match tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
            Ok(_) if !level.get_ref().trim().is_empty() => log.level = level.get_ref().clone(),
            _ => ctx.error(
                level.span(),
                "log.level",
                format!(
                    "\"{}\" is not a log filter; use a level (error, warn, info, debug, trace) or \
                     directives such as \"siplb=debug,info\"",
                    level.get_ref()
                ),
            ),
        }
    }
    if let Some(format) = &raw.format {
        let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
        if let Some(f) = values::choice(ctx, format, "log.format", "log format", &formats) {
            log.format = f;
        }
    }
    log
}

/// `[listen]`: at least one listener, no address twice on the same protocol.
fn listen(ctx: &mut Ctx<'_>, raw: Option<&toml::Spanned<RawListen>>) -> Listen {
    let mut listen = Listen {
        udp: Vec::new(),
        tcp: Vec::new(),
        tls: Vec::new(),
        advertise: None,
        workers: default_workers(),
        passthrough: Vec::new(),
        shutdown_grace: super::DEFAULT_SHUTDOWN_GRACE,
    };
    let Some(raw) = raw else {
        ctx.error_at_line(
            1,
            "listen",
            "no [listen] section; add one with at least one listener, e.g. \
             udp = [\"127.0.0.1:5060\"]",
        );
        return listen;
    };
    // UDP and TCP ports are separate; TCP and TLS listeners share the TCP port space.
    let mut seen_udp = values::Seen::default();
    let mut seen_tcp = values::Seen::default();
    for (i, addr) in raw.get_ref().udp.iter().enumerate() {
        let key = format!("listen.udp[{i}]");
        if let Some(a) = values::socket_addr(ctx, addr, &key, values::AddrUse::Listen) {
            seen_udp.check(ctx, a, addr.span(), &key, "UDP listener");
            listen.udp.push(a);
        }
    }
    for (i, addr) in raw.get_ref().tcp.iter().enumerate() {
        let key = format!("listen.tcp[{i}]");
        if let Some(a) = values::socket_addr(ctx, addr, &key, values::AddrUse::Listen) {
            seen_tcp.check(ctx, a, addr.span(), &key, "TCP or TLS listener");
            listen.tcp.push(a);
        }
    }
    let base = ctx.base_dir();
    for (i, tls) in raw.get_ref().tls.iter().enumerate() {
        let prefix = format!("listen.tls[{i}]");
        let tls = tls.get_ref();
        let key = format!("{prefix}.address");
        let address = values::socket_addr(ctx, &tls.address, &key, values::AddrUse::Listen);
        if let Some(a) = address {
            seen_tcp.check(ctx, a, tls.address.span(), &key, "TCP or TLS listener");
        }
        let cert = values::file_path(ctx, &tls.cert, &format!("{prefix}.cert"), &base);
        let key_file = values::file_path(ctx, &tls.key, &format!("{prefix}.key"), &base);
        if let (Some(cert), Some(key)) = (&cert, &key_file) {
            let cert = certs::PairFile {
                path: cert,
                raw: &tls.cert,
                key: format!("{prefix}.cert"),
            };
            let key = certs::PairFile {
                path: key,
                raw: &tls.key,
                key: format!("{prefix}.key"),
            };
            certs::check(ctx, cert, key, SystemTime::now());
        }
        if let (Some(address), Some(cert), Some(key)) = (address, cert, key_file) {
            listen.tls.push(super::TlsListen { address, cert, key });
        }
    }
    listen.passthrough = passthrough(ctx, raw.get_ref(), &mut seen_udp, &mut seen_tcp);
    let raw_listen = raw.get_ref();
    if raw_listen.udp.is_empty() && raw_listen.tcp.is_empty() && raw_listen.tls.is_empty() {
        ctx.error(
            raw.span(),
            "listen",
            "no listener; give at least one of udp = [\"IP:port\"], tcp = [...] or tls = [...]",
        );
    }
    if let Some(adv) = &raw_listen.advertise {
        listen.advertise = values::host_port(ctx, adv, "listen.advertise");
    }
    if let Some(w) = &raw_listen.workers {
        let accepted = format!(
            "use 1 to {MAX_WORKERS} worker sockets per UDP address, or leave it out for one per \
             core"
        );
        if let Some(w) = values::int_in(ctx, w, "listen.workers", 1, MAX_WORKERS, &accepted) {
            // In 1..=256 by the check above.
            listen.workers = w as usize;
        }
    }
    if let Some(g) = &raw_listen.shutdown_grace {
        // 0 is allowed: siplb then exits as soon as SIGTERM arrives.
        if let Some(g) = values::duration(ctx, g, "listen.shutdown_grace") {
            listen.shutdown_grace = g;
        }
    }
    listen
}

/// `[listen] passthrough`: each address a TCP port of its own — no TCP or TLS listener on it,
/// and no UDP listener either, so that one address is one service — and an idle timeout
/// longer than 0. The pools are checked once they are known ([`passthrough_pools`]).
fn passthrough(
    ctx: &mut Ctx<'_>,
    raw: &RawListen,
    seen_udp: &mut values::Seen,
    seen_tcp: &mut values::Seen,
) -> Vec<Passthrough> {
    let mut out = Vec::new();
    for (i, entry) in raw.passthrough.iter().enumerate() {
        let prefix = format!("listen.passthrough[{i}]");
        let entry = entry.get_ref();
        let key = format!("{prefix}.address");
        let address = values::socket_addr(ctx, &entry.address, &key, values::AddrUse::Listen);
        // Port 0 picks a free port at bind time, so it clashes with nothing.
        if let Some(a) = address.filter(|a| a.port() != 0) {
            let span = entry.address.span();
            if seen_tcp.check(
                ctx,
                a,
                span.clone(),
                &key,
                "TCP, TLS or passthrough listener",
            ) {
                seen_udp.check(ctx, a, span, &key, "UDP listener or passthrough");
            }
        }
        let mut idle_timeout = DEFAULT_PASSTHROUGH_IDLE;
        if let Some(v) = &entry.idle_timeout {
            let key = format!("{prefix}.idle_timeout");
            let examples = "1800s (Microsoft's least for Lync), or leave it out for 1800s";
            if let Some(d) = values::positive_duration(ctx, v, &key, "idle_timeout", examples) {
                idle_timeout = d;
            }
        }
        if let Some(address) = address {
            out.push(Passthrough {
                address,
                pool: entry.pool.get_ref().clone(),
                idle_timeout,
            });
        }
    }
    out
}

/// Each passthrough listener names a defined pool.
fn passthrough_pools(
    ctx: &mut Ctx<'_>,
    raw: Option<&toml::Spanned<RawListen>>,
    pools: &[PoolConfig],
) {
    let Some(raw) = raw else { return };
    for (i, entry) in raw.get_ref().passthrough.iter().enumerate() {
        let name = &entry.get_ref().pool;
        if !pools.iter().any(|p| p.name == *name.get_ref()) {
            ctx.error(
                name.span(),
                format!("listen.passthrough[{i}].pool"),
                format!(
                    "unknown pool \"{}\"; the pool whose servers take this listener's \
                     connections must be a [[pool]]; {}",
                    name.get_ref(),
                    pools::defined_pools(pools)
                ),
            );
        }
    }
}

/// `[ops]`: both keys optional.
fn ops(ctx: &mut Ctx<'_>, raw: Option<&RawOps>) -> Ops {
    let mut ops = Ops {
        listen: None,
        admin_token_file: None,
    };
    let Some(raw) = raw else { return ops };
    if let Some(addr) = &raw.listen {
        ops.listen = values::socket_addr(ctx, addr, "ops.listen", values::AddrUse::Listen);
    }
    if let Some(file) = &raw.admin_token_file {
        let base = ctx.base_dir();
        ops.admin_token_file = values::file_path(ctx, file, "ops.admin_token_file", &base);
    }
    ops
}

/// `[health]` (`prefix` = `health`) or a pool's override (`pool[i].health`), each key given
/// replacing the one in `base`. `base_name` says where `base` came from, for messages.
fn health(
    ctx: &mut Ctx<'_>,
    raw: &RawHealth,
    prefix: &str,
    base: &Health,
    base_name: &str,
) -> Health {
    let mut h = base.clone();
    if let Some(p) = &raw.probe {
        let choices = [
            ("options", ProbeKind::Options),
            ("tcp-connect", ProbeKind::TcpConnect),
            ("tls-connect", ProbeKind::TlsConnect),
        ];
        if let Some(probe) = values::choice(ctx, p, &format!("{prefix}.probe"), "probe", &choices) {
            h.probe = probe;
        }
    }
    for (raw_value, name, slot) in [
        (&raw.interval, "interval", &mut h.interval),
        (&raw.timeout, "timeout", &mut h.timeout),
    ] {
        let Some(v) = raw_value else { continue };
        let key = format!("{prefix}.{name}");
        if let Some(d) = values::positive_duration(ctx, v, &key, name, "500ms, 1s") {
            *slot = d;
        }
    }
    for (raw_value, name, slot, meaning) in [
        (
            &raw.fall,
            "fall",
            &mut h.fall,
            "failed probes in a row that mark a server down",
        ),
        (
            &raw.rise,
            "rise",
            &mut h.rise,
            "good probes in a row that bring a server back",
        ),
    ] {
        let Some(v) = raw_value else { continue };
        let key = format!("{prefix}.{name}");
        let accepted = format!("use a whole number of at least 1: the {meaning}");
        if let Some(n) = values::int_in(ctx, v, &key, 1, i64::from(u32::MAX), &accepted) {
            // In 1..=u32::MAX by the check above.
            *slot = n as u32;
        }
    }
    // Zero turns flap holds off; a backoff cap of zero would make Retry-After meaningless.
    for (raw_value, name, slot) in [
        (&raw.flap_window, "flap_window", &mut h.damping.flap_window),
        (&raw.flap_hold, "flap_hold", &mut h.damping.flap_hold),
    ] {
        let Some(v) = raw_value else { continue };
        if let Some(d) = values::duration(ctx, v, &format!("{prefix}.{name}")) {
            *slot = d;
        }
    }
    if let Some(v) = &raw.max_backoff {
        let key = format!("{prefix}.max_backoff");
        if let Some(d) = values::positive_duration(ctx, v, &key, "max_backoff", "60s, 5m") {
            h.damping.max_backoff = d;
        }
    }
    if h.timeout > h.interval {
        // Point at whichever of the two this section set, the timeout when it set both.
        let culprit = match (&raw.timeout, &raw.interval) {
            (Some(t), _) => Some((t.span(), "timeout")),
            (None, Some(i)) => Some((i.span(), "interval")),
            (None, None) => None,
        };
        if let Some((span, name)) = culprit {
            // Say where the value that was not set here came from.
            let origin = |given: bool| {
                if given {
                    String::new()
                } else {
                    format!(" ({base_name})")
                }
            };
            let t_from = origin(raw.timeout.is_some());
            let i_from = origin(raw.interval.is_some());
            ctx.error(
                span,
                format!("{prefix}.{name}"),
                format!(
                    "timeout {}{t_from} is longer than interval {}{i_from}; a probe must time \
                     out before the next is due: use a timeout no longer than the interval",
                    super::duration::format_duration(h.timeout),
                    super::duration::format_duration(h.interval),
                ),
            );
        }
        h.timeout = h.interval;
    }
    h
}

/// `[routing]`: the answers siplb gives when it cannot route.
fn routing(ctx: &mut Ctx<'_>, raw: Option<&RawRouting>) -> Routing {
    let mut routing = default_routing();
    let from_env = || {
        let v = std::env::var_os("SIPLB_BRANCH_KEY")?;
        Some(v.as_encoded_bytes().trim_ascii().to_vec())
    };
    let Some(raw) = raw else {
        routing.branch_key = branch_key_from_env(ctx, from_env());
        return routing;
    };
    if let Some(v) = &raw.server_header {
        let s = v.get_ref();
        if s.bytes().any(|c| c.is_ascii_control()) {
            ctx.error(
                v.span(),
                "routing.server_header",
                "a header value cannot hold control characters or line breaks; use e.g. \"siplb\", \
                 or \"\" for no Server header",
            );
        } else {
            routing.server_header = s.trim().to_string();
        }
    }
    match &raw.branch_key_file {
        Some(file) => {
            let base = ctx.base_dir();
            if let Some(path) = values::file_path(ctx, file, "routing.branch_key_file", &base) {
                match std::fs::read(&path) {
                    Ok(bytes) if bytes.trim_ascii().len() >= MIN_BRANCH_KEY => {
                        routing.branch_key = Some(BranchSecret(bytes.trim_ascii().to_vec()));
                    }
                    Ok(_) => ctx.error(
                        file.span(),
                        "routing.branch_key_file",
                        format!(
                            "{} holds fewer than {MIN_BRANCH_KEY} bytes; put a random secret of \
                             at least {MIN_BRANCH_KEY} bytes in it, e.g. `openssl rand -hex 16`",
                            path.display()
                        ),
                    ),
                    Err(e) => ctx.error(
                        file.span(),
                        "routing.branch_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    ),
                }
            }
        }
        None => routing.branch_key = branch_key_from_env(ctx, from_env()),
    }
    if let Some(code) = &raw.no_route {
        match *code.get_ref() {
            403 => routing.no_route = 403,
            404 => routing.no_route = 404,
            other => ctx.error(
                code.span(),
                "routing.no_route",
                format!(
                    "no_route = {other} is not accepted; use 404 (Not Found, the default) or \
                     403 (Forbidden)"
                ),
            ),
        }
    }
    if let Some(v) = &raw.retry_after {
        if let Some(d) = values::duration(ctx, v, "routing.retry_after") {
            if d.subsec_nanos() != 0 {
                ctx.error(
                    v.span(),
                    "routing.retry_after",
                    format!(
                        "\"{}\" is not a whole number of seconds, which is all Retry-After can \
                         carry; use e.g. 30s, 2m",
                        v.get_ref()
                    ),
                );
            } else {
                routing.retry_after = d;
            }
        }
    }
    routing
}

/// The branch key from `SIPLB_BRANCH_KEY`, when set and long enough.
fn branch_key_from_env(ctx: &mut Ctx<'_>, value: Option<Vec<u8>>) -> Option<BranchSecret> {
    let v = value?;
    if v.len() < MIN_BRANCH_KEY {
        ctx.error_at_line(
            0,
            "SIPLB_BRANCH_KEY",
            format!(
                "SIPLB_BRANCH_KEY holds fewer than {MIN_BRANCH_KEY} bytes; use a random secret of \
                 at least {MIN_BRANCH_KEY} bytes, e.g. `openssl rand -hex 16`"
            ),
        );
        return None;
    }
    Some(BranchSecret(v))
}
