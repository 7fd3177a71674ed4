//! The status page (`GET /` of the ops endpoint) as a person sees it in a browser: headless
//! Chromium loads it from a running siplb with two paired pools, one server drained and one
//! pool failed over by the operator, and the rendered DOM must show every pool, every server,
//! the drained state, and that the failed-over pool's users are served by its pair — which the
//! wire confirms. A screenshot is left in `target/tmp/status_page.png` for a look.
//!
//! Under load: a sipp client registers users through siplb to four sipp servers while the
//! operator fails the users' home pool over; the page, after it refreshed itself, shows the
//! traffic each server took (count, rate, share next to the share its weight asks for,
//! responses by class) and the failover in its event list, and `/status` and `/metrics` say
//! the same. Its screenshot is `target/tmp/status_page_load.png` (docs/status-page.png).
//!
//! It needs Chromium (`apt-get install -y chromium`), and the load test sipp
//! (`apt-get install -y sip-tester`), so it is `#[ignore]`d and runs with
//! `cargo test -p siplb-e2e --test status_page -- --ignored`; without `/usr/bin/chromium` (or
//! sipp) it fails rather than passing silently.

use std::path::Path;
use std::time::Duration;

use siplb_e2e::chromium;
use siplb_e2e::config::Pool;
use siplb_e2e::farm::users;
use siplb_e2e::ops::Ops;
use siplb_e2e::sipp::{exclusive, find_sipp, Uac, Uas, WorkDir, DOMAIN};
use siplb_e2e::{Behaviour, Client, Config, Farm, Request, Route, Siplb};

const TOKEN: &str = "status-page-token";

#[test]
#[ignore = "needs chromium: apt-get install -y chromium; run with --ignored"]
fn status_page_shows_pools_servers_a_drain_and_a_failover() {
    chromium::find();
    let farm = Farm::pools(&[("dc1-fe", 2), ("dc2-fe", 2)], Behaviour::Accept);
    let config = Config::new()
        .ops()
        .pool_with(Pool::new("fe-dc1", farm.servers_of("dc1-")).pair("fe-dc2"))
        .pool_with(Pool::new("fe-dc2", farm.servers_of("dc2-")).pair("fe-dc1"))
        .route(Route::to("fe-dc1").domain("contoso.com"));
    let siplb = Siplb::start_with_env(&config.render(), &[("SIPLB_ADMIN_TOKEN", TOKEN)]);
    let ops = Ops::of(&siplb);
    ops.admin_ok("/admin/servers/dc2-fe2/drain", TOKEN);
    ops.admin_ok("/admin/pools/fe-dc1/failover", TOKEN);

    // The wire first: fe-dc1's users reach fe-dc2's one server that takes users.
    let mut client = Client::new();
    for aor in users(10, "contoso.com") {
        let req = Request::register(&aor);
        assert_eq!(client.transact(siplb.addr(), &req).status(), Some(200));
        assert_eq!(farm.holder(&req.call_id()).id(), "dc2-fe1");
    }

    let url = format!("http://{}/", ops.addr());
    let dom = chromium::dump_dom(&url);
    let page = Page::read(&dom);
    assert!(
        page.title.contains("siplb"),
        "title {:?} in\n{dom}",
        page.title
    );
    for pool in ["fe-dc1", "fe-dc2"] {
        assert!(
            page.section(pool).is_some(),
            "no section for pool {pool} in\n{dom}"
        );
    }
    for b in &farm.backends {
        let pool = if b.id().starts_with("dc1-") {
            "fe-dc1"
        } else {
            "fe-dc2"
        };
        let row = page
            .row(pool, b.id())
            .unwrap_or_else(|| panic!("no row for server {} under pool {pool} in\n{dom}", b.id()));
        let state = if b.id() == "dc2-fe2" { "drained" } else { "up" };
        assert!(
            row.cells.iter().any(|c| c == state),
            "server {} should show {state}: {:?}",
            b.id(),
            row.cells
        );
        assert!(
            row.cells.iter().any(|c| c.contains(&b.addr().to_string())),
            "server {} without its address: {:?}",
            b.id(),
            row.cells
        );
    }
    let dc1 = page
        .section("fe-dc1")
        .map(|s| s.summary.clone())
        .unwrap_or_default();
    assert!(
        dc1.contains("served by fe-dc2"),
        "fe-dc1 does not say its users are served by fe-dc2: {dc1:?}"
    );
    let dc2 = page
        .section("fe-dc2")
        .map(|s| s.summary.clone())
        .unwrap_or_default();
    assert!(
        dc2.contains("served by fe-dc2"),
        "fe-dc2 serves its own users: {dc2:?}"
    );
    let section = |pool: &str| page.section(pool).expect("section");
    assert_eq!(
        section("fe-dc1").badge,
        "FAILED OVER → fe-dc2",
        "the failover stands out"
    );
    assert_eq!(section("fe-dc2").badge, "", "fe-dc2 is not failed over");
    assert!(
        section("fe-dc2")
            .notes
            .iter()
            .any(|n| n.contains("also serving the users of fe-dc1")),
        "fe-dc2 says it carries fe-dc1's users: {:?}",
        section("fe-dc2").notes
    );
    assert!(
        dom.contains("not ready") || dom.contains("ready: every routed pool"),
        "the page shows the readiness verdict"
    );

    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
    let _ = std::fs::remove_file(&png);
    chromium::screenshot(&url, &png, 1200, 900);
    let bytes = std::fs::read(&png).unwrap_or_default();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{} is not a rendered PNG ({} bytes)",
        png.display(),
        bytes.len()
    );
    eprintln!("status page screenshot: {}", png.display());
}

