//! Probes over a connection: SIP OPTIONS over TCP or TLS, and the `tls-connect` handshake.
//!
//! Each probe opens its own connection and closes it when done (see
//! [`probe_loop`](super::probe_loop) for why). Everything a probe does — connect, handshake,
//! request, answer — fits in the probe's one `timeout`.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{answer_code, failure_of, outcome_of_code, Probe, Target, TlsClient, Transport};
use crate::server::{Failure, Outcome, TlsFailure};

/// The largest answer a probe reads (header block and body); a server that sends more is
/// answering something else.
const MAX_ANSWER: usize = 64 * 1024;

/// SIP OPTIONS over a new TCP (or TLS) connection to the target: the final answer's code
/// decides, as over UDP. The RTT runs from the connect to the answer.
pub(crate) async fn options(target: &Target, timeout: Duration, seq: u64) -> Outcome {
    let start = Instant::now();
    let exchange = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| failure_of(&e))?;
        let local = tcp.local_addr().map_err(|e| failure_of(&e))?;
        let probe = Probe {
            transport: target.transport,
            target: target.addr,
            local,
            tag: u64::from(local.port()) << 32 | u64::from(std::process::id()),
            seq,
        };
        match target.transport {
            Transport::Tls => {
                let mut tls = handshake(target, tcp).await?;
                ask(&mut tls, &probe).await
            }
            _ => {
                let mut tcp = tcp;
                ask(&mut tcp, &probe).await
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Outcome::Failed(Failure::Timeout),
        Ok(Err(failure)) => Outcome::Failed(failure),
        Ok(Ok(code)) => outcome_of_code(code, start.elapsed()),
    }
}

/// A TCP connect and a complete TLS handshake with the server's certificate verified. The RTT
/// runs from the connect to the end of the handshake.
///
/// With TLS 1.3 a server that refuses siplb's client certificate says so only after the
/// client's side of the handshake is complete, in an alert. So the probe then closes its side
/// (close_notify) and reads what the server sends until it closes too: an alert is a failure,
/// the server's close (or silence until the timeout) is not.
pub(crate) async fn tls_connect(target: &Target, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let connected = tokio::time::timeout_at(deadline, async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| failure_of(&e))?;
        handshake(target, tcp).await
    })
    .await;
    let mut tls = match connected {
        Err(_) => return Outcome::Failed(Failure::Timeout),
        Ok(Err(failure)) => return Outcome::Failed(failure),
        Ok(Ok(tls)) => tls,
    };
    let rtt = start.elapsed();
    let alive = Outcome::Alive { rtt, code: None };
    let closing = async {
        let _ = tls.shutdown().await;
        let mut sink = [0u8; 512];
        loop {
            match tls.read(&mut sink).await {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(e) => return tls_error(&e),
            }
        }
    };
    match tokio::time::timeout_at(deadline, closing).await {
        Ok(Some(why)) => Outcome::Failed(Failure::Tls(why)),
        Ok(None) | Err(_) => alive,
    }
}

/// The TLS handshake over `tcp`, verifying the server with the target's settings.
async fn handshake(
    target: &Target,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let Some(TlsClient { connector, name }) = &target.tls else {
        return Err(Failure::Tls(TlsFailure::NoSettings));
    };
    connector.connect(name.clone(), tcp).await.map_err(|e| {
        // Whatever ends a handshake — an alert, a certificate refused, a peer that answers
        // something other than TLS, a connection closed — is a TLS failure.
        let why = tls_error(&e).unwrap_or(TlsFailure::Handshake);
        tracing::debug!(server = %target.addr, error = %e, "probe: TLS handshake failed");
        Failure::Tls(why)
    })
}

