//! The files of a `[listen] tls` entry: what `siplb check`, start and every reload refuse, and
//! what the summary shows.
//!
//! A certificate file must be readable PEM holding the chain (leaf first) with a readable,
//! unexpired leaf; a key file must be readable PEM holding a private key rustls can sign with,
//! and that key must be the leaf's (their public keys compare equal). Each problem is a
//! [`ConfigError`](super::ConfigError) on the `cert` or `key` key of the entry naming the file,
//! like every other mistake in the config, so a renewal gone wrong is refused with a line to
//! look at instead of failing handshakes later.

use std::path::Path;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::super::raw::RawTlsListen;
use super::x509::{self, Facts};
use super::Ctx;

/// Checks the certificate and key files of the entry `raw` (`prefix` = `listen.tls[i]`),
/// resolved to `cert` and `key`, at time `now`.
pub(super) fn check(
    ctx: &mut Ctx<'_>,
    raw: &RawTlsListen,
    prefix: &str,
    (cert, key): (&Path, &Path),
    now: SystemTime,
) {
    let chain = match chain(cert, now) {
        Ok((chain, _)) => Some(chain),
        Err(why) => {
            ctx.error(raw.cert.span(), format!("{prefix}.cert"), why);
            None
        }
    };
    let signing = match private_key(key) {
        Ok(k) => k,
        Err(why) => {
            ctx.error(raw.key.span(), format!("{prefix}.key"), why);
            return;
        }
    };
    let signing = match rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(signing)
    {
        Ok(s) => s,
        Err(e) => {
            ctx.error(
                raw.key.span(),
                format!("{prefix}.key"),
                format!(
                    "{}: the private key cannot be used for TLS ({e}); use an RSA, ECDSA \
                     (P-256, P-384) or Ed25519 key",
                    key.display()
                ),
            );
            return;
        }
    };
    let Some(chain) = chain else { return };
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        CertifiedKey::new(chain, signing).keys_match()
    {
        ctx.error(
            raw.key.span(),
            format!("{prefix}.key"),
            format!(
                "the private key in {} does not belong to the certificate in {} (their public \
                 keys differ); give the key the certificate was issued for",
                key.display(),
                cert.display()
            ),
        );
    }
}

/// The facts of the leaf certificate in `cert`, or why the file cannot be served, at `now`.
pub(crate) fn describe(cert: &Path, now: SystemTime) -> Result<Facts, String> {
    chain(cert, now).map(|(_, facts)| facts)
}

/// Every PEM block of the file at `path`; `what` names what the file should hold.
fn pem_blocks(path: &Path, what: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; give the PEM file of the {what}, absolute or relative to this \
             config file's directory",
            path.display()
        )
    })?;
    <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a readable PEM file ({e})", path.display()))
}

fn is_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// The chain in `path` and the facts of its leaf, checked readable and unexpired at `now`.
fn chain(path: &Path, now: SystemTime) -> Result<(Vec<CertificateDer<'static>>, Facts), String> {
    let blocks = pem_blocks(path, "certificate chain")?;
    let chain: Vec<CertificateDer<'static>> = blocks
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    let Some(leaf) = chain.first() else {
        return Err(if blocks.iter().any(|(kind, _)| is_key(*kind)) {
            format!(
                "{} holds a private key, not a certificate: cert names the certificate chain \
                 (-----BEGIN CERTIFICATE-----), key the private key",
                path.display()
            )
        } else {
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the chain in \
                 PEM, leaf first (a DER file converts with `openssl x509 -inform der -in FILE`)",
                path.display()
            )
        });
    };
    let facts = x509::read(leaf).map_err(|why| {
        format!(
            "{}: the first certificate is not a readable X.509 certificate ({why})",
            path.display()
        )
    })?;
    for (i, der) in chain.iter().enumerate() {
        // Only the leaf must be readable here; rustls judges the rest of the chain.
        let Ok(c) = x509::read(der) else { continue };
        if c.not_after.at < now {
            let which = if i == 0 {
                "the certificate".to_string()
            } else {
                format!("certificate {} of the chain", i + 1)
            };
            return Err(format!(
                "{which} in {} ({}) expired on {}; renew it, or point cert and key at the \
                 renewed files",
                path.display(),
                c.subject,
                c.not_after.text
            ));
        }
    }
    Ok((chain, facts))
}

/// The private key in `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let blocks = pem_blocks(path, "private key")?;
    let has_cert = blocks
        .iter()
        .any(|(kind, _)| *kind == SectionKind::Certificate);
    blocks
        .into_iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .ok_or_else(|| {
            if has_cert {
                format!(
                    "{} holds a certificate, not a private key: key names the private key \
                     (-----BEGIN PRIVATE KEY-----), cert the certificate chain",
                    path.display()
                )
            } else {
                format!(
                    "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY \
                     or EC PRIVATE KEY)",
                    path.display()
                )
            }
        })
}
