//! `GET /`: pools and servers at a glance, for a person: health, each server's traffic (rate,
//! share of its pool next to the share its weight asks for, responses by class) and the last
//! events; with `[cluster]`, the fleet's views of every pool side by side. Plain HTML and CSS, self-contained. A few lines of script fetch the page again every
//! [`REFRESH_SECS`] and swap its body in place (no flicker, the scroll position stays); without
//! script, a `<noscript>` meta refresh reloads it every five seconds.

use std::fmt::Write as _;

use super::StatusDoc;
use crate::stats::TrafficStatus;

/// How often the page refreshes itself, in seconds.
const REFRESH_SECS: u32 = 2;

/// Fetches the page again every [`REFRESH_SECS`] and swaps its body in; counts the swaps in
/// the body's `data-refreshes` (what the browser test reads).
const REFRESH_SCRIPT: &str = "<script>(function(){var n=0;\
function again(){fetch(location.href,{cache:'no-store'})\
.then(function(r){if(!r.ok)throw r.status;return r.text()})\
.then(function(t){var d=new DOMParser().parseFromString(t,'text/html');n++;\
document.body.innerHTML=d.body.innerHTML;document.body.setAttribute('data-refreshes',n)})\
.catch(function(){}).then(function(){setTimeout(again,PERIOD)})}\
setTimeout(again,PERIOD)})();</script>";

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn render(doc: &StatusDoc) -> String {
    let mut h = String::with_capacity(8192);
    h.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript><title>siplb status</title><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;margin:.3em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;white-space:nowrap}\
         th{background:#f3f3f3}.up{color:#0a0;font-weight:600}.down{color:#c00;font-weight:600}\
         .drained{color:#a60;font-weight:600}.moved{background:#fff3cd}h2{margin-bottom:.2em}\
         .meta{color:#666}\
         .badge{background:#c00;color:#fff;font-size:.7em;padding:.15em .5em;border-radius:.3em;vertical-align:middle}\
         .verdict{font-size:1.1em}td.n{text-align:right;font-variant-numeric:tabular-nums}\
         .bar{position:relative;display:inline-block;width:7em;height:.8em;background:#eee;\
         vertical-align:middle;margin-right:.4em}.bar .got{position:absolute;left:0;top:0;bottom:0;background:#4a8}\
         .bar .want{position:absolute;top:-.2em;bottom:-.2em;width:2px;background:#222}\
         .ev td{font-size:.92em}.ev td:last-child{white-space:normal;min-width:24em}\
         .no_answer{color:#888}tr.disagree{background:#fde2e2}</style>",
    );
    h.push_str(&REFRESH_SCRIPT.replace("PERIOD", &(REFRESH_SECS * 1000).to_string()));
    h.push_str("</head><body><h1>siplb</h1>");
    let c = &doc.config;
    let _ = write!(
        h,
        "<p class=\"meta\">config {} · version {} · loaded {} · table {} · advertise {} · udp {}</p>",
        esc(&c.path.display().to_string()),
        c.version,
        esc(&c.loaded_at),
        doc.health.table_version,
        esc(&doc.advertise),
        esc(&doc.listen_udp.join(", "))
    );
    let _ = write!(
        h,
        "<p class=\"meta\" id=\"asof\">as of {} · refreshes every {REFRESH_SECS} s</p>",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    for l in &doc.connections.listeners {
        let _ = write!(
            h,
            "<p class=\"meta\">{} {} · {} open</p>",
            l.transport,
            esc(&l.bound),
            l.connections
        );
    }
    if !doc.connections.listeners.is_empty() {
        let b = &doc.connections.backend_connections;
        let _ = write!(
            h,
            "<p class=\"meta\">flows {} · backend connections tcp {} · tls {}</p>",
            doc.connections.flows, b.tcp, b.tls
        );
    }
    for p in &doc.passthrough {
        let _ = write!(
            h,
            "<p class=\"meta\">passthrough {} → pool {} · {} open</p>",
            esc(&p.address),
            esc(&p.pool),
            p.connections
        );
    }
    match &doc.not_ready_reason {
        None => h.push_str("<p class=\"verdict up\">ready: every routed pool has a server up</p>"),
        Some(why) => {
            let _ = write!(h, "<p class=\"verdict down\">not ready: {}</p>", esc(why));
        }
    }
    if let Some(err) = &c.last_error {
        let _ = write!(
            h,
            "<p class=\"down\">last reload refused: <pre>{}</pre></p>",
            esc(err)
        );
    }
    if let Some(cluster) = &doc.health.cluster {
        fleet(&mut h, cluster);
    }
    for p in &doc.health.pools {
        let failed_over = p.serving != p.name;
        let moved = if failed_over { " class=\"moved\"" } else { "" };
        let badge = if failed_over {
            format!(
                " <span class=\"badge\">FAILED OVER → {}</span>",
                esc(&p.serving)
            )
        } else {
            String::new()
        };
        let _ = write!(h, "<h2 id=\"pool-{0}\">pool {0}{badge}</h2>", esc(&p.name));
        let guests: Vec<&str> = doc
            .health
            .pools
            .iter()
            .filter(|q| q.name != p.name && q.serving == p.name)
            .map(|q| q.name.as_str())
            .collect();
        if !guests.is_empty() {
            let _ = write!(
                h,
                "<p class=\"moved\">also serving the users of {}</p>",
                esc(&guests.join(", "))
            );
        }
        let _ = write!(
            h,
            "<p{moved}>{role} · <span class=\"{state}\">{state}</span> \
             ({up}/{total} servers up, min {min}) · pair {pair} · users served by <b>{serving}</b> · \
             failover {mode}{forced} · since {since}</p>",
            role = p.role,
            state = p.state,
            up = p.servers_up,
            total = p.servers.len(),
            min = p.min_up,
            pair = esc(p.pair.as_deref().unwrap_or("none")),
            serving = esc(&p.serving),
            mode = p.mode,
            forced = if p.operator_failover { " (held by operator)" } else { "" },
            since = esc(&p.since),
        );
        h.push_str(
            "<table><tr><th>server</th><th>address</th><th>state</th><th>since</th><th>reason</th>\
             <th>last probe</th><th>RTT</th><th>weight</th><th>forwarded</th><th>rate</th>\
             <th>share (expected)</th><th>responses</th></tr>",
        );
        for s in &p.servers {
            let rtt = s
                .last_rtt_ms
                .map(|ms| format!("{ms:.1} ms"))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{} {}</td><td class=\"{st}\">{st}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                esc(&s.id),
                esc(&s.address),
                s.transport,
                esc(&s.since),
                esc(&s.reason),
                esc(s.last_probe.as_deref().unwrap_or("")),
                rtt,
                s.weight,
                st = s.state,
            );
            traffic_cells(&mut h, s.traffic.as_ref());
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    events(&mut h, doc);
    h.push_str("</body></html>\n");
    h
}

/// The fleet table (`[cluster]`): a row per pool, this replica's view and every other
/// observer's side by side, the fleet's verdict, a mark where the views that answered differ;
/// then the operator's commands as this replica holds them.
fn fleet(h: &mut String, c: &crate::health::ClusterStatus) {
    let _ = write!(
        h,
        "<h2 id=\"fleet\">Fleet</h2><p class=\"meta\">{} observers · quorum {}</p>\
         <table class=\"fleet\"><tr><th>pool</th><th>this replica</th>",
        c.observers, c.quorum
    );
    for peer in &c.peers {
        let role = if peer.witness { " (witness)" } else { "" };
        let _ = write!(
            h,
            "<th>{}{role}<br><span class=\"meta\">{}</span></th>",
            esc(&peer.url),
            esc(peer.result)
        );
    }
    h.push_str("<th>verdict</th><th></th></tr>");
    for p in &c.pools {
        let row = if p.disagree { " disagree" } else { "" };
        let _ = write!(
            h,
            "<tr class=\"pool{row}\"><td>{}</td><td class=\"{own}\">{own}</td>",
            esc(&p.name),
            own = p.own
        );
        for v in &p.views {
            let text = if v.view == "no_answer" {
                "no answer"
            } else {
                v.view
            };
            let _ = write!(h, "<td class=\"{}\">{text}</td>", v.view);
        }
        let mark = if p.disagree { "≠ views differ" } else { "" };
        let _ = write!(
            h,
            "<td class=\"{v}\">{v} ({}/{} down)</td><td class=\"mark\">{mark}</td></tr>",
            p.down,
            p.answered,
            v = p.verdict
        );
    }
    h.push_str("</table>");
    let op = &c.operator;
    let list = |l: &[String]| {
        if l.is_empty() {
            "none".to_string()
        } else {
            esc(&l.join(", "))
        }
    };
    let _ = write!(
        h,
        "<p class=\"meta operator\">operator commands: seq {} from {} · failed over: {} · drained: {}</p>",
        op.seq,
        esc(&op.origin),
        list(&op.failed_over),
        list(&op.drained)
    );
}

/// A percentage of a share.
fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// The traffic cells of one server row: forwarded, rate, share next to the expected share (a
/// bar with a mark where the weight says it should be), responses by class.
fn traffic_cells(h: &mut String, t: Option<&TrafficStatus>) {
    let Some(t) = t else {
        h.push_str("<td></td><td></td><td></td><td></td>");
        return;
    };
    let rate = t.rate.map(|r| format!("{r:.1}/s")).unwrap_or_default();
    let _ = write!(
        h,
        "<td class=\"n forwarded\">{}</td><td class=\"n rate\">{rate}</td>",
        t.forwarded
    );
    let got = t.share.unwrap_or(0.0).clamp(0.0, 1.0) * 100.0;
    let want = t.expected_share.clamp(0.0, 1.0) * 100.0;
    let _ = write!(
        h,
        "<td class=\"share\"><span class=\"bar\"><span class=\"got\" style=\"width:{got:.1}%\"></span>\
         <span class=\"want\" style=\"left:{want:.1}%\"></span></span>{} ({})</td>",
        t.share.map(percent).unwrap_or_else(|| "–".into()),
        percent(t.expected_share)
    );
    let classes: Vec<String> = t
        .responses
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(class, n)| format!("{class} {n}"))
        .collect();
    let _ = write!(
        h,
        "<td class=\"responses\">{}</td>",
        esc(&classes.join(" · "))
    );
}

/// The event list, newest first.
fn events(h: &mut String, doc: &StatusDoc) {
    h.push_str("<h2 id=\"events\">recent events</h2>");
    if doc.events.is_empty() {
        h.push_str("<p class=\"meta\">none since siplb started</p>");
        return;
    }
    h.push_str(
        "<table class=\"ev\"><tr><th>at</th><th>event</th><th>pool</th><th>server</th>\
         <th>what and why</th></tr>",
    );
    for e in &doc.events {
        let kind = e.kind.as_str();
        let _ = write!(
            h,
            "<tr class=\"event {kind}\"><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.at),
            esc(e.pool.as_deref().unwrap_or("")),
            esc(e.server.as_deref().unwrap_or("")),
            esc(&e.message),
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::OperatorView;
    use crate::health::{ClusterStatus, ObserverView, PeerStatus, PoolVerdict};

    fn peer(url: &str, witness: bool) -> PeerStatus {
        PeerStatus {
            url: url.into(),
            result: "ok",
            last_ok: None,
            config_matches: Some(true),
            witness,
            operator_seq: Some(2),
        }
    }

    fn pool(name: &str, own: &'static str, views: [&'static str; 2]) -> PoolVerdict {
        let urls = ["http://p1:9060", "http://w:9060"];
        PoolVerdict {
            name: name.into(),
            verdict: "up",
            answered: 3,
            down: usize::from(own == "down"),
            own,
            views: urls
                .iter()
                .zip(views)
                .map(|(u, view)| ObserverView {
                    observer: (*u).into(),
                    view,
                })
                .collect(),
            disagree: views.iter().any(|&v| v != "no_answer" && v != own),
        }
    }

    #[test]
    fn the_fleet_table_puts_observers_side_by_side_and_marks_a_disagreement() {
        let c = ClusterStatus {
            observers: 3,
            quorum: 2,
            peers: vec![peer("http://p1:9060", false), peer("http://w:9060", true)],
            pools: vec![
                pool("fe-dc1", "down", ["up", "up"]),
                pool("fe-dc2", "up", ["up", "no_answer"]),
            ],
            unreachable: vec!["fe-dc1".into()],
            operator: OperatorView {
                seq: 2,
                origin: "http://p1:9060".into(),
                failed_over: vec!["med".into()],
                ..OperatorView::default()
            },
        };
        let mut h = String::new();
        fleet(&mut h, &c);
        assert!(h.contains("<th>http://w:9060 (witness)<br>"), "{h}");
        assert!(
            h.contains(
                "<tr class=\"pool disagree\"><td>fe-dc1</td><td class=\"down\">down</td>\
                 <td class=\"up\">up</td><td class=\"up\">up</td>"
            ),
            "{h}"
        );
        assert!(h.contains("≠ views differ"), "{h}");
        assert!(
            h.contains(
                "<tr class=\"pool\"><td>fe-dc2</td><td class=\"up\">up</td><td class=\"up\">up</td>\
                 <td class=\"no_answer\">no answer</td>"
            ),
            "{h}"
        );
        assert!(
            h.contains(
                "operator commands: seq 2 from http://p1:9060 · failed over: med · drained: none"
            ),
            "{h}"
        );
    }
}
