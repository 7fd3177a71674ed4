//! Via values (RFC 3261 §20.42, RFC 3581): split a Via line into its values and read the
//! parts siplb needs from one of them — the sent-by, `branch`, `received` and `rport`.
//!
//! A Via header line may carry several values separated by commas (rsip 0.4 reads them as one);
//! hosts may be IPv6 references in brackets (rsip 0.4 rejects them). Positions are absolute
//! offsets into the message buffer so that edits can be spliced in directly.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::edit::{Edits, Insert};
use super::scan::{is_token, Span};

/// Whether and how the `rport` parameter appears (RFC 3581 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rport {
    Absent,
    /// `;rport` without a value: the client asks for it to be filled in. `name_end` is the
    /// offset just after the name, where `=PORT` goes.
    Requested {
        name_end: usize,
    },
    Value(u16),
}

/// One parsed via-parm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ViaParm {
    /// The whole value, without surrounding white space.
    pub(crate) span: Span,
    /// The sent-by, `host[:port]`, as written.
    pub(crate) sent_by: Span,
    /// The sent-by host as written (IPv6 references keep their brackets).
    pub(crate) host: Span,
    pub(crate) port: Option<u16>,
    pub(crate) branch: Option<Span>,
    pub(crate) received: Option<Span>,
    pub(crate) rport: Rport,
}

