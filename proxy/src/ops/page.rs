//! `GET /`: pools and servers at a glance, for a person. Plain HTML and CSS, refreshed by the
//! browser every five seconds; no JavaScript.

use std::fmt::Write as _;

use super::StatusDoc;

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
         <meta http-equiv=\"refresh\" content=\"5\"><title>siplb status</title><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;margin:.3em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
         th{background:#f3f3f3}.up{color:#0a0;font-weight:600}.down{color:#c00;font-weight:600}\
         .drained{color:#a60;font-weight:600}.moved{background:#fff3cd}h2{margin-bottom:.2em}\
         .meta{color:#666}\
         .badge{background:#c00;color:#fff;font-size:.7em;padding:.15em .5em;border-radius:.3em;vertical-align:middle}\
         .verdict{font-size:1.1em}</style></head><body><h1>siplb</h1>",
    );
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
        h.push_str("<table><tr><th>server</th><th>address</th><th>state</th><th>since</th><th>reason</th><th>last probe</th><th>RTT</th><th>weight</th></tr>");
        for s in &p.servers {
            let rtt = s
                .last_rtt_ms
                .map(|ms| format!("{ms:.1} ms"))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{} {}</td><td class=\"{st}\">{st}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
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
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}
