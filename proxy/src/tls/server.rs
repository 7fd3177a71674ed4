//! TLS on siplb's listeners: the certificate one `[listen] tls` entry serves, swappable while
//! connections are being accepted.
//!
//! Each TLS listener has one [`ListenerTls`]. It builds one rustls `ServerConfig` (the ring
//! provider, TLS 1.3 and 1.2, no ALPN, no client certificates) whose certificate comes from a
//! resolver over an `ArcSwap`: every handshake asks the resolver, so swapping the certificate
//! needs no new acceptor. A reload loads the files aside and swaps only when they load, so a
//! broken renewal leaves the certificate in service alone. Handshakes that start after a swap
//! get the new certificate; connections already established keep the session they have.
//!
//! The certificate is served whatever name the client asks for (or none): Lync clients and
//! gateways often connect by address, and one listener has one certificate.
//!
//! `siplb check` (config validation) reads the same files first and refuses what is missing,
//! unreadable, not PEM, expired or mismatched, naming the line and key; what is checked here
//! again is what a handshake needs, for files that change between validation and loading.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use tokio_rustls::TlsAcceptor;
use xxhash_rust::xxh3::Xxh3;

use crate::config::{Config, ConfigError, TlsListen};

/// The certificate of one `[listen] tls` entry, swappable while connections are accepted.
///
/// Cheap to clone: clones share the certificate, so a reload through one is seen by all.
#[derive(Clone)]
pub(crate) struct ListenerTls {
    current: Arc<CurrentCert>,
    acceptor: TlsAcceptor,
}

/// A chain and its key, as loaded from one pair of files.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// A hash of the chain and key bytes, to tell a renewed pair from a rewritten same one.
    fingerprint: u128,
}

/// The resolver every handshake of one listener asks: whatever pair is current.
#[derive(Debug)]
struct CurrentCert {
    loaded: ArcSwap<Loaded>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded.load().key.clone())
    }
}