fn skip_ws(buf: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && matches!(buf[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Skips a quoted string starting at `i` (which holds `"`); returns the offset after it.
fn skip_quoted(buf: &[u8], mut i: usize, end: usize) -> Option<usize> {
    i += 1;
    while i < end {
        match buf[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Splits off the first value of a Via header value. Returns the first value (trimmed) and,
/// when a comma follows, the offset of that comma.
pub(crate) fn first_value(buf: &[u8], value: Span) -> (Span, Option<usize>) {
    let mut i = value.start;
    while i < value.end {
        let Some(at) = memchr::memchr2(b'"', b',', &buf[i..value.end]) else {
            break;
        };
        i += at;
        match buf[i] {
            b'"' => match skip_quoted(buf, i, value.end) {
                Some(after) => i = after,
                None => break,
            },
            _ => {
                let mut end = i;
                while end > value.start && matches!(buf[end - 1], b' ' | b'\t' | b'\r' | b'\n') {
                    end -= 1;
                }
                return (Span::new(value.start, end), Some(i));
            }
        }
    }
    (value, None)
}

/// The offset where the value after a comma starts.
pub(crate) fn after_comma(buf: &[u8], comma: usize, end: usize) -> usize {
    skip_ws(buf, comma + 1, end)
}

/// Reads a port number.
fn port(bytes: &[u8]) -> Option<u16> {
    if bytes.is_empty() || bytes.len() > 5 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    bytes
        .iter()
        .fold(0u32, |n, c| n * 10 + u32::from(c - b'0'))
        .try_into()
        .ok()
}

/// Parses one via-parm. `None` when it is not a well-formed Via value.
pub(crate) fn parse(buf: &[u8], parm: Span) -> Option<ViaParm> {
    let end = parm.end;
    // sent-protocol: "SIP" / "2.0" / transport, white space allowed around the slashes.
    let mut i = skip_ws(buf, parm.start, end);
    let mut fields = [Span::default(); 3];
    for (n, field) in fields.iter_mut().enumerate() {
        if n > 0 {
            i = skip_ws(buf, i, end);
            if buf.get(i) != Some(&b'/') {
                return None;
            }
            i = skip_ws(buf, i + 1, end);
        }
        let start = i;
        while i < end && is_token(buf[i]) {
            i += 1;
        }
        if i == start {
            return None;
        }
        *field = Span::new(start, i);
    }
    if !fields[0].of(buf).eq_ignore_ascii_case(b"SIP") || fields[1].of(buf) != b"2.0" {
        return None;
    }
    let at = skip_ws(buf, i, end);
    if at == i {
        return None; // sent-protocol and sent-by are separated by white space
    }
    i = at;
    // sent-by: host [":" port]
    let host_start = i;
    if buf.get(i) == Some(&b'[') {
        while i < end && buf[i] != b']' {
            i += 1;
        }
        if i == end {
            return None;
        }
        i += 1;
    } else {
        while i < end && (buf[i].is_ascii_alphanumeric() || matches!(buf[i], b'.' | b'-' | b'_')) {
            i += 1;
        }
    }
    let host = Span::new(host_start, i);
    if host.is_empty() {
        return None;
    }
    let mut via_port = None;
    if buf.get(i) == Some(&b':') && i < end {
        let start = i + 1;
        i = start;
        while i < end && buf[i].is_ascii_digit() {
            i += 1;
        }
        via_port = Some(port(&buf[start..i])?);
    }
    let mut via = ViaParm {
        span: parm,
        sent_by: Span::new(host_start, i),
        host,
        port: via_port,
        branch: None,
        received: None,
        rport: Rport::Absent,
    };
    // via-params: *( SEMI name [EQUAL value] )
    loop {
        i = skip_ws(buf, i, end);
        if i >= end {
            return Some(via);
        }
        if buf[i] != b';' {
            return None;
        }
        i = skip_ws(buf, i + 1, end);
        let name_start = i;
        while i < end && is_token(buf[i]) {
            i += 1;
        }
        let name = Span::new(name_start, i);
        if name.is_empty() {
            return None;
        }
        let name_end = i;
        let mut value = None;
        let j = skip_ws(buf, i, end);
        if buf.get(j) == Some(&b'=') && j < end {
            i = skip_ws(buf, j + 1, end);
            let start = i;
            if buf.get(i) == Some(&b'"') {
                i = skip_quoted(buf, i, end)?;
            } else {
                while i < end && (is_token(buf[i]) || matches!(buf[i], b':' | b'[' | b']')) {
                    i += 1;
                }
            }
            if i == start {
                return None;
            }
            value = Some(Span::new(start, i));
        }
        let n = name.of(buf);
        if n.eq_ignore_ascii_case(b"branch") {
            via.branch = value;
        } else if n.eq_ignore_ascii_case(b"received") {
            // The first `received` with a value is the one siplb rewrites; a later one (or a
            // bare `received`, which RFC 3261 §25.1 does not allow) does not make siplb add a
            // second next to it.
            if via.received.is_none() {
                via.received = value;
            }
        } else if n.eq_ignore_ascii_case(b"rport") {
            via.rport = match value {
                None => Rport::Requested { name_end },
                Some(v) => Rport::Value(port(v.of(buf))?),
            };
        }
    }
}

/// Pushes the edits that record where the request with top Via `top` came from (`src`):
/// `received=<ip>` (replacing any `received` it had; IPv6 without brackets, as RFC 3261 §25.1
/// writes `via-received` and RFC 5118 §4.5 shows) and the source port in a bare `rport`
/// (RFC 3261 §18.2.1, RFC 3581 §4). The inserted bytes go to `scratch`.
pub(crate) fn push_return_path(
    top: &ViaParm,
    src: SocketAddr,
    scratch: &mut Vec<u8>,
    edits: &mut Edits,
) {
    // rport's value goes before a received appended at the same offset.
    if let Rport::Requested { name_end } = top.rport {
        let start = scratch.len();
        scratch.push(b'=');
        push_decimal(scratch, u64::from(src.port()));
        edits.push(
            name_end,
            0,
            Insert::Scratch(Span::new(start, scratch.len())),
        );
    }
    let start = scratch.len();
    if top.received.is_none() {
        scratch.extend_from_slice(b";received=");
    }
    match src.ip() {
        // The common case without the formatting machinery (a third of this function's cost).
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    scratch.push(b'.');
                }
                push_decimal(scratch, u64::from(octet));
            }
        }
        IpAddr::V6(ip) => {
            let _ = write!(scratch, "{ip}");
        }
    }
    let value = Insert::Scratch(Span::new(start, scratch.len()));
    match top.received {
        Some(old) => edits.push(old.start, old.len(), value),
        None => edits.push(top.span.end, 0, value),
    }
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(s: &[u8]) -> Span {
        Span::new(0, s.len())
    }

    #[test]
    fn reads_sent_by_and_params() {
        let v = b"SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKx1;rport;received=198.51.100.2";
        let p = parse(v, whole(v)).unwrap();
        assert_eq!(p.host.of(v), b"192.0.2.1");
        assert_eq!(p.port, Some(5070));
        assert_eq!(p.branch.unwrap().of(v), b"z9hG4bKx1");
        assert_eq!(p.received.unwrap().of(v), b"198.51.100.2");
        let Rport::Requested { name_end } = p.rport else {
            panic!("rport requested")
        };
        assert_eq!(
            &v[..name_end],
            &b"SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKx1;rport"[..]
        );
    }

    #[test]
    fn reads_ipv6_hosts() {
        // rsip 0.4 rejects IPv6 references.
        let v = b"SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK2;rport=5062;received=[2001:db8::9]";
        let p = parse(v, whole(v)).unwrap();
        assert_eq!(p.host.of(v), b"[2001:db8::1]");
        assert_eq!(p.port, Some(5061));
        assert_eq!(p.rport, Rport::Value(5062));
        assert_eq!(p.received.unwrap().of(v), b"[2001:db8::9]");
        let v = b"SIP/2.0/UDP [2001:db8::1];received=2001:db8::9";
        let p = parse(v, whole(v)).unwrap();
        assert_eq!(
            p.received.unwrap().of(v),
            b"2001:db8::9",
            "RFC 3261 §25.1 form"
        );
    }

    #[test]
    fn tolerates_white_space_and_case() {
        let v = b"sip / 2.0 / udp   host.example.com ; Branch = z9hG4bK3 ; RPORT";
        let p = parse(v, whole(v)).unwrap();
        assert_eq!(p.host.of(v), b"host.example.com");
        assert_eq!(p.port, None);
        assert_eq!(p.branch.unwrap().of(v), b"z9hG4bK3");
        assert!(matches!(p.rport, Rport::Requested { .. }));
    }

    #[test]
    fn splits_several_values_on_one_line() {
        // rsip 0.4 reads a Via line with several values as one value.
        let v = b"SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b;branch=z9hG4bK2,SIP/2.0/UDP c";
        let (first, comma) = first_value(v, whole(v));
        assert_eq!(first.of(v), b"SIP/2.0/UDP a;branch=z9hG4bK1");
        let next = after_comma(v, comma.unwrap(), v.len());
        let (second, comma2) = first_value(v, Span::new(next, v.len()));
        assert_eq!(second.of(v), b"SIP/2.0/UDP b;branch=z9hG4bK2");
        let third = Span::new(after_comma(v, comma2.unwrap(), v.len()), v.len());
        assert_eq!(first_value(v, third), (third, None));
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        let v = b"SIP/2.0/UDP a;x=\"p,q\";branch=z9hG4bK1";
        assert_eq!(first_value(v, whole(v)), (whole(v), None));
        assert_eq!(
            parse(v, whole(v)).unwrap().branch.unwrap().of(v),
            b"z9hG4bK1"
        );
    }

    #[test]
    fn writes_decimals() {
        for n in [0, 7, 10, 255, 65535, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn refuses_malformed_values() {
        for v in [
            &b""[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDPhost",
            b"HTTP/1.1/TCP host",
            b"SIP/2.0/UDP host:99999",
            b"SIP/2.0/UDP host:",
            b"SIP/2.0/UDP [::1",
            b"SIP/2.0/UDP host;",
            b"SIP/2.0/UDP host;branch=",
            b"SIP/2.0/UDP host;rport=x",
            b"SIP/2.0/UDP host junk",
        ] {
            assert_eq!(parse(v, whole(v)), None, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn the_first_received_with_a_value_is_the_one_rewritten() {
        let v = b"SIP/2.0/TLS 192.0.2.7:50123;branch=z9hG4bKx;received=1bK;received";
        let p = parse(v, whole(v)).unwrap();
        assert_eq!(
            p.received.unwrap().of(v),
            b"1bK",
            "a bare received after it changes nothing"
        );
        let v = b"SIP/2.0/UDP 192.0.2.7;received;received=192.0.2.9;received=192.0.2.8";
        let p = parse(v, whole(v)).unwrap();
        assert_eq!(p.received.unwrap().of(v), b"192.0.2.9");
    }
}
