//! OPTIONS over TCP and TLS, and `tls-connect`, against in-process answerers: a SIP answerer
//! on a tokio TCP listener, the same behind a rustls acceptor with rcgen certificates (with and
//! without a demand for a client certificate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::stream::{options, tls_connect};
use super::*;
use crate::server::TlsFailure;

const TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that signs server and client certificates.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key.
    fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        Arc::new(roots)
    }
}

/// What the answerer sends to each OPTIONS.
#[derive(Clone, Copy)]
enum Answer {
    Code(u16),
    /// A `100 Trying`, a keep-alive and a body-carrying answer for another Call-ID, then 200.
    Chatty,
}

/// Reads SIP requests off `stream` and answers each as `answer` says, echoing the Call-ID.
async fn answer_requests<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: Answer) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let call_id = head
                .lines()
                .find(|l| l.starts_with("Call-ID:"))
                .unwrap_or_default()
                .to_string();
            let reply = match answer {
                Answer::Code(code) => {
                    format!("SIP/2.0 {code} Whatever\r\n{call_id}\r\nContent-Length: 0\r\n\r\n")
                }
                Answer::Chatty => format!(
                    "SIP/2.0 100 Trying\r\n{call_id}\r\nContent-Length: 0\r\n\r\n\r\n\r\n\
                     SIP/2.0 503 Not this one\r\nCall-ID: other\r\nContent-Length: 9\r\n\r\n\r\n\r\n\r\nxyz\
                     SIP/2.0 200 OK\r\n{call_id}\r\nl: 3\r\n\r\nabc"
                ),
            };
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A plain TCP SIP answerer.
async fn tcp_answerer(answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_requests(stream, answer));
        }
    });
    addr
}

/// A TLS SIP answerer serving `cert`; with `clients`, it demands a client certificate issued
/// by that CA.
async fn tls_answerer(
    cert: (CertificateDer<'static>, PrivateKeyDer<'static>),
    clients: Option<&Ca>,
    answer: Answer,
) -> SocketAddr {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(ca.roots(), provider())
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(vec![cert.0], cert.1).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    answer_requests(tls, answer).await;
                }
            });
        }
    });
    addr
}

/// siplb's side: trusting `ca`, verifying `name`, presenting `client` when given.
fn client(
    ca: &Ca,
    name: &str,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> TlsClient {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    TlsClient {
        connector: TlsConnector::from(Arc::new(config)),
        name: ServerName::try_from(name.to_string()).unwrap(),
    }
}

fn target(addr: SocketAddr, transport: Transport, tls: Option<TlsClient>) -> Target {
    Target {
        addr,
        transport,
        tls,
    }
}

fn alive_with(outcome: Outcome, want: Option<u16>) {
    match outcome {
        Outcome::Alive { code, .. } => assert_eq!(code, want),
        other => panic!("expected alive with {want:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn options_over_tcp_reads_its_final_answer() {
    let addr = tcp_answerer(Answer::Chatty).await;
    let t = target(addr, Transport::Tcp, None);
    for seq in 1..=3 {
        alive_with(options(&t, TIMEOUT, seq).await, Some(200));
    }
    let addr = tcp_answerer(Answer::Code(404)).await;
    alive_with(
        options(&target(addr, Transport::Tcp, None), TIMEOUT, 1).await,
        Some(404),
    );
}

#[tokio::test]
async fn options_over_tcp_fails_on_503_refused_silence_and_close() {
    let busy = tcp_answerer(Answer::Code(503)).await;
    assert_eq!(
        options(&target(busy, Transport::Tcp, None), TIMEOUT, 1).await,
        Outcome::Failed(Failure::Reply(503))
    );

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = l.local_addr().unwrap();
    drop(l);
    assert_eq!(
        options(&target(closed, Transport::Tcp, None), TIMEOUT, 1).await,
        Outcome::Failed(Failure::Refused)
    );

    // Accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    assert_eq!(
        options(
            &target(silent_addr, Transport::Tcp, None),
            Duration::from_millis(200),
            1
        )
        .await,
        Outcome::Failed(Failure::Timeout)
    );
    hold.abort();

    // Accepts, reads the request and hangs up.
    let hangup = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hangup_addr = hangup.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = hangup.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
        }
    });
    assert_eq!(
        options(&target(hangup_addr, Transport::Tcp, None), TIMEOUT, 1).await,
        Outcome::Failed(Failure::Closed)
    );
}

