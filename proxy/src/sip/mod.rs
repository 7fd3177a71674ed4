//! SIP on the wire: scan a message in place, read the few fields routing needs, and splice
//! siplb's edits into a copy without re-serialising anything it does not own.
//!
//! Nothing here allocates per header or trusts the input: every function takes raw bytes and
//! returns ranges into them, or `None`/an error for what it cannot read.

pub mod edit;
pub mod response;
pub mod scan;
pub mod uri;
pub mod via;

pub use scan::{scan, Hdr, Message, ScanError, StartLine};