/// Registrations of the load run, and their rate: 20 s of load, longer than the test needs.
const CALLS: usize = 6_000;
const RATE: u32 = 300;

#[test]
#[ignore = "needs chromium and sipp: apt-get install -y chromium sip-tester; run with --ignored"]
fn under_load_the_page_shows_each_servers_traffic_and_the_failover_event() {
    chromium::find();
    let _one_run = exclusive();
    let sipp = find_sipp();
    let work = WorkDir::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "status-page-load");
    let uas: Vec<Uas> = ["dc1-fe1", "dc1-fe2", "dc2-fe1", "dc2-fe2"]
        .iter()
        .map(|id| Uas::start(&sipp, &work.path, id))
        .collect();
    let servers = |prefix: &str| -> Vec<_> {
        uas.iter()
            .filter(|u| u.id.starts_with(prefix))
            .map(Uas::server)
            .collect()
    };
    let config = Config::new()
        .ops()
        .pool_with(Pool::new("fe-dc1", servers("dc1-")).pair("fe-dc2").manual())
        .pool_with(Pool::new("fe-dc2", servers("dc2-")).pair("fe-dc1").manual())
        .route(Route::to("fe-dc1").domain(DOMAIN));
    let siplb = Siplb::start_with_env(&config.render(), &[("SIPLB_ADMIN_TOKEN", TOKEN)]);
    let ops = Ops::of(&siplb);
    ops.wait_status("every sipp server answering siplb's probes", |s| {
        uas.iter()
            .all(|u| s.server(&u.id)["last_probe"] == "answered 200")
    });

    let mut uac = Uac::start(
        &sipp,
        &work.path,
        "uac-status-page",
        siplb.addr(),
        CALLS,
        RATE,
        Duration::from_secs(40),
    );
    // fe-dc1's servers take the users first...
    ops.wait_status("fe-dc1's servers forwarded REGISTERs", |s| {
        ["dc1-fe1", "dc1-fe2"]
            .iter()
            .all(|id| s.server(id)["forwarded"].as_u64().unwrap_or(0) > 100)
    });
    // ...then the operator sends them to fe-dc2.
    ops.admin_ok("/admin/pools/fe-dc1/failover", TOKEN);
    ops.wait_status("fe-dc2's servers forwarded REGISTERs", |s| {
        ["dc2-fe1", "dc2-fe2"]
            .iter()
            .all(|id| s.server(id)["forwarded"].as_u64().unwrap_or(0) > 100)
    });

    // The page as it stands after two of its own refreshes, while the load runs.
    let url = format!("http://{}/", ops.addr());
    let dom = chromium::dump_dom_after(&url, Duration::from_millis(4_500));
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page_load.png");
    let _ = std::fs::remove_file(&png);
    chromium::screenshot(&url, &png, 1400, 1000);
    let status = ops.status();
    let metrics = ops.metrics();
    assert!(
        uac.is_running(),
        "sipp finished before the page was read: it must be read under load"
    );

    let refreshes = between(&dom, "data-refreshes=\"", "\"")
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        refreshes >= 1,
        "the page did not refresh itself (data-refreshes {refreshes}):\n{dom}"
    );
    let page = Page::read(&dom);
    for (pool, id) in [
        ("fe-dc1", "dc1-fe1"),
        ("fe-dc1", "dc1-fe2"),
        ("fe-dc2", "dc2-fe1"),
        ("fe-dc2", "dc2-fe2"),
    ] {
        let section = page.section(pool).expect("pool section");
        let row = page
            .row(pool, id)
            .unwrap_or_else(|| panic!("no row for {id} in\n{dom}"));
        let cell = |header: &str| section.cell(row, header).unwrap_or_default();
        let forwarded: u64 = cell("forwarded").parse().unwrap_or(0);
        assert!(
            forwarded > 100,
            "{id} shows {forwarded} forwarded: {:?}",
            row.cells
        );
        assert!(
            cell("responses").contains("2xx"),
            "{id} shows no 2xx responses: {:?}",
            row.cells
        );
        assert!(
            cell("share (expected)").contains("(50%)"),
            "{id}: half of its pool by weight: {:?}",
            row.cells
        );
        if pool == "fe-dc2" {
            // The users are on fe-dc2 now: its servers take them at a rate.
            let rate: f64 = cell("rate").trim_end_matches("/s").parse().unwrap_or(0.0);
            assert!(rate > 0.0, "{id} shows rate {rate}: {:?}", row.cells);
        }
    }
    let events = page.section("events").expect("an event list");
    let failover = events
        .rows
        .iter()
        .find(|r| r.cells.get(1).is_some_and(|k| k == "failover"))
        .unwrap_or_else(|| {
            panic!(
                "no failover event in the page's list: {:?}",
                events.rows.len()
            )
        });
    assert_eq!(failover.cells[2], "fe-dc1");
    assert!(
        failover.cells[4].contains("operator failover") && failover.cells[4].contains("fe-dc2"),
        "the event says who and where: {:?}",
        failover.cells
    );

    // /status says the same, with numbers.
    let list = status.0["events"].as_array().cloned().unwrap_or_default();
    assert!(list.len() <= 50);
    let first = &list[0];
    assert_eq!(
        (first["kind"].as_str(), first["pool"].as_str()),
        (Some("failover"), Some("fe-dc1")),
        "the newest event is the failover: {list:?}"
    );
    assert!(first["at"].as_str().is_some_and(|a| a.ends_with('Z')));
    let mut dc2_share = 0.0;
    for id in ["dc1-fe1", "dc1-fe2", "dc2-fe1", "dc2-fe2"] {
        let s = status.server(id);
        assert!(s["forwarded"].as_u64().unwrap_or(0) > 100, "{s}");
        assert!(s["responses"]["2xx"].as_u64().unwrap_or(0) > 100, "{s}");
        assert_eq!(s["responses"]["6xx"].as_u64(), Some(0), "{s}");
        assert_eq!(s["expected_share"].as_f64(), Some(0.5), "{s}");
        if id.starts_with("dc2-") {
            assert!(s["rate"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
            dc2_share += s["share"].as_f64().unwrap_or(0.0);
        }
    }
    assert!(
        (dc2_share - 1.0).abs() < 1e-6,
        "fe-dc2's shares add up to its whole: {dc2_share}"
    );
    // And /metrics, under configured names only.
    for id in ["dc1-fe1", "dc1-fe2", "dc2-fe1", "dc2-fe2"] {
        let forwarded = metrics.sum("siplb_forwarded_total", &[("server", id)]);
        assert!(
            forwarded > 100.0,
            "siplb_forwarded_total of {id}: {forwarded}"
        );
        let ok = metrics.sum(
            "siplb_server_responses_total",
            &[("server", id), ("class", "2xx")],
        );
        assert!(ok > 100.0, "2xx responses of {id}: {ok}");
    }
    assert_eq!(
        metrics.label_values("siplb_forwarded_total", "pool"),
        ["fe-dc1", "fe-dc2"].map(String::from).into_iter().collect()
    );

    let bytes = std::fs::read(&png).unwrap_or_default();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{} is not a rendered PNG ({} bytes)",
        png.display(),
        bytes.len()
    );
    eprintln!("status page under load: {}", png.display());
    // Not one registration was lost to the failover or to the page's readers.
    let result = uac.wait(Duration::from_secs(45));
    uac.assert_no_loss(&result);
    work.remove();
}

