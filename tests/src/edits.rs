//! Byte preservation: undo exactly the edits siplb is allowed to make, then demand identity.
//!
//! On a forwarded request siplb may (and must) do four things and nothing else:
//! 1. insert one line `Via: SIP/2.0/UDP <advertise>;branch=z9hG4bK-lb<hex>` right before the
//!    first Via line;
//! 2. add `;received=<source ip>` to the client's top Via value (RFC 3261 §18.2.1);
//! 3. fill a valueless `;rport` with the source port (RFC 3581);
//! 4. decrement Max-Forwards, or add `Max-Forwards: 70` when there was none (§16.6 step 3).
//!
//! [`undo_forward_edits`] checks each edit is there in exactly that form and reverts it; the test
//! then compares the result with what the client sent, byte for byte. On a response siplb only
//! removes its own Via line ([`assert_response_intact`]).

use std::net::SocketAddr;

use crate::sip::{self, assert_same_bytes, show, split_head, Msg};

/// What a check needs to know about the hop: siplb's advertised address and the client's socket.
#[derive(Debug, Clone, Copy)]
pub struct Hop {
    pub siplb: SocketAddr,
    pub client: SocketAddr,
}

/// Reverts siplb's edits on `forwarded` (what a backend received) given the `original` the client
/// sent; returns the restored bytes and siplb's branch, or what was wrong.
pub fn undo_forward_edits(
    original: &[u8],
    forwarded: &[u8],
    hop: Hop,
) -> Result<(Vec<u8>, String), String> {
    let orig = Msg::parse(original).ok_or("original is not SIP")?;
    let (head, body) = split_head(forwarded).ok_or("forwarded message has no end of headers")?;
    // Every byte kept as one char (Latin-1), so a head with NULs or bytes that are not UTF-8
    // (RFC 4475 §3.1.1.2) is edited and compared losslessly.
    let head = latin1(head);
    // A header folded over several lines (RFC 3261 §7.3.1) is one element, its lines joined
    // by CRLF, so the edits inside it are found and joining with CRLF restores the bytes.
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        let n = lines.len();
        match lines.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) && n > 1 => {
                last.push_str("\r\n");
                last.push_str(line);
            }
            _ => lines.push(line.to_string()),
        }
    }

    // 1. siplb's Via line, right before the client's first Via line.
    let first_via = lines
        .iter()
        .skip(1)
        .position(|l| is_via_line(l))
        .map(|i| i + 1)
        .ok_or("no Via line in the forwarded message")?;
    let ours = lines.remove(first_via);
    let prefix = format!("Via: SIP/2.0/UDP {};branch=z9hG4bK-lb", hop.siplb);
    let hex = ours
        .strip_prefix(&prefix)
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("top Via line is not siplb's `{prefix}<hex>`: {ours:?}"))?;
    let branch = format!("z9hG4bK-lb{hex}");
    let client_line = lines
        .get_mut(first_via)
        .filter(|l| is_via_line(l))
        .ok_or("siplb's Via is not right before the client's first Via line")?;

    // 2. and 3. received and rport in the client's top Via value (the first on its line).
    let colon = client_line.find(':').ok_or("Via line without colon")?;
    let value_start = colon + 1;
    let value_end = top_level_comma(&client_line[value_start..])
        .map(|c| value_start + c)
        .unwrap_or(client_line.len());
    let mut top = client_line[value_start..value_end].to_string();
    let received = format!(";received={}", hop.client.ip());
    top = remove_param(&top, &received)
        .ok_or_else(|| format!("client Via lacks `{received}`: {top:?}"))?;
    let orig_top = orig.vias().first().cloned().unwrap_or_default();
    if sip::param(&orig_top, "rport") == Some(None) {
        let filled = format!(";rport={}", hop.client.port());
        top = replace_param(&top, &filled, ";rport")
            .ok_or_else(|| format!("client Via lacks `{filled}`: {top:?}"))?;
    }
    client_line.replace_range(value_start..value_end, &top);

    // 4. Max-Forwards.
    let mf = lines
        .iter()
        .position(|l| header_name(l).eq_ignore_ascii_case("max-forwards"))
        .ok_or("forwarded message has no Max-Forwards")?;
    match orig.header("max-forwards") {
        None if lines[mf] == "Max-Forwards: 70" => {
            lines.remove(mf);
        }
        None => {
            return Err(format!(
                "added Max-Forwards is {:?}, not `Max-Forwards: 70`",
                lines[mf]
            ))
        }
        Some(given) => {
            // The value is siplb's to rewrite (one less), in its own digits: `0068` may become
            // `67`. The original's text is put back once the number is shown right.
            let given_n: u64 = given
                .parse()
                .map_err(|_| format!("original Max-Forwards unreadable: {given:?}"))?;
            let line = &lines[mf];
            let colon = line.find(':').unwrap_or(0);
            let digits = line[colon + 1..].trim();
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("forwarded Max-Forwards unreadable: {line:?}"))?;
            if n + 1 != given_n {
                return Err(format!(
                    "Max-Forwards {given} was forwarded as {digits}, not one less"
                ));
            }
            let at = colon + 1 + line[colon + 1..].find(digits).unwrap_or(0);
            lines[mf] = format!("{}{}{}", &line[..at], given, &line[at + digits.len()..]);
        }
    }

    let mut out = unlatin1(&lines.join("\r\n"));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    Ok((out, branch))
}

