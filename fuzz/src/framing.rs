//! Feeding the stream framer, and what its frames must be.

use siplb::fuzzing::{Frame, Framer};

/// What a framer made of a stream: its frames in order, and how it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    pub frames: Vec<Framed>,
    /// The refusal that ended the stream, if one did.
    pub refused: Option<String>,
    /// The header block of the refused message, when the framer read it whole.
    pub refused_head: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    Message(Vec<u8>),
    Ping,
}

/// Feeds `stream` to a fresh framer in pieces of the lengths in `pieces` (cycled; 0 lets the
/// connection rest before one byte comes; none: as much as the framer offers room for), taking
/// every frame after each read as the stream shell does, until the stream ends or is refused.
pub fn feed(stream: &[u8], pieces: &[u8], max_header: usize, max_body: usize) -> Fed {
    let mut framer = Framer::new(max_header, max_body);
    let mut frames = Vec::new();
    let mut at = 0;
    let mut turn = 0;
    while at < stream.len() {
        let mut want = match pieces.get(turn % pieces.len().max(1)) {
            None => usize::MAX,
            Some(0) => {
                framer.rest();
                1
            }
            Some(&n) => usize::from(n),
        };
        turn += 1;
        while want > 0 && at < stream.len() {
            let room = framer.spare();
            // An empty buffer would read 0 bytes, which the shell takes for the peer's close.
            assert!(!room.is_empty(), "no room to read while framing goes on");
            let n = room.len().min(want).min(stream.len() - at);
            room[..n].copy_from_slice(&stream[at..at + n]);
            framer.filled(n);
            at += n;
            want -= n;
            loop {
                match framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Ping)) => frames.push(Framed::Ping),
                    Ok(Some(Frame::Message(m))) => frames.push(Framed::Message(m.to_vec())),
                    Err(e) => {
                        let refused_head = framer.refused_head().map(<[u8]>::to_vec);
                        return Fed {
                            frames,
                            refused: Some(e),
                            refused_head,
                        };
                    }
                }
            }
        }
    }
    Fed {
        frames,
        refused: None,
        refused_head: None,
    }
}

impl Fed {
    /// Checks every frame against `stream`: each is the next thing in it.
    pub fn check(&self, stream: &[u8]) {
        let mut pos = 0;
        for f in &self.frames {
            match f {
                Framed::Ping => {
                    assert!(
                        stream[pos..].starts_with(b"\r\n\r\n"),
                        "a ping where the stream has {:?}",
                        show(&stream[pos..])
                    );
                    pos += 4;
                }
                Framed::Message(m) => {
                    // RFC 3261 §7.5: a CRLF before a start line is skipped; two are a ping.
                    if stream[pos..].starts_with(b"\r\n") {
                        pos += 2;
                        assert!(!stream[pos..].starts_with(b"\r\n"), "a ping went unseen");
                    }
                    assert!(
                        stream[pos..].starts_with(m),
                        "a message that is not the stream's next bytes: {:?}",
                        show(m)
                    );
                    pos += m.len();
                    check_message(m);
                }
            }
        }
        if let Some(head) = &self.refused_head {
            let rest = &stream[pos..];
            let rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
            assert!(rest.starts_with(head), "a refused head not from the stream");
            assert!(
                head.ends_with(b"\r\n\r\n"),
                "a refused head without its end"
            );
        }
    }
}

/// A message off a stream is its header block, up to and with the first CRLFCRLF, and exactly
/// its Content-Length of body.
fn check_message(m: &[u8]) {
    let end = find(m, b"\r\n\r\n").expect("a message without the end of its header block") + 4;
    let Some(length) = content_length(&m[..end]) else {
        // A header line without a colon: not SIP, and siplb's scanner refuses the message;
        // how a framer reads the lines around it does not matter.
        return;
    };
    assert_eq!(
        Some(m.len() - end),
        length,
        "a message whose body is not its Content-Length: {:?}",
        show(m)
    );
}

/// The Content-Length (or `l`) of a header block, read on its own terms: every such header's
/// value, folded lines joined and white space trimmed, is one and the same decimal number.
/// `None` for a block with a header line that has no colon.
fn content_length(head: &[u8]) -> Option<Option<usize>> {
    let mut found: Option<usize> = None;
    let mut headers: Vec<Vec<u8>> = Vec::new();
    // Whether a folded line continues the last header: not after a blank line.
    let mut folds = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            match headers.last_mut() {
                Some(last) if folds => {
                    last.push(b' ');
                    last.extend_from_slice(line);
                }
                _ => {}
            }
        } else if line.contains(&b':') {
            headers.push(line.to_vec());
            folds = true;
        } else if line.trim_ascii().is_empty() {
            folds = false;
        } else {
            return None;
        }
    }
    for h in headers {
        let Some(colon) = h.iter().position(|&b| b == b':') else {
            continue;
        };
        // A name is read as written up to its colon (a line that starts with white space is
        // a folded one).
        let name = h[..colon].trim_ascii_end();
        if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
            continue;
        }
        let value = h[colon + 1..].trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Some(None);
        }
        let Some(n) = value.iter().try_fold(0usize, |n, d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        }) else {
            return Some(None);
        };
        if found.is_some_and(|f| f != n) {
            return Some(None);
        }
        found = Some(n);
    }
    Some(found)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A message for an assertion's text, cut short.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(400)]).into_owned()
}
