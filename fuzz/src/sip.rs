//! A SIP message split on its own terms, and what may differ between a message siplb received
//! and what it sent on.
//!
//! A message is: whatever CR/LF bytes precede it and its start line (`head`), the logical header
//! lines (a line and the folded lines under it, terminators included), the blank line, the
//! body. Lines end in CRLF or, leniently, LF, as siplb reads them.

use std::net::SocketAddr;

use crate::framing::show;

/// A message cut into its parts, each a range of the bytes it was cut from.
pub struct Parts<'a> {
    pub head: &'a [u8],
    pub headers: Vec<&'a [u8]>,
    pub blank: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> Parts<'a> {
    /// Cuts `msg`; `None` when its header block never ends.
    pub fn of(msg: &'a [u8]) -> Option<Parts<'a>> {
        let first = msg.iter().position(|c| !matches!(c, b'\r' | b'\n'))?;
        let line_end = |from: usize| {
            msg[from..]
                .iter()
                .position(|&c| c == b'\n')
                .map(|n| from + n + 1)
        };
        let mut at = line_end(first)?;
        let head = &msg[..at];
        let mut headers: Vec<(usize, usize)> = Vec::new();
        loop {
            let end = line_end(at)?;
            let line = &msg[at..end];
            if line == b"\r\n" || line == b"\n" {
                return Some(Parts {
                    head,
                    headers: headers.into_iter().map(|(s, e)| &msg[s..e]).collect(),
                    blank: line,
                    body: &msg[end..],
                });
            }
            match (line.first(), headers.last_mut()) {
                (Some(b' ' | b'\t'), Some(last)) => last.1 = end,
                _ => headers.push((at, end)),
            }
            at = end;
        }
    }
}

/// The name of a header line, as written (trimmed), lower-cased.
pub fn name(h: &[u8]) -> Vec<u8> {
    let colon = h.iter().position(|&c| c == b':').unwrap_or(h.len());
    h[..colon].trim_ascii().to_ascii_lowercase()
}

fn is_via(h: &[u8]) -> bool {
    matches!(name(h).as_slice(), b"via" | b"v")
}

/// How siplb received a request: the source address written into `received`, and whether it
/// may add a Path or Record-Route (a request from a client flow).
pub struct Received {
    pub src: SocketAddr,
    pub flow_route: bool,
}

/// Checks that `out`, which siplb forwarded for the request `input`, differs from it only by
/// siplb's own edits: its Via added on top (and, from a client flow, a Path or Record-Route
/// naming the flow), `received` and `rport` filled in the client's top Via, Max-Forwards one
/// less (or `Max-Forwards: 70` added), its own top Route removed, and the bytes past
/// Content-Length left out.
pub fn check_request(input: &[u8], out: &[u8], how: &Received) -> Result<(), String> {
    let a = Parts::of(input).ok_or("the request has no header block")?;
    let b = Parts::of(out)
        .ok_or_else(|| format!("forwarded without a header block: {:?}", show(out)))?;
    if a.head != b.head {
        return Err("the start line changed".into());
    }
    // Each of siplb's edits may be found once.
    let (mut our_via, mut flow_route, mut max_forwards) = (false, !how.flow_route, false);
    let (mut client_via, mut route) = (false, false);
    let (mut seen_via, mut seen_route) = (false, false);
    let routes = |p: &Parts| p.headers.iter().filter(|h| name(h) == b"route").count();
    let route_line_removed = routes(&b) + 1 == routes(&a);
    let (mut i, mut j) = (0, 0);
    while i < a.headers.len() || j < b.headers.len() {
        let x = a.headers.get(i).copied();
        let y = b.headers.get(j).copied();
        let first_via = x.is_some_and(|x| !seen_via && is_via(x));
        let first_route = x.is_some_and(|x| !seen_route && name(x) == b"route");
        // How far each side moves.
        let (di, dj) = if let Some(x) = x.filter(|&x| Some(x) == y) {
            // Unchanged: the client's Via too when its received already named the source.
            if first_via && !client_via {
                via_filled(x, x, how.src)?;
                client_via = true;
            }
            (1, 1)
        } else if y.is_some_and(|y| !our_via && is_our_via(y)) {
            our_via = true;
            (0, 1)
        } else if y.is_some_and(|y| !flow_route && is_flow_route(y)) {
            flow_route = true;
            (0, 1)
        } else if x.is_none() && !max_forwards && y == Some(b"Max-Forwards: 70\r\n".as_slice()) {
            max_forwards = true;
            (0, 1)
        } else if let (Some(x), Some(y)) = (x, y) {
            if !max_forwards && name(x) == b"max-forwards" && decremented(x, y) {
                max_forwards = true;
                (1, 1)
            } else if first_via && !client_via {
                via_filled(x, y, how.src)?;
                client_via = true;
                (1, 1)
            } else if first_route && !route {
                route = true;
                // The whole line removed when the output has one Route line less (the line's
                // neighbours can look like it with a piece cut out, so the count decides);
                // else one value cut.
                if !route_line_removed && one_cut(x, y) {
                    (1, 1)
                } else {
                    (1, 0)
                }
            } else {
                return Err(format!("header {:?} became {:?}", show(x), show(y)));
            }
        } else if first_route && !route {
            route = true;
            (1, 0)
        } else {
            return Err(format!(
                "headers differ at {:?} / {:?}",
                x.map(show),
                y.map(show)
            ));
        };
        if di == 1 {
            seen_via |= first_via;
            seen_route |= first_route;
        }
        i += di;
        j += dj;
    }
    if !our_via {
        return Err("no Via of siplb's on top".into());
    }
    if !client_via {
        return Err("the client's Via got no received".into());
    }
    if a.blank != b.blank || !a.body.starts_with(b.body) {
        return Err("the body changed".into());
    }
    Ok(())
}

