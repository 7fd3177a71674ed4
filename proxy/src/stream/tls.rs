//! The TLS seam of the connection runtime: the handshake of a TLS listener's connection and of
//! a connection to a TLS server. Until the listener certificates (`crate::tls::server`) and the
//! server TLS settings (`crate::tls::client`) are wired in here, both refuse with a clear error
//! (counted as a failed handshake, or a failed connect).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::Streams;

impl Streams {
    /// The server side of a TLS handshake on the listener bound at `listener`.
    pub(super) async fn tls_accept(
        &self,
        _tcp: TcpStream,
        listener: SocketAddr,
    ) -> anyhow::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        anyhow::bail!("TLS listener {listener}: no certificate is loaded in this build")
    }

    /// The client side of a TLS handshake with the server whose id is `server_id`.
    pub(super) async fn tls_connect(
        &self,
        _tcp: TcpStream,
        server_id: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        anyhow::bail!("server {server_id}: no TLS client settings in this build")
    }
}
