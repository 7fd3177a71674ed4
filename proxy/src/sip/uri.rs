//! URIs: find the URI in a From / To / Route value and read what routing needs from it — the
//! address of record (`user@host`), the host, the port and the `user=` parameter.
//!
//! rsip parses the URI itself where it can. rsip 0.4 rejects IPv6 references and schemes it
//! does not know (`tel:`), so a small reader of our own takes over for those; both produce the
//! same normalised form (host in lower case, user as written), so a user's key does not depend
//! on which one read it.

use super::scan::Span;

/// What routing reads from a URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriFacts {
    /// The user part, as written (user parts are case-sensitive, RFC 3261 §19.1.4).
    pub user: Option<String>,
    /// The host in lower case; IPv6 references keep their brackets.
    pub host: String,
    pub port: Option<u16>,
    /// The value of the `user=` URI parameter (`phone`, `ip`…), if any.
    pub user_param: Option<String>,
    /// Whether the URI carries the `lr` parameter (a loose router, RFC 3261 §19.1.1).
    pub lr: bool,
}

impl UriFacts {
    /// Appends the address of record, `user@host` (or the host alone), to `out`.
    pub fn write_aor(&self, out: &mut Vec<u8>) {
        if let Some(user) = &self.user {
            out.extend_from_slice(user.as_bytes());
            out.push(b'@');
        }
        out.extend_from_slice(self.host.as_bytes());
    }

