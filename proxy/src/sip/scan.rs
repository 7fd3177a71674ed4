//! A zero-copy scanner for one SIP message (RFC 3261 §7).
//!
//! [`scan`] walks the start line and the header lines once, classifies the handful of headers
//! siplb reads (Via, From, To, Call-ID, CSeq, Max-Forwards, Route, Content-Length,
//! Proxy-Require, in full or compact form and in any case), records where each one sits as byte
//! ranges and reads the top Via value (sent-by, branch, `received`, `rport`), so the core works
//! from one reading of the message. It neither copies nor decodes anything else, so what siplb
//! does not own can be passed through byte-identical. Folded header lines (a continuation
//! starting with SP/HT) belong to the header above them. Lines may end in CRLF or, leniently, a
//! bare LF.
//!
//! The scan refuses only what cannot be a SIP message (no start line, a header line without a
//! name). What makes a request invalid but answerable (a missing header, a bad Content-Length,
//! another SIP version) is recorded, and the core answers it (RFC 3261 §16.3 step 1).

use memchr::memchr;

use super::via::{self, ViaParm};

/// A byte range into the scanned buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The bytes this span covers in `buf`.
    pub(crate) fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start..self.end]
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Where one header sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hdr {
    /// From the first byte of the name to just past the line terminator (folded lines included).
    pub(crate) line: Span,
    /// The value with surrounding white space trimmed (may contain folded line breaks).
    pub(crate) value: Span,
}

/// The first line of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartLine {
    /// `version_ok`: the request line says `SIP/2.0` (another `SIP/x` is answered 505).
    Request {
        method: Span,
        uri: Span,
        version_ok: bool,
    },
    Response {
        code: u16,
    },
}

/// The headers siplb reads; everything else is `Other` and passes through untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Route,
    ContentLength,
    ProxyRequire,
    Supported,
    Contact,
    Other,
}

fn classify(name: &[u8]) -> Name {
    let is = |full: &[u8]| name.eq_ignore_ascii_case(full);
    match name.len() {
        1 => match name[0].to_ascii_lowercase() {
            b'v' => Name::Via,
            b'f' => Name::From,
            b't' => Name::To,
            b'i' => Name::CallId,
            b'l' => Name::ContentLength,
            b'k' => Name::Supported,
            b'm' => Name::Contact,
            _ => Name::Other,
        },
        2 if is(b"to") => Name::To,
        3 if is(b"via") => Name::Via,
        4 if is(b"from") => Name::From,
        4 if is(b"cseq") => Name::CSeq,
        5 if is(b"route") => Name::Route,
        7 if is(b"call-id") => Name::CallId,
        7 if is(b"contact") => Name::Contact,
        9 if is(b"supported") => Name::Supported,
        12 if is(b"max-forwards") => Name::MaxForwards,
        13 if is(b"proxy-require") => Name::ProxyRequire,
        14 if is(b"content-length") => Name::ContentLength,
        _ => Name::Other,
    }
}

/// What a scan found: ranges into the buffer that was scanned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) start: StartLine,
    /// The first Via header line and the second one (a line may carry several values).
    pub(crate) via: Option<Hdr>,
    pub(crate) via2: Option<Hdr>,
    /// The first value of the first Via line, read; `None` when absent or unreadable.
    pub(crate) top_via: Option<ViaParm>,
    /// The comma after the top Via value, when its line carries more values.
    pub(crate) top_via_comma: Option<usize>,
    pub(crate) from: Option<Hdr>,
    pub(crate) to: Option<Hdr>,
    pub(crate) call_id: Option<Hdr>,
    pub(crate) cseq: Option<Hdr>,
    pub(crate) max_forwards: Option<Hdr>,
    /// The first Route header line and the second one.
    pub(crate) route: Option<Hdr>,
    pub(crate) route2: Option<Hdr>,
    /// A Proxy-Require header names an option tag siplb does not support (RFC 3261 §16.3
    /// step 5).
    pub(crate) unsupported_proxy_require: bool,
    /// The first Contact header line.
    pub(crate) contact: Option<Hdr>,
    /// Content-Length is not a number, two disagree, or it is larger than the datagram's body
    /// (RFC 3261 §18.3); the body is then the rest of the datagram.
    pub(crate) bad_content_length: bool,
    /// Where the first header line starts.
    pub(crate) headers_start: usize,
    /// Where the blank line that ends the headers starts: a new header line goes here.
    pub(crate) headers_end: usize,
    /// The body as delimited by Content-Length (or the rest of the datagram without one).
    pub(crate) body: Span,
}

