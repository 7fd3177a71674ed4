//! `[dns]`, and the names that servers and pools are given by: `address = "host:port"`,
//! `srv = "_sip._udp.name"` and `dns = "name:port"`. What is checked here is their form only;
//! whether a name resolves is known at run time (and `siplb check` says so as a warning).

use std::net::{IpAddr, SocketAddr};

use super::super::raw::{RawDns, Str};
use super::super::{Dns, Transport};
use super::values::{self, AddrUse};
use super::Ctx;

/// The port a nameserver given without one listens on.
const DNS_PORT: u16 = 53;

/// Reads `[dns]`; every key is optional.
pub(super) fn dns(ctx: &mut Ctx<'_>, raw: Option<&RawDns>) -> Dns {
    let mut d = Dns::default();
    let Some(raw) = raw else { return d };
    if let Some(v) = &raw.refresh {
        if let Some(r) = values::positive_duration(ctx, v, "dns.refresh", "refresh", "30s, 5m") {
            d.refresh = r;
        }
    }
    if let Some(v) = &raw.timeout {
        if let Some(t) = values::positive_duration(ctx, v, "dns.timeout", "timeout", "2s, 5s") {
            d.timeout = t;
        }
    }
    if let Some(list) = &raw.nameservers {
        for (i, v) in list.get_ref().iter().enumerate() {
            let key = format!("dns.nameservers[{i}]");
            if let Some(addr) = nameserver(ctx, v, &key) {
                d.nameservers.push(addr);
            }
        }
    }
    d
}

/// A nameserver: `IP:port`, or an IP alone for port 53.
fn nameserver(ctx: &mut Ctx<'_>, v: &Str, key: &str) -> Option<SocketAddr> {
    if let Ok(ip) = v.get_ref().parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    values::socket_addr(ctx, v, key, AddrUse::Server)
}

/// Splits `host:port` where host is a DNS name (not an IP address): the name lower-case and
/// without a trailing dot, and the port (1..=65535). `None` when `s` is not of that form.
pub(super) fn host_name_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.strip_suffix('.').unwrap_or(host);
    let is_name = host.bytes().any(|b| b.is_ascii_alphabetic()) && !host.contains(['[', ':']);
    if !is_name || values::check_host(host).is_err() {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|&p| p > 0)?;
    Some((host.to_ascii_lowercase(), port))
}

/// Checks `srv = "_service._proto.name"`; returns the name (lower-case, without a trailing dot)
/// and the transport its labels name (`_sips._tcp` and `_tls` → TLS, `_tcp` → TCP, `_udp` →
/// UDP), or `None` for another protocol label.
pub(super) fn srv_name(s: &str) -> Result<(String, Option<Transport>), String> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let [service, proto, rest @ ..] = labels.as_slice() else {
        return Err(format!("\"{s}\" is not an SRV name"));
    };
    if !service.starts_with('_')
        || !proto.starts_with('_')
        || rest.is_empty()
        || !labels.iter().all(label_ok)
        || name.len() > 253
    {
        return Err(format!(
            "\"{s}\" is not an SRV name; use _service._proto.domain, e.g. \
             _sip._udp.fe.contoso.com, _sip._tcp.fe.contoso.com or _sips._tcp.fe.contoso.com"
        ));
    }
    let transport = match (*service, *proto) {
        ("_sips", "_tcp") | (_, "_tls") => Some(Transport::Tls),
        (_, "_tcp") => Some(Transport::Tcp),
        (_, "_udp") => Some(Transport::Udp),
        _ => None,
    };
    Ok((name, transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_with_ports_are_told_from_addresses() {
        assert_eq!(
            host_name_port("FE1.contoso.com.:5061"),
            Some(("fe1.contoso.com".to_string(), 5061))
        );
        assert_eq!(
            host_name_port("siplb-fe:5060"),
            Some(("siplb-fe".into(), 5060))
        );
        for not_a_name in [
            "127.0.0.1:5060",
            "[::1]:5060",
            "fe1.contoso.com",
            "fe1.contoso.com:0",
            "fe1.contoso.com:x",
            "fe 1.contoso.com:5060",
            "-fe.contoso.com:5060",
        ] {
            assert_eq!(host_name_port(not_a_name), None, "{not_a_name}");
        }
    }

    #[test]
    fn srv_names_give_their_transport() {
        let t = |s| srv_name(s).unwrap().1;
        assert_eq!(t("_sip._udp.fe.contoso.com"), Some(Transport::Udp));
        assert_eq!(t("_sip._tcp.fe.contoso.com"), Some(Transport::Tcp));
        assert_eq!(t("_sips._tcp.fe.contoso.com."), Some(Transport::Tls));
        assert_eq!(t("_sip._tls.fe.contoso.com"), Some(Transport::Tls));
        assert_eq!(t("_sip._sctp.fe.contoso.com"), None);
        assert_eq!(
            srv_name("_SIP._UDP.Fe.Contoso.com.").unwrap().0,
            "_sip._udp.fe.contoso.com"
        );
        for bad in [
            "fe.contoso.com",
            "_sip._udp",
            "_sip.udp.contoso.com",
            "_sip._udp..com",
        ] {
            assert!(srv_name(bad).is_err(), "{bad}");
        }
        assert_eq!(Dns::default().refresh, std::time::Duration::from_secs(30));
    }
}
