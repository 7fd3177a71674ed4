//! A test PKI for the TLS suites, made fresh with rcgen for each test.
//!
//! [`Pki::new`] makes a CA, a server leaf for `127.0.0.1`, `::1` and `localhost` (plus any extra
//! DNS names, e.g. a pool's FQDN) and a client leaf for mutual TLS, all signed by the CA, and
//! writes them as PEM files into a temporary directory (removed on drop) for siplb's config.
//! The same material builds the rustls configs of the test peers: a server that may demand a
//! client certificate signed by the CA, a client that trusts the CA and may present its leaf.
//! Two `Pki`s share nothing, so one's client is a stranger to the other's server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;

/// The rustls provider every test peer uses (ring, like siplb).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its key, in memory and as PEM files.
pub struct Leaf {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// The PKCS#8 private key (DER).
    key: Vec<u8>,
    /// The certificate's PEM file.
    pub cert_path: PathBuf,
    /// The key's PEM file.
    pub key_path: PathBuf,
}

impl Leaf {
    /// The private key, for a rustls config.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// A CA with a server leaf and a client leaf, written to a temporary directory.
pub struct Pki {
    dir: TempDir,
    ca: Certificate,
    ca_key: KeyPair,
    /// The CA's PEM file (for siplb's trust anchors).
    pub ca_path: PathBuf,
    /// The server leaf: `127.0.0.1`, `::1`, `localhost` and the extra names.
    pub server: Leaf,
    /// The client leaf (extended key usage: client authentication).
    pub client: Leaf,
}

impl Pki {
    /// A CA, a server leaf for `127.0.0.1`, `::1` and `localhost`, and a client leaf.
    pub fn new() -> Pki {
        Pki::with_names(&[])
    }

    /// Like [`Pki::new`], the server leaf also naming `dns_names` (e.g. `fe1.contoso.com`).
    pub fn with_names(dns_names: &[&str]) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("siplb-pki-")
            .tempdir()
            .expect("temporary directory for the PKI");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "siplb test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("self-signed CA");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca.pem()).expect("write the CA");

        let mut names = vec!["localhost".to_string()];
        names.extend(dns_names.iter().map(|n| n.to_string()));
        let server = sign_leaf(dir.path(), (&ca, &ca_key), "server", &names, Role::Server);
        let client = sign_leaf(dir.path(), (&ca, &ca_key), "client", &[], Role::Client);
        Pki {
            dir,
            ca,
            ca_key,
            ca_path,
            server,
            client,
        }
    }

    /// Another server leaf signed by this CA, for `dns_names` and the loopback addresses
    /// (files `NAME.crt` and `NAME.key`), e.g. a backend with its own identity.
    pub fn server_leaf(&self, name: &str, dns_names: &[&str]) -> Leaf {
        let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
        sign_leaf(
            self.dir.path(),
            (&self.ca, &self.ca_key),
            name,
            &names,
            Role::Server,
        )
    }

    /// The directory holding every PEM file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA as a rustls trust store.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.der().clone())
            .expect("the CA is a valid trust anchor");
        roots
    }

    /// A server config presenting the server leaf; with `require_client_cert`, a client must
    /// present a certificate signed by this CA (mutual TLS).
    pub fn server_config(&self, require_client_cert: bool) -> Arc<ServerConfig> {
        self.server_config_for(&self.server, require_client_cert)
    }

    /// Like [`Pki::server_config`], presenting `leaf` (from [`Pki::server_leaf`]).
    pub fn server_config_for(&self, leaf: &Leaf, require_client_cert: bool) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_cert {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()), provider())
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(vec![leaf.cert.clone()], leaf.key())
            .expect("server certificate and key");
        Arc::new(config)
    }

    /// A client config trusting this CA; with `present_client_cert`, it presents the client
    /// leaf when asked.
    pub fn client_config(&self, present_client_cert: bool) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots());
        let config = if present_client_cert {
            builder
                .with_client_auth_cert(vec![self.client.cert.clone()], self.client.key())
                .expect("client certificate and key")
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// Which side of a connection a leaf authenticates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A server: named by `dns` and the loopback addresses.
    Server,
    /// A client: no names.
    Client,
}

/// A leaf for `dns` (and, for a server, `127.0.0.1` and `::1`) signed by `ca`; writes
/// `NAME.crt` and `NAME.key` into `dir`.
fn sign_leaf(
    dir: &Path,
    (ca, ca_key): (&Certificate, &KeyPair),
    name: &str,
    dns: &[String],
    role: Role,
) -> Leaf {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    for dns in dns {
        let san = dns
            .as_str()
            .try_into()
            .unwrap_or_else(|e| panic!("{dns} is not a DNS name: {e}"));
        params.subject_alt_names.push(SanType::DnsName(san));
    }
    if role == Role::Server {
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let cert = params
        .signed_by(&key, ca, ca_key)
        .expect("sign a leaf with the CA");
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write a leaf certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write a leaf key");
    Leaf {
        cert: cert.der().clone(),
        key: key.serialize_der(),
        cert_path,
        key_path,
    }
}