impl Message {
    /// Whether this is a request.
    pub(crate) fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or `None` for a response.
    pub(crate) fn method<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { method, .. } => Some(method.of(buf)),
            StartLine::Response { .. } => None,
        }
    }

    /// The end of the message: bytes past it (beyond Content-Length) are not part of it.
    pub(crate) fn end(&self) -> usize {
        self.body.end
    }

    /// The first header RFC 3261 §8.1.1 requires that is missing (Via aside).
    pub(crate) fn missing(&self) -> Option<&'static str> {
        [
            (self.from, "From"),
            (self.to, "To"),
            (self.call_id, "Call-ID"),
            (self.cseq, "CSeq"),
        ]
        .into_iter()
        .find_map(|(h, name)| h.is_none().then_some(name))
    }
}

/// Why a buffer is not a SIP message siplb can handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("empty message")]
    Empty,
    #[error("start line is neither a request line nor a status line")]
    StartLine,
    #[error("header line without a colon or with a bad name at byte {0}")]
    HeaderLine(usize),
    #[error("headers are not closed by a blank line")]
    Unterminated,
}

/// Whether `c` may appear in a SIP token (RFC 3261 §25.1).
pub(crate) fn is_token(c: u8) -> bool {
    TOKEN[usize::from(c)]
}

/// [`is_token`] as a table: it runs for every byte of every header name and Via parameter.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
};

/// One line: its content (terminator excluded) and where the next line starts.
fn next_line(buf: &[u8], at: usize) -> Option<(Span, usize)> {
    let nl = at + memchr(b'\n', &buf[at..])?;
    let end = if nl > at && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((Span::new(at, end), nl + 1))
}

fn trim(buf: &[u8], mut s: Span) -> Span {
    while s.start < s.end && matches!(buf[s.start], b' ' | b'\t' | b'\r' | b'\n') {
        s.start += 1;
    }
    while s.end > s.start && matches!(buf[s.end - 1], b' ' | b'\t' | b'\r' | b'\n') {
        s.end -= 1;
    }
    s
}

