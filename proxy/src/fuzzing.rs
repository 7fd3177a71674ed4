//! What the fuzz targets in `fuzz/` need and the public API does not give: the stream framer,
//! which is the stream shell's own. Built only with the `fuzzing` feature.

use crate::stream::framer;

/// The stream framer, driven as the stream shell drives it.
pub struct Framer(framer::Framer);

/// What the framer cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One message: header block and body.
    Message(&'a [u8]),
    /// A CRLFCRLF keep-alive.
    Ping,
}

impl Framer {
    /// A framer with these limits (`[connections] max_header_bytes`, `max_body_bytes`).
    pub fn new(max_header: usize, max_body: usize) -> Self {
        Framer(framer::Framer::new(framer::Limits {
            max_header,
            max_body,
        }))
    }

    /// Space to read into.
    pub fn spare(&mut self) -> &mut [u8] {
        self.0.spare()
    }

    /// `n` bytes were read into the front of [`Framer::spare`].
    pub fn filled(&mut self, n: usize) {
        self.0.filled(n)
    }

    /// The next frame; `Ok(None)` when more bytes are needed; the error closes the stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, String> {
        match self.0.next() {
            Ok(None) => Ok(None),
            Ok(Some(framer::Frame::Ping)) => Ok(Some(Frame::Ping)),
            Ok(Some(framer::Frame::Message(m))) => Ok(Some(Frame::Message(m))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The connection rests: give the buffer back if nothing is pending.
    pub fn rest(&mut self) -> bool {
        self.0.rest()
    }

    /// The header block of the message refused, when it was read whole.
    pub fn refused_head(&self) -> Option<&[u8]> {
        self.0.refused_head()
    }
}
