//! A small, independent SIP reader for assertions.
//!
//! This is deliberately not siplb's scanner: the tests must not share the proxy's bugs. It reads
//! a datagram into a start line, header lines (with their raw text, so byte comparisons stay
//! possible) and a body, and answers the questions tests ask: a header by full or compact name,
//! the Via values in order (several may share a line), a Via branch, the AOR of From or To.

use std::fmt::Write as _;

/// One header line of a message (folded continuation lines are joined into it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name as written (`Via`, `v`, `CALL-ID`...).
    pub name: String,
    /// The value with surrounding whitespace trimmed.
    pub value: String,
    /// The whole line(s) as written, without the final CRLF.
    pub raw: String,
}

impl Header {
    /// Whether this header is `name` (full or compact form, any case).
    pub fn is(&self, name: &str) -> bool {
        canonical(&self.name) == canonical(name)
    }
}

/// A parsed SIP message. Parsing is lenient: anything with a start line and a blank line parses.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The datagram exactly as received.
    pub raw: Vec<u8>,
    pub start: String,
    pub headers: Vec<Header>,
    /// Everything after the blank line (not cut at Content-Length).
    pub body: Vec<u8>,
}

/// The full, lower-case name of a header given in full or compact form (RFC 3261 §7.3.3 and the
/// compact forms registered since).
pub fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let full = match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "l" => "content-length",
        "m" => "contact",
        "c" => "content-type",
        "e" => "content-encoding",
        "k" => "supported",
        "s" => "subject",
        "o" => "event",
        "r" => "refer-to",
        "b" => "referred-by",
        "u" => "allow-events",
        "a" => "accept-contact",
        "j" => "reject-contact",
        "d" => "request-disposition",
        "x" => "session-expires",
        "y" => "identity",
        "n" => "identity-info",
        _ => return lower,
    };
    full.to_string()
}

impl Msg {
    /// Reads a datagram; `None` when there is no start line or no end of headers.
    pub fn parse(raw: &[u8]) -> Option<Msg> {
        let (head, body) = split_head(raw)?;
        let head = String::from_utf8_lossy(head);
        let mut lines = head.split("\r\n");
        let start = lines.next()?.to_string();
        if start.is_empty() {
            return None;
        }
        let mut headers: Vec<Header> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // RFC 3261 §7.3.1 folding: a continuation of the previous header.
                let last = headers.last_mut()?;
                last.raw.push_str("\r\n");
                last.raw.push_str(line);
                last.value.push(' ');
                last.value.push_str(line.trim());
                continue;
            }
            let (name, value) = line.split_once(':')?;
            headers.push(Header {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                raw: line.to_string(),
            });
        }
        Some(Msg {
            raw: raw.to_vec(),
            start,
            headers,
            body: body.to_vec(),
        })
    }

    /// Parses or panics with the datagram shown.
    pub fn must_parse(raw: &[u8]) -> Msg {
        Msg::parse(raw).unwrap_or_else(|| panic!("not a SIP message:\n{}", show(raw)))
    }

    pub fn is_response(&self) -> bool {
        self.start.starts_with("SIP/2.0 ")
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        if !self.is_response() {
            return None;
        }
        self.start.split(' ').nth(1)?.parse().ok()
    }

    /// The method of a request (from the start line).
    pub fn method(&self) -> Option<&str> {
        if self.is_response() {
            return None;
        }
        self.start.split(' ').next()
    }

    /// The request-URI of a request.
    pub fn ruri(&self) -> Option<&str> {
        if self.is_response() {
            return None;
        }
        self.start.split(' ').nth(1)
    }

    /// The first header called `name` (full or compact form).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.is(name))
            .map(|h| h.value.as_str())
    }

    /// Every header line called `name`, in order.
    pub fn header_lines<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Header> + 'a {
        self.headers.iter().filter(move |h| h.is(name))
    }

    /// Every Via value in order, splitting lines that carry several.
    pub fn vias(&self) -> Vec<String> {
        self.header_lines("via")
            .flat_map(|h| split_commas(&h.value))
            .collect()
    }

    /// The branch of the top Via.
    pub fn top_branch(&self) -> Option<String> {
        param(self.vias().first()?, "branch").flatten()
    }

    /// `host:port` of the top Via (as written).
    pub fn top_via_sent_by(&self) -> Option<String> {
        self.vias().first().and_then(|v| via_sent_by(v))
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    /// The CSeq method (the method a response answers).
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("cseq")?.split_whitespace().nth(1)
    }

    pub fn from_aor(&self) -> Option<String> {
        aor(self.header("from")?)
    }

    pub fn to_aor(&self) -> Option<String> {
        aor(self.header("to")?)
    }

    /// The AOR siplb keys a request on by default: To for REGISTER, From otherwise.
    pub fn default_key(&self) -> Option<String> {
        if self.method()? == "REGISTER" {
            self.to_aor()
        } else {
            self.from_aor()
        }
    }
}