/// Parses a run of ASCII digits (surrounding white space allowed) into a number. White space is
/// SIP's (SP, HT, CR, LF), the bytes [`trim`] leaves out of a header value: a value with a
/// form feed beside its digits is not a number, so an edit of the value never drops that byte.
pub(crate) fn parse_uint(bytes: &[u8]) -> Option<u64> {
    let sip_ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let start = bytes.iter().position(|c| !sip_ws(c)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|c| !sip_ws(c))
        .map_or(start, |e| e + 1);
    let t = &bytes[start..end];
    if t.is_empty() || t.len() > 19 {
        return None;
    }
    t.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

fn start_line(buf: &[u8], line: Span) -> Result<StartLine, ScanError> {
    let l = line.of(buf);
    if l.len() >= 8 && l[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        let rest = &l[8..];
        let code_ok = rest.len() >= 3
            && rest[..3].iter().all(u8::is_ascii_digit)
            && (rest.len() == 3 || rest[3] == b' ');
        if !code_ok || rest[0] == b'0' {
            return Err(ScanError::StartLine);
        }
        let code = rest[..3]
            .iter()
            .fold(0u16, |n, c| n * 10 + u16::from(c - b'0'));
        return Ok(StartLine::Response { code });
    }
    let sp1 = memchr(b' ', l).ok_or(ScanError::StartLine)?;
    let sp2 = sp1 + 1 + memchr(b' ', &l[sp1 + 1..]).ok_or(ScanError::StartLine)?;
    let method = &l[..sp1];
    let uri = &l[sp1 + 1..sp2];
    if method.is_empty() || !method.iter().all(|&c| is_token(c)) || uri.is_empty() {
        return Err(ScanError::StartLine);
    }
    // No white space after the version (RFC 3261 §25.1: Request-Line ends in SIP-Version CRLF;
    // RFC 4475 §3.1.2.10).
    let version = &l[sp2 + 1..];
    let sip = version.len() > 4 && version[..4].eq_ignore_ascii_case(b"SIP/");
    if !sip || !version.iter().all(|&c| is_token(c) || c == b'/') {
        return Err(ScanError::StartLine);
    }
    Ok(StartLine::Request {
        method: Span::new(line.start, line.start + sp1),
        uri: Span::new(line.start + sp1 + 1, line.start + sp2),
        version_ok: version.eq_ignore_ascii_case(b"SIP/2.0"),
    })
}

/// Scans `buf` as one SIP message carried in a datagram.
pub(crate) fn scan(buf: &[u8]) -> Result<Message, ScanError> {
    // RFC 3261 §7.5: ignore CRLFs before the start line.
    let mut at = buf
        .iter()
        .position(|c| !matches!(c, b'\r' | b'\n'))
        .ok_or(ScanError::Empty)?;
    let (first, mut next) = next_line(buf, at).ok_or(ScanError::Unterminated)?;
    let start = start_line(buf, first)?;
    at = next;

    let mut m = Message {
        start,
        via: None,
        via2: None,
        top_via: None,
        top_via_comma: None,
        from: None,
        to: None,
        call_id: None,
        cseq: None,
        max_forwards: None,
        route: None,
        route2: None,
        unsupported_proxy_require: false,
        contact: None,
        bad_content_length: false,
        headers_start: next,
        headers_end: 0,
        body: Span::default(),
    };
    let mut current: Option<(Name, Hdr)> = None;
    let mut content_length: Result<Option<u64>, ()> = Ok(None);

    loop {
        let (line, after) = next_line(buf, at).ok_or(ScanError::Unterminated)?;
        next = after;
        let bytes = line.of(buf);
        if matches!(bytes.first(), Some(b' ' | b'\t')) {
            // A folded continuation of the header above (RFC 3261 §7.3.1).
            let (_, hdr) = current.as_mut().ok_or(ScanError::HeaderLine(at))?;
            hdr.line.end = next;
            hdr.value = trim(buf, Span::new(hdr.value.start, line.end));
            at = next;
            continue;
        }
        if let Some((name, hdr)) = current.take() {
            store(&mut m, &mut content_length, buf, name, hdr);
        }
        if bytes.is_empty() {
            m.headers_end = at;
            break;
        }
        let colon = memchr(b':', bytes).ok_or(ScanError::HeaderLine(at))?;
        let name = bytes[..colon].trim_ascii_end();
        if name.is_empty() || !name.iter().all(|&c| is_token(c)) {
            return Err(ScanError::HeaderLine(at));
        }
        let value = trim(buf, Span::new(line.start + colon + 1, line.end));
        current = Some((
            classify(name),
            Hdr {
                line: Span::new(at, next),
                value,
            },
        ));
        at = next;
    }

    let body_start = next;
    let available = buf.len() - body_start;
    let body_len = match content_length {
        Ok(Some(n)) if n <= available as u64 => n as usize,
        Ok(None) => available,
        _ => {
            m.bad_content_length = true;
            available
        }
    };
    m.body = Span::new(body_start, body_start + body_len);
    if let Some(h) = m.via {
        let (first, comma) = via::first_value(buf, h.value);
        m.top_via = via::parse(buf, first);
        m.top_via_comma = comma;
    }
    Ok(m)
}

/// Every header line of a scanned message as (name, value), folded lines joined. For the rare
/// paths (answers siplb writes) that need headers the scan did not keep.
pub(crate) fn header_lines(buf: &[u8], m: &Message) -> Vec<(Span, Span)> {
    let mut out: Vec<(Span, Span)> = Vec::with_capacity(16);
    let mut at = m.headers_start;
    while at < m.headers_end {
        let Some((line, next)) = next_line(buf, at) else {
            break;
        };
        let bytes = line.of(buf);
        if matches!(bytes.first(), Some(b' ' | b'\t')) {
            if let Some(last) = out.last_mut() {
                last.1 = trim(buf, Span::new(last.1.start, line.end));
            }
        } else if let Some(colon) = memchr(b':', bytes) {
            let name = trim(buf, Span::new(line.start, line.start + colon));
            out.push((name, trim(buf, Span::new(line.start + colon + 1, line.end))));
        }
        at = next;
    }
    out
}

/// Whether a Supported header (full or compact; any of them, folded or not) names `tag`. Not
/// kept by the scan: only a REGISTER arriving on a stream asks (for `path`, RFC 3327), so the
/// header lines are read again then, without allocating.
pub(crate) fn supports(buf: &[u8], m: &Message, tag: &[u8]) -> bool {
    let mut at = m.headers_start;
    let mut inside = false;
    while at < m.headers_end {
        let Some((line, next)) = next_line(buf, at) else {
            break;
        };
        let bytes = line.of(buf);
        let value = if matches!(bytes.first(), Some(b' ' | b'\t')) {
            inside.then_some(bytes)
        } else {
            let colon = memchr(b':', bytes);
            inside =
                colon.is_some_and(|c| classify(bytes[..c].trim_ascii_end()) == Name::Supported);
            colon.filter(|_| inside).map(|c| &bytes[c + 1..])
        };
        let names = |v: &[u8]| {
            v.split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(tag))
        };
        if value.is_some_and(names) {
            return true;
        }
        at = next;
    }
    false
}

