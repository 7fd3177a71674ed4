//! Seeded generation of hostile datagrams: valid SIP messages, then truncated, flipped, shuffled
//! and stretched the ways real networks and real attackers do.
//!
//! The generator is deterministic (SplitMix64 with a fixed seed), so a failure replays exactly.
//!
//! Every address a mutated message could send siplb towards is kept on loopback or unreachable:
//! client Via hosts are IPv6 (`[::1]`, `[2001:db8::1]`), which siplb's IPv4 socket cannot send to,
//! and siplb itself adds `received=127.0.0.1`. No flipped digit can turn them into a public IPv4
//! address, so the flood never leaves this machine.

use std::net::SocketAddr;

/// SplitMix64: tiny, fast, and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Produces the flood: `next()` is one datagram.
pub struct Mutator {
    rng: Rng,
    templates: Vec<Vec<u8>>,
}

impl Mutator {
    /// `siplb` is the advertised address, so response templates carry siplb's Via on top (they
    /// get past the first check and exercise the response path).
    pub fn new(seed: u64, siplb: SocketAddr) -> Mutator {
        Mutator {
            rng: Rng::new(seed),
            templates: templates(siplb),
        }
    }

    /// The next hostile datagram.
    pub fn next_datagram(&mut self) -> Vec<u8> {
        let r = self.rng.below(1000);
        if r < 4 {
            return Vec::new();
        }
        if r < 5 {
            return self.jumbo();
        }
        if r < 40 {
            let n = 1 + self.rng.below(1500);
            return (0..n).map(|_| self.rng.next_u64() as u8).collect();
        }
        let mut d = self.rng.pick(&self.templates).clone();
        for _ in 0..1 + self.rng.below(3) {
            self.mutate(&mut d);
        }
        d
    }

    /// A 65,000-byte datagram: a REGISTER stretched by a huge header, or plain noise.
    fn jumbo(&mut self) -> Vec<u8> {
        const SIZE: usize = 65_000;
        if self.rng.percent(50) {
            return (0..SIZE).map(|_| self.rng.next_u64() as u8).collect();
        }
        let mut d = self.templates[0].clone();
        let pad = SIZE.saturating_sub(d.len() + 12);
        let line = format!("X-Pad: {}\r\n", "a".repeat(pad));
        let at = line_starts(&d).get(1).copied().unwrap_or(0);
        d.splice(at..at, line.into_bytes());
        d.truncate(SIZE);
        d
    }

