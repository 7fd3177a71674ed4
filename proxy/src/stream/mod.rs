//! SIP over TCP and TLS: framing, connections and flows.

pub(crate) mod framer;
