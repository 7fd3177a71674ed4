//! Certificate and key files, read and checked the same way wherever the config names them: a
//! `[listen] tls` entry's `cert`/`key`, a pool's client `tls = { cert, key }` and its `ca`. What
//! `siplb check`, start and every reload refuse, and what the summary shows.
//!
//! A certificate file must be readable PEM holding the chain (leaf first) with a readable,
//! unexpired leaf; a key file must be readable PEM holding a private key rustls can sign with,
//! and that key must be the leaf's (their public keys compare equal). Each problem is a
//! [`ConfigError`](super::ConfigError) on the `cert` or `key` key naming the file, like every
//! other mistake in the config, so a renewal gone wrong is refused with a line to look at
//! instead of failing handshakes later.

use std::path::Path;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::super::raw::Str;
use super::x509::{self, Facts};
use super::Ctx;

/// One file of a certificate/key pair as the config names it: the resolved `path`, the `raw`
/// value (for its line) and the dotted `key` an error goes on.
pub(super) struct PairFile<'a> {
    pub(super) path: &'a Path,
    pub(super) raw: &'a Str,
    pub(super) key: String,
}

/// Checks a certificate chain file and its private key file at time `now`: each must be
/// readable, the leaf unexpired, and the key the leaf's.
pub(super) fn check(ctx: &mut Ctx<'_>, cert: PairFile<'_>, key: PairFile<'_>, now: SystemTime) {
    let chain = match chain(cert.path, now) {
        Ok((chain, _)) => Some(chain),
        Err(why) => {
            ctx.error(cert.raw.span(), cert.key, why);
            None
        }
    };
    let signing = match private_key(key.path) {
        Ok(k) => k,
        Err(why) => {
            ctx.error(key.raw.span(), key.key, why);
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
                key.raw.span(),
                key.key,
                format!(
                    "{}: the private key cannot be used for TLS ({e}); use an RSA, ECDSA \
                     (P-256, P-384) or Ed25519 key",
                    key.path.display()
                ),
            );
            return;
        }
    };
    let Some(chain) = chain else { return };
    let mismatch = match CertifiedKey::new(chain, signing).keys_match() {
        // Unknown: the signing key cannot tell its public key; rustls checks at handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => return,
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => format!(
            "the private key in {} does not belong to the certificate in {} (their public \
             keys differ: the key does not match it); give the key the certificate was issued \
             for",
            key.path.display(),
            cert.path.display()
        ),
        Err(e) => format!("{}: {e}", cert.path.display()),
    };
    ctx.error(key.raw.span(), key.key, mismatch);
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

/// Every PEM certificate in `path`, in order, at least one; `what` names what the file should
/// hold (`certificate chain`, `CA certificate`).
pub(super) fn certificates(
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let blocks = pem_blocks(path, what)?;
    let certs: Vec<CertificateDer<'static>> = blocks
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if !certs.is_empty() {
        return Ok(certs);
    }
    Err(if blocks.iter().any(|(kind, _)| is_key(*kind)) {
        format!(
            "{} holds a private key, not a certificate: it has no PEM certificate \
             (-----BEGIN CERTIFICATE-----); give the {what} here (a key goes under key)",
            path.display()
        )
    } else {
        format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the {what} in PEM \
             (a DER file converts with `openssl x509 -inform der -in FILE`)",
            path.display()
        )
    })
}

/// The chain in `path` and the facts of its leaf, checked readable and unexpired at `now`.
fn chain(path: &Path, now: SystemTime) -> Result<(Vec<CertificateDer<'static>>, Facts), String> {
    let chain = certificates(path, "certificate chain, leaf first,")?;
    let facts = x509::read(&chain[0]).map_err(|why| {
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