    fn mutate(&mut self, d: &mut Vec<u8>) {
        match self.rng.below(13) {
            0 => {
                // Truncate anywhere.
                let at = self.rng.below(d.len() + 1);
                d.truncate(at);
            }
            1 => {
                for _ in 0..1 + self.rng.below(4) {
                    if !d.is_empty() {
                        let at = self.rng.below(d.len());
                        d[at] = self.rng.next_u64() as u8;
                    }
                }
            }
            2 => self.duplicate_line(d),
            3 => self.delete_line(d),
            4 => {
                let v = *self.rng.pick(&[
                    "-1",
                    "99999999999999999999",
                    "abc",
                    "",
                    "4294967296",
                    "65536",
                    "12 34",
                    "0x10",
                    "100000",
                    "18446744073709551615",
                ]);
                self.set_header(d, "Content-Length", v);
            }
            5 => {
                let v = *self.rng.pick(&[
                    "99999999999999999999999",
                    "4294967295",
                    "256",
                    "-5",
                    "0",
                    "1",
                    "abc",
                    "",
                    "70 70",
                ]);
                self.set_header(d, "Max-Forwards", v);
            }
            6 => {
                let line = *self.rng.pick(&[
                    "Via: SIP/2.0/UDP [::1]:5062;branch=z9hG4bKa, SIP/2.0/UDP [::1]:5063;branch=z9hG4bKb,SIP/2.0/TCP [::1];rport",
                    "Via: ,,,",
                    "Via: SIP/2.0/UDP [2001:db8::1]:5060;rport;branch=z9hG4bKv6;received=[::1]",
                    "v:SIP/2.0/UDP [::1]",
                    "Via: SIP/2.0/UDP [::1]:99999;rport=70000;branch=",
                    "Via: SIP/2.0/UDP",
                    "Via: SIP/2.0/UDP [",
                ]);
                self.insert_line(d, line);
            }
            7 => {
                for (from, to) in [
                    ("Via:", "v:"),
                    ("From:", "f:"),
                    ("To:", "t:"),
                    ("Call-ID:", "i:"),
                    ("Content-Length:", "l:"),
                    ("Contact:", "m:"),
                ] {
                    if self.rng.percent(60) {
                        replace_all(d, from.as_bytes(), to.as_bytes());
                    }
                }
            }
            8 => {
                let method = match self.rng.below(7) {
                    0 => "BENOTIFY".to_string(),
                    1 => "SERVICE".to_string(),
                    2 => "FOO".to_string(),
                    3 => "A-B.C!%*_+`'~".to_string(),
                    4 => "X".repeat(2000),
                    5 => String::new(),
                    _ => "invite".to_string(),
                };
                let end = d.iter().position(|&b| b == b' ').unwrap_or(0);
                d.splice(0..end, method.into_bytes());
            }
            9 => {
                for _ in 0..1 + self.rng.below(3) {
                    let at = self.rng.below(d.len() + 1);
                    d.insert(at, 0);
                }
            }
            10 => {
                let what = *self.rng.pick(&[
                    "From: <sip:alice@[2001:db8::1]>;tag=6",
                    "To: <sip:bob@[2001:db8::2]:5060>",
                    "Route: <sip:[::1]:5099;lr>",
                    "Route: <sip:",
                    "Call-ID: ",
                    "CSeq: 99999999999999999999 REGISTER",
                    "CSeq: INVITE",
                    "Header-Without-Colon",
                    ": no name",
                    " folded continuation",
                ]);
                self.insert_line(d, what);
            }
            11 => replace_all(d, b"\r\n", if self.rng.percent(50) { b"\n" } else { b"\r" }),
            _ => {
                // Trailing garbage beyond Content-Length, or a second message glued on.
                let tail: &[u8] = if self.rng.percent(50) {
                    b"GARBAGE\x00\xff\xfe"
                } else {
                    b"\r\n\r\nREGISTER sip:x SIP/2.0\r\n\r\n"
                };
                d.extend_from_slice(tail);
            }
        }
    }

    fn duplicate_line(&mut self, d: &mut Vec<u8>) {
        let starts = line_starts(d);
        if starts.len() < 2 {
            return;
        }
        let i = 1 + self.rng.below(starts.len() - 1);
        let end = starts.get(i + 1).copied().unwrap_or(d.len());
        let line = d[starts[i]..end].to_vec();
        d.splice(starts[i]..starts[i], line);
    }

    fn delete_line(&mut self, d: &mut Vec<u8>) {
        let starts = line_starts(d);
        if starts.len() < 2 {
            return;
        }
        let i = 1 + self.rng.below(starts.len() - 1);
        let end = starts.get(i + 1).copied().unwrap_or(d.len());
        d.drain(starts[i]..end);
    }

    fn insert_line(&mut self, d: &mut Vec<u8>, line: &str) {
        let starts = line_starts(d);
        let at = if starts.len() > 1 {
            starts[1 + self.rng.below(starts.len() - 1)]
        } else {
            d.len()
        };
        d.splice(at..at, format!("{line}\r\n").into_bytes());
    }

    /// Replaces the value of the first `name:` line, or inserts one.
    fn set_header(&mut self, d: &mut Vec<u8>, name: &str, value: &str) {
        let needle = format!("\r\n{name}:");
        match find(d, needle.as_bytes()) {
            Some(at) => {
                let start = at + needle.len();
                let end = find(&d[start..], b"\r\n").map_or(d.len(), |e| start + e);
                d.splice(start..end, format!(" {value}").into_bytes());
            }
            None => self.insert_line(d, &format!("{name}: {value}")),
        }
    }
}

