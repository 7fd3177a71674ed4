//! TLS settings: the backends' server side (a certificate given, or one made with a CA of its
//! own), the clients' side (trusting a CA file, checking a server name).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The backends' server configuration with the certificate chain and key of these PEM files.
pub fn server_from_files(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    server(chain, key)
}

fn server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a TLS server")?;
    Ok(Arc::new(config))
}

/// The backends' server configuration with a certificate made now for `name` and 127.0.0.1,
/// signed by a CA made now too, whose PEM is written to `ca_out` for the proxy to trust.
pub fn server_made(name: &str, ca_out: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "siplb-loadgen CA");
    let ca = ca_params.self_signed(&ca_key)?;
    std::fs::write(ca_out, ca.pem()).with_context(|| format!("writing {}", ca_out.display()))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![
        SanType::DnsName(
            name.try_into()
                .map_err(|e| anyhow!("{name} is not a DNS name: {e}"))?,
        ),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    ];
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow!("{e}"))?;
    server(vec![cert.der().clone()], key)
}

/// The clients' configuration: servers must chain to the CA of the PEM file `ca`.
pub fn client(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading the CA {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("reading the CA {}", ca.display()))?)
            .with_context(|| format!("the CA {} is not a usable certificate", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
