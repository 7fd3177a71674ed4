//! The end-to-end harness of siplb: the built binary as a child process, and SIP peers written
//! here from scratch (plain `std::net::UdpSocket`, no code shared with the proxy, so the tests
//! cannot share its bugs).
//!
//! - [`process`] starts `siplb --config FILE` and waits for `ready`, or runs its CLI;
//! - [`config`] writes configs in the words of DESIGN.md's configuration contract;
//! - [`backend`] is a server peer that records what it received and answers like a registrar;
//! - [`client`] is a user agent that sends raw requests and collects responses;
//! - [`stream`] has the same two peers over TCP and TLS (connections, flows, keep-alives), and
//!   [`tls`] the test PKI (CA, server and client leaves) and rustls configs they use;
//! - [`request`] builds the exact request bytes; [`sip`] reads messages for assertions;
//! - [`answer`] checks siplb's own answers (copied headers, `received`/`rport`);
//! - [`torture`] reads the RFC 4475 torture messages kept in `tests/torture/`;
//! - [`edits`] undoes the edits siplb is allowed to make, to prove every other byte survived;
//! - [`testbed`] is farm + siplb + client, and runs one request through checking both
//!   directions that way;
//! - [`farm`] groups backends and answers "which server got which user";
//! - [`fuzz`] generates the seeded flood of hostile datagrams;
//! - [`load`] keeps registering users at a steady pace and records what was lost;
//! - [`placement`] sweeps every user once and compares where they landed;
//! - [`health`] reads siplb's health transition log lines and waits for `/status` to show a
//!   server or pool state; [`netns`] builds network namespaces ("datacenters") joined by veth
//!   links;
//! - [`ops`] reads `/status` and `/metrics` and drives the admin API;
//! - [`reload`] hands siplb a new config the ways operators and platforms do (in place,
//!   rename, ConfigMap symlink swap, SIGHUP);
//! - [`dnsmasq`] runs a real DNS server on loopback whose records a test changes;
//! - [`ports`] finds free loopback ports for the few things that must name one;
//! - [`sipp`] runs sipp peers (the real-peer suites); [`chromium`] loads a page in headless
//!   Chromium (the status page suite).
//!
//! Nothing binds a fixed port (everything is `127.0.0.1:0`), every wait has a deadline, and every
//! load loop is bounded in count and time.
#![forbid(unsafe_code)]

pub mod answer;
pub mod backend;
pub mod chromium;
pub mod client;
pub mod config;
pub mod dnsmasq;
pub mod edits;
pub mod farm;
pub mod flood;
pub mod fuzz;
pub mod health;
pub mod http;
pub mod load;
pub mod netns;
pub mod ops;
pub mod placement;
pub mod ports;
pub mod process;
pub mod reload;
pub mod request;
pub mod sip;
pub mod sipp;
pub mod stream;
pub mod testbed;
pub mod tls;
pub mod torture;

pub use backend::{response_to, Backend, Behaviour, Datagram, ProbeAnswer};
pub use client::Client;
pub use config::{Config, Route, Server};
pub use edits::{assert_forwarded_intact, assert_response_intact, Hop};
pub use farm::Farm;
pub use process::{ConfigFile, Siplb};
pub use request::Request;
pub use sip::Msg;
pub use testbed::{Exchange, Testbed};
