//! `framer`: the stream framer fed one byte stream in pieces the fuzzer chooses.
//!
//! Input: a byte `k`, then `k % 16` piece lengths (0: the connection rests, then one byte),
//! two bytes for the header and body limits, then the stream. Checked on every input: nothing
//! panics; the framer always offers room to read until it refuses the stream; every message
//! it yields is the next thing in the stream (after at most one lone CRLF), a header block
//! with its Content-Length body and nothing more; a ping is a CRLFCRLF; and the same stream
//! gives the same frames and the same refusal whatever the pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siplb_fuzz::framing::feed;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 16);
    if rest.len() < k + 2 {
        return;
    }
    let (pieces, rest) = rest.split_at(k);
    let (limits, stream) = rest.split_at(2);
    let max_header = 16 + usize::from(limits[0]) * 8;
    let max_body = usize::from(limits[1]) * 16;

    let whole = feed(stream, &[], max_header, max_body);
    whole.check(stream);
    if !pieces.is_empty() {
        let split = feed(stream, pieces, max_header, max_body);
        split.check(stream);
        assert_eq!(
            whole, split,
            "the same stream framed differently when split at {pieces:?}"
        );
    }
});
