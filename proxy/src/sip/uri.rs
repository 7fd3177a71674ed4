//! URIs: find the URI in a From / To / Route value and read what routing needs from it — the
//! address of record (`user@host`), the host, the port and the `user=` parameter — as ranges of
//! the message buffer, without copying or allocating.
//!
//! The reader takes `scheme:[user[:password]@]host[:port][;params][?headers]` for any scheme,
//! IPv6 references included, and `tel:` numbers (the number is the whole address). Hosts are
//! compared and hashed in lower case (RFC 3261 §19.1.4); user parts are case-sensitive and used
//! as written. rsip reads the same URIs in the tests, as a cross-check.

use super::scan::Span;

/// What routing reads from a URI, as ranges of the buffer it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Uri {
    pub(crate) scheme: Span,
    /// The user part, as written.
    pub(crate) user: Option<Span>,
    /// The host as written (IPv6 references keep their brackets); for `tel:`, the number.
    pub(crate) host: Span,
    pub(crate) port: Option<u16>,
    /// The value of the `user=` URI parameter (`phone`, `ip`…), if any.
    pub(crate) user_param: Option<Span>,
    /// A `tel:` URI: its "host" is a number, used as written.
    tel: bool,
}

impl Uri {
    /// Feeds the address of record, `user@host` (host in lower case) or the host alone, to
    /// `eat` in pieces.
    pub(crate) fn aor_pieces(&self, buf: &[u8], mut eat: impl FnMut(&[u8])) {
        if let Some(user) = self.user {
            eat(user.of(buf));
            eat(b"@");
        }
        let host = self.host.of(buf);
        if self.tel {
            eat(host);
            return;
        }
        let mut lower = [0u8; 64];
        for chunk in host.chunks(lower.len()) {
            let out = &mut lower[..chunk.len()];
            out.copy_from_slice(chunk);
            out.make_ascii_lowercase();
            eat(out);
        }
    }
}