/// The delta-seconds of the first `Retry-After` header (RFC 3261 §20.33:
/// `delta-seconds [ comment ] *( SEMI retry-param )`), `None` when there is none or it does not
/// start with a number; a number too large for 32 bits reads as `u32::MAX`. Not kept by the
/// scan: only a 503 from a server asks, so the header lines are read again then, without
/// allocating.
pub(crate) fn retry_after(buf: &[u8], m: &Message) -> Option<u32> {
    let mut at = m.headers_start;
    while at < m.headers_end {
        let (line, next) = next_line(buf, at)?;
        let bytes = line.of(buf);
        if let Some(colon) = memchr(b':', bytes) {
            if bytes[..colon]
                .trim_ascii_end()
                .eq_ignore_ascii_case(b"retry-after")
            {
                return delta_seconds(bytes[colon + 1..].trim_ascii_start());
            }
        }
        at = next;
    }
    None
}

/// The leading delta-seconds of a Retry-After value, followed by nothing, white space, a
/// comment or a parameter.
fn delta_seconds(value: &[u8]) -> Option<u32> {
    let digits = value.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0
        || !matches!(
            value.get(digits),
            None | Some(b' ' | b'\t' | b'\r' | b'\n' | b'(' | b';')
        )
    {
        return None;
    }
    let n = value[..digits].iter().try_fold(0u32, |n, &d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    });
    Some(n.unwrap_or(u32::MAX))
}

/// Whether `name` (as written) is the Via header, in full or compact form.
pub(crate) fn is_via(name: &[u8]) -> bool {
    classify(name) == Name::Via
}

/// The option tags siplb supports in Proxy-Require. `ms-benotify` (MS-SIP: a NOTIFY that gets
/// no response) asks nothing of a stateless proxy beyond routing the BENOTIFY method, which
/// siplb does; Lync clients put it in every roaming SUBSCRIBE.
const SUPPORTED_OPTION_TAGS: [&[u8]; 1] = [b"ms-benotify"];

/// The option tags of a Proxy-Require value siplb does not support.
pub(crate) fn unsupported_tags(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&c| c == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .filter(|t| {
            !SUPPORTED_OPTION_TAGS
                .iter()
                .any(|s| t.eq_ignore_ascii_case(s))
        })
}

/// Whether `name` (as written) is the Proxy-Require header.
pub(crate) fn is_proxy_require(name: &[u8]) -> bool {
    classify(name) == Name::ProxyRequire
}

