//! The SIP the generator speaks: the REGISTER a client sends, the 200 OK a backend answers
//! with, and the few reads each side makes of what it receives (status code, Call-ID, the
//! backend's timestamps, stream framing). Plain functions over bytes, tested without a socket.
//!
//! A client's REGISTER carries its transaction number in the Call-ID (`<n>.<run>@loadgen`), so
//! the answer finds its transaction without a table lookup. A backend's 200 OK carries
//! `X-Lg-Ts: <received> <sent>`, the backend's CLOCK_MONOTONIC readings in nanoseconds: the
//! client reads the same clock (one clock per machine), so it can split a transaction's time
//! into the request's way through the proxy and the response's way back.

use std::io::Write;
use std::net::SocketAddr;

use memchr::memmem;

/// What a client's REGISTER is made of.
pub struct Register<'a> {
    /// `UDP`, `TCP` or `TLS`: the Via's transport.
    pub transport: &'a str,
    /// The client's own address (the Via's and the Contact's).
    pub local: SocketAddr,
    /// The domain of the AOR and of the request URI (the proxy routes on it).
    pub domain: &'a str,
    /// The user number: the AOR is `sip:user<user>@<domain>`.
    pub user: u64,
    /// The run's number, told apart from an earlier run's stray answers.
    pub run: u32,
    /// The transaction's number in the run.
    pub txn: u64,
}

/// Appends the REGISTER described by `r` to `buf`.
pub fn write_register(buf: &mut Vec<u8>, r: &Register<'_>) {
    let lower = match r.transport {
        "TCP" => "tcp",
        "TLS" => "tls",
        _ => "udp",
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        buf,
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-lg{run}-{txn}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:user{user:06}@{domain}>;tag=lg{run}-{txn}\r\n\
         To: <sip:user{user:06}@{domain}>\r\n\
         Call-ID: {txn}.{run}@loadgen\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:user{user:06}@{local};transport={lower}>\r\n\
         Expires: 3600\r\n\
         User-Agent: siplb-loadgen\r\n\
         Content-Length: 0\r\n\r\n",
        domain = r.domain,
        transport = r.transport,
        local = r.local,
        run = r.run,
        txn = r.txn,
        user = r.user,
    );
}

/// The header lines of `msg` (after its first line, up to the empty line), each without its
/// CRLF, with the name and value split at the colon (the value's leading blanks trimmed).
fn headers(msg: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    let end = memmem::find(msg, b"\r\n\r\n").map_or(msg.len(), |e| e + 2);
    let head = &msg[..end];
    let start = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    head[start..]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .filter_map(|line| {
            let colon = memchr::memchr(b':', line)?;
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii_start();
            Some((line, name, value))
        })
}

/// The header kinds a backend copies into its answer, by full or compact name (RFC 3261 §7.3.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Copied {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    Expires,
}

fn copied(name: &[u8]) -> Option<Copied> {
    let is = |full: &[u8], compact: &[u8]| {
        name.eq_ignore_ascii_case(full)
            || (!compact.is_empty() && name.eq_ignore_ascii_case(compact))
    };
    if is(b"via", b"v") {
        Some(Copied::Via)
    } else if is(b"from", b"f") {
        Some(Copied::From)
    } else if is(b"to", b"t") {
        Some(Copied::To)
    } else if is(b"call-id", b"i") {
        Some(Copied::CallId)
    } else if is(b"cseq", b"") {
        Some(Copied::CSeq)
    } else if is(b"contact", b"m") {
        Some(Copied::Contact)
    } else if is(b"expires", b"") {
        Some(Copied::Expires)
    } else {
        None
    }
}

/// What a backend saw in a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A REGISTER (the load).
    Register,
    /// Any other request (the proxies' OPTIONS probes): answered the same way.
    Other,
}