/// The status page read back from its DOM: the title, and per pool its summary line and the
/// cells of each server row, as text.
struct Page {
    title: String,
    pools: Vec<Section>,
}

struct Section {
    /// The pool name from the heading.
    name: String,
    /// What the heading says besides the name (a failover badge).
    badge: String,
    /// The pool's summary line (state, servers up, pair, serving pool, mode).
    summary: String,
    /// Other lines of the section (e.g. which pools' users it also serves).
    notes: Vec<String>,
    /// The column headings of its table.
    headers: Vec<String>,
    rows: Vec<Row>,
}

impl Section {
    /// The text of `row`'s cell under the column headed `header`.
    fn cell(&self, row: &Row, header: &str) -> Option<String> {
        let at = self.headers.iter().position(|h| h == header)?;
        row.cells.get(at).cloned()
    }
}

struct Row {
    cells: Vec<String>,
}

impl Page {
    fn read(dom: &str) -> Page {
        let title = between(dom, "<title>", "</title>")
            .map(text)
            .unwrap_or_default();
        let pools = dom
            .split("<h2")
            .skip(1)
            .map(|part| {
                let heading = between(part, ">", "</h2>").map(text).unwrap_or_default();
                // "pool NAME", then a badge when the pool is failed over.
                let name = heading
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let badge = heading
                    .split_whitespace()
                    .skip(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                // The pool's summary line is the one that counts its servers; a pool serving
                // its pair's users has a line saying so above it.
                let lines: Vec<String> = part
                    .split("<p")
                    .skip(1)
                    .filter_map(|p| p.split_once("</p>").map(|(p, _)| p))
                    .filter_map(|p| p.split_once('>').map(|(_, t)| text(t)))
                    .collect();
                let summary = lines
                    .iter()
                    .find(|l| l.contains("servers up"))
                    .cloned()
                    .unwrap_or_default();
                let notes = lines
                    .into_iter()
                    .filter(|l| !l.contains("servers up"))
                    .collect();
                let rows = part
                    .split("<tr")
                    .skip(1)
                    .map(|tr| Row {
                        cells: tr
                            .split("<td")
                            .skip(1)
                            .map(|td| text(&format!("<td{td}")))
                            .collect(),
                    })
                    .filter(|r| !r.cells.is_empty())
                    .collect();
                let headers = part
                    .split("<th")
                    .skip(1)
                    .map(|th| text(&format!("<th{}", th.split("</th>").next().unwrap_or(""))))
                    .collect();
                Section {
                    name,
                    badge,
                    summary,
                    notes,
                    headers,
                    rows,
                }
            })
            .collect();
        Page { title, pools }
    }

    fn section(&self, pool: &str) -> Option<&Section> {
        self.pools.iter().find(|s| s.name == pool)
    }

    /// The row of server `id` under pool `pool`.
    fn row(&self, pool: &str, id: &str) -> Option<&Row> {
        self.section(pool)?
            .rows
            .iter()
            .find(|r| r.cells.first().is_some_and(|c| c == id))
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let to = s[from..].find(end)? + from;
    Some(&s[from..to])
}

/// The text of an HTML fragment: tags dropped, entities decoded, whitespace collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let decoded = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}
