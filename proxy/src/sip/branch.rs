//! siplb's Via branch: `z9hG4bK-lb` and 16 lowercase hex digits of a keyed hash.
//!
//! The hash covers what identifies the client's transaction — its own branch when it carries
//! RFC 3261's magic cookie, else the fields §16.11 lists that survive into the response (From,
//! Call-ID, CSeq number, the client Via's sent-by and branch) — and the address of the next hop.
//! A retransmission, the CANCEL and the non-2xx ACK of an INVITE therefore get the INVITE's
//! branch (same client branch, same server). On a response siplb recomputes the hash from the
//! Via below its own and the sender's address: a response verifies only when it comes from the
//! server the request went to and carries the branch siplb made for it.
//!
//! The keyed hash is SipHash-1-3 with a 128-bit key — the function Rust's `HashMap` uses
//! against hash flooding. SipHash is a pseudo-random function: without the key, outputs for
//! inputs of one's choosing say nothing about the output for another input, so someone who sees
//! siplb's branches (or none) cannot make one that verifies for a transaction and server of
//! their choice, short of guessing 64 bits. xxh3 with a secret would not do: it is built for
//! speed, not to hide its key from someone who sees its outputs. SipHash over the ~40 bytes of a
//! branch costs a few dozen nanoseconds and no allocation.

use std::net::{IpAddr, SocketAddr};

/// The branch prefix of every Via siplb writes: RFC 3261's magic cookie and our mark.
pub(crate) const PREFIX: &[u8] = b"z9hG4bK-lb";

/// The RFC 3261 §8.1.1.7 magic cookie.
const COOKIE: &[u8] = b"z9hG4bK";

/// The 128-bit key siplb's branches are made with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct BranchKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for BranchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BranchKey(..)")
    }
}

impl BranchKey {
    /// The key derived from a shared secret (any length; replicas given the same secret
    /// verify each other's branches).
    pub(crate) fn from_secret(secret: &[u8]) -> Self {
        let half = |k0: u64| {
            let mut h = SipHasher::<2, 4>::new(k0, 0x7369_706c_622d_6b65);
            h.write(secret);
            h.finish()
        };
        BranchKey {
            k0: half(1),
            k1: half(2),
        }
    }

    /// A key no other process shares: from the standard library's per-process random hash
    /// keys (the operating system's randomness).
    pub(crate) fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let word = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        BranchKey {
            k0: word(0x5eed),
            k1: word(0xfeed),
        }
    }
}

/// What siplb's branch for one request is computed from.
pub(crate) enum Transaction<'a> {
    /// The client's branch, when it carries the magic cookie.
    Branch(&'a [u8]),
    /// RFC 2543-style clients: From, Call-ID, the CSeq number, the top Via's sent-by (host and
    /// port as written) and its branch if any.
    Fields {
        from: &'a [u8],
        call_id: &'a [u8],
        cseq_number: &'a [u8],
        sent_by: &'a [u8],
        branch: &'a [u8],
    },
}

impl<'a> Transaction<'a> {
    /// The transaction of a client Via whose branch is `branch`, given the other fields.
    pub(crate) fn of(
        branch: Option<&'a [u8]>,
        fields: impl FnOnce() -> (&'a [u8], &'a [u8], &'a [u8], &'a [u8]),
    ) -> Self {
        match branch {
            Some(b) if b.starts_with(COOKIE) => Transaction::Branch(b),
            _ => {
                let (from, call_id, cseq, sent_by) = fields();
                let cseq_number = cseq.split(|&c| c == b' ').next().unwrap_or_default();
                Transaction::Fields {
                    from,
                    call_id,
                    cseq_number,
                    sent_by,
                    branch: branch.unwrap_or_default(),
                }
            }
        }
    }
}

/// The hash behind siplb's branch for `tx` sent to `hop` (over UDP, or from a flow-less hop).
pub(crate) fn hash(key: &BranchKey, tx: &Transaction<'_>, hop: SocketAddr) -> u64 {
    hash_flow(key, tx, hop, None)
}

