//! Cost of siplb's core per message, without sockets: a Lync-sized REGISTER through
//! `Worker::handle` and its 200 OK back, repeated. `cargo run --release -p siplb --example hotpath`.
//! Complements `bench/run.sh`, which measures the whole process under sipp load.

mod pairs;

use std::path::Path;

use siplb::table::{ConfigHealth, RoutingTable};

const CFG: &str = r#"
[listen]
udp = ["127.0.0.1:5060"]
[[pool]]
name = "fe"
servers = [{ address = "127.0.0.1:5071" }, { address = "127.0.0.1:5072" }, { address = "127.0.0.1:5073" }, { address = "127.0.0.1:5074" }]
[[route]]
pool = "fe"
"#;

fn main() {
    let cfg = siplb::config::parse(Path::new("hotpath.toml"), CFG).expect("valid config");
    let adv =
        siplb::config::HostPort::from("127.0.0.1:5060".parse::<std::net::SocketAddr>().unwrap());
    let table = RoutingTable::build(
        &cfg,
        adv,
        vec!["127.0.0.1:5060".parse().unwrap()],
        1,
        &ConfigHealth,
    );
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    pairs::run(&table, n);
}
