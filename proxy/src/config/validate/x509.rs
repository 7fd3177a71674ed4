//! The few facts of an X.509 certificate `siplb check` reports: subject, subject alternative
//! names and validity (RFC 5280 §4.1).
//!
//! A small DER reader over the certificate's bytes: it walks `tbsCertificate` field by field
//! and reads only what it reports, so it never needs to understand signatures or keys (rustls
//! checks those). Every length is checked against what is left, so a truncated or hostile file
//! gives an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

/// What `siplb check` shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The subject as `CN=..., O=...`, in the certificate's order.
    pub(crate) subject: String,
    /// Subject alternative names as `DNS:name`, `IP:address`, `email:...`, `URI:...`.
    pub(crate) sans: Vec<String>,
    pub(crate) not_before: Time,
    pub(crate) not_after: Time,
}

/// A validity bound: as written (RFC 3339 form) and as a point in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Time {
    /// `2036-11-27T12:00:00Z`.
    pub(crate) text: String,
    /// The same instant; before 1970 is read as 1970 (nothing siplb compares with is earlier).
    pub(crate) at: SystemTime,
}

// DER tags (X.690 §8): universal, and the context-specific ones tbsCertificate uses.
const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const T61_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const UNIVERSAL_STRING: u8 = 0x1c;
const BMP_STRING: u8 = 0x1e;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;

/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element.
struct Element<'a> {
    tag: u8,
    value: &'a [u8],
}

/// Reads DER elements one after another from a slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element (tag, length, value).
    fn next(&mut self) -> Result<Element<'a>, String> {
        let (&tag, after_tag) = self
            .rest
            .split_first()
            .ok_or("the data ends where an element was expected")?;
        if tag & 0x1f == 0x1f {
            return Err(format!(
                "tag 0x{tag:02x} uses a multi-byte form no certificate field has"
            ));
        }
        let (&first, after_len) = after_tag
            .split_first()
            .ok_or("the data ends inside an element's length")?;
        let (len, body) = match first {
            0..=0x7f => (usize::from(first), after_len),
            0x80 => return Err("an indefinite length, which DER does not allow".into()),
            0x81..=0x84 => {
                let n = usize::from(first & 0x7f);
                if after_len.len() < n {
                    return Err("the data ends inside an element's length".into());
                }
                let len = after_len[..n]
                    .iter()
                    .fold(0usize, |len, &b| (len << 8) | usize::from(b));
                (len, &after_len[n..])
            }
            _ => return Err("an element longer than 4 GiB".into()),
        };
        if body.len() < len {
            return Err(format!(
                "an element of {len} bytes where only {} are left",
                body.len()
            ));
        }
        let (value, rest) = body.split_at(len);
        self.rest = rest;
        Ok(Element { tag, value })
    }

    /// The value of the next element, which must have tag `tag`; `what` names it for errors.
    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], String> {
        let e = self.next().map_err(|why| format!("{what}: {why}"))?;
        if e.tag != tag {
            return Err(format!(
                "{what}: tag 0x{:02x} where 0x{tag:02x} belongs",
                e.tag
            ));
        }
        Ok(e.value)
    }
}

/// Reads the facts of the DER certificate `der`; the error says which field is unreadable.
pub(crate) fn read(der: &[u8]) -> Result<Facts, String> {
    let certificate = Reader::new(der).expect(SEQUENCE, "Certificate")?;
    let mut tbs = Reader::new(Reader::new(certificate).expect(SEQUENCE, "tbsCertificate")?);
    if tbs.peek_tag() == Some(VERSION) {
        tbs.next()?;
    }
    tbs.expect(INTEGER, "serialNumber")?;
    tbs.expect(SEQUENCE, "signature")?;
    tbs.expect(SEQUENCE, "issuer")?;
    let mut validity = Reader::new(tbs.expect(SEQUENCE, "validity")?);
    let not_before = time(validity.next()?).map_err(|why| format!("notBefore: {why}"))?;
    let not_after = time(validity.next()?).map_err(|why| format!("notAfter: {why}"))?;
    let subject = name(tbs.expect(SEQUENCE, "subject")?)?;
    tbs.expect(SEQUENCE, "subjectPublicKeyInfo")?;
    let mut sans = Vec::new();
    while !tbs.is_empty() {
        let e = tbs.next()?;
        if e.tag == EXTENSIONS {
            sans = alt_names(Reader::new(e.value).expect(SEQUENCE, "extensions")?)?;
        }
    }
    Ok(Facts {
        subject,
        sans,
        not_before,
        not_after,
    })
}

/// A Name (RFC 5280 §4.1.2.4) as `CN=siplb, O=Contoso`.
fn name(rdns: &[u8]) -> Result<String, String> {
    let mut parts = Vec::new();
    let mut rdns = Reader::new(rdns);
    while !rdns.is_empty() {
        let mut set = Reader::new(rdns.expect(SET, "subject")?);
        while !set.is_empty() {
            let mut pair = Reader::new(set.expect(SEQUENCE, "subject")?);
            let oid = pair.expect(OID, "subject attribute")?;
            let value = pair.next()?;
            parts.push(format!(
                "{}={}",
                attribute_name(oid),
                string(value.tag, value.value)
            ));
        }
    }
    Ok(parts.join(", "))
}

/// The short name of a subject attribute (RFC 4514 §3), or its dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        _ => dotted(oid),
    }
}

