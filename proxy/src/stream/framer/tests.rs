use super::*;

const LIMITS: Limits = Limits {
    max_header: 8 * 1024,
    max_body: 64 * 1024,
};

/// What a frame carried, owned so frames can be collected.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Got {
    Msg(Vec<u8>),
    Ping,
}

/// Feeds `bytes` in reads of at most `chunk` bytes and takes every frame after each read.
fn feed(f: &mut Framer, bytes: &[u8], chunk: usize) -> Result<Vec<Got>, FrameError> {
    let mut got = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let spare = f.spare();
        assert!(!spare.is_empty(), "no room to read into");
        let n = chunk.min(spare.len()).min(rest.len());
        spare[..n].copy_from_slice(&rest[..n]);
        f.filled(n);
        rest = &rest[n..];
        while let Some(frame) = f.next()? {
            got.push(match frame {
                Frame::Message(m) => Got::Msg(m.to_vec()),
                Frame::Ping => Got::Ping,
            });
        }
    }
    Ok(got)
}

fn frames(bytes: &[u8], chunk: usize) -> Result<Vec<Got>, FrameError> {
    feed(&mut Framer::new(LIMITS), bytes, chunk)
}

fn request(user: &str, body: &str) -> Vec<u8> {
    format!(
        "MESSAGE sip:{user}@contoso.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK-{user}\r\n\
         From: <sip:alice@contoso.com>;tag=1\r\n\
         To: <sip:{user}@contoso.com>\r\n\
         Call-ID: {user}-1\r\n\
         CSeq: 1 MESSAGE\r\n\
         Content-Length: {}\r\n\
         \r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn msg(m: &[u8]) -> Got {
    Got::Msg(m.to_vec())
}

#[test]
fn one_message_in_one_read() {
    let m = request("bob", "hello");
    assert_eq!(frames(&m, usize::MAX), Ok(vec![msg(&m)]));
}

#[test]
fn a_message_split_at_every_offset() {
    let m = request("bob", "a body with \r\n\r\n inside");
    for k in 1..m.len() {
        let mut f = Framer::new(LIMITS);
        assert_eq!(feed(&mut f, &m[..k], usize::MAX), Ok(vec![]), "cut at {k}");
        assert!(f.partial(), "cut at {k}");
        assert_eq!(
            feed(&mut f, &m[k..], usize::MAX),
            Ok(vec![msg(&m)]),
            "cut at {k}"
        );
        assert!(!f.partial(), "cut at {k}");
    }
}

#[test]
fn a_message_one_byte_at_a_time() {
    let m = request("bob", "hello");
    let two = [m.clone(), m.clone()].concat();
    assert_eq!(frames(&two, 1), Ok(vec![msg(&m), msg(&m)]));
}

#[test]
fn pipelined_messages_in_one_read() {
    let (a, b, c) = (request("a", ""), request("b", "x"), request("c", "yz"));
    let all = [a.clone(), b.clone(), c.clone()].concat();
    assert_eq!(
        frames(&all, usize::MAX),
        Ok(vec![msg(&a), msg(&b), msg(&c)])
    );
}

#[test]
fn a_ping_between_messages_and_on_its_own() {
    let a = request("a", "body");
    let all = [b"\r\n\r\n".as_slice(), &a, b"\r\n\r\n", &a, b"\r\n\r\n"].concat();
    let want = vec![Got::Ping, msg(&a), Got::Ping, msg(&a), Got::Ping];
    assert_eq!(frames(&all, usize::MAX), Ok(want.clone()));
    assert_eq!(frames(&all, 1), Ok(want));
}

#[test]
fn lone_crlfs_before_a_message_are_skipped() {
    let a = request("a", "");
    // RFC 3261 §7.5: a CRLF before the start line is ignored; two of them make a ping.
    assert_eq!(
        frames(&[b"\r\n", a.as_slice()].concat(), 1),
        Ok(vec![msg(&a)])
    );
    let three = [b"\r\n\r\n\r\n".as_slice(), &a, b"\r\n", &a].concat();
    assert_eq!(frames(&three, 1), Ok(vec![Got::Ping, msg(&a), msg(&a)]));
}

#[test]
fn a_crlf_alone_is_not_an_unfinished_message() {
    let mut f = Framer::new(LIMITS);
    assert_eq!(feed(&mut f, b"\r\n", usize::MAX), Ok(vec![]));
    assert!(!f.partial() && !f.awaiting_head());
    assert_eq!(feed(&mut f, b"\r", usize::MAX), Ok(vec![]));
    assert!(!f.partial());
    assert_eq!(feed(&mut f, b"\n", usize::MAX), Ok(vec![Got::Ping]));
    assert!(!f.partial());
}

#[test]
fn partial_and_awaiting_head_follow_the_message() {
    let m = request("bob", "hello");
    let head = m.len() - "hello".len();
    let mut f = Framer::new(LIMITS);
    assert!(!f.partial() && !f.awaiting_head());
    feed(&mut f, &m[..10], usize::MAX).unwrap();
    assert!(f.partial() && f.awaiting_head());
    feed(&mut f, &m[10..head + 1], usize::MAX).unwrap();
    assert!(f.partial() && !f.awaiting_head(), "the header block is in");
    assert_eq!(feed(&mut f, &m[head + 1..], usize::MAX), Ok(vec![msg(&m)]));
    assert!(!f.partial() && !f.awaiting_head());
}

#[test]
fn content_length_in_any_case_compact_and_spaced() {
    for header in [
        "content-length: 3",
        "CONTENT-LENGTH:3",
        "Content-Length \t: 3",
        "l: 3",
        "L :3",
        "Content-Length:\r\n 3",
        "Content-Length: 3\r\nl: 3",
    ] {
        let m = format!("OPTIONS sip:x SIP/2.0\r\nSubject: a\r\n folded\r\n{header}\r\n\r\nabc");
        let tail = b"OPTIONS sip:y SIP/2.0\r\nl: 0\r\n\r\n";
        let all = [m.as_bytes(), tail].concat();
        assert_eq!(
            frames(&all, usize::MAX),
            Ok(vec![msg(m.as_bytes()), msg(tail)]),
            "{header}"
        );
    }
}

#[test]
fn only_a_header_named_content_length_counts() {
    // `Content-Lengthy`, a value mentioning `l:`, a folded ` l: 9` line belong to other headers.
    let m = b"SIP/2.0 200 OK\r\nContent-Lengthy: 9\r\nX: l: 9\r\nY: a\r\n l: 9\r\nl: 1\r\n\r\nZ";
    assert_eq!(frames(m, usize::MAX), Ok(vec![msg(m)]));
}

#[test]
fn missing_content_length_is_refused_with_its_head() {
    let m = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n";
    let mut f = Framer::new(LIMITS);
    assert_eq!(
        feed(&mut f, m, usize::MAX),
        Err(FrameError::MissingContentLength)
    );
    assert_eq!(f.refused_head(), Some(m.as_slice()));
}

#[test]
fn garbage_or_differing_content_lengths_are_refused() {
    for header in [
        "Content-Length: ten",
        "Content-Length:",
        "Content-Length: -1",
        "Content-Length: 1 0",
        "Content-Length: 1\r\n 0",
        "Content-Length: 0x10",
        "Content-Length: 3\r\nl: 4",
        "l: 4\r\nContent-Length: 3",
    ] {
        let head = format!("INVITE sip:x SIP/2.0\r\n{header}\r\n\r\n");
        let mut f = Framer::new(LIMITS);
        let got = feed(&mut f, format!("{head}abcd").as_bytes(), usize::MAX);
        assert_eq!(got, Err(FrameError::BadContentLength), "{header}");
        assert_eq!(f.refused_head(), Some(head.as_bytes()), "{header}");
    }
}

#[test]
fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let limits = Limits {
        max_header: 1024,
        max_body: 100,
    };
    let head = "MESSAGE sip:x SIP/2.0\r\nContent-Length: 101\r\n\r\n";
    let mut f = Framer::new(limits);
    assert_eq!(
        feed(&mut f, head.as_bytes(), usize::MAX),
        Err(FrameError::BodyTooLarge(101))
    );
    assert_eq!(f.refused_head(), Some(head.as_bytes()));
    // Exactly at the limit is fine.
    let ok = format!("MESSAGE sip:x SIP/2.0\r\nl: 100\r\n\r\n{}", "b".repeat(100));
    assert_eq!(
        feed(&mut Framer::new(limits), ok.as_bytes(), 7),
        Ok(vec![msg(ok.as_bytes())])
    );
    // A number too large for any integer is too large, not garbage.
    let huge = "MESSAGE sip:x SIP/2.0\r\nl: 99999999999999999999999999\r\n\r\n";
    let got = feed(&mut Framer::new(limits), huge.as_bytes(), usize::MAX);
    assert_eq!(got, Err(FrameError::BodyTooLarge(usize::MAX)));
}

