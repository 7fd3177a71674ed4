//! The answers siplb originates (483, 403, 404, 503): built statelessly from the request with
//! rsip's header types, as RFC 3261 §8.2.6 describes — every Via in order, From, To (with a tag added when the
//! request had none), Call-ID and CSeq copied, `Content-Length: 0`.

use rsip::headers::UntypedHeader;
use rsip::{headers, Header, Headers};

use super::scan::{header_lines, is_via, Hdr, Message, Span};
use super::uri::header_uri;

/// Writes the response `code` to the request in `buf` into `out`. `to_tag` is used when the
/// request's To has no tag; derive it from the request so a retransmission gets the same one.
pub fn build(
    buf: &[u8],
    msg: &Message,
    code: u16,
    retry_after: Option<u64>,
    to_tag: &str,
    out: &mut Vec<u8>,
) {
    let text = |s: Span| String::from_utf8_lossy(s.of(buf)).into_owned();
    let value = |h: Option<Hdr>| h.map(|h| text(h.value)).unwrap_or_default();
    let mut hs: Vec<Header> = Vec::with_capacity(10);
    for (name, v) in header_lines(buf, msg) {
        if is_via(name.of(buf)) {
            hs.push(Header::Via(headers::Via::new(text(v))));
        }
    }
    hs.push(Header::From(headers::From::new(value(msg.from))));
    let mut to = value(msg.to);
    if !msg.to.is_some_and(|h| has_tag(buf, h.value)) {
        to.push_str(";tag=");
        to.push_str(to_tag);
    }
    hs.push(Header::To(headers::To::new(to)));
    hs.push(Header::CallId(headers::CallId::new(value(msg.call_id))));
    hs.push(Header::CSeq(headers::CSeq::new(value(msg.cseq))));
    if let Some(secs) = retry_after {
        hs.push(Header::RetryAfter(headers::RetryAfter::new(
            secs.to_string(),
        )));
    }
    hs.push(Header::Server(headers::Server::new(concat!(
        "siplb/",
        env!("CARGO_PKG_VERSION")
    ))));
    hs.push(Header::ContentLength(headers::ContentLength::new("0")));
    // rsip 0.4 writes its variant names as reason phrases ("TooManyHops"): the status line is
    // ours, the headers are rsip's.
    out.clear();
    out.extend_from_slice(
        format!(
            "SIP/2.0 {code} {}\r\n{}\r\n",
            reason(code),
            Headers::from(hs)
        )
        .as_bytes(),
    );
}

/// RFC 3261 §21 reason phrases for the answers siplb gives.
pub fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        483 => "Too Many Hops",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Whether a From/To value carries a `tag` parameter (outside its URI).
pub fn has_tag(buf: &[u8], value: Span) -> bool {
    let params_from = match header_uri(buf, value) {
        Some(uri) if buf.get(uri.end) == Some(&b'>') => uri.end + 1,
        Some(uri) => uri.end,
        None => value.start,
    };
    buf[params_from..value.end]
        .split(|&c| c == b';')
        .skip(1)
        .any(|p| {
            let name = p.split(|&c| c == b'=').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"tag")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan;

    const INVITE: &[u8] = b"INVITE sip:bob@contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb\r\n\
v: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKc\r\n\
From: \"Alice\" <sip:alice@contoso.com>;tag=from1\r\n\
To: <sip:bob@contoso.com>\r\n\
Call-ID: call-1\r\n\
CSeq: 7 INVITE\r\n\
Max-Forwards: 0\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn copies_what_the_client_matches_on() {
        let m = scan(INVITE).unwrap();
        let mut out = Vec::new();
        build(INVITE, &m, 483, None, "lbtag", &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{text}");
        assert!(text.contains("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb\r\nVia: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKc\r\n"), "{text}");
        assert!(text.contains("From: \"Alice\" <sip:alice@contoso.com>;tag=from1\r\n"));
        assert!(text.contains("To: <sip:bob@contoso.com>;tag=lbtag\r\n"));
        assert!(text.contains("Call-ID: call-1\r\nCSeq: 7 INVITE\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        let r = scan(&out).unwrap();
        assert_eq!(r.start, scan::StartLine::Response { code: 483 });
    }

    #[test]
    fn keeps_an_existing_to_tag_and_adds_retry_after() {
        let req = b"BYE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n";
        let m = scan(req).unwrap();
        let mut out = Vec::new();
        build(req, &m, 503, Some(30), "unused", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("To: <sip:bob@x>;tag=2\r\n"));
        assert!(text.contains("Retry-After: 30\r\n"));
    }

    #[test]
    fn finds_tags_outside_the_uri_only() {
        let t = |v: &[u8]| has_tag(v, Span::new(0, v.len()));
        assert!(t(b"<sip:a@x>;tag=1"));
        assert!(t(b"sip:a@x ; TAG=1"));
        assert!(!t(b"<sip:a@x;tag=1>"));
        assert!(!t(b"<sip:a@x>;tagx=1"));
        assert!(!t(b"<sip:a@x>"));
    }
}
