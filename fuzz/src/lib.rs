//! The checks siplb's fuzz targets make, written apart from siplb's own scanner and edits so
//! that a mistake there cannot hide itself here.
//!
//! - [`framing`] drives the stream framer as the stream shell does and checks each frame
//!   against the stream it came from.
//! - [`sip`] splits a message into start line, logical header lines and body, and checks that
//!   what siplb forwards differs from what it received only by siplb's own edits.

pub mod framing;
pub mod sip;
