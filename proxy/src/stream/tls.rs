//! The TLS seam of the connection runtime towards servers: the client side of a handshake with a
//! TLS server. Until the server TLS settings (`crate::tls::client`) are wired in here, it refuses
//! with a clear error (the backend connection fails like a refused connect).

use tokio::net::TcpStream;

use super::Streams;

impl Streams {
    /// The client side of a TLS handshake with the server whose id is `server_id`.
    pub(super) async fn tls_connect(
        &self,
        _tcp: TcpStream,
        server_id: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        anyhow::bail!("server {server_id}: no TLS client settings in this build")
    }
}
