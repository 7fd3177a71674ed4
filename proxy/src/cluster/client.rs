//! A GET or a bodiless POST over plain HTTP/1.1 on tokio, written out by hand as `siplb
//! healthcheck`'s is: the exchange asks one small JSON document of a known endpoint, and a
//! forwarded operator command is one POST with a few headers, which need no HTTP client crate.
//! The caller bounds the time; this bounds the size.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read; a view of thousands of pools fits many times over.
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

/// Why a request brought no answer to look at.
#[derive(Debug)]
pub(super) enum GetError {
    /// No connection, or it broke before the answer was complete.
    Unreachable(std::io::Error),
    /// What came back is not an HTTP/1.x answer.
    NotHttp,
}

/// GETs `path` from `authority` (`HOST:PORT`) with `Authorization: Bearer <token>`; the status
/// code and the body.
pub(super) async fn get(
    authority: &str,
    path: &str,
    token: &str,
) -> Result<(u16, Vec<u8>), GetError> {
    request("GET", authority, path, token, &[]).await
}

/// POSTs to `path` at `authority` with no body, `Authorization: Bearer <token>` and the extra
/// `headers` (names and values the caller made: no CR or LF in them); the status code and the
/// body.
pub(super) async fn post(
    authority: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), GetError> {
    request("POST", authority, path, token, headers).await
}

async fn request(
    method: &str,
    authority: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), GetError> {
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(GetError::Unreachable)?;
    let mut extra = String::new();
    for (name, value) in headers {
        extra.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        extra.push_str("Content-Length: 0\r\n");
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         {extra}Accept: application/json\r\nUser-Agent: siplb-cluster\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(GetError::Unreachable)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(GetError::Unreachable)?;
    parse(&answer).ok_or(GetError::NotHttp)
}

/// The status code and body of a complete HTTP/1.x answer (`Content-Length`, chunked, or
/// until the connection closed); `None` when it is not one.
fn parse(answer: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = memchr::memmem::find(answer, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let body = &answer[end + 4..];
    let mut lines = head.split("\r\n");
    let mut status = lines.next()?.split(' ');
    if !status.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = status.next()?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        return dechunk(body).map(|b| (code, b));
    }
    match length {
        Some(n) => body.get(..n).map(|b| (code, b.to_vec())),
        None => Some((code, body.to_vec())),
    }
}

/// The body of a chunked transfer (RFC 9112 §7.1), or `None` when it is cut short or bent.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = memchr::memmem::find(rest, b"\r\n")?;
        let size = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = size.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_a_length_chunks_or_neither_are_read() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
            Some((200, b"{}".to_vec()))
        );
        assert_eq!(
            parse(b"HTTP/1.1 401 Unauthorized\r\n\r\nno"),
            Some((401, b"no".to_vec()))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2;x=y\r\n\"}\r\n0\r\n\r\n"),
            Some((200, b"{\"a\"}".to_vec()))
        );
    }

    #[test]
    fn what_is_cut_short_or_not_http_is_refused() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}"),
            None
        );
        assert_eq!(parse(b"SIP/2.0 200 OK\r\n\r\n"), None);
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{}"),
            None
        );
        assert_eq!(parse(b"HTTP/1.1 abc OK\r\n\r\n"), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        // Bind then drop: nothing listens there any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let r = get(&addr.to_string(), "/cluster/view", "t").await;
        assert!(matches!(r, Err(GetError::Unreachable(_))), "{r:?}");
    }
}
