//! TLS towards servers: the client side of every connection siplb opens to a server with
//! `transport = "tls"`, for probes and for the connection runtime alike.
//!
//! A pool's `tls = { ca, server_name, cert, key }` becomes one rustls client config, shared by
//! the pool's TLS servers: the CA file (or the system bundle) as trust anchors, and siplb's
//! client certificate when the pool's servers demand one (MTLS, as Lync servers require of each
//! other). Verification is always on; there is no switch to turn it off. Each server is
//! verified under its own `server_name`, else the pool's, else its IP address (checked against
//! the certificate's IP SAN).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use anyhow::Context as _;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::config::{Config, PoolConfig, PoolTls, ServerConfig, Transport};

/// TLS client settings of every server with transport = "tls", built from a config.
/// Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct ServerTls {
    servers: Arc<HashMap<String, ServerClient>>,
}

/// How siplb opens TLS to one server.
#[derive(Clone)]
struct ServerClient {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// A digest of everything the connection depends on (trust anchors, client certificate and
    /// key, server name): equal digests mean equal settings.
    fingerprint: u64,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self
            .servers
            .iter()
            .map(|(id, c)| (id.as_str(), c.name.to_str()))
            .collect();
        names.sort();
        f.debug_struct("ServerTls")
            .field("servers", &names)
            .finish()
    }
}

impl ServerTls {
    /// Reads every file the config's TLS servers need. An error names the pool and the file;
    /// a config that passed validation fails here only if a file changed since.
    pub(crate) fn build(cfg: &Config) -> anyhow::Result<ServerTls> {
        let mut servers = HashMap::new();
        for pool in &cfg.pools {
            let tls_servers: Vec<&ServerConfig> = pool
                .servers
                .iter()
                .filter(|s| s.transport == Transport::Tls)
                .collect();
            if tls_servers.is_empty() {
                continue;
            }
            let (config, digest) = pool_client(&pool.tls)
                .with_context(|| format!("TLS settings of pool {}", pool.name))?;
            let connector = TlsConnector::from(config);
            for server in tls_servers {
                let name = server_name(pool, server)?;
                let mut h = digest.clone();
                name.to_str().hash(&mut h);
                let client = ServerClient {
                    connector: connector.clone(),
                    name,
                    fingerprint: h.finish(),
                };
                servers.insert(server.id.clone(), client);
            }
        }
        Ok(ServerTls {
            servers: Arc::new(servers),
        })
    }

    /// The connector and the name to verify for this server (by id), if it speaks TLS.
    pub(crate) fn connector(&self, server_id: &str) -> Option<(TlsConnector, ServerName<'static>)> {
        let c = self.servers.get(server_id)?;
        Some((c.connector.clone(), c.name.clone()))
    }

    /// A digest of this server's TLS settings (files' contents included): when it is the same
    /// in two `ServerTls`, so is everything a connection to the server would meet.
    pub(crate) fn fingerprint(&self, server_id: &str) -> Option<u64> {
        self.servers.get(server_id).map(|c| c.fingerprint)
    }
}

/// The name a server's certificate must carry: its own `server_name`, the pool's, or its IP.
fn server_name(pool: &PoolConfig, server: &ServerConfig) -> anyhow::Result<ServerName<'static>> {
    match server
        .server_name
        .as_ref()
        .or(pool.tls.server_name.as_ref())
    {
        Some(name) => ServerName::try_from(name.clone()).with_context(|| {
            format!(
                "server {}: \"{name}\" is not a DNS name or an IP address",
                server.id
            )
        }),
        None => Ok(ServerName::IpAddress(server.address.ip().into())),
    }
}

/// The rustls client config of a pool's `tls` settings, and a digest of what went into it.
fn pool_client(tls: &PoolTls) -> anyhow::Result<(Arc<rustls::ClientConfig>, DefaultHasher)> {
    let mut digest = DefaultHasher::new();
    let ca_file = tls.ca_file();
    let anchors = super::load_certs(ca_file)?;
    for cert in &anchors {
        cert.as_ref().hash(&mut digest);
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(anchors);
    if added == 0 {
        anyhow::bail!(
            "{}: none of its certificates can serve as a CA",
            ca_file.display()
        );
    }
    let builder = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?
        .with_root_certificates(roots);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = super::load_certs(&client.cert)?;
            let key = super::load_key(&client.key)?;
            for cert in &chain {
                cert.as_ref().hash(&mut digest);
            }
            key.secret_der().hash(&mut digest);
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "client certificate {} with key {}",
                    client.cert.display(),
                    client.key.display()
                )
            })?
        }
    };
    Ok((Arc::new(config), digest))
}

#[cfg(test)]
mod tests;