/// Why TLS failed, when `e` carries a rustls error.
fn tls_error(e: &io::Error) -> Option<TlsFailure> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    let inner = e.get_ref()?.downcast_ref::<Error>()?;
    Some(match inner {
        Error::InvalidCertificate(cert) => match cert {
            Cert::UnknownIssuer | Cert::BadSignature => TlsFailure::UnknownIssuer,
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. } => TlsFailure::Expired,
            _ => TlsFailure::BadCertificate,
        },
        Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        ) => TlsFailure::ClientCertificate,
        _ => TlsFailure::Handshake,
    })
}

/// Sends the probe's OPTIONS down `stream` and reads until its final answer; the code.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    probe: &Probe,
) -> Result<u16, Failure> {
    let call_id = probe.call_id();
    stream
        .write_all(probe.request(&call_id).as_bytes())
        .await
        .map_err(|e| io_failure(&e))?;
    stream.flush().await.map_err(|e| io_failure(&e))?;
    let mut reader = Framer::default();
    loop {
        let Some(message) = reader.next(stream).await? else {
            return Err(Failure::Closed);
        };
        // A provisional answer, an answer to something else, or a request: not ours, read on.
        if let Some(code) = answer_code(&message, &call_id) {
            if code >= 200 {
                return Ok(code);
            }
        }
    }
}

/// A read or write error after the connection was set up: a TLS alert (the server refusing
/// siplb's client certificate), else what the socket said.
fn io_failure(e: &io::Error) -> Failure {
    match tls_error(e) {
        Some(why) => Failure::Tls(why),
        None if e.kind() == io::ErrorKind::UnexpectedEof => Failure::Closed,
        None => failure_of(e),
    }
}

/// Splits a byte stream into SIP messages by their Content-Length (RFC 3261 §18.3), skipping
/// the CRLFs of keep-alives between them.
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// The next whole message, or `None` when the peer closed the connection first.
    async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Option<Vec<u8>>, Failure> {
        loop {
            if let Some(message) = self.take()? {
                return Ok(Some(message));
            }
            if self.buf.len() >= MAX_ANSWER {
                return Err(Failure::Garbled);
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| io_failure(&e))?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Takes one complete message off the front of the buffer, if there is one.
    fn take(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        let blank = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        self.buf.drain(..blank);
        let Some(head_end) = find(&self.buf, b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = &self.buf[..head_end];
        let body = content_length(head)?;
        let total = head_end + 4 + body;
        if total > MAX_ANSWER {
            return Err(Failure::Garbled);
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let rest = self.buf.split_off(total);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

/// The position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The Content-Length of a header block (`l` is its compact form); 0 when absent.
fn content_length(head: &[u8]) -> Result<usize, Failure> {
    let text = std::str::from_utf8(head).map_err(|_| Failure::Garbled)?;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            return value.trim().parse().map_err(|_| Failure::Garbled);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_splits_by_content_length_and_skips_keepalives() {
        let mut f = Framer::default();
        f.buf.extend_from_slice(
            b"\r\n\r\nSIP/2.0 100 Trying\r\nl: 0\r\n\r\nSIP/2.0 200 OK\r\nContent-Length: 4\r\n\r\nabcdSIP/2.0 2",
        );
        let first = f.take().unwrap().unwrap();
        assert!(first.starts_with(b"SIP/2.0 100"));
        let second = f.take().unwrap().unwrap();
        assert!(second.starts_with(b"SIP/2.0 200") && second.ends_with(b"abcd"));
        assert_eq!(f.take().unwrap(), None);
        assert_eq!(f.buf, b"SIP/2.0 2");
    }

    #[test]
    fn framer_refuses_what_it_cannot_frame() {
        let mut f = Framer::default();
        f.buf
            .extend_from_slice(b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n");
        assert_eq!(f.take(), Err(Failure::Garbled));
        let mut f = Framer::default();
        f.buf
            .extend_from_slice(b"SIP/2.0 200 OK\r\nContent-Length: 999999\r\n\r\n");
        assert_eq!(f.take(), Err(Failure::Garbled));
    }
}