/// Splits a datagram at the end of its headers: (head without the blank line, body).
pub fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&raw[..at], &raw[at + 4..]))
}

/// Splits a header value at top-level commas (not inside quotes or `<...>`).
pub fn split_commas(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut quoted, mut angle) = (false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim().to_string());
    out
}

/// A `;name[=value]` parameter of a header value (outside `<...>`): `None` when absent,
/// `Some(None)` when present without a value.
pub fn param(value: &str, name: &str) -> Option<Option<String>> {
    let params = match value.rfind('>') {
        Some(at) => &value[at + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (n, v) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v.trim().to_string())),
            None => (p, None),
        };
        n.trim().eq_ignore_ascii_case(name).then_some(v)
    })
}

/// `host:port` of a Via value (`SIP/2.0/UDP host:port;params`).
pub fn via_sent_by(via: &str) -> Option<String> {
    let rest = via.split_whitespace().nth(1)?;
    Some(rest.split(';').next()?.trim().to_string())
}

/// The address of record (`user@host`, no port or parameters) of a name-addr or addr-spec.
pub fn aor(value: &str) -> Option<String> {
    let uri = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next()?,
    };
    let uri = uri.trim();
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))?;
    let rest = rest.split([';', '?']).next()?;
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let host = if hostport.starts_with('[') {
        &hostport[..=hostport.find(']')?]
    } else {
        hostport.split(':').next()?
    };
    Some(match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    })
}

/// A datagram shown for a failure message: printable, one SIP line per output line.
pub fn show(raw: &[u8]) -> String {
    let mut out = String::new();
    for &b in raw {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n\n"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// Panics with both datagrams and the first differing line when they are not byte-identical.
pub fn assert_same_bytes(what: &str, expected: &[u8], got: &[u8]) {
    if expected == got {
        return;
    }
    let (e, g) = (show(expected), show(got));
    let first = e
        .lines()
        .zip(g.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| e.lines().count().min(g.lines().count()));
    panic!(
        "{what}: bytes differ (first difference at line {})\n--- expected ---\n{e}\n--- got ---\n{g}",
        first + 1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_compact_headers_and_vias_on_one_line() {
        let raw = b"INVITE sip:bob@b.example SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nf: <sip:alice@[2001:db8::1]:5060>;tag=1\r\ni: x\r\nl: 0\r\n\r\n";
        let m = Msg::must_parse(raw);
        assert_eq!(m.vias().len(), 2);
        assert_eq!(m.top_branch().as_deref(), Some("z9hG4bK1"));
        assert_eq!(m.from_aor().as_deref(), Some("alice@[2001:db8::1]"));
        assert_eq!(m.call_id(), Some("x"));
        assert_eq!(m.header("Content-Length"), Some("0"));
    }

    #[test]
    fn params() {
        assert_eq!(param("SIP/2.0/UDP h;rport;branch=z9", "rport"), Some(None));
        assert_eq!(
            param("SIP/2.0/UDP h;rport=5;branch=z9", "rport"),
            Some(Some("5".into()))
        );
        assert_eq!(
            param("<sip:a@b;tag=no>;tag=yes", "tag"),
            Some(Some("yes".into()))
        );
        assert_eq!(
            aor("\"A\" <sip:alice@contoso.com:5061;transport=tls>"),
            Some("alice@contoso.com".into())
        );
    }
}
