//! The TLS side of backend connections: the client handshake with a TLS server, with the
//! server's settings from the config in effect (`[[pool]] tls`, a server's `server_name`;
//! certificate verification always on). The settings are swapped by every reload; a
//! connection keeps the ones it was opened with.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::tls::client::ServerTls;

use super::Streams;

impl Streams {
    /// New backend connections to TLS servers use `tls` from now on.
    pub(crate) fn set_server_tls(&self, tls: ServerTls) {
        self.inner.server_tls.store(Arc::new(tls));
    }

    /// The client side of a TLS handshake with the server whose id is `server_id`.
    pub(super) async fn tls_connect(
        &self,
        tcp: TcpStream,
        server_id: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let Some((connector, name)) = self.inner.server_tls.load().connector(server_id) else {
            anyhow::bail!("server {server_id}: no TLS client settings");
        };
        Ok(connector.connect(name, tcp).await?)
    }
}
