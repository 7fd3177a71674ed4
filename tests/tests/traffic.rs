//! Per-server traffic as `/status` and `/metrics` count it, over UDP and TCP: the built siplb
//! in front of a TCP server (in-repo peer) and a UDP one, REGISTERs from a UDP client and from
//! a TCP client; each server's `forwarded` and `responses` must be what it received and
//! answered, and `/metrics` must say the same under the configured ids.

use siplb_e2e::ops::Ops;
use siplb_e2e::stream::{Dial, Listen, StreamBackend, StreamClient};
use siplb_e2e::{Backend, Behaviour, Client, Request, Siplb};

#[test]
fn each_server_counts_what_it_was_sent_and_answered_over_udp_and_tcp() {
    let tcp = StreamBackend::start("fe-tcp", Listen::Tcp);
    let udp = Backend::start("fe-udp", Behaviour::Accept);
    let config = format!(
        "[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nworkers = 1\n\n\
         [ops]\nlisten = \"127.0.0.1:0\"\n\n\
         [[pool]]\nname = \"t\"\nhealth = {{ probe = \"tcp-connect\" }}\n\
         servers = [{{ address = \"{}\", transport = \"tcp\", id = \"fe-tcp\" }}]\n\n\
         [[pool]]\nname = \"u\"\nservers = [{{ address = \"{}\", id = \"fe-udp\" }}]\n\n\
         [[route]]\ndomain = \"t.example\"\npool = \"t\"\n\n\
         [[route]]\ndomain = \"u.example\"\npool = \"u\"\n",
        tcp.addr(),
        udp.addr()
    );
    let siplb = Siplb::start(&config);
    let ops = Ops::of(&siplb);

    // Three UDP clients' REGISTERs to the TCP server (over the shared backend connection)...
    let mut client = Client::new();
    for user in ["ann", "ben", "cid"] {
        let req = Request::register(&format!("{user}@t.example"));
        assert_eq!(client.transact(siplb.addr(), &req).status(), Some(200));
    }
    // ...two from a TCP client to it (over the flow's own backend connection), and one from
    // that client to the UDP server.
    let flow = StreamClient::connect(siplb.tcp(), Dial::Tcp);
    for aor in ["dan@t.example", "eve@t.example", "fay@u.example"] {
        let answer = flow.transact(&flow.register_request(aor));
        assert_eq!(answer.status(), Some(200), "{aor}: {answer:?}");
    }

    let status = ops.status();
    let counts = |id: &str| {
        let s = status.server(id);
        (
            s["forwarded"].as_u64(),
            s["responses"]["2xx"].as_u64(),
            s["responses"]["1xx"].as_u64(),
        )
    };
    let registers = tcp
        .requests()
        .iter()
        .filter(|m| m.msg().method() == Some("REGISTER"))
        .count() as u64;
    assert_eq!(registers, 5, "the TCP server got every REGISTER sent to it");
    assert_eq!(counts("fe-tcp"), (Some(5), Some(5), Some(0)));
    assert_eq!(counts("fe-udp"), (Some(1), Some(1), Some(0)));
    assert_eq!(
        status.server("fe-tcp")["expected_share"].as_f64(),
        Some(1.0)
    );

    let m = ops.metrics();
    let forwarded = |id: &str| m.sum("siplb_forwarded_total", &[("server", id)]);
    assert_eq!((forwarded("fe-tcp"), forwarded("fe-udp")), (5.0, 1.0));
    assert_eq!(
        m.sum(
            "siplb_server_responses_total",
            &[("pool", "t"), ("server", "fe-tcp"), ("class", "2xx")]
        ),
        5.0
    );
    // A second scrape adds nothing that was not counted since.
    let again = ops.metrics();
    assert_eq!(
        again.sum("siplb_forwarded_total", &[("server", "fe-tcp")]),
        5.0
    );
    assert_eq!(
        m.sum("siplb_responses_total", &[("class", "2xx")]),
        6.0,
        "the per-class total still counts each response once"
    );
}
