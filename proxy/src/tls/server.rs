//! TLS on siplb's listeners: filled in by the listener-side work.