/// Checks that `out`, which siplb relayed for the response `input`, is `input` without its top
/// Via (the whole first Via line, or its first value) and without bytes past Content-Length.
pub fn check_response(input: &[u8], out: &[u8]) -> Result<(), String> {
    let a = Parts::of(input).ok_or("the response has no header block")?;
    let b = Parts::of(out).ok_or("relayed without a header block")?;
    if a.head != b.head {
        return Err("the status line changed".into());
    }
    let via = a
        .headers
        .iter()
        .position(|h| is_via(h))
        .ok_or("a relayed response without a Via")?;
    let kept =
        |n: usize| a.headers[..via] == b.headers[..via] && a.headers[via + 1..] == b.headers[n..];
    let removed = b.headers.len() + 1 == a.headers.len() && kept(via);
    let cut = b.headers.len() == a.headers.len()
        && kept(via + 1)
        && one_cut(a.headers[via], b.headers[via]);
    if !removed && !cut {
        return Err("a relayed response differs beyond its top Via".into());
    }
    if a.blank != b.blank || !a.body.starts_with(b.body) {
        return Err("the body changed".into());
    }
    Ok(())
}

/// siplb's Via: `Via: SIP/2.0/<transport> <sent-by>;branch=z9hG4bK-lb…`, one line.
fn is_our_via(h: &[u8]) -> bool {
    h.starts_with(b"Via: SIP/2.0/")
        && h.ends_with(b"\r\n")
        && find(h, b";branch=z9hG4bK-lb").is_some()
        && !h[..h.len() - 2].contains(&b'\n')
}

/// A Path or Record-Route siplb writes for a client flow.
fn is_flow_route(h: &[u8]) -> bool {
    (h.starts_with(b"Path: <sip:") || h.starts_with(b"Record-Route: <sip:"))
        && h.ends_with(b";lr>\r\n")
}

/// `y` is `x` with its number one less.
fn decremented(x: &[u8], y: &[u8]) -> bool {
    let (mut p, mut s) = common(x, y);
    while p > 0 && x[p - 1].is_ascii_digit() {
        p -= 1;
    }
    while s > 0 && x[x.len() - s].is_ascii_digit() {
        s -= 1;
    }
    let (mx, my) = (&x[p..x.len() - s], &y[p..y.len() - s]);
    let number = |d: &[u8]| {
        (!d.is_empty() && d.len() < 19 && d.iter().all(u8::is_ascii_digit))
            .then(|| d.iter().fold(0u64, |n, c| n * 10 + u64::from(c - b'0')))
    };
    matches!((number(mx), number(my)), (Some(n), Some(m)) if n == m + 1)
}

/// `y` is `x` with one run of bytes taken out.
fn one_cut(x: &[u8], y: &[u8]) -> bool {
    let (p, s) = common(x, y);
    y.len() < x.len() && p + s >= y.len()
}