    /// The address of record as a string.
    pub fn aor(&self) -> String {
        let mut out = Vec::with_capacity(self.host.len() + 16);
        self.write_aor(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Finds the URI inside a name-addr (`"Alice" <sip:alice@x>;tag=1`) or an addr-spec
/// (`sip:alice@x;tag=1`, where the parameters belong to the header, RFC 3261 §20.10).
pub fn header_uri(buf: &[u8], value: Span) -> Option<Span> {
    let mut i = value.start;
    let end = value.end;
    while i < end {
        match buf[i] {
            b'"' => {
                i += 1;
                while i < end && buf[i] != b'"' {
                    i += if buf[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'<' => {
                let start = i + 1;
                let close = start + buf.get(start..end)?.iter().position(|&c| c == b'>')?;
                return (close > start).then(|| Span::new(start, close));
            }
            _ => i += 1,
        }
    }
    // No angle brackets: an addr-spec, which ends at the first header parameter.
    let start = value.start;
    let stop = buf[start..end]
        .iter()
        .position(|&c| matches!(c, b';' | b' ' | b'\t' | b','))
        .map_or(end, |p| start + p);
    (stop > start && buf[start..stop].contains(&b':')).then(|| Span::new(start, stop))
}

/// Reads a URI: rsip first, our own reader for what rsip 0.4 rejects.
pub fn parse(uri: &[u8]) -> Option<UriFacts> {
    let text = std::str::from_utf8(uri).ok()?;
    from_rsip(text).or_else(|| fallback(uri))
}

fn from_rsip(text: &str) -> Option<UriFacts> {
    use rsip::common::uri::param::Param;
    use rsip::common::uri::{Host, Scheme};
    let uri = rsip::Uri::try_from(text).ok()?;
    if !matches!(uri.scheme, Some(Scheme::Sip) | Some(Scheme::Sips)) {
        return None;
    }
    // rsip's tokenizer stops quietly at what it does not understand; only accept a full read
    // (every byte of a URI is one of these, and a space or angle bracket means a bad value).
    if text
        .bytes()
        .any(|c| matches!(c, b' ' | b'<' | b'>' | b'"' | b'['))
    {
        return None;
    }
    let host = match &uri.host_with_port.host {
        Host::Domain(d) => d.to_string().to_ascii_lowercase(),
        Host::IpAddr(ip) => ip.to_string(),
    };
    let mut user_param = None;
    let mut lr = false;
    for p in &uri.params {
        match p {
            Param::User(u) => user_param = Some(u.to_string()),
            Param::Lr => lr = true,
            _ => {}
        }
    }
    Some(UriFacts {
        user: uri.auth.map(|a| a.user),
        host,
        port: uri.host_with_port.port.map(|p| *p.value()),
        user_param,
        lr,
    })
}

/// A plain reader for `scheme:[user[:password]@]host[:port][;params][?headers]`.
fn fallback(uri: &[u8]) -> Option<UriFacts> {
    let colon = uri.iter().position(|&c| c == b':')?;
    let scheme = &uri[..colon];
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
    {
        return None;
    }
    let rest = &uri[colon + 1..];
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if scheme.eq_ignore_ascii_case(b"tel") {
        // tel:+15551234;phone-context=…: the number is the whole address.
        let number = rest.split(|&c| c == b';').next().unwrap_or_default();
        return (!number.is_empty()).then(|| UriFacts {
            user: None,
            host: text(number),
            port: None,
            user_param: None,
            lr: false,
        });
    }
    let (user, hostport) = match rest.iter().position(|&c| c == b'@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(|&c| c == b':').next().unwrap_or_default();
            (Some(text(user)), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let (host, after) = if hostport.first() == Some(&b'[') {
        let close = hostport.iter().position(|&c| c == b']')?;
        (&hostport[..=close], &hostport[close + 1..])
    } else {
        let stop = hostport
            .iter()
            .position(|&c| matches!(c, b':' | b';' | b'?'))
            .unwrap_or(hostport.len());
        (&hostport[..stop], &hostport[stop..])
    };
    if host.is_empty()
        || !host
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b".-_[]:".contains(c))
    {
        return None;
    }
    let (port, params) = match after.strip_prefix(b":") {
        Some(p) => {
            let stop = p
                .iter()
                .position(|&c| matches!(c, b';' | b'?'))
                .unwrap_or(p.len());
            let port = std::str::from_utf8(&p[..stop]).ok()?.parse().ok()?;
            (Some(port), &p[stop..])
        }
        None => (None, after),
    };
    let params = params.split(|&c| c == b'?').next().unwrap_or_default();
    let mut user_param = None;
    let mut lr = false;
    for p in params.split(|&c| c == b';').filter(|p| !p.is_empty()) {
        let (name, value) = match p.iter().position(|&c| c == b'=') {
            Some(eq) => (&p[..eq], Some(&p[eq + 1..])),
            None => (p, None),
        };
        if name.eq_ignore_ascii_case(b"user") {
            user_param = value.map(text);
        } else if name.eq_ignore_ascii_case(b"lr") {
            lr = true;
        }
    }
    Some(UriFacts {
        user,
        host: text(host).to_ascii_lowercase(),
        port,
        user_param,
        lr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri_of(v: &[u8]) -> Option<&[u8]> {
        header_uri(v, Span::new(0, v.len())).map(|s| s.of(v))
    }

    #[test]
    fn finds_the_uri_in_header_values() {
        assert_eq!(
            uri_of(b"<sip:alice@contoso.com>;tag=1"),
            Some(&b"sip:alice@contoso.com"[..])
        );
        assert_eq!(
            uri_of(b"\"Alice <A>\" <sip:alice@x>;tag=1"),
            Some(&b"sip:alice@x"[..])
        );
        assert_eq!(
            uri_of(b"Alice <sips:alice@x;transport=tls>"),
            Some(&b"sips:alice@x;transport=tls"[..])
        );
        assert_eq!(uri_of(b"sip:alice@x;tag=99"), Some(&b"sip:alice@x"[..]));
        assert_eq!(uri_of(b"<>"), None);
        assert_eq!(uri_of(b"<sip:unclosed"), None);
        assert_eq!(uri_of(b"no uri here"), None);
    }

    #[test]
    fn rsip_and_the_fallback_agree() {
        for uri in [
            "sip:alice@contoso.com",
            "sip:Alice@CONTOSO.com;transport=tls",
            "sips:bob@10.0.0.1:5061",
            "sip:contoso.com",
            "sip:+15551234@gw.contoso.com;user=phone",
            "sip:fe1.contoso.com:5061;transport=tls;lr",
        ] {
            let r = from_rsip(uri).unwrap_or_else(|| panic!("rsip reads {uri}"));
            let f = fallback(uri.as_bytes()).unwrap();
            assert_eq!(r, f, "{uri}");
        }
    }

    #[test]
    fn reads_the_address_of_record() {
        let f = parse(b"sip:Alice@CONTOSO.COM;transport=tls").unwrap();
        assert_eq!(f.aor(), "Alice@contoso.com");
        assert_eq!(parse(b"sip:contoso.com").unwrap().aor(), "contoso.com");
        assert_eq!(
            parse(b"sip:+1555@gw;user=phone")
                .unwrap()
                .user_param
                .as_deref(),
            Some("phone")
        );
        assert!(parse(b"sip:10.0.0.5:5060;lr").unwrap().lr);
    }

    #[test]
    fn ipv6_and_tel_uris_are_read_by_the_fallback() {
        // rsip 0.4 rejects both.
        let v6 = parse(b"sip:alice@[2001:DB8::1]:5060;transport=udp").unwrap();
        assert_eq!(v6.aor(), "alice@[2001:db8::1]");
        assert_eq!(v6.port, Some(5060));
        assert_eq!(
            parse(b"tel:+15551234;phone-context=contoso.com")
                .unwrap()
                .aor(),
            "+15551234"
        );
    }

    #[test]
    fn refuses_what_is_not_a_uri() {
        for bad in [
            &b""[..],
            b"alice",
            b":x",
            b"sip:",
            b"sip:a@",
            b"sip:a@[::1",
            b"sip:a@h:port",
            b"\xff:x",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
