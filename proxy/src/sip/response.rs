//! The answers siplb originates, built statelessly from the request with rsip's header types,
//! as RFC 3261 §8.2.6 describes: every Via in order (the top one with `received` and, when
//! asked, `rport` — RFC 3261 §18.2.1, RFC 3581 §4 — exactly as a forwarded request gets them),
//! From, To (with a tag added when the request had none), Call-ID and CSeq copied, an optional
//! `Server`, `Content-Length: 0`. Answers are rare; they may allocate.

use std::net::SocketAddr;

use rsip::headers::UntypedHeader;
use rsip::{headers, Header, Headers};

use super::edit::Edits;
use super::scan::{header_lines, is_proxy_require, is_via, unsupported_tags, Message, Span};
use super::uri::header_uri;
use super::via::{self, ViaParm};

/// Why siplb answers a request itself instead of forwarding it, with what the answer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `400 Missing <Header>`: a header RFC 3261 §8.1.1 requires is absent.
    MissingHeader(&'static str),
    /// `400 Bad <Header>`: the header is there but cannot be read.
    BadHeader(&'static str),
    /// `403`: a Route names a host that is not one of siplb's servers (never an open relay).
    ForeignRoute,
    /// No route matches: `404`, or `403` with `[routing] no_route = 403`.
    NoRoute { forbidden: bool },
    /// `416`: a request-URI scheme other than sip, sips or tel (RFC 3261 §16.3 step 2).
    UnsupportedUriScheme,
    /// `420` with `Unsupported:` listing the request's Proxy-Require tags (§16.3 step 5).
    BadExtension,
    /// `483`: Max-Forwards 0 (§16.3 step 3).
    TooManyHops,
    /// `503` with `Retry-After`: no server of the serving pool is up.
    NoServer { retry_after: u64 },
    /// `505`: a request line with a version other than SIP/2.0.
    VersionNotSupported,
    /// `513`: the request no longer fits a UDP datagram once siplb's edits are applied.
    TooLarge,
    /// `480 SIPS Needs TLS`: a `sips:` request-URI whose next hop is not a TLS server —
    /// RFC 3261 §26.2.2 has every hop of a SIPS request secured, so siplb does not send it in
    /// the clear.
    SipsNeedsTls,
}

impl Refusal {
    /// The status code of the answer.
    pub(crate) fn code(self) -> u16 {
        match self {
            Refusal::MissingHeader(_) | Refusal::BadHeader(_) => 400,
            Refusal::ForeignRoute => 403,
            Refusal::NoRoute { forbidden: true } => 403,
            Refusal::NoRoute { forbidden: false } => 404,
            Refusal::UnsupportedUriScheme => 416,
            Refusal::BadExtension => 420,
            Refusal::TooManyHops => 483,
            Refusal::NoServer { .. } => 503,
            Refusal::VersionNotSupported => 505,
            Refusal::TooLarge => 513,
            Refusal::SipsNeedsTls => 480,
        }
    }

    /// Whether the request itself is invalid (rather than valid but not routable).
    pub(crate) fn is_invalid(self) -> bool {
        matches!(
            self,
            Refusal::MissingHeader(_)
                | Refusal::BadHeader(_)
                | Refusal::UnsupportedUriScheme
                | Refusal::VersionNotSupported
        )
    }

    /// Writes the status line's reason phrase (RFC 3261 §21; a 400 names the header).
    fn write_reason(self, out: &mut Vec<u8>) {
        let (head, tail) = match self {
            Refusal::MissingHeader(h) => ("Missing ", h),
            Refusal::BadHeader(h) => ("Bad ", h),
            Refusal::ForeignRoute | Refusal::NoRoute { forbidden: true } => ("Forbidden", ""),
            Refusal::NoRoute { forbidden: false } => ("Not Found", ""),
            Refusal::UnsupportedUriScheme => ("Unsupported URI Scheme", ""),
            Refusal::BadExtension => ("Bad Extension", ""),
            Refusal::TooManyHops => ("Too Many Hops", ""),
            Refusal::NoServer { .. } => ("Service Unavailable", ""),
            Refusal::VersionNotSupported => ("Version Not Supported", ""),
            Refusal::TooLarge => ("Message Too Large", ""),
            Refusal::SipsNeedsTls => ("SIPS Needs TLS", ""),
        };
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(tail.as_bytes());
    }
}

/// What an answer is made of besides the request.
pub(crate) struct Answer<'a> {
    pub(crate) refusal: Refusal,
    /// Where the request came from: the top Via's `received`/`rport`.
    pub(crate) src: SocketAddr,
    /// Used when the request's To has no tag; derive it from the request so a retransmission
    /// gets the same one.
    pub(crate) to_tag: &'a str,
    /// The `Server` header's value; empty for none.
    pub(crate) server: &'a str,
}