#[tokio::test]
async fn options_over_tls_verifies_the_server_then_reads_the_answer() {
    let ca = Ca::new("siplb test CA");
    let fe1 = tls_answerer(ca.issue(&["fe1.contoso.com"]), None, Answer::Chatty).await;
    let good = client(&ca, "fe1.contoso.com", None);
    alive_with(
        options(&target(fe1, Transport::Tls, Some(good.clone())), TIMEOUT, 1).await,
        Some(200),
    );

    let busy = tls_answerer(ca.issue(&["fe1.contoso.com"]), None, Answer::Code(503)).await;
    assert_eq!(
        options(
            &target(busy, Transport::Tls, Some(good.clone())),
            TIMEOUT,
            1
        )
        .await,
        Outcome::Failed(Failure::Reply(503))
    );

    let other_ca = Ca::new("someone else's CA");
    let wrong_ca = client(&other_ca, "fe1.contoso.com", None);
    assert_eq!(
        options(&target(fe1, Transport::Tls, Some(wrong_ca)), TIMEOUT, 1).await,
        Outcome::Failed(Failure::Tls(TlsFailure::UnknownIssuer))
    );

    let wrong_name = client(&ca, "fe2.contoso.com", None);
    assert_eq!(
        options(&target(fe1, Transport::Tls, Some(wrong_name)), TIMEOUT, 1).await,
        Outcome::Failed(Failure::Tls(TlsFailure::NameMismatch))
    );

    assert_eq!(
        options(&target(fe1, Transport::Tls, None), TIMEOUT, 1).await,
        Outcome::Failed(Failure::Tls(TlsFailure::NoSettings))
    );
}

#[tokio::test]
async fn tls_connect_is_alive_with_a_verified_handshake() {
    let ca = Ca::new("siplb test CA");
    let ip = tls_answerer(ca.issue(&["127.0.0.1"]), None, Answer::Code(200)).await;
    // The default server name is the server's IP, verified against the certificate's IP SAN.
    let by_ip = client(&ca, "127.0.0.1", None);
    alive_with(
        tls_connect(&target(ip, Transport::Tls, Some(by_ip)), TIMEOUT).await,
        None,
    );

    let other_ca = Ca::new("someone else's CA");
    let wrong_ca = client(&other_ca, "127.0.0.1", None);
    assert_eq!(
        tls_connect(&target(ip, Transport::Tls, Some(wrong_ca)), TIMEOUT).await,
        Outcome::Failed(Failure::Tls(TlsFailure::UnknownIssuer))
    );
}

#[tokio::test]
async fn a_handshake_against_a_plain_tcp_port_is_a_tls_failure() {
    let ca = Ca::new("siplb test CA");
    // A SIP server over plain TCP: it takes the ClientHello for a broken request and answers it.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                if s.read(&mut buf).await.is_ok() {
                    let _ = s
                        .write_all(b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    let t = target(addr, Transport::Tls, Some(client(&ca, "127.0.0.1", None)));
    assert_eq!(
        tls_connect(&t, TIMEOUT).await,
        Outcome::Failed(Failure::Tls(TlsFailure::Handshake))
    );
    assert_eq!(
        options(&t, TIMEOUT, 1).await,
        Outcome::Failed(Failure::Tls(TlsFailure::Handshake))
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = l.local_addr().unwrap();
    drop(l);
    let t = target(closed, Transport::Tls, Some(client(&ca, "127.0.0.1", None)));
    assert_eq!(
        tls_connect(&t, TIMEOUT).await,
        Outcome::Failed(Failure::Refused)
    );
}

#[tokio::test]
async fn mtls_needs_siplbs_client_certificate() {
    let servers_ca = Ca::new("servers CA");
    let clients_ca = Ca::new("clients CA");
    let fe = tls_answerer(
        servers_ca.issue(&["fe1.contoso.com"]),
        Some(&clients_ca),
        Answer::Code(200),
    )
    .await;

    let with_cert = client(
        &servers_ca,
        "fe1.contoso.com",
        Some(clients_ca.issue(&["lb.contoso.com"])),
    );
    let t = target(fe, Transport::Tls, Some(with_cert));
    alive_with(tls_connect(&t, TIMEOUT).await, None);
    alive_with(options(&t, TIMEOUT, 1).await, Some(200));

    let without = client(&servers_ca, "fe1.contoso.com", None);
    let t = target(fe, Transport::Tls, Some(without));
    assert_eq!(
        tls_connect(&t, TIMEOUT).await,
        Outcome::Failed(Failure::Tls(TlsFailure::ClientCertificate))
    );
    assert_eq!(
        options(&t, TIMEOUT, 1).await,
        Outcome::Failed(Failure::Tls(TlsFailure::ClientCertificate))
    );

    // A certificate from a CA the server does not trust is refused the same way.
    let stranger = Ca::new("stranger CA");
    let t = target(
        fe,
        Transport::Tls,
        Some(client(
            &servers_ca,
            "fe1.contoso.com",
            Some(stranger.issue(&["lb.contoso.com"])),
        )),
    );
    assert_eq!(
        tls_connect(&t, TIMEOUT).await,
        Outcome::Failed(Failure::Tls(TlsFailure::ClientCertificate))
    );
}

#[tokio::test]
async fn probe_loop_probes_over_the_servers_transport() {
    let addr = tcp_answerer(Answer::Code(503)).await;
    let settings = ProbeSettings {
        kind: ProbeKind::Options,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        confirm: 0,
        first_after: Duration::ZERO,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(probe_loop(
        target(addr, Transport::Tcp, None),
        settings,
        ProbeNow::default(),
        move |o| {
            let _ = tx.send(o);
        },
    ));
    assert_eq!(rx.recv().await, Some(Outcome::Failed(Failure::Reply(503))));
    task.abort();
}
