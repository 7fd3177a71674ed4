//! SIP on the wire: scan a message in place, read the few fields routing needs, and splice
//! siplb's edits into a copy without re-serialising anything it does not own.
//!
//! Nothing here allocates on the forwarding path or trusts the input: every function takes raw
//! bytes and returns ranges into them, or `None`/an error for what it cannot read. The answers
//! siplb writes itself ([`response`]) are the exception: they are rare and may allocate.

pub(crate) mod branch;
pub(crate) mod edit;
pub(crate) mod response;
pub(crate) mod scan;
pub(crate) mod uri;
pub(crate) mod via;
