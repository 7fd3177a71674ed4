//! The RFC 4475 torture messages, adapted to loopback, read from `tests/torture/*.sip`.
//!
//! A file holds one datagram written the way RFC 4475 §2 writes its messages: comment lines
//! starting with `#` first (the RFC section and how the message was adapted), then the message
//! with LF line ends (each becomes CRLF), `<hex>..</hex>` for bytes that are not printable
//! (§2.2) and `<repeat count=N>..</repeat>` for long repetitions (§2.3). `{name}` is replaced
//! with the value a test gives (a server's address, say), and `{body-length}` with the length
//! of what follows the first blank line, once everything else is expanded.

use std::path::PathBuf;

/// The directory of the torture files.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("torture")
}

/// The datagram in `torture/<name>.sip` (e.g. `valid/wsinv`), with `vars` filled in.
pub fn load(name: &str, vars: &[(&str, String)]) -> Vec<u8> {
    let path = dir().join(format!("{name}.sip"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    expand(&text, vars).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Expands the text of a torture file into the datagram's bytes.
pub fn expand(text: &str, vars: &[(&str, String)]) -> Result<Vec<u8>, String> {
    let mut message: String = text
        .split_inclusive('\n')
        .skip_while(|l| l.starts_with('#'))
        .collect();
    for (name, value) in vars {
        message = message.replace(&format!("{{{name}}}"), value);
    }
    let message = repeat(&message)?;
    let message = message.replace('\n', "\r\n");
    let mut bytes = hex(&message)?;
    let placeholder = b"{body-length}";
    if let Some(at) = find(&bytes, placeholder) {
        let body_start = find(&bytes, b"\r\n\r\n").ok_or("no end of headers")? + 4;
        let length = (bytes.len() - body_start).to_string();
        bytes.splice(at..at + placeholder.len(), length.bytes());
    }
    Ok(bytes)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `<repeat count=N>TEXT</repeat>` → TEXT N times.
fn repeat(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("<repeat count=") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "<repeat count=".len()..];
        let close = after.find('>').ok_or("unclosed <repeat")?;
        let count: usize = after[..close]
            .parse()
            .map_err(|_| format!("bad repeat count {:?}", &after[..close]))?;
        let body = &after[close + 1..];
        let end = body.find("</repeat>").ok_or("no </repeat>")?;
        out.push_str(&body[..end].repeat(count));
        rest = &body[end + "</repeat>".len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `<hex>0D0A</hex>` → those bytes.
fn hex(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("<hex>") {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let after = &rest[at + "<hex>".len()..];
        let end = after.find("</hex>").ok_or("no </hex>")?;
        let digits = &after[..end];
        if digits.len() % 2 != 0 {
            return Err(format!("odd number of hex digits in {digits:?}"));
        }
        for pair in digits.as_bytes().chunks(2) {
            let s = std::str::from_utf8(pair).map_err(|_| "hex is not ASCII")?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| format!("bad hex {s:?}"))?);
        }
        rest = &after[end + "</hex>".len()..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_comments_repeats_hex_vars_and_length() {
        let text = "# a comment\nOPTIONS sip:{who} SIP/2.0\nX: a<repeat count=3>b</repeat>\nL: {body-length}\n\n<hex>00FF</hex>x\n";
        let got = expand(text, &[("who", "u@h".into())]).unwrap();
        assert_eq!(
            got,
            b"OPTIONS sip:u@h SIP/2.0\r\nX: abbb\r\nL: 5\r\n\r\n\x00\xffx\r\n".to_vec()
        );
    }

    #[test]
    fn every_torture_file_expands() {
        for sub in ["valid", "invalid", "ipv6"] {
            for entry in std::fs::read_dir(dir().join(sub)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.starts_with("# RFC "), "{}", path.display());
                let bytes = expand(&text, &[]).unwrap();
                assert!(find(&bytes, b"\r\n\r\n").is_some(), "{}", path.display());
            }
        }
    }
}