/// The hash behind siplb's branch for `tx` sent to `hop`, naming the connection `conn` its
/// answer must go back down (the client flow a request came in on, or the backend connection
/// a server's request came in on). The hash covers the connection, so a response cannot
/// redirect itself to another flow.
pub(crate) fn hash_flow(
    key: &BranchKey,
    tx: &Transaction<'_>,
    hop: SocketAddr,
    conn: Option<u64>,
) -> u64 {
    let mut feed = Feed {
        h: SipHasher::<1, 3>::new(key.k0, key.k1),
        buf: [0; 256],
        n: 0,
    };
    // Every part is length-prefixed, so no two different inputs feed the same bytes.
    let mut part = |bytes: &[u8]| {
        feed.put(&(bytes.len() as u64).to_le_bytes());
        feed.put(bytes);
    };
    match tx {
        Transaction::Branch(b) => {
            part(b"b");
            part(b);
        }
        Transaction::Fields {
            from,
            call_id,
            cseq_number,
            sent_by,
            branch,
        } => {
            part(b"f");
            for p in [from, call_id, cseq_number, sent_by, branch] {
                part(p);
            }
        }
    }
    match hop.ip() {
        IpAddr::V4(ip) => part(&ip.octets()),
        IpAddr::V6(ip) => part(&ip.octets()),
    }
    part(&hop.port().to_le_bytes());
    if let Some(conn) = conn {
        part(b"c");
        part(&conn.to_le_bytes());
    }
    feed.finish()
}

/// Gathers the parts of one input on the stack, so the hasher sees few long writes rather
/// than many short ones.
struct Feed {
    h: SipHasher<1, 3>,
    buf: [u8; 256],
    n: usize,
}

impl Feed {
    fn put(&mut self, bytes: &[u8]) {
        if self.n + bytes.len() > self.buf.len() {
            self.h.write(&self.buf[..self.n]);
            self.n = 0;
            if bytes.len() > self.buf.len() {
                self.h.write(bytes);
                return;
            }
        }
        self.buf[self.n..self.n + bytes.len()].copy_from_slice(bytes);
        self.n += bytes.len();
    }

    fn finish(mut self) -> u64 {
        self.h.write(&self.buf[..self.n]);
        self.h.finish()
    }
}

/// The 16 lowercase hex digits of `hash`, as written after [`PREFIX`].
pub(crate) fn hex(hash: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[(hash >> (60 - 4 * i)) as usize & 0xf];
    }
    out
}

/// The keyed tag that makes a flow token (RFC 5626 §5.2) unforgeable: siplb honours a Route
/// naming one of its flows only when the tag matches the connection and its transport.
pub(crate) fn flow_mac(key: &BranchKey, conn: u64, transport: &[u8]) -> u64 {
    let mut h = SipHasher::<1, 3>::new(key.k0 ^ 0x666c_6f77, key.k1);
    h.write(&conn.to_le_bytes());
    h.write(transport);
    h.finish()
}

/// Writes siplb's branch after [`PREFIX`]: the 16 hex digits of `hash`, then `.` and the
/// connection in hex when there is one (`z9hG4bK-lb0123456789abcdef.1f`).
pub(crate) fn write(out: &mut Vec<u8>, hash: u64, conn: Option<u64>) {
    out.extend_from_slice(&hex(hash));
    if let Some(conn) = conn {
        out.push(b'.');
        let digits = hex(conn);
        let first = digits.iter().position(|&d| d != b'0').unwrap_or(15);
        out.extend_from_slice(&digits[first..]);
    }
}

/// The connection a branch of siplb's names: `Some(None)` for none, `Some(Some(c))` for `c`,
/// `None` when the branch is not one siplb writes.
pub(crate) fn conn_of(branch: &[u8]) -> Option<Option<u64>> {
    let rest = branch.strip_prefix(PREFIX)?.get(16..)?;
    let Some(digits) = rest.strip_prefix(b".") else {
        return rest.is_empty().then_some(None);
    };
    if digits.is_empty() || digits.len() > 16 || digits[0] == b'0' {
        return None;
    }
    let mut conn = 0u64;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        conn = conn << 4 | u64::from(v);
    }
    Some(Some(conn))
}

/// Whether `branch` (a response's top Via branch) is the one siplb makes for `hash` and
/// `conn`.
pub(crate) fn verifies(branch: &[u8], hash: u64, conn: Option<u64>) -> bool {
    branch.len() >= PREFIX.len() + 16
        && branch.starts_with(PREFIX)
        && branch[PREFIX.len()..PREFIX.len() + 16] == hex(hash)
        && conn_of(branch) == Some(conn)
}

/// SipHash-c-d (Aumasson and Bernstein, 2012) over a byte stream, with a 128-bit key.
struct SipHasher<const C: usize, const D: usize> {
    v: [u64; 4],
    tail: u64,
    ntail: usize,
    len: usize,
}