/// Appends to `out` the 200 OK answering the request `msg`: every Via, From, To (with a tag
/// `tag` added when it has none), Call-ID, CSeq, Contact and Expires line copied in order,
/// and `X-Lg-Ts: <received_ns> <sent_ns>`. Returns what the request was, or None (nothing
/// appended) when `msg` is not a request with a Via, a Call-ID and a CSeq.
pub fn write_ok(
    out: &mut Vec<u8>,
    msg: &[u8],
    tag: &str,
    received_ns: u64,
    sent_ns: u64,
) -> Option<Request> {
    let first_end = memchr::memchr(b'\r', msg)?;
    let first = &msg[..first_end];
    if first.starts_with(b"SIP/2.0") || !first.ends_with(b"SIP/2.0") {
        return None;
    }
    let kind = if first.starts_with(b"REGISTER ") {
        Request::Register
    } else {
        Request::Other
    };
    let (mut via, mut call_id, mut cseq) = (false, false, false);
    for (_, name, _) in headers(msg) {
        match copied(name) {
            Some(Copied::Via) => via = true,
            Some(Copied::CallId) => call_id = true,
            Some(Copied::CSeq) => cseq = true,
            _ => {}
        }
    }
    if !(via && call_id && cseq) {
        return None;
    }
    out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
    for (line, name, value) in headers(msg) {
        match copied(name) {
            Some(Copied::To) => {
                out.extend_from_slice(line);
                if memmem::find(&value.to_ascii_lowercase(), b";tag=").is_none() {
                    out.extend_from_slice(b";tag=");
                    out.extend_from_slice(tag.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            Some(_) => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            None => {}
        }
    }
    let _ = write!(
        out,
        "X-Lg-Ts: {received_ns} {sent_ns}\r\nServer: siplb-loadgen\r\nContent-Length: 0\r\n\r\n"
    );
    Some(kind)
}

/// What a client reads of an answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub code: u16,
    /// The transaction number of the Call-ID `<txn>.<run>@loadgen`.
    pub txn: u64,
    /// The run number of the Call-ID.
    pub run: u32,
    /// The backend's receive and send times (`X-Lg-Ts`), when present.
    pub backend_ns: Option<(u64, u64)>,
}

fn number<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Reads an answer to one of our REGISTERs; None for anything else (a request, an answer
/// with a Call-ID of another form, a malformed message).
pub fn read_answer(msg: &[u8]) -> Option<Answer> {
    let rest = msg.strip_prefix(b"SIP/2.0 ")?;
    let code: u16 = number(rest.get(..3)?)?;
    let mut call = None;
    let mut backend_ns = None;
    for (_, name, value) in headers(msg) {
        if copied(name) == Some(Copied::CallId) {
            let id = value.split(|&b| b == b'@').next()?;
            let dot = memchr::memchr(b'.', id)?;
            call = Some((number(&id[..dot])?, number(id[dot + 1..].trim_ascii_end())?));
        } else if name.eq_ignore_ascii_case(b"x-lg-ts") {
            let mut it = value.split(|&b| b == b' ').filter(|s| !s.is_empty());
            if let (Some(a), Some(b)) = (it.next(), it.next()) {
                backend_ns = Some((number(a)?, number(b.trim_ascii_end())?));
            }
        }
    }
    let (txn, run) = call?;
    Some(Answer {
        code,
        txn,
        run,
        backend_ns,
    })
}

/// Framing on a stream (RFC 3261 §18.3): the length of the first whole message at the start of
/// `buf` (its head and Content-Length bytes of body), `Some(Err(n))` for `n` bytes of CRLF
/// keep-alive to skip, None when more bytes are needed.
pub fn frame(buf: &[u8]) -> Option<Result<usize, usize>> {
    let blank = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if blank > 0 {
        return Some(Err(blank));
    }
    let head_end = memmem::find(buf, b"\r\n\r\n")? + 4;
    let mut length = 0usize;
    for (_, name, value) in headers(&buf[..head_end]) {
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            length = number(value.trim_ascii_end()).unwrap_or(0);
        }
    }
    let total = head_end + length;
    (buf.len() >= total).then_some(Ok(total))
}

/// Hands each whole message at the start of `buf` to `each`, in order, skipping keep-alive
/// CRLFs ([`frame`]), and removes what it handed and skipped; a partial message stays.
pub fn take_messages(buf: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
    let mut at = 0;
    while let Some(f) = frame(&buf[at..]) {
        match f {
            Err(skip) => at += skip,
            Ok(len) => {
                each(&buf[at..at + len]);
                at += len;
            }
        }
    }
    buf.drain(..at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(transport: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        write_register(
            &mut buf,
            &Register {
                transport,
                local: "127.0.0.1:5070".parse().unwrap(),
                domain: "contoso.com",
                user: 42,
                run: 7,
                txn: 1234,
            },
        );
        buf
    }

    #[test]
    fn a_register_names_its_user_and_transaction() {
        let text = String::from_utf8(register("TCP")).unwrap();
        assert!(text.starts_with("REGISTER sip:contoso.com SIP/2.0\r\n"));
        assert!(text.contains("\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-lg7-1234\r\n"));
        assert!(text.contains("\r\nTo: <sip:user000042@contoso.com>\r\n"));
        assert!(text.contains("\r\nCall-ID: 1234.7@loadgen\r\n"));
        assert!(text.contains(";transport=tcp>\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        assert_eq!(frame(text.as_bytes()), Some(Ok(text.len())));
    }

    #[test]
    fn the_ok_copies_the_path_and_tags_the_to() {
        // As a proxy forwards it: its own Via on top, a compact Call-ID.
        let fwd = String::from_utf8(register("UDP"))
            .unwrap()
            .replacen(
                "Via: ",
                "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp\r\nVia: ",
                1,
            )
            .replace("Call-ID:", "i:");
        let mut out = Vec::new();
        assert_eq!(
            write_ok(&mut out, fwd.as_bytes(), "b1", 10, 20),
            Some(Request::Register)
        );
        let ok = String::from_utf8(out.clone()).unwrap();
        assert!(ok.starts_with(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;"
        ));
        assert!(ok.contains("\r\nTo: <sip:user000042@contoso.com>;tag=b1\r\n"));
        assert!(ok.contains("\r\nCSeq: 1 REGISTER\r\n"));
        assert!(!ok.contains("User-Agent"));
        assert_eq!(
            read_answer(&out),
            Some(Answer {
                code: 200,
                txn: 1234,
                run: 7,
                backend_ns: Some((10, 20))
            })
        );
    }

    #[test]
    fn a_probe_is_answered_and_junk_is_not() {
        let probe = b"OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\
                      From: <sip:dispatcher@localhost>;tag=a\r\nTo: <sip:127.0.0.1:5070>;tag=z\r\n\
                      Call-ID: probe-1\r\nCSeq: 10 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let mut out = Vec::new();
        assert_eq!(write_ok(&mut out, probe, "b1", 1, 2), Some(Request::Other));
        let ok = String::from_utf8(out.clone()).unwrap();
        assert!(
            ok.contains("\r\nTo: <sip:127.0.0.1:5070>;tag=z\r\n"),
            "{ok}"
        );
        // Not ours: read_answer does not take it for a transaction.
        assert_eq!(read_answer(&out), None);
        let mut junk = Vec::new();
        assert_eq!(write_ok(&mut junk, b"hello\r\n\r\n", "b1", 1, 2), None);
        assert_eq!(write_ok(&mut junk, &out, "b1", 1, 2), None);
        assert!(junk.is_empty());
    }

    #[test]
    fn framing_waits_for_the_body_and_skips_keepalives() {
        assert_eq!(frame(b"\r\n\r\nSIP/2.0"), Some(Err(4)));
        let msg = b"SIP/2.0 200 OK\r\nl: 3\r\n\r\nabc";
        assert_eq!(frame(&msg[..msg.len() - 1]), None);
        assert_eq!(frame(msg), Some(Ok(msg.len())));
        assert_eq!(frame(b"SIP/2.0 200 OK\r\nVia: x"), None);
    }
}
