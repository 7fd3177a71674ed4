//! Byte splicing: copy a message into an output buffer with a few ranges replaced.
//!
//! siplb never re-serialises a message. It lists its edits (insert our Via, add `received` and
//! fill `rport`, rewrite or add Max-Forwards, drop our Route or our Via), and [`Edits::apply`]
//! copies every other byte unchanged around them in one pass into a buffer each worker reuses.
//! The body is not an edit: `apply` copies up to the message's end, so bytes past
//! Content-Length are left out.

use super::scan::Span;

/// What an edit puts in place of what it removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Insert {
    Nothing,
    Static(&'static [u8]),
    /// A range of the scratch buffer passed to [`Edits::apply`].
    Scratch(Span),
}

/// One edit: at `at`, remove `remove` bytes and put `insert` there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edit {
    pub(crate) at: usize,
    pub(crate) remove: usize,
    pub(crate) insert: Insert,
}

/// Up to [`Edits::MAX`] non-overlapping edits of one message.
#[derive(Debug)]
pub(crate) struct Edits {
    list: [Edit; Edits::MAX],
    len: usize,
}

impl Default for Edits {
    fn default() -> Self {
        Edits {
            list: [Edit {
                at: 0,
                remove: 0,
                insert: Insert::Nothing,
            }; Edits::MAX],
            len: 0,
        }
    }
}

impl Edits {
    /// The most edits one message needs (our Via, received, rport, Max-Forwards, Route), with
    /// room to spare.
    pub(crate) const MAX: usize = 8;

    /// Adds an edit. Edits may be pushed in any order; they must not overlap.
    pub(crate) fn push(&mut self, at: usize, remove: usize, insert: Insert) {
        debug_assert!(self.len < Self::MAX, "more edits than one message needs");
        if self.len < Self::MAX {
            self.list[self.len] = Edit { at, remove, insert };
            self.len += 1;
        }
    }

    /// Copies `src[..end]` into `out` (cleared first) with the edits applied. Edits at the same
    /// offset apply in the order they were pushed.
    pub(crate) fn apply(&mut self, src: &[u8], end: usize, scratch: &[u8], out: &mut Vec<u8>) {
        let edits = &mut self.list[..self.len];
        edits.sort_by_key(|e| e.at); // stable: pushes at one offset keep their order
        out.clear();
        out.reserve(end + 128);
        let mut pos = 0;
        for e in edits.iter() {
            let at = e.at.clamp(pos, end);
            out.extend_from_slice(&src[pos..at]);
            match e.insert {
                Insert::Nothing => {}
                Insert::Static(b) => out.extend_from_slice(b),
                Insert::Scratch(s) => out.extend_from_slice(s.of(scratch)),
            }
            pos = (at + e.remove).min(end);
        }
        out.extend_from_slice(&src[pos..end]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_in_order_and_keeps_the_rest() {
        let src = b"0123456789";
        let scratch = b"XY";
        let mut e = Edits::default();
        e.push(8, 1, Insert::Nothing); // drop '8'
        e.push(2, 0, Insert::Static(b"ab"));
        e.push(2, 0, Insert::Scratch(Span::new(0, 2)));
        e.push(5, 2, Insert::Static(b"-"));
        let mut out = Vec::new();
        e.apply(src, src.len(), scratch, &mut out);
        assert_eq!(out, b"01abXY234-79");
    }

    #[test]
    fn cuts_at_end() {
        let mut out = Vec::new();
        Edits::default().apply(b"headerbody+junk", 10, b"", &mut out);
        assert_eq!(out, b"headerbody");
    }
}
