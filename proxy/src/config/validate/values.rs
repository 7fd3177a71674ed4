//! Reading single values: addresses, hosts, durations, names from a fixed list, integers in a
//! range, file paths. Each reader records an error on the [`Ctx`] and returns `None` when the
//! value is not accepted; the message says what would be.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::duration::parse_duration;
use super::super::raw::{Int, Str};
use super::super::HostPort;
use super::Ctx;

/// What a socket address is for: a listener may use port 0 (any free port, as the tests do)
/// and the unspecified address (every interface); a server may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AddrUse {
    Listen,
    Server,
}

/// Reads an `IP:port` socket address. Host names are rejected: siplb never resolves names, so
/// that every instance agrees on the servers without asking DNS.
pub(super) fn socket_addr(
    ctx: &mut Ctx<'_>,
    v: &Str,
    key: &str,
    use_: AddrUse,
) -> Option<SocketAddr> {
    match parse_socket_addr(v.get_ref(), use_) {
        Ok(a) => Some(a),
        Err(message) => {
            ctx.error(v.span(), key, message);
            None
        }
    }
}

/// A server address that passes every check of [`socket_addr`], or `None` (reported there).
pub(super) fn server_addr(s: &str) -> Option<SocketAddr> {
    parse_socket_addr(s, AddrUse::Server).ok()
}

fn parse_socket_addr(s: &str, use_: AddrUse) -> Result<SocketAddr, String> {
    const ACCEPTED: &str = "use IP:port, e.g. 127.0.0.1:5060 or [::1]:5060";
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => return Err(explain_bad_socket_addr(s, ACCEPTED)),
    };
    if use_ == AddrUse::Server {
        if addr.port() == 0 {
            return Err(format!(
                "\"{s}\" has port 0, which no server listens on; use the server's SIP port, e.g. \
                 127.0.0.1:5060"
            ));
        }
        if addr.ip().is_unspecified() {
            return Err(format!(
                "\"{s}\" is the unspecified address, not a server; use the server's own IP, e.g. \
                 127.0.0.1:5060"
            ));
        }
        let broadcast = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_broadcast());
        if broadcast || addr.ip().is_multicast() {
            return Err(format!(
                "\"{s}\" is a broadcast or multicast address, which siplb never sends to; use \
                 the server's own unicast IP, e.g. 127.0.0.1:5060"
            ));
        }
    }
    Ok(addr)
}

/// Why `s` is not a socket address, and what is.
fn explain_bad_socket_addr(s: &str, accepted: &str) -> String {
    if s.trim().is_empty() {
        return format!("empty address; {accepted}");
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(_) => format!("\"{s}\" has no port; use IP:port, e.g. {ip}:5060"),
            IpAddr::V6(_) => format!(
                "\"{s}\" has no port (an IPv6 address goes in brackets before the port); use \
                 [address]:port, e.g. [{ip}]:5060"
            ),
        };
    }
    if !s.starts_with('[') && s.matches(':').count() > 1 {
        return format!(
            "\"{s}\" looks like an IPv6 address without brackets; write it as [address]:port, \
             e.g. [::1]:5060"
        );
    }
    let host = if s.starts_with('[') {
        None
    } else {
        Some(s.rsplit_once(':').map_or(s, |(h, _)| h))
    };
    if let Some(host) = host {
        if host.parse::<Ipv4Addr>().is_err() && host.bytes().any(|b| b.is_ascii_alphabetic()) {
            return format!(
                "\"{s}\" is a host name, and siplb does not resolve names in addresses; {accepted}"
            );
        }
        if let Some((_, port)) = s.rsplit_once(':') {
            if host.parse::<Ipv4Addr>().is_ok() && port.parse::<u16>().is_err() {
                return format!(
                    "\"{s}\" has an invalid port \"{port}\"; use a port from 0 to 65535"
                );
            }
        } else {
            return format!("\"{s}\" has no port; {accepted}");
        }
    }
    format!("\"{s}\" is not an IP:port address; {accepted}")
}

/// Remembers addresses already used, to report the second use of one.
#[derive(Default)]
pub(super) struct Seen {
    first: HashMap<SocketAddr, (String, usize)>,
}

impl Seen {
    /// Records `addr` at `key`, or reports it when it was seen before; returns whether it was
    /// new. `what` names the kind of thing that must be unique ("UDP listener", "server").
    pub(super) fn check(
        &mut self,
        ctx: &mut Ctx<'_>,
        addr: SocketAddr,
        span: Range<usize>,
        key: &str,
        what: &str,
    ) -> bool {
        let line = ctx.line_of(span.start);
        if let Some((first_key, first_line)) = self.first.get(&addr) {
            let message = format!(
                "{addr} is already used by {first_key} (line {first_line}); each {what} address \
                 may appear only once"
            );
            ctx.error(span, key, message);
            false
        } else {
            self.first.insert(addr, (key.to_string(), line));
            true
        }
    }
}

/// What a `host[:port]` must look like.
const HOST_PORT_ACCEPTED: &str = "use host[:port] with a name, an IPv4 address or a bracketed \
                                  IPv6 address, e.g. sip.contoso.com, 192.0.2.10:5060, \
                                  [2001:db8::10]:5060";

/// Reads a `host[:port]` such as `advertise`.
pub(super) fn host_port(ctx: &mut Ctx<'_>, v: &Str, key: &str) -> Option<HostPort> {
    match parse_host_port(v.get_ref()) {
        Ok(hp) => Some(hp),
        Err(message) => {
            ctx.error(v.span(), key, message);
            None
        }
    }
}

fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => match &s[end + 1..] {
                "" => (&s[..=end], None),
                rest => match rest.strip_prefix(':') {
                    Some(port) => (&s[..=end], Some(port)),
                    None => {
                        return Err(format!(
                            "\"{s}\" is not a host[:port]; {HOST_PORT_ACCEPTED}"
                        ));
                    }
                },
            },
            None => return Err(format!("\"{s}\" has no closing ']'; {HOST_PORT_ACCEPTED}")),
        }
    } else if s.matches(':').count() > 1 {
        return Err(format!(
            "\"{s}\" looks like an IPv6 address without brackets; {HOST_PORT_ACCEPTED}"
        ));
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    check_host(host).map_err(|why| format!("\"{s}\": {why}; {HOST_PORT_ACCEPTED}"))?;
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "\"{s}\" has an invalid port \"{p}\"; use a port from 1 to 65535"
                ));
            }
        },
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Checks a host as written in a SIP URI: a DNS name, an IPv4 address or a bracketed IPv6
/// reference. The error says what is wrong with it (the caller adds what is accepted).
pub(super) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or(inner);
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("\"{inner}\" is not an IPv6 address")),
        };
    }
    if host.contains(':') {
        return Err("an IPv6 address must be in brackets".to_string());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("\"{host}\" is not an IPv4 address")),
        };
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "\"{host}\" is not a host name (letters, digits and '-' in dot-separated labels)"
        ));
    }
    Ok(())
}

/// Reads a duration such as `"500ms"`.
pub(super) fn duration(ctx: &mut Ctx<'_>, v: &Str, key: &str) -> Option<Duration> {
    match parse_duration(v.get_ref()) {
        Ok(d) => Some(d),
        Err(message) => {
            ctx.error(v.span(), key, message);
            None
        }
    }
}

/// Reads a duration that must be longer than 0, e.g. a timeout; `name` is its key's last part,
/// `examples` the values the error suggests.
pub(super) fn positive_duration(
    ctx: &mut Ctx<'_>,
    v: &Str,
    key: &str,
    name: &str,
    examples: &str,
) -> Option<Duration> {
    let d = duration(ctx, v, key)?;
    if d.is_zero() {
        ctx.error(
            v.span(),
            key,
            format!("{name} must be longer than 0; use e.g. {examples}"),
        );
        return None;
    }
    Some(d)
}

/// Reads one name from a fixed list, e.g. a role or a probe kind; `what` names it in messages.
pub(super) fn choice<T: Copy>(
    ctx: &mut Ctx<'_>,
    v: &Str,
    key: &str,
    what: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == v.get_ref()) {
        return Some(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    ctx.error(
        v.span(),
        key,
        format!(
            "unknown {what} \"{}\"; use one of: {}",
            v.get_ref(),
            names.join(", ")
        ),
    );
    None
}

/// Reads an integer that must be in `lo..=hi`; `accepted` completes the message.
pub(super) fn int_in(
    ctx: &mut Ctx<'_>,
    v: &Int,
    key: &str,
    lo: i64,
    hi: i64,
    accepted: &str,
) -> Option<i64> {
    let n = *v.get_ref();
    if (lo..=hi).contains(&n) {
        return Some(n);
    }
    let name = key.rsplit('.').next().unwrap_or(key);
    ctx.error(
        v.span(),
        key,
        format!("{name} = {n} is out of range; {accepted}"),
    );
    None
}

/// Reads a file path; a relative one is taken relative to `base` (the config file's directory),
/// so the config works whatever directory siplb is started from.
pub(super) fn file_path(ctx: &mut Ctx<'_>, v: &Str, key: &str, base: &Path) -> Option<PathBuf> {
    let s = v.get_ref();
    if s.trim().is_empty() {
        ctx.error(
            v.span(),
            key,
            "empty path; use a file path, absolute or relative to this config file's directory",
        );
        return None;
    }
    Some(base.join(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addr_messages_name_the_fix() {
        let e = |s| parse_socket_addr(s, AddrUse::Server).unwrap_err();
        assert!(e("sip.contoso.com:5061").contains("host name"));
        assert!(e("127.0.0.1").contains("has no port; use IP:port, e.g. 127.0.0.1:5060"));
        assert!(e("::1").contains("[::1]:5060"));
        assert!(e("2001:db8::1:5060").contains("in brackets before the port"));
        assert!(e("2001:db8::g:5060").contains("without brackets"));
        assert!(e("127.0.0.1:99999").contains("invalid port"));
        assert!(e("127.0.0.1:0").contains("port 0"));
        assert!(e("0.0.0.0:5060").contains("unspecified"));
        assert!(e("").contains("empty address"));
        assert!(e("[::1]").contains("IP:port"));
        assert!(parse_socket_addr("0.0.0.0:0", AddrUse::Listen).is_ok());
        assert!(parse_socket_addr("[::1]:5060", AddrUse::Server).is_ok());
    }

    #[test]
    fn host_port_forms() {
        let hp = |s: &str| parse_host_port(s).unwrap();
        assert_eq!(
            hp("sip.contoso.com"),
            HostPort {
                host: "sip.contoso.com".into(),
                port: None
            }
        );
        assert_eq!(hp("192.0.2.1:5061").port, Some(5061));
        assert_eq!(hp("[2001:db8::1]:5060").host, "[2001:db8::1]");
        assert_eq!(hp("[::1]").port, None);
        for bad in [
            "",
            "::1",
            "a b",
            "host:0",
            "host:x",
            "[::1",
            "[zz]:5060",
            "1.2.3.999",
            "-a.b",
        ] {
            let e = parse_host_port(bad).unwrap_err();
            assert!(e.contains("use") || e.contains("port from 1"), "{bad}: {e}");
        }
    }
}