impl<const C: usize, const D: usize> SipHasher<C, D> {
    fn new(k0: u64, k1: u64) -> Self {
        SipHasher {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    fn round(&mut self) {
        let [v0, v1, v2, v3] = &mut self.v;
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        for _ in 0..C {
            self.round();
        }
        self.v[0] ^= m;
    }

    fn write(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len();
        while self.ntail > 0 && !bytes.is_empty() {
            self.tail |= u64::from(bytes[0]) << (8 * self.ntail);
            self.ntail = (self.ntail + 1) % 8;
            bytes = &bytes[1..];
            if self.ntail == 0 {
                let m = std::mem::take(&mut self.tail);
                self.compress(m);
            }
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.compress(u64::from_le_bytes(b));
        }
        for &c in words.remainder() {
            self.tail |= u64::from(c) << (8 * self.ntail);
            self.ntail += 1;
        }
    }

    fn finish(mut self) -> u64 {
        let b = ((self.len as u64 & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v[2] ^= 0xff;
        for _ in 0..D {
            self.round();
        }
        self.v.iter().fold(0, |x, v| x ^ v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)] // std's SipHasher is SipHash-2-4: the reference for our rounds
    fn siphash_matches_the_standard_library() {
        use std::hash::Hasher;
        let data: Vec<u8> = (0..=255u8).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 63, 64, 200] {
            for split in [0, 1, 3, 8, 11] {
                let split = split.min(len);
                let mut ours = SipHasher::<2, 4>::new(0x0706050403020100, 0x0f0e0d0c0b0a0908);
                ours.write(&data[..split]);
                ours.write(&data[split..len]);
                let mut std =
                    std::hash::SipHasher::new_with_keys(0x0706050403020100, 0x0f0e0d0c0b0a0908);
                std.write(&data[..len]);
                assert_eq!(ours.finish(), std.finish(), "len {len} split {split}");
            }
        }
    }

    #[test]
    fn the_branch_depends_on_key_transaction_and_hop() {
        let k = BranchKey::from_secret(b"0123456789abcdef");
        let a: SocketAddr = "127.0.0.1:5071".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5072".parse().unwrap();
        let tx = Transaction::Branch(b"z9hG4bK1");
        let h = hash(&k, &tx, a);
        assert_eq!(h, hash(&k, &Transaction::Branch(b"z9hG4bK1"), a));
        assert_ne!(h, hash(&k, &tx, b));
        assert_ne!(h, hash(&k, &Transaction::Branch(b"z9hG4bK2"), a));
        assert_ne!(
            h,
            hash(&BranchKey::from_secret(b"0123456789abcdeF"), &tx, a)
        );
        assert_ne!(h, hash(&BranchKey::random(), &tx, a));
        // Parts longer than the gathering buffer hash like any other.
        let long = [b'z'; 600];
        let l = hash(&k, &Transaction::Branch(&long), a);
        assert_eq!(l, hash(&k, &Transaction::Branch(&long), a));
        assert_ne!(l, hash(&k, &Transaction::Branch(&long[..599]), a));
        let mut branch = PREFIX.to_vec();
        branch.extend_from_slice(&hex(h));
        assert!(verifies(&branch, h, None));
        assert!(!verifies(&branch, h ^ 1, None));
        assert!(!verifies(&branch.to_ascii_uppercase(), h, None));
        assert!(!verifies(&branch[..branch.len() - 1], h, None));
        assert_eq!(&hex(0x0123_4567_89ab_cdef), b"0123456789abcdef");
    }

    #[test]
    fn a_branch_names_its_connection_and_the_hash_covers_it() {
        let k = BranchKey::from_secret(b"0123456789abcdef");
        let a: SocketAddr = "127.0.0.1:5071".parse().unwrap();
        let tx = Transaction::Branch(b"z9hG4bK1");
        assert_eq!(hash_flow(&k, &tx, a, None), hash(&k, &tx, a));
        let h = hash_flow(&k, &tx, a, Some(0x1f));
        assert_ne!(h, hash(&k, &tx, a));
        assert_ne!(h, hash_flow(&k, &tx, a, Some(0x1e)));
        let mut branch = PREFIX.to_vec();
        write(&mut branch, h, Some(0x1f));
        assert!(
            branch.ends_with(b".1f"),
            "{}",
            String::from_utf8_lossy(&branch)
        );
        assert_eq!(conn_of(&branch), Some(Some(0x1f)));
        assert!(verifies(&branch, h, Some(0x1f)));
        assert!(!verifies(&branch, h, Some(0x1e)));
        assert!(!verifies(&branch, h, None));
        let mut max = PREFIX.to_vec();
        write(&mut max, 7, Some(u64::MAX));
        assert_eq!(conn_of(&max), Some(Some(u64::MAX)));
        // Anything else after the hash is not siplb's.
        for tail in [
            &b"."[..],
            b".01",
            b".1F",
            b".x",
            b"1",
            b".11111111111111111",
        ] {
            let mut b = PREFIX.to_vec();
            b.extend_from_slice(&hex(h));
            b.extend_from_slice(tail);
            assert_eq!(conn_of(&b), None, "{}", String::from_utf8_lossy(tail));
        }
    }
}