/// An OID in dotted form (X.690 §8.19).
fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut arc = 0u64;
    for &b in oid {
        arc = (arc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (arc / 40).min(2);
                arcs.push(first);
                arcs.push(arc - first * 40);
            } else {
                arcs.push(arc);
            }
            arc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A directory string as text; control characters are shown as `?`.
fn string(tag: u8, value: &[u8]) -> String {
    let text: String = match tag {
        UTF8_STRING | PRINTABLE_STRING | IA5_STRING | T61_STRING => {
            String::from_utf8_lossy(value).into_owned()
        }
        BMP_STRING => char::decode_utf16(
            value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        UNIVERSAL_STRING => value
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        _ => format!("(a value of tag 0x{tag:02x})"),
    };
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The subject alternative names among `extensions` (RFC 5280 §4.2.1.6).
fn alt_names(extensions: &[u8]) -> Result<Vec<String>, String> {
    let mut extensions = Reader::new(extensions);
    while !extensions.is_empty() {
        let mut ext = Reader::new(extensions.expect(SEQUENCE, "extension")?);
        let oid = ext.expect(OID, "extension")?;
        if ext.peek_tag() == Some(BOOLEAN) {
            ext.next()?;
        }
        let value = ext.expect(OCTET_STRING, "extension")?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        let mut names = Reader::new(Reader::new(value).expect(SEQUENCE, "subjectAltName")?);
        let mut sans = Vec::new();
        while !names.is_empty() {
            let n = names.next()?;
            let text = |v: &[u8]| string(IA5_STRING, v);
            sans.push(match n.tag {
                0x81 => format!("email:{}", text(n.value)),
                0x82 => format!("DNS:{}", text(n.value)),
                0x86 => format!("URI:{}", text(n.value)),
                0x87 => match ip(n.value) {
                    Some(addr) => format!("IP:{addr}"),
                    None => format!("IP:({} bytes)", n.value.len()),
                },
                other => format!("(a name of tag 0x{other:02x})"),
            });
        }
        return Ok(sans);
    }
    Ok(Vec::new())
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// The last second RFC 5280 §4.1.2.5 lets a certificate name, 9999-12-31T23:59:59Z ("no
/// well-defined expiration date"), in seconds since 1970.
const END_OF_9999: u64 = 253_402_300_799;

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950..=2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(e: Element<'_>) -> Result<Time, String> {
    let digits = match e.tag {
        UTC_TIME => 12,
        GENERALIZED_TIME => 14,
        other => return Err(format!("tag 0x{other:02x} is not a time")),
    };
    let v = e.value;
    if v.len() != digits + 1 || v[digits] != b'Z' || !v[..digits].iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "\"{}\" is not a UTC time of the form RFC 5280 requires",
            String::from_utf8_lossy(v)
        ));
    }
    let num = |range: std::ops::Range<usize>| {
        v[range]
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let (year, rest) = if e.tag == UTC_TIME {
        let yy = num(0..2);
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
    } else {
        (num(0..4), 4)
    };
    let text = format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        num(rest..rest + 2),
        num(rest + 2..rest + 4),
        num(rest + 4..rest + 6),
        num(rest + 6..rest + 8),
        num(rest + 8..rest + 10),
    );
    let at = if year < 1970 {
        SystemTime::UNIX_EPOCH
    } else {
        match humantime::parse_rfc3339(&text) {
            Ok(at) => at,
            // The last second of 9999 is past what the time library reads.
            Err(_) if year == 9999 => SystemTime::UNIX_EPOCH + Duration::from_secs(END_OF_9999),
            Err(why) => return Err(format!("{text}: {why}")),
        }
    };
    Ok(Time { text, at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_subject_names_and_validity() {
        let mut params = rcgen::CertificateParams::new(vec![
            "sip.contoso.com".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "siplb Front End VIP");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Contoso");
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let facts = read(&made(params)).unwrap();
        assert_eq!(facts.subject, "CN=siplb Front End VIP, O=Contoso");
        assert_eq!(
            facts.sans,
            vec!["DNS:sip.contoso.com", "IP:127.0.0.1", "IP:::1"]
        );
        assert_eq!(facts.not_before.text, "2026-01-02T00:00:00Z");
        assert_eq!(facts.not_after.text, "2049-12-31T00:00:00Z");
        assert_eq!(
            facts.not_after.at,
            humantime::parse_rfc3339("2049-12-31T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn generalized_times_and_the_end_of_9999() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(1949, 6, 1);
        params.not_after = rcgen::date_time_ymd(9999, 12, 31);
        let facts = read(&made(params)).unwrap();
        assert_eq!(facts.not_before.text, "1949-06-01T00:00:00Z");
        assert_eq!(facts.not_before.at, SystemTime::UNIX_EPOCH);
        assert_eq!(facts.not_after.text, "9999-12-31T00:00:00Z");
        assert!(facts.not_after.at > humantime::parse_rfc3339("9999-01-01T00:00:00Z").unwrap());
    }

    #[test]
    fn a_truncated_or_foreign_certificate_is_an_error_not_a_panic() {
        let der = made(rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap());
        for cut in 0..der.len() {
            assert!(read(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read(b"").unwrap_err().contains("Certificate"));
        assert!(read(&[0x30, 0x80, 0, 0])
            .unwrap_err()
            .contains("indefinite"));
        assert!(read(&[0x30, 0x85, 1, 1, 1, 1, 1])
            .unwrap_err()
            .contains("4 GiB"));
        assert!(read(&[0x04, 0x00])
            .unwrap_err()
            .contains("where 0x30 belongs"));
        // Every byte flipped in turn: an error or some facts, never a panic.
        for i in 0..der.len() {
            let mut bent = der.clone();
            bent[i] ^= 0xff;
            let _ = read(&bent);
        }
    }

    #[test]
    fn unknown_attributes_show_their_oid() {
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
        assert_eq!(attribute_name(&[0x55, 0x04, 0x05]), "2.5.4.5");
        assert_eq!(string(UTF8_STRING, b"a\nb"), "a?b");
        assert_eq!(string(BMP_STRING, &[0, b'h', 0, b'i']), "hi");
    }
}