/// Writes `answer` to the request in `buf` (whose top Via is `top`) into `out`.
pub(crate) fn build(
    buf: &[u8],
    msg: &Message,
    top: &ViaParm,
    answer: &Answer<'_>,
    out: &mut Vec<u8>,
) {
    let text = |s: Span| String::from_utf8_lossy(s.of(buf)).into_owned();
    let mut hs: Vec<Header> = Vec::with_capacity(10);
    let mut first_via = true;
    let mut tags: Vec<String> = Vec::new();
    for (name, v) in header_lines(buf, msg) {
        let name = name.of(buf);
        if is_via(name) {
            let mut line = text(v);
            if std::mem::take(&mut first_via) && top.span.start >= v.start && top.span.end <= v.end
            {
                line = top_via_with_return_path(buf, top, answer.src, v);
            }
            hs.push(Header::Via(headers::Via::new(line)));
        } else if is_proxy_require(name) {
            tags.extend(
                unsupported_tags(v.of(buf)).map(|t| String::from_utf8_lossy(t).into_owned()),
            );
        }
    }
    // What the request lacks, the answer lacks too (a 400 Missing <Header>).
    if let Some(from) = msg.from {
        hs.push(Header::From(headers::From::new(text(from.value))));
    }
    if let Some(h) = msg.to {
        let mut to = text(h.value);
        if !has_tag(buf, h.value) {
            to.push_str(";tag=");
            to.push_str(answer.to_tag);
        }
        hs.push(Header::To(headers::To::new(to)));
    }
    if let Some(h) = msg.call_id {
        hs.push(Header::CallId(headers::CallId::new(text(h.value))));
    }
    if let Some(h) = msg.cseq {
        hs.push(Header::CSeq(headers::CSeq::new(text(h.value))));
    }
    if let Refusal::NoServer { retry_after } = answer.refusal {
        hs.push(Header::RetryAfter(headers::RetryAfter::new(
            retry_after.to_string(),
        )));
    }
    if answer.refusal == Refusal::BadExtension {
        hs.push(Header::Unsupported(headers::Unsupported::new(
            tags.join(", "),
        )));
    }
    if !answer.server.is_empty() {
        hs.push(Header::Server(headers::Server::new(answer.server)));
    }
    hs.push(Header::ContentLength(headers::ContentLength::new("0")));
    // rsip 0.4 writes its variant names as reason phrases ("TooManyHops"): the status line is
    // ours, the headers are rsip's.
    out.clear();
    out.extend_from_slice(format!("SIP/2.0 {} ", answer.refusal.code()).as_bytes());
    answer.refusal.write_reason(out);
    out.extend_from_slice(format!("\r\n{}\r\n", Headers::from(hs)).as_bytes());
}

/// The value of the first Via line (`line`), its top value given `received` and `rport`.
fn top_via_with_return_path(buf: &[u8], top: &ViaParm, src: SocketAddr, line: Span) -> String {
    let mut scratch = Vec::with_capacity(64);
    let mut edits = Edits::default();
    via::push_return_path(top, src, &mut scratch, &mut edits);
    let mut edited = Vec::with_capacity(line.end + 64);
    edits.apply(buf, top.span.end, &scratch, &mut edited);
    let mut out = String::from_utf8_lossy(&buf[line.start..top.span.start]).into_owned();
    out.push_str(&String::from_utf8_lossy(&edited[top.span.start..]));
    out.push_str(&String::from_utf8_lossy(&buf[top.span.end..line.end]));
    out
}