#[test]
fn a_ten_megabyte_header_block_is_refused_within_the_cap() {
    let limits = Limits {
        max_header: 16 * 1024,
        max_body: 64 * 1024,
    };
    let mut f = Framer::new(limits);
    let mut sent = 0;
    let line =
        b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut stream = b"REGISTER sip:contoso.com SIP/2.0\r\n".to_vec();
    while stream.len() < 10 << 20 {
        stream.extend_from_slice(line);
    }
    let mut result = Ok(vec![]);
    for chunk in stream.chunks(65536) {
        result = feed(&mut f, chunk, usize::MAX);
        sent += chunk.len();
        assert!(
            f.buf.len() <= f.cap(),
            "buffer {} over the cap",
            f.buf.len()
        );
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(FrameError::HeaderTooLarge));
    assert!(sent < 1 << 20, "refused only after {sent} bytes");
    assert_eq!(f.refused_head(), None);
}

#[test]
fn a_header_block_exactly_at_the_limit_passes() {
    let head = "OPTIONS sip:x SIP/2.0\r\nl: 0\r\n\r\n";
    let limits = Limits {
        max_header: head.len(),
        max_body: 0,
    };
    assert_eq!(
        feed(&mut Framer::new(limits), head.as_bytes(), 1),
        Ok(vec![msg(head.as_bytes())])
    );
    let over = Limits {
        max_header: head.len() - 1,
        max_body: 0,
    };
    let got = feed(&mut Framer::new(over), head.as_bytes(), 1);
    assert_eq!(got, Err(FrameError::HeaderTooLarge));
}

