//! siplb-loadgen: plays SIP clients and 200 OK backends for siplb's benchmarks.

fn main() {}
