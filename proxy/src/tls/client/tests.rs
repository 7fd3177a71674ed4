//! `ServerTls` from a parsed config with rcgen certificates on disk: which servers get a
//! connector and under which name, real handshakes against an in-process rustls server that
//! demands a client certificate, and fingerprints that follow the files' contents.

use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::test_dir::TestDir as Dir;

/// A CA that signs certificates.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for `names` and its key pair.
    fn issue(&self, names: &[&str]) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (cert, key)
    }
}

/// The config `text`, as read from `siplb.toml` in `dir`; it must be valid.
fn parse_in(dir: &Dir, text: &str) -> Config {
    crate::config::parse(&dir.join("siplb.toml"), text).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors.iter().map(|e| format!("{e}\n")).collect::<String>()
        )
    })
}

/// A Lync-like deployment: pool `fe` of TLS servers verified against `ca.pem`, presenting
/// `lb.crt`; pool `udp` of a plain UDP server. `fe1` has its own name; `fe2` the pool's.
fn deployment(dir: &Dir, fe1: &str, fe2: &str) -> Config {
    parse_in(
        dir,
        &format!(
            r#"[listen]
udp = ["127.0.0.1:5060"]

[[pool]]
name = "fe"
tls = {{ ca = "ca.pem", server_name = "fe-dc1.contoso.com", cert = "lb.crt", key = "lb.key" }}
servers = [
  {{ address = "{fe1}", transport = "tls", id = "fe1", server_name = "fe1.contoso.com" }},
  {{ address = "{fe2}", transport = "tls", id = "fe2" }},
]

[[pool]]
name = "plain"
servers = [{{ address = "127.0.0.1:5090", id = "udp1" }}]

[[pool]]
name = "by-ip"
tls = {{ ca = "ca.pem" }}
servers = [{{ address = "127.0.0.1:5095", transport = "tls", id = "ip1" }}]

[[route]]
pool = "fe"
"#
        ),
    )
}

/// Writes the CA and siplb's client certificate (both from `ca`) into `dir`.
fn write_files(dir: &Dir, ca: &Ca) {
    let (lb, lb_key) = ca.issue(&["lb.contoso.com"]);
    dir.write("ca.pem", ca.cert.pem());
    dir.write("lb.crt", lb.pem());
    dir.write("lb.key", lb_key.serialize_pem());
}

/// A TLS server for `names` (issued by `ca`) that demands a client certificate from `ca`, and
/// answers each connection's first line with "ok\n".
async fn mtls_server(ca: &Ca, names: &[&str]) -> std::net::SocketAddr {
    let (cert, key) = ca.issue(names);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::super::provider())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(super::super::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 64];
                    if tls.read(&mut buf).await.is_ok() {
                        let _ = tls.write_all(b"ok\n").await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    addr
}

/// Connects with `connector` under `name`, says hello and reads the answer.
async fn exchange(
    addr: std::net::SocketAddr,
    (connector, name): (TlsConnector, ServerName<'static>),
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"hello\n").await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[test]
fn each_tls_server_gets_a_connector_and_the_name_to_verify() {
    let dir = Dir::new("tls-client");
    write_files(&dir, &Ca::new());
    let cfg = deployment(&dir, "127.0.0.1:5061", "127.0.0.1:5062");
    let tls = ServerTls::build(&cfg).unwrap();
    let name = |id: &str| tls.connector(id).map(|(_, n)| n.to_str().into_owned());
    assert_eq!(name("fe1").as_deref(), Some("fe1.contoso.com"));
    assert_eq!(name("fe2").as_deref(), Some("fe-dc1.contoso.com"));
    assert_eq!(name("ip1").as_deref(), Some("127.0.0.1"));
    assert!(matches!(
        tls.connector("ip1").map(|(_, n)| n),
        Some(ServerName::IpAddress(_))
    ));
    assert_eq!(name("udp1"), None);
    assert_eq!(name("nobody"), None);
}

#[tokio::test]
async fn connectors_verify_the_server_and_present_the_client_certificate() {
    let dir = Dir::new("tls-client");
    let ca = Ca::new();
    write_files(&dir, &ca);
    let fe1 = mtls_server(&ca, &["fe1.contoso.com"]).await;
    // fe2 serves a certificate for fe1's name only: verified under the pool's name, it fails.
    let fe2 = mtls_server(&ca, &["fe1.contoso.com"]).await;
    let cfg = deployment(&dir, &fe1.to_string(), &fe2.to_string());
    let tls = ServerTls::build(&cfg).unwrap();

    assert_eq!(
        exchange(fe1, tls.connector("fe1").unwrap()).await.unwrap(),
        "ok\n"
    );
    let refused = exchange(fe2, tls.connector("fe2").unwrap())
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("not valid for name \"fe-dc1.contoso.com\""),
        "{refused}"
    );

    // The pool by-ip presents no client certificate: the server refuses it (after the client's
    // side of a TLS 1.3 handshake, so the refusal shows on reading).
    let (connector, _) = tls.connector("ip1").unwrap();
    let fe1_by_name = (connector, ServerName::try_from("fe1.contoso.com").unwrap());
    let refused = exchange(fe1, fe1_by_name).await.unwrap_err();
    assert!(
        format!("{refused:?}").contains("CertificateRequired"),
        "{refused}"
    );
}

#[test]
fn fingerprints_follow_the_files_and_names() {
    let dir = Dir::new("tls-client");
    let ca = Ca::new();
    write_files(&dir, &ca);
    let cfg = deployment(&dir, "127.0.0.1:5061", "127.0.0.1:5062");
    let first = ServerTls::build(&cfg).unwrap();
    let again = ServerTls::build(&cfg).unwrap();
    for id in ["fe1", "fe2", "ip1"] {
        assert!(first.fingerprint(id).is_some());
        assert_eq!(first.fingerprint(id), again.fingerprint(id), "{id}");
    }
    assert_ne!(first.fingerprint("fe1"), first.fingerprint("fe2"));
    assert_eq!(first.fingerprint("udp1"), None);

    // A renewed client certificate changes the fe pool's servers, not by-ip's.
    let (lb, lb_key) = ca.issue(&["lb.contoso.com"]);
    dir.write("lb.crt", lb.pem());
    dir.write("lb.key", lb_key.serialize_pem());
    let renewed = ServerTls::build(&cfg).unwrap();
    assert_ne!(first.fingerprint("fe1"), renewed.fingerprint("fe1"));
    assert_eq!(first.fingerprint("ip1"), renewed.fingerprint("ip1"));
}

#[test]
fn a_file_gone_since_validation_is_an_error_naming_pool_and_file() {
    let dir = Dir::new("tls-client");
    write_files(&dir, &Ca::new());
    let cfg = deployment(&dir, "127.0.0.1:5061", "127.0.0.1:5062");
    std::fs::remove_file(dir.0.join("lb.key")).unwrap();
    let e = format!("{:#}", ServerTls::build(&cfg).unwrap_err());
    assert!(e.contains("pool fe") && e.contains("lb.key"), "{e}");
}
