//! A pool's `tls = { ca, server_name, cert, key }` and a server's `server_name`: how siplb
//! opens TLS to the pool's `transport = "tls"` servers.
//!
//! The files are read here, so `siplb check` (and start, and every reload) catch what would
//! otherwise only show at the first connection: a CA file that holds no usable certificate, a
//! client certificate without its key, a key that does not match its certificate. The system
//! CA bundle, the default, is read only when a pool has TLS servers that depend on it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::pki_types::ServerName;
use toml::Spanned;

use super::super::super::raw::{RawPoolTls, Str};
use super::super::super::{ClientCert, PoolTls, Transport, SYSTEM_CA_BUNDLE};
use super::super::{certs, values, Ctx};

/// The pool's TLS settings; `uses_tls` says whether any of its servers (given or from DNS) is
/// a TLS server, `name_line` is the line of its `name` (where an error about a missing `tls`
/// goes).
pub(super) fn pool_tls(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    raw: Option<&Spanned<RawPoolTls>>,
    name_line: usize,
    uses_tls: bool,
) -> PoolTls {
    let mut tls = PoolTls::default();
    let Some(raw) = raw else {
        if uses_tls {
            check_system_bundle(ctx, name_line, &format!("{prefix}.tls"));
        }
        return tls;
    };
    let t = raw.get_ref();
    let base = ctx.base_dir();
    match &t.ca {
        Some(ca) => {
            let key = format!("{prefix}.tls.ca");
            if let Some(path) = values::file_path(ctx, ca, &key, &base) {
                if let Err(message) = read_ca(&path) {
                    ctx.error(ca.span(), key, message);
                }
                tls.ca = Some(path);
            }
        }
        None if uses_tls => {
            let line = ctx.line_of(raw.span().start);
            check_system_bundle(ctx, line, &format!("{prefix}.tls.ca"));
        }
        None => {}
    }
    if let Some(name) = &t.server_name {
        tls.server_name = server_name(ctx, name, &format!("{prefix}.tls.server_name"));
    }
    tls.client_cert = client_cert(ctx, prefix, raw, &base);
    tls
}

/// A server's own `server_name`, allowed only on a TLS server.
pub(super) fn server_name_of(
    ctx: &mut Ctx<'_>,
    key: &str,
    raw: Option<&Str>,
    transport: Transport,
) -> Option<String> {
    let name = raw?;
    if transport != Transport::Tls {
        ctx.error(
            name.span(),
            key,
            format!(
                "server_name is the name a TLS server's certificate must carry, but this server's \
                 transport is \"{}\"; remove server_name or set transport = \"tls\"",
                transport.as_str()
            ),
        );
        return None;
    }
    server_name(ctx, name, key)
}

/// A name a server certificate can carry: a DNS name or an IP address.
fn server_name(ctx: &mut Ctx<'_>, v: &Str, key: &str) -> Option<String> {
    let name = v.get_ref().trim();
    match ServerName::try_from(name) {
        Ok(_) if !name.is_empty() => Some(name.to_string()),
        _ => {
            ctx.error(
                v.span(),
                key,
                format!(
                    "\"{}\" is not a DNS name or an IP address; use the name the server's \
                     certificate carries, e.g. fe1.contoso.com",
                    v.get_ref()
                ),
            );
            None
        }
    }
}

/// `cert` and `key`, which go together; both files checked as a listener's are (readable,
/// unexpired, the key the certificate's).
fn client_cert(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    raw: &Spanned<RawPoolTls>,
    base: &Path,
) -> Option<ClientCert> {
    let t = raw.get_ref();
    let (cert, key) = match (&t.cert, &t.key) {
        (None, None) => return None,
        (Some(cert), Some(key)) => (cert, key),
        (Some(only), None) | (None, Some(only)) => {
            let (given, missing) = if t.cert.is_some() {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            ctx.error(
                only.span(),
                format!("{prefix}.tls.{given}"),
                format!(
                    "a client certificate needs both cert and key; add {missing} = \"...\" (PEM) \
                     or remove {given}"
                ),
            );
            return None;
        }
    };
    let cert_key = format!("{prefix}.tls.cert");
    let key_key = format!("{prefix}.tls.key");
    let cert_path = values::file_path(ctx, cert, &cert_key, base)?;
    let key_path = values::file_path(ctx, key, &key_key, base)?;
    let cert_file = certs::PairFile {
        path: &cert_path,
        raw: cert,
        key: cert_key,
    };
    let key_file = certs::PairFile {
        path: &key_path,
        raw: key,
        key: key_key,
    };
    certs::check(ctx, cert_file, key_file, SystemTime::now());
    Some(ClientCert {
        cert: cert_path,
        key: key_path,
    })
}

/// A CA file: at least one PEM certificate rustls accepts as a trust anchor.
pub(crate) fn read_ca(path: &Path) -> Result<(), String> {
    let certs = certs::certificates(path, "CA certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "{}: none of its certificates can serve as a CA (trust anchor); give the PEM \
             certificate of the CA that issued the servers' certificates",
            path.display()
        ));
    }
    Ok(())
}

/// The system bundle must be readable when a pool's TLS servers rely on it.
fn check_system_bundle(ctx: &mut Ctx<'_>, line: usize, key: &str) {
    let path = PathBuf::from(SYSTEM_CA_BUNDLE);
    if let Err(why) = read_ca(&path) {
        ctx.error_at_line(
            line,
            key,
            format!(
                "this pool has TLS servers and names no CA, so siplb verifies them against the \
                 system bundle, which is unusable ({why}); install ca-certificates or give \
                 tls = {{ ca = \"ca.pem\" }}"
            ),
        );
    }
}