/// Finds the URI inside a name-addr (`"Alice" <sip:alice@x>;tag=1`) or an addr-spec
/// (`sip:alice@x;tag=1`, where the parameters belong to the header, RFC 3261 §20.10).
pub(crate) fn header_uri(buf: &[u8], value: Span) -> Option<Span> {
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

fn position(buf: &[u8], from: usize, end: usize, pred: impl Fn(u8) -> bool) -> usize {
    buf[from..end]
        .iter()
        .position(|&c| pred(c))
        .map_or(end, |p| from + p)
}

/// Reads the URI at `at` in `buf`. `None` when it is not a URI.
pub(crate) fn read(buf: &[u8], at: Span) -> Option<Uri> {
    let end = at.end;
    let colon = position(buf, at.start, end, |c| c == b':');
    let scheme = Span::new(at.start, colon);
    if colon == end
        || scheme.is_empty()
        || !scheme
            .of(buf)
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
    {
        return None;
    }
    let rest = colon + 1;
    if scheme.of(buf).eq_ignore_ascii_case(b"tel") {
        // tel:+15551234;phone-context=…: the number is the whole address.
        let number = Span::new(rest, position(buf, rest, end, |c| c == b';'));
        return (!number.is_empty()).then_some(Uri {
            scheme,
            user: None,
            host: number,
            port: None,
            user_param: None,
            tel: true,
        });
    }
    // userinfo ends at the '@'; a password ends the user part.
    let at_sign = Some(position(buf, rest, end, |c| c == b'@')).filter(|&p| p < end);
    let (user, hostport) = match at_sign {
        Some(at) => {
            let user_end = position(buf, rest, at, |c| c == b':');
            (Some(Span::new(rest, user_end)), at + 1)
        }
        None => (None, rest),
    };
    let (host, after) = if buf.get(hostport) == Some(&b'[') && hostport < end {
        let close = position(buf, hostport, end, |c| c == b']');
        if close == end {
            return None;
        }
        (Span::new(hostport, close + 1), close + 1)
    } else {
        let stop = position(buf, hostport, end, |c| matches!(c, b':' | b';' | b'?'));
        (Span::new(hostport, stop), stop)
    };
    if host.is_empty()
        || !host
            .of(buf)
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b".-_[]:".contains(c))
    {
        return None;
    }
    let (port, params) = if buf.get(after) == Some(&b':') && after < end {
        let stop = position(buf, after + 1, end, |c| matches!(c, b';' | b'?'));
        let digits = &buf[after + 1..stop];
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits
            .iter()
            .fold(0u32, |n, c| n * 10 + u32::from(c - b'0'));
        (Some(u16::try_from(n).ok()?), stop)
    } else {
        (None, after)
    };
    let params_end = position(buf, params, end, |c| c == b'?');
    let mut user_param = None;
    let mut i = params;
    while i < params_end {
        let p_end = position(buf, i + 1, params_end, |c| c == b';');
        let p = Span::new(i + 1, p_end);
        let eq = position(buf, p.start, p.end, |c| c == b'=');
        if buf[p.start..eq].eq_ignore_ascii_case(b"user") && eq < p.end {
            user_param = Some(Span::new(eq + 1, p.end));
        }
        i = p_end;
    }
    Some(Uri {
        scheme,
        user,
        host,
        port,
        user_param,
        tel: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri_of(v: &[u8]) -> Option<&[u8]> {
        header_uri(v, Span::new(0, v.len())).map(|s| s.of(v))
    }

    fn parse(v: &[u8]) -> Option<Uri> {
        read(v, Span::new(0, v.len()))
    }

    fn aor(v: &[u8]) -> String {
        let u = parse(v).unwrap();
        let mut out = Vec::new();
        u.aor_pieces(v, |p| out.extend_from_slice(p));
        String::from_utf8(out).unwrap()
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
    fn rsip_and_the_reader_agree() {
        use rsip::common::uri::param::Param;
        use rsip::common::uri::Host;
        for text in [
            "sip:alice@contoso.com",
            "sip:Alice@CONTOSO.com;transport=tls",
            "sips:bob@10.0.0.1:5061",
            "sip:contoso.com",
            "sip:+15551234@gw.contoso.com;user=phone",
            "sip:fe1.contoso.com:5061;transport=tls;lr",
            "sip:carol:secret@Example.ORG:5070;user=ip?subject=x",
        ] {
            let r = rsip::Uri::try_from(text).unwrap_or_else(|_| panic!("rsip reads {text}"));
            let host = match &r.host_with_port.host {
                Host::Domain(d) => d.to_string().to_ascii_lowercase(),
                Host::IpAddr(ip) => ip.to_string(),
            };
            let mut want = r.auth.map(|a| a.user + "@").unwrap_or_default();
            want.push_str(&host);
            let b = text.as_bytes();
            let u = parse(b).unwrap();
            assert_eq!(aor(b), want, "{text}");
            assert_eq!(u.port, r.host_with_port.port.map(|p| *p.value()), "{text}");
            let rsip_user = r.params.iter().find_map(|p| match p {
                Param::User(u) => Some(u.to_string()),
                _ => None,
            });
            let user_param = u
                .user_param
                .map(|s| String::from_utf8_lossy(s.of(b)).into_owned());
            assert_eq!(user_param, rsip_user, "{text}");
        }
    }

    #[test]
    fn reads_the_address_of_record() {
        assert_eq!(
            aor(b"sip:Alice@CONTOSO.COM;transport=tls"),
            "Alice@contoso.com"
        );
        assert_eq!(aor(b"sip:contoso.com"), "contoso.com");
        let v = b"sip:+1555@gw;user=phone";
        assert_eq!(parse(v).unwrap().user_param.unwrap().of(v), b"phone");
        let long = format!("sip:u@{}.COM", "A".repeat(150));
        assert_eq!(
            aor(long.as_bytes()),
            format!("u@{}.com", "a".repeat(150)),
            "hosts longer than the lower-casing buffer"
        );
    }

    #[test]
    fn ipv6_and_tel_uris_are_read() {
        // rsip 0.4 rejects both.
        let v6 = b"sip:alice@[2001:DB8::1]:5060;transport=udp";
        assert_eq!(aor(v6), "alice@[2001:db8::1]");
        assert_eq!(parse(v6).unwrap().port, Some(5060));
        assert_eq!(aor(b"tel:+15551234;phone-context=contoso.com"), "+15551234");
        assert_eq!(
            aor(b"tel:+1555ABC"),
            "+1555ABC",
            "a number is used as written"
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
            b"sip:a@h:99999",
            b"\xff:x",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
