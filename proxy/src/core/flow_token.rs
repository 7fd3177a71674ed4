//! Flow tokens (RFC 5626 §5.2): the user part of the URI siplb writes into a `Path` or a
//! `Record-Route` for a client on a TCP or TLS flow, so that a server's later request carrying
//! that URI as its top Route goes down the same flow. The token names the connection and its
//! transport and carries a keyed tag, so it cannot be guessed or pointed at another flow:
//! `lbf-<connection in hex>-<tcp|tls>-<16 hex digits of tag>`.

use crate::config::Transport;
use crate::sip::branch::{self, BranchKey};

use super::ConnId;

const PREFIX: &[u8] = b"lbf-";

fn name(t: Transport) -> &'static [u8] {
    match t {
        Transport::Udp => b"udp",
        Transport::Tcp => b"tcp",
        Transport::Tls => b"tls",
    }
}

/// Appends the token for `conn` over `transport`.
pub(crate) fn write(out: &mut Vec<u8>, key: &BranchKey, conn: ConnId, transport: Transport) {
    out.extend_from_slice(PREFIX);
    let digits = branch::hex(conn);
    let first = digits.iter().position(|&d| d != b'0').unwrap_or(15);
    out.extend_from_slice(&digits[first..]);
    out.push(b'-');
    out.extend_from_slice(name(transport));
    out.push(b'-');
    out.extend_from_slice(&branch::hex(branch::flow_mac(key, conn, name(transport))));
}

/// Whether `user` has the shape of a flow token (made by siplb or not).
pub(crate) fn looks_like(user: &[u8]) -> bool {
    user.starts_with(PREFIX)
}

/// The connection and transport a token names, if `user` is a token siplb made.
pub(crate) fn read(key: &BranchKey, user: &[u8]) -> Option<(ConnId, Transport)> {
    let rest = user.strip_prefix(PREFIX)?;
    let mut parts = rest.split(|&c| c == b'-');
    let (conn, t, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || conn.is_empty() || conn.len() > 16 || conn[0] == b'0' {
        return None;
    }
    let conn = conn.iter().try_fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(v))
    })?;
    let transport = [Transport::Tcp, Transport::Tls]
        .into_iter()
        .find(|&x| name(x) == t)?;
    (tag == branch::hex(branch::flow_mac(key, conn, t))).then_some((conn, transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_only_with_its_key_and_unaltered() {
        let k = BranchKey::from_secret(b"0123456789abcdef");
        let mut t = Vec::new();
        write(&mut t, &k, 0x2a, Transport::Tls);
        assert!(
            t.starts_with(b"lbf-2a-tls-"),
            "{}",
            String::from_utf8_lossy(&t)
        );
        assert_eq!(read(&k, &t), Some((0x2a, Transport::Tls)));
        assert_eq!(read(&BranchKey::from_secret(b"another secret!!"), &t), None);
        let other = String::from_utf8(t.clone())
            .unwrap()
            .replacen("-2a-", "-2b-", 1);
        assert_eq!(read(&k, other.as_bytes()), None);
        let other = String::from_utf8(t.clone())
            .unwrap()
            .replacen("-tls-", "-tcp-", 1);
        assert_eq!(read(&k, other.as_bytes()), None);
        for junk in [
            &b"alice"[..],
            b"lbf-",
            b"lbf-2a-tls",
            b"lbf-02a-tls-0000000000000000",
        ] {
            assert_eq!(read(&k, junk), None);
        }
    }
}
