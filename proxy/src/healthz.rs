//! `siplb healthcheck`: asks a running siplb's `/healthz` over plain HTTP/1.1, so a container's
//! `HEALTHCHECK` needs nothing but the siplb binary (no curl in the image).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// The URL of `/healthz` on an ops endpoint listening on `listen`: an unspecified address
/// (`0.0.0.0`, `::`) is asked on the loopback address of its family.
pub(crate) fn url_of(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// GETs `url` (`http://HOST:PORT/PATH`) within `timeout` for the connect and again for the
/// answer; the status code and the first line of the body.
pub(crate) fn ask(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs are asked (the ops endpoint's)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    if authority.is_empty() {
        bail!("{url}: no host");
    }
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: not HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("{url}: {authority} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: siplb-healthcheck\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    // The answer is a few bytes; a bound keeps a wrong endpoint from feeding us forever.
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from {addr}"))?;
    parse(&answer).ok_or_else(|| anyhow!("{addr} did not answer HTTP"))
}

/// The status code and the body's first line of an HTTP/1.x answer.
fn parse(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let mut status = text.lines().next()?.split(' ');
    if !status.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = status.next()?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    Some((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        assert_eq!(
            url_of("0.0.0.0:9060".parse().unwrap()),
            "http://127.0.0.1:9060/healthz"
        );
        assert_eq!(
            url_of("[::]:9060".parse().unwrap()),
            "http://[::1]:9060/healthz"
        );
        assert_eq!(
            url_of("192.0.2.1:9060".parse().unwrap()),
            "http://192.0.2.1:9060/healthz"
        );
    }

    #[test]
    fn answers_are_read_for_their_code_and_first_body_line() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"),
            Some((200, "ok".into()))
        );
        assert_eq!(
            parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready: x\nmore"),
            Some((503, "not ready: x".into()))
        );
        assert_eq!(parse(b"SIP/2.0 200 OK\r\n\r\n"), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn a_url_that_is_not_plain_http_is_refused_with_a_reason() {
        let e = ask("https://127.0.0.1:1/healthz", Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("only http://"), "{e}");
        let e = ask("http:///healthz", Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("no host"), "{e}");
    }
}
