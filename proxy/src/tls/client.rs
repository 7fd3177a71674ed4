//! TLS towards servers: filled in by the client-side work.