/// Byte offsets where lines start (up to the end of headers).
fn line_starts(d: &[u8]) -> Vec<usize> {
    let head_end = find(d, b"\r\n\r\n").unwrap_or(d.len());
    let mut starts = vec![0];
    let mut i = 0;
    while let Some(e) = find(&d[i..head_end], b"\r\n") {
        i += e + 2;
        starts.push(i);
    }
    starts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(d: &mut Vec<u8>, from: &[u8], to: &[u8]) {
    let mut out = Vec::with_capacity(d.len());
    let mut i = 0;
    while i < d.len() {
        if d[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(d[i]);
            i += 1;
        }
    }
    *d = out;
}

/// The valid messages the flood starts from.
fn templates(siplb: SocketAddr) -> Vec<Vec<u8>> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n";
    let xml = "<publish xmlns=\"http://schemas.microsoft.com/2006/09/sip/rich-presence\"><publications uri=\"sip:alice@contoso.com\"/></publish>";
    let texts = [
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5062;rport;branch=z9hG4bKreg1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=a1;epid=01010101\r\nTo: <sip:alice@contoso.com>\r\nCall-ID: fuzz-reg-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:[::1]:5062>;methods=\"INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY\";proxy=replace;+sip.instance=\"<urn:uuid:4C4C4544-0000-0000-0000-000000000000>\"\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n".to_string(),
        format!("INVITE sip:bob@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5062;rport;branch=z9hG4bKinv1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=a2\r\nTo: <sip:bob@contoso.com>\r\nCall-ID: fuzz-inv-1\r\nCSeq: 1 INVITE\r\nContact: <sip:[::1]:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()),
        format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {siplb};branch=z9hG4bK-lb0123456789abcdef\r\nVia: SIP/2.0/UDP [::1]:5099;rport=5099;branch=z9hG4bKresp1\r\nFrom: <sip:alice@contoso.com>;tag=a3\r\nTo: <sip:alice@contoso.com>;tag=b3\r\nCall-ID: fuzz-resp-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"),
        "MESSAGE sip:bob@contoso.com SIP/2.0\r\nv: SIP/2.0/UDP [::1]:5062;rport;branch=z9hG4bKmsg1\r\nMax-Forwards: 70\r\nf: <sip:alice@contoso.com>;tag=a4\r\nt: <sip:bob@contoso.com>\r\ni: fuzz-msg-1\r\nCSeq: 1 MESSAGE\r\nc: text/plain\r\nl: 5\r\n\r\nhello".to_string(),
        "OPTIONS sip:bob@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5062;rport;branch=z9hG4bKo1, SIP/2.0/UDP [::1]:5063;branch=z9hG4bKo2\r\nMax-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=a5\r\nTo: <sip:bob@contoso.com>\r\nCall-ID: fuzz-opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".to_string(),
        "SUBSCRIBE sip:alice@[2001:db8::1] SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::1]:5060;rport;branch=z9hG4bKsub1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@[2001:db8::1]>;tag=a6\r\nTo: <sip:alice@[2001:db8::1]:5060>\r\nCall-ID: fuzz-sub-1\r\nCSeq: 1 SUBSCRIBE\r\nEvent: vnd-microsoft-roaming-contacts\r\nContent-Length: 0\r\n\r\n".to_string(),
        format!("SERVICE sip:alice@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5062;rport;branch=z9hG4bKsvc1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=a7\r\nTo: <sip:alice@contoso.com>\r\nCall-ID: fuzz-svc-1\r\nCSeq: 1 SERVICE\r\nContent-Type: application/msrtc-category-publish+xml\r\nContent-Length: {}\r\n\r\n{xml}", xml.len()),
        "BENOTIFY sip:alice@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5062;rport;branch=z9hG4bKbn1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=a8\r\nTo: <sip:alice@contoso.com>;tag=b8\r\nCall-ID: fuzz-bn-1\r\nCSeq: 1 BENOTIFY\r\nEvent: registration\r\nContent-Length: 0\r\n\r\n".to_string(),
        "ACK sip:bob@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5062;rport;branch=z9hG4bKinv1\r\nMax-Forwards: 0\r\nFrom: <sip:alice@contoso.com>;tag=a2\r\nTo: <sip:bob@contoso.com>;tag=x\r\nCall-ID: fuzz-inv-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".to_string(),
    ];
    texts.into_iter().map(String::into_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_is_deterministic() {
        let siplb: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let (mut a, mut b) = (Mutator::new(7, siplb), Mutator::new(7, siplb));
        for _ in 0..500 {
            assert_eq!(a.next_datagram(), b.next_datagram());
        }
    }
}
