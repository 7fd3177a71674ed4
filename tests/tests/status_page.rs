//! The status page (`GET /` of the ops endpoint) as a person sees it in a browser: headless
//! Chromium loads it from a running siplb with two paired pools, one server drained and one
//! pool failed over by the operator, and the rendered DOM must show every pool, every server,
//! the drained state, and that the failed-over pool's users are served by its pair — which the
//! wire confirms. A screenshot is left in `target/tmp/status_page.png` for a look.
//!
//! It needs Chromium (`apt-get install -y chromium`), so it is `#[ignore]`d and runs with
//! `cargo test -p siplb-e2e --test status_page -- --ignored`; without `/usr/bin/chromium` it
//! fails rather than passing silently.

use std::path::Path;

use siplb_e2e::chromium;
use siplb_e2e::config::Pool;
use siplb_e2e::farm::users;
use siplb_e2e::ops::Ops;
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
    rows: Vec<Row>,
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
                Section {
                    name,
                    badge,
                    summary,
                    notes,
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
