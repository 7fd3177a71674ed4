//! The stream framer: cuts a TCP or TLS byte stream into SIP messages and keep-alives.
//!
//! A stream carries no datagram boundaries, so a message ends where its header block ends
//! (the first CRLFCRLF) plus exactly `Content-Length` body bytes, which a message on a stream
//! must carry (RFC 3261 §18.3). Before a start line, CRLFs are ignored (RFC 3261 §7.5), except
//! that a CRLFCRLF between messages is a keep-alive ping the shell answers with a CRLF pong
//! (RFC 5626 §3.5.1).
//!
//! The framer is sans-io: the shell reads into [`Framer::spare`], reports the count with
//! [`Framer::filled`] and takes frames from [`Framer::next`] until it says more bytes are
//! needed. It owns one buffer, bounded by the limits: a header block must end within
//! `max_header` bytes and a body must fit in `max_body`, so the buffer never holds more than one
//! unfinished message. Frames are handed out by advancing an offset; the unread tail moves to the
//! front only when the shell asks for space again, and that tail is never more than the last
//! read, so a stream of many small messages costs linear time.

use memchr::memmem;

/// The least space [`Framer::spare`] offers (while the limits allow it).
const READ_MIN: usize = 1024;
/// The buffer's size when idle; it grows for a large message and comes back to this after.
/// Small, because an idle flow holds it for as long as the client stays signed in (hours, for
/// a Lync client) and a flow has two (its own and its backend connection's): a REGISTER or a
/// SUBSCRIBE fits, a larger message grows it for a moment.
const BASE: usize = 2 * READ_MIN;
/// What a resting connection's buffer is: the first read after a rest takes at most this much,
/// and the buffer grows again from there.
const LEAN: usize = 256;
/// Room beyond the largest message, so a read is never squeezed to a few bytes.
const SLACK: usize = READ_MIN;

/// How large a message may be.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The longest header block, start line and final CRLFCRLF included.
    pub(crate) max_header: usize,
    /// The largest `Content-Length`.
    pub(crate) max_body: usize,
}

/// What the stream carried next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// One complete message: header block and body, without the CRLFs before it.
    Message(&'a [u8]),
    /// A CRLFCRLF keep-alive (RFC 5626 §3.5.1); the shell answers it with a CRLF.
    Ping,
}

/// Why the stream cannot be framed any further; the shell closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// No CRLFCRLF within `max_header` bytes of the start line.
    #[error("header block longer than the limit")]
    HeaderTooLarge,
    /// The message's Content-Length is over `max_body`.
    #[error("Content-Length {0} over the body limit")]
    BodyTooLarge(usize),
    /// The message carries no Content-Length (nor `l`), which a stream requires (RFC 3261 §18.3).
    #[error("no Content-Length on a message over a stream")]
    MissingContentLength,
    /// A Content-Length that is not a decimal number, or two that differ.
    #[error("Content-Length is not one decimal number")]
    BadContentLength,
}

/// Where the message being assembled stands, relative to `Framer::start`.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// Searching for the end of the header block; bytes before `scanned` hold no CRLFCRLF end.
    Head { scanned: usize },
    /// The header block is in; the whole message is `total` bytes long.
    Body { total: usize },
    /// The message was refused; `head` is its header block's length, when it was read.
    Refused { head: Option<usize> },
}

/// Cuts one connection's byte stream into frames.
#[derive(Debug)]
pub(crate) struct Framer {
    limits: Limits,
    /// The buffer; `buf.len()` is its capacity for reads.
    buf: Vec<u8>,
    /// The first byte not yet handed out.
    start: usize,
    /// One past the last byte read.
    end: usize,
    pending: Pending,
    /// Resting ([`Framer::rest`]): the buffer is [`LEAN`] until the next bytes arrive.
    lean: bool,
    /// Bytes moved to the front so far (tests check that framing stays linear).
    #[cfg(test)]
    moved: usize,
}