/// Asserts `forwarded` is `original` plus siplb's allowed edits only; returns siplb's branch.
pub fn assert_forwarded_intact(original: &[u8], forwarded: &[u8], hop: Hop) -> String {
    match undo_forward_edits(original, forwarded, hop) {
        Ok((restored, branch)) => {
            assert_same_bytes(
                "forwarded request with siplb's edits undone vs what the client sent",
                original,
                &restored,
            );
            branch
        }
        Err(why) => panic!(
            "{why}\n--- client sent ---\n{}\n--- backend received ---\n{}",
            show(original),
            show(forwarded)
        ),
    }
}

/// Asserts the client received exactly what the backend sent, less siplb's own Via line (which
/// must be the response's first Via line).
pub fn assert_response_intact(backend_sent: &[u8], client_received: &[u8], siplb: SocketAddr) {
    // Byte offsets, not text: a response may carry bytes that are not UTF-8.
    let prefix = format!("\r\nVia: SIP/2.0/UDP {siplb};branch=z9hG4bK-lb");
    let start = find_bytes(backend_sent, prefix.as_bytes()).unwrap_or_else(|| {
        panic!(
            "backend response has no siplb Via line:\n{}",
            show(backend_sent)
        )
    });
    let end = start + 2 + find_bytes(&backend_sent[start + 2..], b"\r\n").expect("line end");
    let mut expected = backend_sent[..start].to_vec();
    expected.extend_from_slice(&backend_sent[end..]);
    assert_same_bytes(
        "response at the client vs the backend's response less siplb's Via",
        &expected,
        client_received,
    );
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `original` without its header line `line` (for edits the test itself expects, such as the
/// removal of a Route naming siplb).
pub fn without_line(original: &[u8], line: &str) -> Vec<u8> {
    let needle = format!("\r\n{line}\r\n");
    let text = String::from_utf8_lossy(original);
    let at = text
        .find(&needle)
        .unwrap_or_else(|| panic!("no line {line:?} in\n{}", show(original)));
    let mut out = original[..at].to_vec();
    out.extend_from_slice(&original[at + needle.len() - 2..]);
    out
}

/// Bytes as chars U+0000..U+00FF, one per byte.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The inverse of [`latin1`].
fn unlatin1(text: &str) -> Vec<u8> {
    text.chars().map(|c| c as u32 as u8).collect()
}

fn header_name(line: &str) -> &str {
    line.split(':').next().unwrap_or("").trim()
}

fn is_via_line(line: &str) -> bool {
    !line.starts_with([' ', '\t']) && sip::canonical(header_name(line)) == "via"
}

fn top_level_comma(value: &str) -> Option<usize> {
    let mut quoted = false;
    value.char_indices().find_map(|(i, c)| match c {
        '"' => {
            quoted = !quoted;
            None
        }
        ',' if !quoted => Some(i),
        _ => None,
    })
}

/// Finds the whole parameter `param` (e.g. `;received=127.0.0.1`): not a prefix of a longer one.
fn find_param(value: &str, param: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = value[from..].find(param) {
        let at = from + i;
        let next = value[at + param.len()..].chars().next();
        if matches!(next, None | Some(';' | ',' | ' ' | '\t')) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn remove_param(value: &str, param: &str) -> Option<String> {
    replace_param(value, param, "")
}

fn replace_param(value: &str, param: &str, with: &str) -> Option<String> {
    let at = find_param(value, param)?;
    Some(format!(
        "{}{with}{}",
        &value[..at],
        &value[at + param.len()..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoes_exactly_the_allowed_edits() {
        let hop = Hop {
            siplb: "127.0.0.1:4000".parse().unwrap(),
            client: "127.0.0.1:5555".parse().unwrap(),
        };
        let original = b"REGISTER sip:c.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;rport;branch=z9hG4bKa, SIP/2.0/UDP x;branch=z9hG4bKb\r\nMax-Forwards: 70\r\nCall-ID: x\r\nContent-Length: 3\r\n\r\nabc";
        let forwarded = b"REGISTER sip:c.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bK-lb0af3\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;rport=5555;branch=z9hG4bKa;received=127.0.0.1, SIP/2.0/UDP x;branch=z9hG4bKb\r\nMax-Forwards: 69\r\nCall-ID: x\r\nContent-Length: 3\r\n\r\nabc";
        let branch = assert_forwarded_intact(original, forwarded, hop);
        assert_eq!(branch, "z9hG4bK-lb0af3");
        let tampered = String::from_utf8_lossy(forwarded).replace("Call-ID: x", "Call-ID: y");
        assert!(undo_forward_edits(original, tampered.as_bytes(), hop)
            .map(|(r, _)| r != original)
            .unwrap_or(true));
    }
}