/// The lengths of the common prefix and of the common suffix that does not overlap it.
fn common(x: &[u8], y: &[u8]) -> (usize, usize) {
    let p = x.iter().zip(y).take_while(|(a, b)| a == b).count();
    let room = x.len().min(y.len()) - p;
    let s = x
        .iter()
        .rev()
        .zip(y.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    (p, s)
}

/// Checks the client's top Via line: `y` is `x` with `received` set to the source address
/// (added, or its value replaced) and a bare `rport` given the source port; nothing else.
fn via_filled(x: &[u8], y: &[u8], src: SocketAddr) -> Result<(), String> {
    let (nx, ..) = without_return_path(x);
    let (ny, ..) = without_return_path(y);
    if nx != ny {
        return Err(format!(
            "the client's Via {:?} became {:?}",
            show(x),
            show(y)
        ));
    }
    // In the top value (up to the first comma): the first received with a value replaced, or,
    // when none has one (bare `received` parameters do not count), one added.
    let top = |v: &[u8]| {
        let (_, n, valued) = without_return_path(&v[..first_comma(v)]);
        (n, valued)
    };
    let ((rx, valued), (ry, _)) = (top(x), top(y));
    if ry != if valued { rx } else { rx + 1 } {
        return Err(format!(
            "received {rx} times in {:?}, {ry} in {:?}",
            show(x),
            show(y)
        ));
    }
    let received = format!("received={}", src.ip());
    // The value siplb wrote may sit after white space around the `=` of a `received` it
    // replaced (SIP's `EQUAL = SWS "=" SWS`; siplb's scanner also takes CR and LF inside a
    // line for white space): drop white space next to an `=`.
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let mut squeezed = Vec::with_capacity(y.len());
    for (i, &c) in y.iter().enumerate() {
        let after_eq = matches!(squeezed.last(), Some(b'='));
        let before_eq = y[i..].iter().find(|&&d| !ws(d)) == Some(&b'=');
        if !(ws(c) && (after_eq || before_eq)) {
            squeezed.push(c.to_ascii_lowercase());
        }
    }
    if find(&squeezed, received.as_bytes()).is_none() {
        return Err(format!("no {received} in {:?}", show(y)));
    }
    Ok(())
}

/// Whether the `[` at `at` opens the IPv6 sent-by of the line's first value: nothing that ends
/// a sent-by (`;`, `,`) and no other `[` comes before it.
fn sent_by_bracket(v: &[u8], at: usize) -> bool {
    !v[..at].iter().any(|c| matches!(c, b';' | b',' | b'['))
}

/// Where a Via line's first value ends: its first comma outside quotes and outside the
/// brackets of an IPv6 sent-by.
fn first_comma(v: &[u8]) -> usize {
    let (mut quoted, mut bracketed) = (false, false);
    for (i, &c) in v.iter().enumerate() {
        match c {
            b'"' => quoted = !quoted,
            b'[' if !quoted && sent_by_bracket(v, i) => bracketed = true,
            b']' if !quoted => bracketed = false,
            b',' if !quoted && !bracketed => return i,
            _ => {}
        }
    }
    v.len()
}

/// A Via line with every `received` parameter taken out and every `rport` value dropped, how
/// many `received` parameters it had, and whether one of them had a value.
fn without_return_path(v: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut out = Vec::with_capacity(v.len());
    let mut received = 0;
    let mut valued = false;
    let mut at = 0;
    let value_end = |mut k: usize| {
        while k < v.len() && !matches!(v[k], b';' | b',' | b' ' | b'\t' | b'\r' | b'\n') {
            k += 1;
        }
        k
    };
    // siplb's scanner takes SP, HT, CR and LF inside a header line for white space.
    let skip_ws = |mut k: usize| {
        while k < v.len() && matches!(v[k], b' ' | b'\t' | b'\r' | b'\n') {
            k += 1;
        }
        k
    };
    while at < v.len() {
        if v[at] == b'"' {
            // A quoted string (a generic parameter's value) is copied whole: a `;received=`
            // inside it is text, not a parameter.
            let mut k = at + 1;
            while k < v.len() && v[k] != b'"' {
                k += if v[k] == b'\\' { 2 } else { 1 };
            }
            let close = (k + 1).min(v.len());
            out.extend_from_slice(&v[at..close]);
            at = close;
            continue;
        }
        if v[at] == b'[' && sent_by_bracket(v, at) {
            // An IPv6 reference before the parameters is the host, whatever it holds.
            let close = v[at..]
                .iter()
                .position(|&c| c == b']')
                .map_or(v.len(), |n| at + n + 1);
            out.extend_from_slice(&v[at..close]);
            at = close;
            continue;
        }
        if v[at] != b';' {
            out.push(v[at]);
            at += 1;
            continue;
        }
        let name_at = skip_ws(at + 1);
        let name_end = (name_at..v.len())
            .find(|&k| {
                // RFC 3261 §25.1 token characters.
                !(v[k].is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&v[k]))
            })
            .unwrap_or(v.len());
        let pname = v[name_at..name_end].to_ascii_lowercase();
        let after = skip_ws(name_end);
        let value = (after < v.len() && v[after] == b'=').then(|| value_end(skip_ws(after + 1)));
        match pname.as_slice() {
            b"received" => {
                received += 1;
                // siplb takes a value only when something follows the `=`.
                valued |= value.is_some_and(|end| end > skip_ws(after + 1));
                at = value.unwrap_or(name_end);
            }
            b"rport" => {
                out.extend_from_slice(&v[at..name_end]);
                at = value.unwrap_or(name_end);
            }
            _ => {
                out.push(b';');
                at += 1;
            }
        }
    }
    (out, received, valued)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
