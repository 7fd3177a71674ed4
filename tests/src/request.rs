//! Requests as a client writes them: a start line, header lines in order, a body.
//!
//! A [`Request`] is kept as text lines so a test can shape the exact bytes it sends (compact
//! names, several Vias on one line, odd spacing) and later compare them with what a backend
//! received. The constructors give realistic defaults: a Via whose sent-by is *not* the socket
//! address (`127.0.0.2:5060`, as behind a NAT) with a valueless `rport`, so responses only come
//! back if siplb honours `received`/`rport` (RFC 3581).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sip::{self, Msg};

/// The Via sent-by clients write: not their socket address, so responses must follow
/// `received`/`rport`.
pub const CLIENT_SENT_BY: &str = "127.0.0.2:5060";

/// A fresh token, unique within this test process (Call-IDs, tags, branches).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}x{n:x}", std::process::id())
}

/// How the `Content-Length` header is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentLength {
    /// `Content-Length: <body length>` appended as the last header.
    Auto,
    /// No Content-Length header (or one the test wrote itself with [`Request::with`]).
    Omit,
}

/// A request under construction. Fields are public so a test can shape any byte.
#[derive(Debug, Clone)]
pub struct Request {
    pub start: String,
    /// Header lines without CRLF, in order.
    pub lines: Vec<String>,
    pub body: Vec<u8>,
    pub content_length: ContentLength,
}

impl Request {
    /// `METHOD ruri` from `from_aor` to `to_aor`, with a fresh Call-ID, tag and branch,
    /// `Max-Forwards: 70` and `CSeq: 1 METHOD`.
    pub fn new(method: &str, ruri: &str, from_aor: &str, to_aor: &str) -> Request {
        Request {
            start: format!("{method} {ruri} SIP/2.0"),
            lines: vec![
                format!(
                    "Via: SIP/2.0/UDP {CLIENT_SENT_BY};rport;branch={}",
                    unique("z9hG4bK")
                ),
                "Max-Forwards: 70".to_string(),
                format!("From: <sip:{from_aor}>;tag={}", unique("t")),
                format!("To: <sip:{to_aor}>"),
                format!("Call-ID: {}", unique("c")),
                format!("CSeq: 1 {method}"),
            ],
            body: Vec::new(),
            content_length: ContentLength::Auto,
        }
    }

    /// A REGISTER of `aor` to its domain's registrar.
    pub fn register(aor: &str) -> Request {
        let domain = aor.rsplit('@').next().unwrap_or(aor);
        Request::new("REGISTER", &format!("sip:{domain}"), aor, aor)
            .with("Contact", &format!("<sip:{CLIENT_SENT_BY}>"))
            .with("Expires", "3600")
    }

    /// An INVITE from `from_aor` to `to_aor` with a small SDP offer.
    pub fn invite(from_aor: &str, to_aor: &str) -> Request {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n";
        Request::new("INVITE", &format!("sip:{to_aor}"), from_aor, to_aor)
            .with("Contact", &format!("<sip:{CLIENT_SENT_BY}>"))
            .body("application/sdp", sdp.as_bytes())
    }

    /// Appends a header line `name: value`.
    pub fn with(mut self, name: &str, value: &str) -> Request {
        self.lines.push(format!("{name}: {value}"));
        self
    }

    /// Replaces the first header line called `name` (full or compact) with `name: value`, or
    /// appends it.
    pub fn set(mut self, name: &str, value: &str) -> Request {
        let line = format!("{name}: {value}");
        match self.position(name) {
            Some(i) => self.lines[i] = line,
            None => self.lines.push(line),
        }
        self
    }

    /// Replaces the first header line called `name` with `line`, written as given.
    pub fn set_line(mut self, name: &str, line: &str) -> Request {
        let i = self
            .position(name)
            .unwrap_or_else(|| panic!("no {name} header to replace"));
        self.lines[i] = line.to_string();
        self
    }

    /// Inserts a raw header line before the first line called `name`.
    pub fn insert_before(mut self, name: &str, line: &str) -> Request {
        let i = self.position(name).unwrap_or(self.lines.len());
        self.lines.insert(i, line.to_string());
        self
    }

    /// Removes every header line called `name`.
    pub fn without(mut self, name: &str) -> Request {
        self.lines.retain(|l| !line_is(l, name));
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(self, content_type: &str, body: &[u8]) -> Request {
        let mut r = self.set("Content-Type", content_type);
        r.body = body.to_vec();
        r
    }

    /// The value of the first header line called `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.position(name)
            .and_then(|i| self.lines[i].split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    }

    pub fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or_default()
    }

    pub fn call_id(&self) -> String {
        self.get("call-id").expect("request without Call-ID")
    }

    /// The branch of the top Via.
    pub fn branch(&self) -> String {
        let via = self.get("via").expect("request without Via");
        sip::param(&sip::split_commas(&via)[0], "branch")
            .flatten()
            .expect("Via without branch")
    }

    /// The CANCEL of this INVITE (RFC 3261 §9.1): same R-URI, top Via, Call-ID, From, To and
    /// CSeq number, no body.
    pub fn cancel(&self) -> Request {
        self.hop_by_hop("CANCEL", self.get("to").expect("no To"))
    }

    /// The ACK of this INVITE for a non-2xx `response` (RFC 3261 §17.1.1.3): like CANCEL, but
    /// with the response's To (and its tag).
    pub fn ack_for(&self, response: &Msg) -> Request {
        self.hop_by_hop("ACK", response.header("to").expect("no To").to_string())
    }

    fn hop_by_hop(&self, method: &str, to: String) -> Request {
        let keep = ["via", "max-forwards", "from", "call-id"];
        let mut r = Request {
            start: format!("{method} {} SIP/2.0", self.ruri()),
            lines: self
                .lines
                .iter()
                .filter(|l| keep.iter().any(|k| line_is(l, k)))
                .cloned()
                .collect(),
            body: Vec::new(),
            content_length: ContentLength::Auto,
        };
        let cseq = self.get("cseq").expect("no CSeq");
        let number = cseq.split_whitespace().next().unwrap_or("1");
        r = r.insert_before("call-id", &format!("To: {to}"));
        r.lines.push(format!("CSeq: {number} {method}"));
        r
    }

    pub fn ruri(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or_default()
    }

    /// The exact bytes sent.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body.len());
        out.extend_from_slice(self.start.as_bytes());
        out.extend_from_slice(b"\r\n");
        for line in &self.lines {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.content_length == ContentLength::Auto {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.lines.iter().position(|l| line_is(l, name))
    }
}

/// Whether a raw header line is called `name` (full or compact form).
pub fn line_is(line: &str, name: &str) -> bool {
    line.split_once(':')
        .is_some_and(|(n, _)| sip::canonical(n) == sip::canonical(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_and_ack_keep_the_transaction_fields() {
        let invite = Request::invite("alice@contoso.com", "bob@contoso.com");
        let cancel = Msg::must_parse(&invite.cancel().bytes());
        let inv = Msg::must_parse(&invite.bytes());
        assert_eq!(cancel.method(), Some("CANCEL"));
        assert_eq!(cancel.top_branch(), inv.top_branch());
        assert_eq!(cancel.header("cseq"), Some("1 CANCEL"));
        assert_eq!(cancel.header("content-length"), Some("0"));
        assert_eq!(cancel.call_id(), inv.call_id());
    }
}