fn store(
    m: &mut Message,
    content_length: &mut Result<Option<u64>, ()>,
    buf: &[u8],
    name: Name,
    hdr: Hdr,
) {
    let first = |slot: &mut Option<Hdr>| {
        if slot.is_none() {
            *slot = Some(hdr);
        }
    };
    match name {
        Name::Via if m.via.is_none() => m.via = Some(hdr),
        Name::Via => first(&mut m.via2),
        Name::From => first(&mut m.from),
        Name::To => first(&mut m.to),
        Name::CallId => first(&mut m.call_id),
        Name::CSeq => first(&mut m.cseq),
        Name::MaxForwards => first(&mut m.max_forwards),
        Name::Route if m.route.is_none() => m.route = Some(hdr),
        Name::Route => first(&mut m.route2),
        Name::ProxyRequire => {
            m.unsupported_proxy_require |= unsupported_tags(hdr.value.of(buf)).next().is_some();
        }
        // Read on demand ([`supports`]): only a REGISTER on a stream asks.
        Name::Supported => {}
        Name::Contact => first(&mut m.contact),
        Name::ContentLength => {
            *content_length = match (*content_length, parse_uint(hdr.value.of(buf))) {
                (Ok(None), Some(n)) => Ok(Some(n)),
                (Ok(Some(old)), Some(n)) if old == n => Ok(Some(n)),
                _ => Err(()),
            };
        }
        Name::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &[u8] = b"REGISTER sip:contoso.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@contoso.com>;tag=111;epid=abc\r\n\
To: <sip:alice@contoso.com>\r\n\
Call-ID: c1@192.0.2.10\r\n\
CSeq: 1 REGISTER\r\n\
Content-Length: 0\r\n\
\r\n";

    fn hv(buf: &[u8], h: Option<Hdr>) -> &[u8] {
        h.expect("header present").value.of(buf)
    }

    #[test]
    fn scans_a_request() {
        let m = scan(REGISTER).unwrap();
        let StartLine::Request {
            method,
            uri,
            version_ok: true,
        } = m.start
        else {
            panic!("a SIP/2.0 request")
        };
        assert_eq!(method.of(REGISTER), b"REGISTER");
        assert_eq!(uri.of(REGISTER), b"sip:contoso.com");
        let top = m.top_via.unwrap();
        assert_eq!(top.branch.unwrap().of(REGISTER), b"z9hG4bKabc");
        assert_eq!(m.top_via_comma, None);
        assert_eq!(m.missing(), None);
        assert!(!m.bad_content_length);
        assert_eq!(hv(REGISTER, m.to), b"<sip:alice@contoso.com>");
        assert_eq!(hv(REGISTER, m.call_id), b"c1@192.0.2.10");
        assert_eq!(hv(REGISTER, m.max_forwards), b"70");
        assert_eq!(m.body.len(), 0);
        assert_eq!(&REGISTER[m.headers_end..], b"\r\n");
        assert!(m.via.unwrap().line.of(REGISTER).starts_with(b"Via: "));
        assert!(m.via.unwrap().line.of(REGISTER).ends_with(b"rport\r\n"));
    }

    #[test]
    fn scans_a_response() {
        let r = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\nt: <sip:a@b>\r\ni: x\r\nCSeq: 1 REGISTER\r\nl: 0\r\n\r\n";
        let m = scan(r).unwrap();
        assert_eq!(m.start, StartLine::Response { code: 200 });
        assert_eq!(m.body.len(), 0);
        assert_eq!(hv(r, m.call_id), b"x");
    }

    #[test]
    fn compact_and_any_case_names_are_recognised() {
        // rsip 0.4 reads compact headers as unknown ones; the scanner must not.
        let r = b"INVITE sip:bob@x SIP/2.0\r\nV: SIP/2.0/UDP a;branch=z9hG4bK1\r\nvia: SIP/2.0/UDP b;branch=z9hG4bK2\r\nF: <sip:a@x>;tag=1\r\nT: <sip:bob@x>\r\nI: id1\r\ncseq: 1 INVITE\r\nMAX-FORWARDS: 9\r\nL: 3\r\n\r\nabc";
        let m = scan(r).unwrap();
        assert_eq!(hv(r, m.via), b"SIP/2.0/UDP a;branch=z9hG4bK1");
        assert_eq!(hv(r, m.via2), b"SIP/2.0/UDP b;branch=z9hG4bK2");
        assert_eq!(hv(r, m.from), b"<sip:a@x>;tag=1");
        assert_eq!(hv(r, m.to), b"<sip:bob@x>");
        assert_eq!(hv(r, m.call_id), b"id1");
        assert_eq!(hv(r, m.max_forwards), b"9");
        assert_eq!(m.body.of(r), b"abc");
    }

    #[test]
    fn body_is_cut_at_content_length() {
        // rsip 0.4 keeps everything after the blank line as body.
        let r = b"MESSAGE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@x>\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\nhellotrailing garbage";
        let m = scan(r).unwrap();
        assert_eq!(m.body.of(r), b"hello");
        assert_eq!(m.end(), r.len() - b"trailing garbage".len());
    }

    #[test]
    fn short_body_and_bad_content_length_are_flagged() {
        let short = b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nFrom: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 50\r\n\r\nhello";
        let m = scan(short).unwrap();
        assert!(m.bad_content_length);
        assert_eq!(m.body.of(short), b"hello");
        let bad = b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nFrom: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: x\r\n\r\n";
        assert!(scan(bad).unwrap().bad_content_length);
        let two = b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nFrom: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nl: 0\r\nContent-Length: 1\r\n\r\nx";
        assert!(scan(two).unwrap().bad_content_length);
    }

    #[test]
    fn without_content_length_the_body_is_the_rest() {
        let r = b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nFrom: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\n\r\nhi";
        assert_eq!(scan(r).unwrap().body.of(r), b"hi");
    }

    #[test]
    fn extension_methods_are_requests() {
        // rsip 0.4 rejects methods it does not know (BENOTIFY, SERVICE, anything new).
        for method in ["BENOTIFY", "SERVICE", "X-FOO"] {
            let r = format!("{method} sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nFrom: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: 1\r\nCSeq: 1 {method}\r\n\r\n");
            let m = scan(r.as_bytes()).unwrap();
            let StartLine::Request { method: got, .. } = m.start else {
                panic!("a request")
            };
            assert_eq!(got.of(r.as_bytes()), method.as_bytes());
        }
    }

    #[test]
    fn folded_lines_belong_to_their_header() {
        let r = b"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1,\r\n SIP/2.0/UDP b;branch=z9hG4bK2\r\nFrom: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = scan(r).unwrap();
        let via = m.via.unwrap();
        assert_eq!(
            via.value.of(r),
            b"SIP/2.0/UDP a;branch=z9hG4bK1,\r\n SIP/2.0/UDP b;branch=z9hG4bK2"
        );
        assert!(via.line.of(r).ends_with(b"z9hG4bK2\r\n"));
        assert!(m.via2.is_none());
    }

    #[test]
    fn bare_lf_line_ends_are_accepted() {
        let r = b"OPTIONS sip:b@x SIP/2.0\nVia: SIP/2.0/UDP a\nFrom: <sip:a@x>\nTo: <sip:b@x>\nCall-ID: 1\nCSeq: 1 OPTIONS\n\n";
        let m = scan(r).unwrap();
        assert_eq!(hv(r, m.call_id), b"1");
        assert_eq!(m.headers_end, r.len() - 1);
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert_eq!(scan(b""), Err(ScanError::Empty));
        assert_eq!(scan(b"\r\n\r\n"), Err(ScanError::Empty));
        assert_eq!(scan(b"HELLO\r\n\r\n"), Err(ScanError::StartLine));
        assert_eq!(
            scan(b"INVITE sip:a HTTP/1.1\r\n\r\n"),
            Err(ScanError::StartLine)
        );
        assert_eq!(
            scan(b"INVITE sip:a SIP/2.0 \r\n\r\n"),
            Err(ScanError::StartLine)
        );
        assert_eq!(scan(b"SIP/2.0 2000 OK\r\n\r\n"), Err(ScanError::StartLine));
        assert_eq!(scan(b"SIP/2.0 099 OK\r\n\r\n"), Err(ScanError::StartLine));
        assert_eq!(
            scan(b"INV(TE sip:a SIP/2.0\r\n\r\n"),
            Err(ScanError::StartLine)
        );
        assert!(matches!(
            scan(b"INVITE sip:a SIP/2.0\r\nnocolon\r\n\r\n"),
            Err(ScanError::HeaderLine(_))
        ));
        assert!(matches!(
            scan(b"INVITE sip:a SIP/2.0\r\n folded-first\r\n\r\n"),
            Err(ScanError::HeaderLine(_))
        ));
        assert_eq!(
            scan(b"INVITE sip:a SIP/2.0\r\nVia: x\r\n"),
            Err(ScanError::Unterminated)
        );
        let m = scan(b"INVITE sip:a SIP/2.0\r\nVia: x\r\nTo: <sip:a>\r\n\r\n").unwrap();
        assert_eq!(m.missing(), Some("From"));
        assert_eq!(m.top_via, None, "an unreadable top Via");
    }

    #[test]
    fn other_sip_versions_are_requests_to_answer() {
        let m = scan(b"INVITE sip:a SIP/3.0\r\nVia: SIP/2.0/UDP h\r\n\r\n").unwrap();
        assert!(matches!(
            m.start,
            StartLine::Request {
                version_ok: false,
                ..
            }
        ));
        assert!(m.top_via.is_some());
    }

    #[test]
    fn proxy_require_is_found() {
        let r = b"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nproxy-require: foo, bar\r\n\r\n";
        assert!(scan(r).unwrap().unsupported_proxy_require);
        let r = b"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nProxy-Require: ms-benotify\r\nProxy-Require: ,\r\n\r\n";
        assert!(!scan(r).unwrap().unsupported_proxy_require);
        let r = b"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nProxy-Require: ms-benotify\r\nProxy-Require: x\r\n\r\n";
        assert!(scan(r).unwrap().unsupported_proxy_require);
    }

    #[test]
    fn never_panics_on_any_prefix() {
        for cut in 0..REGISTER.len() {
            let _ = scan(&REGISTER[..cut]);
        }
    }

    #[test]
    fn tokens_are_rfc_3261_tokens() {
        let want = |c: u8| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c);
        for c in 0..=255u8 {
            assert_eq!(is_token(c), want(c), "{c}");
        }
    }

    #[test]
    fn parse_uint_reads_digits_only() {
        assert_eq!(parse_uint(b" 70 "), Some(70));
        assert_eq!(parse_uint(b"7a"), None);
        assert_eq!(parse_uint(b""), None);
        assert_eq!(parse_uint(b"99999999999999999999"), None);
        assert_eq!(parse_uint(b"\t70\r\n"), Some(70));
        // Found by fuzzing (fuzz/, wire): a form feed is not SIP white space. Read as 70, the
        // value's span (which keeps it) was rewritten to 69 and the byte was lost.
        assert_eq!(parse_uint(b"70\x0c"), None);
        assert_eq!(parse_uint(b"\x0b70"), None);
    }

    #[test]
    fn supported_tags_are_read_from_every_supported_header_in_any_form() {
        let m = |h: &str| {
            format!("REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/TCP a\r\n{h}Content-Length: 0\r\n\r\n")
        };
        let asks = |h: &str| {
            let r = m(h);
            let msg = scan(r.as_bytes()).unwrap();
            supports(r.as_bytes(), &msg, b"path")
        };
        assert!(!asks(""));
        assert!(asks("Supported: gruu, PATH\r\n"));
        assert!(asks("Supported: gruu\r\nk: outbound,path\r\n"));
        assert!(asks("Supported: gruu,\r\n path\r\n"), "a folded line");
        assert!(!asks("Supported: pathology\r\nRequire: path\r\n"));
    }
    #[test]
    fn retry_after_reads_delta_seconds_with_or_without_a_comment_or_params() {
        let read = |header: &str| {
            let text = format!(
                "SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
                 {header}Content-Length: 0\r\n\r\n"
            );
            let m = scan(text.as_bytes()).unwrap();
            retry_after(text.as_bytes(), &m)
        };
        assert_eq!(read(""), None);
        assert_eq!(read("Retry-After: 5\r\n"), Some(5));
        assert_eq!(
            read("retry-after:120 (overloaded);duration=30\r\n"),
            Some(120)
        );
        assert_eq!(read("Retry-After: 18000;duration=3600\r\n"), Some(18000));
        assert_eq!(read("Retry-After: 99999999999\r\n"), Some(u32::MAX));
        assert_eq!(read("Retry-After: soon\r\n"), None);
        assert_eq!(read("Retry-After: 5x\r\n"), None);
        assert_eq!(read("Retry-Afterwards: 5\r\n"), None);
    }
}