#[test]
fn spare_offers_a_read_and_the_buffer_shrinks_after_a_large_message() {
    let mut f = Framer::new(LIMITS);
    assert!(f.spare().len() >= READ_MIN);
    let big = request("big", &"z".repeat(60 * 1024));
    assert_eq!(feed(&mut f, &big, usize::MAX), Ok(vec![msg(&big)]));
    assert!(f.buf.len() > BASE, "grew to hold the message");
    assert!(f.buf.len() <= f.cap());
    assert!(f.spare().len() >= READ_MIN);
    assert!(f.buf.len() <= BASE, "shrank back to {}", f.buf.len());
}

#[test]
fn many_small_messages_cost_linear_copying() {
    let mut f = Framer::new(LIMITS);
    let one = request("u", "");
    let stream: Vec<u8> = (0..5000).flat_map(|_| one.iter().copied()).collect();
    let got = feed(&mut f, &stream, 3000).unwrap();
    assert_eq!(got.len(), 5000);
    // Each read moves at most the unfinished tail of the one before it.
    assert!(
        f.moved <= stream.len(),
        "moved {} of {}",
        f.moved,
        stream.len()
    );
    assert!(f.buf.len() <= BASE);
}

/// A seeded xorshift64: repeatable random numbers without a crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random valid message: random header spelling and folding, a random body (CRLFs included).
fn random_message(rng: &mut XorShift) -> Vec<u8> {
    let body: Vec<u8> = (0..rng.below(300))
        .map(|_| b"ab\r\n:l 0"[rng.below(8)])
        .collect();
    let name = [
        "Content-Length",
        "content-length",
        "l",
        "L",
        "CONTENT-length",
    ][rng.below(5)];
    let gap = ["", " ", "\t", "  "][rng.below(4)];
    let value = ["", " ", "\r\n "][rng.below(3)];
    let mut m = format!("INVITE sip:u{}@contoso.com SIP/2.0\r\n", rng.next()).into_bytes();
    for i in 0..rng.below(6) {
        m.extend_from_slice(format!("X-H{i}: v{}\r\n", rng.next()).as_bytes());
        if rng.below(4) == 0 {
            m.extend_from_slice(b" folded\r\n");
        }
    }
    m.extend_from_slice(format!("{name}{gap}:{value}{}\r\n\r\n", body.len()).as_bytes());
    m.extend_from_slice(&body);
    m
}

#[test]
fn random_streams_split_at_random_offsets_give_the_messages_back() {
    let mut rng = XorShift(0x5eed_f00d_51b1);
    for round in 0..200 {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for _ in 0..rng.below(20) + 1 {
            // Between messages: nothing, a lone CRLF, a ping, or a ping and a lone CRLF.
            match rng.below(4) {
                0 => {}
                1 => stream.extend_from_slice(b"\r\n"),
                2 => {
                    stream.extend_from_slice(b"\r\n\r\n");
                    want.push(Got::Ping);
                }
                _ => {
                    stream.extend_from_slice(b"\r\n\r\n\r\n");
                    want.push(Got::Ping);
                }
            }
            let m = random_message(&mut rng);
            stream.extend_from_slice(&m);
            want.push(Got::Msg(m));
        }
        let mut f = Framer::new(LIMITS);
        let mut got = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = (rng.below(400) + 1).min(stream.len() - at);
            got.extend(feed(&mut f, &stream[at..at + n], usize::MAX).unwrap());
            at += n;
        }
        assert_eq!(got, want, "round {round}");
        assert!(!f.partial(), "round {round}");
    }
}

#[test]
fn a_resting_framer_holds_a_few_hundred_bytes_and_frames_as_before_after() {
    let mut f = Framer::new(LIMITS);
    let one = request("u", "");
    assert_eq!(feed(&mut f, &one, usize::MAX), Ok(vec![msg(&one)]));
    assert!(f.buf.len() >= READ_MIN);
    assert!(f.rest(), "nothing unfinished: memory given back");
    assert!(
        f.spare().len() <= LEAN,
        "a resting framer offers a small read"
    );
    assert!(f.buf.capacity() <= LEAN);
    // Messages after the rest, split anywhere, frame as before and the buffer grows back.
    let big = request("big", &"z".repeat(8 * 1024));
    let both: Vec<u8> = [one.clone(), big.clone()].concat();
    assert_eq!(feed(&mut f, &both, 100), Ok(vec![msg(&one), msg(&big)]));
    assert!(f.buf.len() > LEAN);
    // An unfinished message is never given back.
    assert_eq!(feed(&mut f, &one[..10], usize::MAX), Ok(vec![]));
    assert!(!f.rest());
    assert_eq!(feed(&mut f, &one[10..], usize::MAX), Ok(vec![msg(&one)]));
}