/// Whether a From/To value carries a `tag` parameter (outside its URI).
pub(crate) fn has_tag(buf: &[u8], value: Span) -> bool {
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
    use crate::sip::scan::{scan, StartLine};

    const INVITE: &[u8] = b"INVITE sip:bob@contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb\r\n\
v: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKc\r\n\
From: \"Alice\" <sip:alice@contoso.com>;tag=from1\r\n\
To: <sip:bob@contoso.com>\r\n\
Call-ID: call-1\r\n\
CSeq: 7 INVITE\r\n\
Max-Forwards: 0\r\n\
Content-Length: 0\r\n\r\n";

    fn answer(req: &[u8], refusal: Refusal, src: &str, server: &str) -> String {
        let m = scan(req).unwrap();
        let top = m.top_via.unwrap();
        let mut out = Vec::new();
        let a = Answer {
            refusal,
            src: src.parse().unwrap(),
            to_tag: "lbtag",
            server,
        };
        build(req, &m, &top, &a, &mut out);
        let r = scan(&out).unwrap();
        assert_eq!(
            r.start,
            StartLine::Response {
                code: refusal.code()
            }
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn copies_what_the_client_matches_on() {
        let text = answer(INVITE, Refusal::TooManyHops, "192.0.2.1:5060", "siplb");
        assert!(text.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{text}");
        assert!(text.contains("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;received=192.0.2.1, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb\r\nVia: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKc\r\n"), "{text}");
        assert!(text.contains("From: \"Alice\" <sip:alice@contoso.com>;tag=from1\r\n"));
        assert!(text.contains("To: <sip:bob@contoso.com>;tag=lbtag\r\n"));
        assert!(text.contains("Call-ID: call-1\r\nCSeq: 7 INVITE\r\n"));
        assert!(text.contains("Server: siplb\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
    }

    #[test]
    fn the_top_via_gets_received_and_rport_like_a_forwarded_request() {
        let req = b"OPTIONS sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::1];rport;received=[2001:db8::2];branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: c\r\nCSeq: 2 OPTIONS\r\n\r\n";
        let text = answer(
            req,
            Refusal::NoRoute { forbidden: false },
            "[2001:db8::9]:6000",
            "",
        );
        assert!(text.starts_with("SIP/2.0 404 Not Found\r\n"), "{text}");
        assert!(
            text.contains("Via: SIP/2.0/UDP [2001:db8::1];rport=6000;received=2001:db8::9;branch=z9hG4bK1\r\n"),
            "IPv6 received without brackets, RFC 3261 §25.1: {text}"
        );
        assert!(!text.contains("Server:"), "server_header = \"\": {text}");
    }

    #[test]
    fn keeps_an_existing_to_tag_and_adds_retry_after() {
        let req = b"BYE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n";
        let text = answer(
            req,
            Refusal::NoServer { retry_after: 30 },
            "192.0.2.3:5060",
            "lb",
        );
        assert!(
            text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("To: <sip:bob@x>;tag=2\r\n"));
        assert!(text.contains("Retry-After: 30\r\n"));
        assert!(text.contains("Server: lb\r\n"));
    }

    #[test]
    fn reason_phrases_name_what_was_wrong() {
        let req = b"OPTIONS sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: c\r\nCSeq: 2 OPTIONS\r\nProxy-Require: foo\r\nProxy-Require: bar, ms-benotify, baz\r\n\r\n";
        let status = |r: Refusal| {
            let t = answer(req, r, "192.0.2.3:5060", "siplb");
            t[..t.find("\r\n").unwrap()].to_string()
        };
        assert_eq!(
            status(Refusal::MissingHeader("Call-ID")),
            "SIP/2.0 400 Missing Call-ID"
        );
        assert_eq!(status(Refusal::BadHeader("CSeq")), "SIP/2.0 400 Bad CSeq");
        assert_eq!(
            status(Refusal::UnsupportedUriScheme),
            "SIP/2.0 416 Unsupported URI Scheme"
        );
        assert_eq!(
            status(Refusal::VersionNotSupported),
            "SIP/2.0 505 Version Not Supported"
        );
        assert_eq!(status(Refusal::TooLarge), "SIP/2.0 513 Message Too Large");
        assert_eq!(status(Refusal::ForeignRoute), "SIP/2.0 403 Forbidden");
        assert_eq!(
            status(Refusal::NoRoute { forbidden: true }),
            "SIP/2.0 403 Forbidden"
        );
        let t = answer(req, Refusal::BadExtension, "192.0.2.3:5060", "siplb");
        assert!(t.starts_with("SIP/2.0 420 Bad Extension\r\n"), "{t}");
        assert!(t.contains("\r\nUnsupported: foo, bar, baz\r\n"), "{t}");
    }

    #[test]
    fn headers_the_request_lacks_are_not_invented() {
        let req = b"OPTIONS sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nTo: <sip:bob@x>\r\nCall-ID: c\r\n\r\n";
        let t = answer(
            req,
            Refusal::MissingHeader("From"),
            "192.0.2.3:5060",
            "siplb",
        );
        assert!(t.starts_with("SIP/2.0 400 Missing From\r\n"), "{t}");
        assert!(!t.contains("From:") && !t.contains("CSeq:"), "{t}");
        assert!(t.contains("\r\nCall-ID: c\r\n"), "{t}");
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