impl Framer {
    /// A framer for one connection; it allocates on the first [`Framer::spare`].
    pub(crate) fn new(limits: Limits) -> Self {
        Framer {
            limits,
            buf: Vec::new(),
            start: 0,
            end: 0,
            pending: Pending::Head { scanned: 0 },
            lean: false,
            #[cfg(test)]
            moved: 0,
        }
    }

    /// Gives the buffer back while the connection rests (nothing unfinished is buffered): the
    /// next [`Framer::spare`] offers only a few hundred bytes, and the buffer grows again when
    /// data comes. An idle client flow — a signed-in Lync client between keep-alives — so holds
    /// almost nothing. Returns whether memory was given back.
    pub(crate) fn rest(&mut self) -> bool {
        if self.start != self.end || self.buf.len() <= LEAN {
            return false;
        }
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
        self.lean = true;
        true
    }

    /// The most bytes the buffer ever holds: one largest message and a read's room.
    fn cap(&self) -> usize {
        self.limits
            .max_header
            .saturating_add(self.limits.max_body)
            .saturating_add(SLACK)
    }

    /// Space to read into (at least 1 KiB; the buffer never exceeds max_header + max_body +
    /// a small slack, and shrinks back after a large message).
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.lean && self.end == 0 {
            self.buf.resize(LEAN, 0);
            return &mut self.buf[..];
        }
        if self.start > 0 {
            // Only the unfinished tail moves, never more than the last read brought.
            self.buf.copy_within(self.start..self.end, 0);
            #[cfg(test)]
            {
                self.moved += self.end - self.start;
            }
            self.end -= self.start;
            self.start = 0;
        }
        let cap = self.cap();
        let base = BASE.min(cap);
        if self.buf.len() > base && self.end + READ_MIN <= base {
            // A large message has gone: give its memory back.
            self.buf.truncate(base);
            self.buf.shrink_to_fit();
        }
        let want = (self.end + READ_MIN).min(cap);
        if self.buf.len() < want {
            let grown = self.buf.len().saturating_mul(2).clamp(base, cap).max(want);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into the front of [`Framer::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.lean &= n == 0;
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete frame, Ok(None) when more bytes are needed.
    pub(crate) fn next(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        loop {
            match self.pending {
                Pending::Refused { .. } => return Ok(None),
                Pending::Head { scanned: 0 } => {
                    match crlf_prefix(&self.buf[self.start..self.end]) {
                        Crlf::Ping => {
                            self.consume(4);
                            return Ok(Some(Frame::Ping));
                        }
                        Crlf::Lone => self.consume(2),
                        Crlf::Undecided => return Ok(None),
                        Crlf::Message => self.find_head()?,
                    }
                }
                Pending::Head { .. } => self.find_head()?,
                Pending::Body { total, .. } => {
                    if self.end - self.start < total {
                        return Ok(None);
                    }
                    let at = self.start;
                    self.consume(total);
                    self.pending = Pending::Head { scanned: 0 };
                    return Ok(Some(Frame::Message(&self.buf[at..at + total])));
                }
            }
            if let Pending::Head { scanned } = self.pending {
                if scanned > 0 {
                    return Ok(None);
                }
            }
        }
    }

    /// Whether bytes of an unfinished message are buffered (the shell's header-read timer
    /// runs while this is true and no full header block has arrived).
    pub(crate) fn partial(&self) -> bool {
        let rest = &self.buf[self.start..self.end];
        !rest.is_empty() && !matches!(crlf_prefix(rest), Crlf::Undecided)
    }

    /// Whether an unfinished message is buffered whose header block has not fully arrived.
    pub(crate) fn awaiting_head(&self) -> bool {
        self.partial() && matches!(self.pending, Pending::Head { .. })
    }

    /// The header block of the message being refused, when one was read (so the shell can
    /// answer 513 / 400 to it); None when no full header block arrived.
    pub(crate) fn refused_head(&self) -> Option<&[u8]> {
        match self.pending {
            Pending::Refused { head: Some(head) } => Some(&self.buf[self.start..self.start + head]),
            _ => None,
        }
    }

    /// Hands out `n` bytes; an emptied buffer starts over at its front.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Looks for the end of the header block, resuming where the last search stopped. Leaves
    /// `Pending::Head` with `scanned > 0` when more bytes are needed.
    fn find_head(&mut self) -> Result<(), FrameError> {
        let Pending::Head { scanned } = self.pending else {
            return Ok(());
        };
        let max = self.limits.max_header;
        let have = self.end - self.start;
        let window = &self.buf[self.start..self.start + have.min(max)];
        let from = scanned.saturating_sub(3);
        let Some(at) = memmem::find(&window[from..], b"\r\n\r\n") else {
            if have >= max {
                self.pending = Pending::Refused { head: None };
                return Err(FrameError::HeaderTooLarge);
            }
            // At least 1, so the next call resumes here instead of re-checking for CRLFs.
            self.pending = Pending::Head {
                scanned: window.len().max(1),
            };
            return Ok(());
        };
        let head = from + at + 4;
        match content_length(&window[..head]) {
            Ok(body) if body <= self.limits.max_body => {
                self.pending = Pending::Body { total: head + body };
                Ok(())
            }
            Ok(body) => self.refuse(head, FrameError::BodyTooLarge(body)),
            Err(e) => self.refuse(head, e),
        }
    }

    fn refuse(&mut self, head: usize, e: FrameError) -> Result<(), FrameError> {
        self.pending = Pending::Refused { head: Some(head) };
        Err(e)
    }
}

/// How the unread bytes begin, before any message.
enum Crlf {
    /// CRLFCRLF: a keep-alive.
    Ping,
    /// A CRLF followed by something other than CRLF: skipped (RFC 3261 §7.5).
    Lone,
    /// A prefix of CRLFCRLF (or nothing): wait for more bytes.
    Undecided,
    /// Anything else starts a message.
    Message,
}

fn crlf_prefix(rest: &[u8]) -> Crlf {
    const PING: &[u8] = b"\r\n\r\n";
    let n = rest.len().min(4);
    if rest[..n] != PING[..n] {
        // Diverges from CRLFCRLF at byte `i`: a lone CRLF when the first two bytes match.
        let i = rest.iter().zip(PING).take_while(|(a, b)| a == b).count();
        return if i >= 2 { Crlf::Lone } else { Crlf::Message };
    }
    if n == 4 {
        Crlf::Ping
    } else {
        Crlf::Undecided
    }
}

/// The Content-Length (or compact `l`) of a header block: the one value, or the same value
/// repeated. A value too large for `usize` is reported as `usize::MAX`, over any limit.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    // Skip the start line; then each header is a line plus the folded lines under it.
    let mut lines = head.split(|&b| b == b'\n').skip(1).peekable();
    while let Some(first) = lines.next() {
        let Some(colon) = first.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = first[..colon].trim_ascii_end();
        if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
            continue;
        }
        // A folded value is fine; a number broken over two lines is not one number.
        let mut value = first[colon + 1..].trim_ascii();
        while let Some(next) = lines.next_if(|l| matches!(l.first(), Some(b' ' | b'\t'))) {
            let more = next.trim_ascii();
            if !more.is_empty() {
                if !value.is_empty() {
                    return Err(FrameError::BadContentLength);
                }
                value = more;
            }
        }
        let n = decimal(value)?;
        match found {
            Some(m) if m != n => return Err(FrameError::BadContentLength),
            _ => found = Some(n),
        }
    }
    found.ok_or(FrameError::MissingContentLength)
}

/// A non-empty run of ASCII digits, saturating at `usize::MAX`.
fn decimal(v: &[u8]) -> Result<usize, FrameError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::BadContentLength);
    }
    Ok(v.iter().fold(0usize, |n, d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests;