impl ListenerTls {
    /// Loads chain + key; an error names the file and what is wrong with it.
    pub(crate) fn load(entry: &TlsListen) -> anyhow::Result<ListenerTls> {
        let current = Arc::new(CurrentCert {
            loaded: ArcSwap::from_pointee(load_pair(entry)?),
        });
        let config = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("the TLS provider supports neither TLS 1.3 nor TLS 1.2")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        Ok(ListenerTls {
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor to hand each new TCP connection to (serves whatever certificate is current).
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Loads the files again; on success new connections get the new certificate; on error the
    /// old one stays and the error is returned (the caller reports it like a broken config).
    /// `Ok(false)`: the files hold the pair already in service.
    pub(crate) fn reload(&self, entry: &TlsListen) -> anyhow::Result<bool> {
        let fresh = load_pair(entry)?;
        Ok(self.install(fresh))
    }

    /// Puts `fresh` in service unless it is the pair already there; whether it changed.
    fn install(&self, fresh: Loaded) -> bool {
        if fresh.fingerprint == self.current.loaded.load().fingerprint {
            return false;
        }
        self.current.loaded.store(Arc::new(fresh));
        true
    }
}

/// Reloads the certificate of every TLS listener that stays bound across a config reload, all
/// or none: every pair is loaded first, and only when all of them load are they put in service.
///
/// `cfg` is the config being applied; `bound` finds the listener already serving a
/// `[listen] tls` address (`None` for an address this reload adds: the caller loads those with
/// [`ListenerTls::load`] when it binds them). Returns the addresses whose certificate changed;
/// on error nothing changed, and each error names the entry (`listen.tls[i]`) and the file.
pub(crate) fn reload_all(
    cfg: &Config,
    bound: impl Fn(SocketAddr) -> Option<ListenerTls>,
) -> Result<Vec<SocketAddr>, Vec<ConfigError>> {
    let mut ready = Vec::new();
    let mut errors = Vec::new();
    for (i, entry) in cfg.listen.tls.iter().enumerate() {
        let Some(listener) = bound(entry.address) else {
            continue;
        };
        match load_pair(entry) {
            Ok(fresh) => ready.push((entry.address, listener, fresh)),
            Err(e) => errors.push(ConfigError::new(
                &cfg.path,
                0,
                format!("listen.tls[{i}]"),
                format!("{e:#}; the certificate in service stays"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut changed = Vec::new();
    for (address, listener, fresh) in ready {
        if listener.install(fresh) {
            tracing::info!(%address, "tls listener serves a new certificate");
            changed.push(address);
        }
    }
    Ok(changed)
}

/// Reads the chain and the key of `entry` and checks that they belong together.
fn load_pair(entry: &TlsListen) -> anyhow::Result<Loaded> {
    let chain = super::load_certs(&entry.cert)?;
    let key = super::load_key(&entry.key)?;
    let fingerprint = fingerprint(&chain, &key);
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: the private key cannot be used for TLS ({e}); use an RSA, ECDSA (P-256, \
                 P-384) or Ed25519 key in PEM",
                entry.key.display()
            )
        })?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        // ring's keys always know their public key; a provider that cannot tell is trusted,
        // as rustls itself does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            anyhow::bail!(
                "the private key in {} does not belong to the certificate in {} (their public \
                 keys differ); give the key the certificate was issued for",
                entry.key.display(),
                entry.cert.display()
            )
        }
        Err(e) => anyhow::bail!(
            "{}: the first certificate is not a readable X.509 certificate ({e})",
            entry.cert.display()
        ),
    }
    Ok(Loaded {
        key: Arc::new(key),
        fingerprint,
    })
}

/// A hash over the chain and the key, each length-prefixed.
fn fingerprint(chain: &[rustls_pki_types::CertificateDer<'_>], key: &PrivateKeyDer<'_>) -> u128 {
    let mut h = Xxh3::new();
    for part in chain.iter().map(|c| c.as_ref()).chain([key.secret_der()]) {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.digest128()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::test_dir::TestDir as Dir;

    /// A self-signed certificate for `localhost` and its key.
    struct Pair {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn pair() -> Pair {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        Pair {
            cert_pem: made.cert.pem(),
            key_pem: made.key_pair.serialize_pem(),
            der: made.cert.der().clone(),
        }
    }

    /// Writes `pair` as `lb.crt` / `lb.key` in `dir` (by rename, as a renewal tool does); the
    /// `[listen] tls` entry naming them.
    fn write(dir: &Dir, pair: &Pair) -> TlsListen {
        let entry = entry(dir);
        replace(&entry.cert, &pair.cert_pem);
        replace(&entry.key, &pair.key_pem);
        entry
    }

    fn entry(dir: &Dir) -> TlsListen {
        TlsListen {
            address: "127.0.0.1:0".parse().unwrap(),
            cert: dir.join("lb.crt"),
            key: dir.join("lb.key"),
        }
    }

    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Accepts TLS connections with `tls` and echoes each line back, until dropped.
    async fn echo_server(tls: ListenerTls) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut lines = BufReader::new(stream);
                    let mut line = String::new();
                    while matches!(lines.read_line(&mut line).await, Ok(n) if n > 0) {
                        if lines.get_mut().write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        (addr, task)
    }

    /// A client configuration that trusts only `trusted`, for the given TLS versions.
    fn client(
        trusted: &CertificateDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"sip".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// Connects to `addr` trusting only `trusted`; the handshake must succeed.
    async fn connect(addr: SocketAddr, trusted: &CertificateDer<'static>) -> TlsStream<TcpStream> {
        connect_with(addr, trusted, rustls::ALL_VERSIONS).await
    }

    async fn connect_with(
        addr: SocketAddr,
        trusted: &CertificateDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            client(trusted, versions).connect(name, tcp),
        )
        .await
        .expect("the handshake finished in time")
        .expect("the handshake succeeded")
    }

    fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        let (_, session) = stream.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server sent a certificate")
            .clone()
            .into_owned()
    }

    /// Sends a line and reads it back.
    async fn echo(stream: TlsStream<TcpStream>, line: &str) -> TlsStream<TcpStream> {
        let mut lines = BufReader::new(stream);
        lines
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut back = String::new();
        tokio::time::timeout(Duration::from_secs(10), lines.read_line(&mut back))
            .await
            .expect("the echo came back in time")
            .unwrap();
        assert_eq!(back, format!("{line}\n"));
        lines.into_inner()
    }

    #[tokio::test]
    async fn a_handshake_gets_the_certificate_of_the_files() {
        let dir = Dir::new("serve");
        let a = pair();
        let tls = ListenerTls::load(&write(&dir, &a)).unwrap();
        let (addr, _server) = echo_server(tls).await;

        for (versions, expected) in [
            (
                &[&rustls::version::TLS13][..],
                rustls::ProtocolVersion::TLSv1_3,
            ),
            (
                &[&rustls::version::TLS12][..],
                rustls::ProtocolVersion::TLSv1_2,
            ),
        ] {
            let stream = connect_with(addr, &a.der, versions).await;
            assert_eq!(served(&stream), a.der);
            let session = stream.get_ref().1;
            assert_eq!(session.protocol_version(), Some(expected));
            assert_eq!(session.alpn_protocol(), None, "siplb speaks no ALPN");
            echo(stream, "OPTIONS sip:ping SIP/2.0").await;
        }
    }

    #[tokio::test]
    async fn a_renewed_pair_is_served_to_the_next_connection_and_open_ones_go_on() {
        let dir = Dir::new("renew");
        let (a, b) = (pair(), pair());
        let entry = write(&dir, &a);
        let tls = ListenerTls::load(&entry).unwrap();
        let (addr, _server) = echo_server(tls.clone()).await;
        let before = echo(connect(addr, &a.der).await, "before").await;
        assert_eq!(served(&before), a.der);

        write(&dir, &b);
        assert!(tls.reload(&entry).unwrap(), "a new pair is a change");
        let after = connect(addr, &b.der).await;
        assert_eq!(served(&after), b.der);
        echo(after, "after").await;
        let before = echo(before, "still there").await;
        assert_eq!(
            served(&before),
            a.der,
            "an open connection keeps its session"
        );

        assert!(
            !tls.reload(&entry).unwrap(),
            "the same files again change nothing"
        );
        assert_eq!(served(&connect(addr, &b.der).await), b.der);
    }

    #[tokio::test]
    async fn a_broken_file_on_reload_keeps_the_old_certificate() {
        let dir = Dir::new("broken");
        let a = pair();
        let entry = write(&dir, &a);
        let tls = ListenerTls::load(&entry).unwrap();
        let (addr, _server) = echo_server(tls.clone()).await;

        replace(
            &entry.cert,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
        );
        let e = format!("{:#}", tls.reload(&entry).unwrap_err());
        assert!(e.contains(&entry.cert.display().to_string()), "{e}");
        assert_eq!(served(&connect(addr, &a.der).await), a.der);

        std::fs::remove_file(&entry.key).unwrap();
        replace(&entry.cert, &a.cert_pem);
        let e = format!("{:#}", tls.reload(&entry).unwrap_err());
        assert!(e.contains(&entry.key.display().to_string()), "{e}");
        assert_eq!(served(&connect(addr, &a.der).await), a.der);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = Dir::new("mismatch");
        let (a, b) = (pair(), pair());
        let entry = entry(&dir);
        replace(&entry.cert, &a.cert_pem);
        replace(&entry.key, &b.key_pem);
        let e = format!("{:#}", ListenerTls::load(&entry).err().unwrap());
        assert!(e.contains("does not belong to the certificate"), "{e}");
        assert!(e.contains(&entry.cert.display().to_string()), "{e}");
        assert!(e.contains(&entry.key.display().to_string()), "{e}");
    }

    #[test]
    fn reload_all_changes_every_listener_or_none() {
        let dir1 = Dir::new("all-1");
        let dir2 = Dir::new("all-2");
        let (a, b, c) = (pair(), pair(), pair());
        let mut one = write(&dir1, &a);
        one.address = "127.0.0.1:5061".parse().unwrap();
        let mut two = write(&dir2, &a);
        two.address = "127.0.0.1:5062".parse().unwrap();
        let tls1 = ListenerTls::load(&one).unwrap();
        let tls2 = ListenerTls::load(&two).unwrap();
        let mut cfg = crate::config::parse(
            Path::new("/etc/siplb/siplb.toml"),
            "[listen]\nudp = [\"127.0.0.1:0\"]\n[[pool]]\nname = \"a\"\n\
             servers = [{ address = \"127.0.0.1:5071\" }]\n[[route]]\npool = \"a\"\n",
        )
        .unwrap();
        cfg.listen.tls = vec![one.clone(), two.clone()];
        let bound = |addr: SocketAddr| {
            if addr == one.address {
                Some(tls1.clone())
            } else if addr == two.address {
                Some(tls2.clone())
            } else {
                None
            }
        };
        let current = |tls: &ListenerTls| tls.current.loaded.load().key.cert[0].clone();

        // The second pair is broken: neither listener changes.
        write(&dir1, &b);
        replace(&two.key, "no key here\n");
        let errors = reload_all(&cfg, bound).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "listen.tls[1]");
        assert!(errors[0].message.contains(&two.key.display().to_string()));
        assert_eq!(
            (current(&tls1), current(&tls2)),
            (a.der.clone(), a.der.clone())
        );

        write(&dir2, &c);
        assert_eq!(
            reload_all(&cfg, bound).unwrap(),
            vec![one.address, two.address]
        );
        assert_eq!(
            (current(&tls1), current(&tls2)),
            (b.der.clone(), c.der.clone())
        );
        assert_eq!(
            reload_all(&cfg, bound).unwrap(),
            vec![],
            "nothing new on disk"
        );

        // A listener this reload adds is the caller's to load.
        cfg.listen.tls.push(TlsListen {
            address: "127.0.0.1:5063".parse().unwrap(),
            cert: dir1.join("missing.crt"),
            key: dir1.join("missing.key"),
        });
        assert_eq!(reload_all(&cfg, bound).unwrap(), vec![]);
    }
}
