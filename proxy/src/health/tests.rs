//! The supervisor under tokio's paused clock: what a reload keeps (health by id, failover by
//! pool name, an operator's drain), which probes it restarts, and when failback timers fire.
//! Probes are fakes the tests report through; no socket, no wall-clock sleep.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use healthcheck::{Failure, Outcome, ProbeNow, ProbeSettings, ServerState};
use tokio::task::JoinHandle;

mod damping;
mod fleet;
mod operator;

use super::{launch, Control, Op, Prober, Reload, Report, Status};
use crate::config::{self, Config, HostPort};
use crate::table::{ConfigHealth, RoutingTable};

/// One probe task the supervisor started.
struct Spawned {
    target: SocketAddr,
    transport: healthcheck::Transport,
    /// The name the probe verifies the server's certificate under, for TLS.
    tls_name: Option<String>,
    settings: ProbeSettings,
    report: Report,
    /// False once the supervisor aborted the task.
    alive: Arc<AtomicBool>,
    /// How many times the supervisor asked this probe for a probe at once.
    asked: Arc<AtomicUsize>,
}

/// Clears `alive` when the probe task is dropped (aborted).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

type Spawns = Arc<Mutex<Vec<Spawned>>>;

fn fake_prober() -> (Prober, Spawns) {
    let spawns: Spawns = Arc::default();
    let record = spawns.clone();
    let prober: Prober = Arc::new(move |target: healthcheck::Target, settings, now, report| {
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        record.lock().unwrap().push(Spawned {
            target: target.addr,
            transport: target.transport,
            tls_name: target.tls.as_ref().map(|t| t.name.to_str().into_owned()),
            settings,
            report,
            alive,
            asked,
        });
        let task: JoinHandle<()> = tokio::spawn(async move {
            let _guard = guard;
            let now: ProbeNow = now;
            loop {
                now.asked().await;
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        task
    });
    (prober, spawns)
}

const OK: Outcome = Outcome::Alive {
    rtt: Duration::from_millis(1),
    code: Some(200),
};
const TIMEOUT: Outcome = Outcome::Failed(Failure::Timeout);

/// Two paired pools; `a` fails back 30 s after it comes back (unless `failback` says other).
fn config_text(a_servers: &str, failback: &str, health: &str) -> String {
    format!(
        r#"
[listen]
udp = ["127.0.0.1:5060"]
[health]
fall = 2
rise = 2
{health}
[[pool]]
name = "a"
pair = "b"
failback_after = "{failback}"
servers = [{a_servers}]
[[pool]]
name = "b"
pair = "a"
servers = [{{ id = "b1", address = "127.0.0.1:5081" }}]
[[route]]
pools = ["a"]
"#
    )
}

const A: &str =
    r#"{ id = "a1", address = "127.0.0.1:5071" }, { id = "a2", address = "127.0.0.1:5072" }"#;

fn parse(text: &str) -> Arc<Config> {
    Arc::new(config::parse(Path::new("sup.toml"), text).expect("valid config"))
}

fn local() -> Vec<SocketAddr> {
    vec![([127, 0, 0, 1], 5060).into()]
}

fn advertise() -> HostPort {
    HostPort {
        host: "127.0.0.1".into(),
        port: Some(5060),
    }
}

struct Harness {
    control: Control,
    tables: Arc<ArcSwap<RoutingTable>>,
    spawns: Spawns,
    _task: JoinHandle<()>,
}

impl Harness {
    fn start(text: &str) -> Harness {
        let cfg = parse(text);
        let table = RoutingTable::build(&cfg, advertise(), local(), 1, &ConfigHealth);
        let tables = Arc::new(ArcSwap::from_pointee(table));
        let (prober, spawns) = fake_prober();
        let (control, task) = launch(cfg, tables.clone(), Some(prober));
        Harness {
            control,
            tables,
            spawns,
            _task: task,
        }
    }

    /// Reports `outcome` `times` times from the live probe of `target`.
    fn report(&self, target: &str, outcome: Outcome, times: usize) {
        let target: SocketAddr = target.parse().unwrap();
        let mut spawns = self.spawns.lock().unwrap();
        let probe = spawns
            .iter_mut()
            .rev()
            .find(|s| s.target == target && s.alive.load(Ordering::SeqCst))
            .expect("a live probe of the target");
        for _ in 0..times {
            (probe.report)(outcome);
        }
    }

    async fn reload(&self, text: &str) {
        let reload = Reload {
            config: parse(text),
            advertise: advertise(),
            local: local().into(),
        };
        self.control.reload(reload).await.expect("reload applied");
        settle().await;
    }

    async fn status(&self) -> Status {
        self.control.status().await.expect("supervisor runs")
    }

    /// `id`'s state in `/status`, `None` when the server is not there.
    async fn server_state(&self, id: &str) -> Option<&'static str> {
        self.status()
            .await
            .pools
            .iter()
            .flat_map(|p| &p.servers)
            .find(|s| s.id == id)
            .map(|s| s.state)
    }

    /// Whether the table in use serves pool `a`'s users from its pair.
    fn a_failed_over(&self) -> bool {
        self.tables.load().pools[0].failed_over
    }

    /// How many times the live probe of `target` was asked for a probe at once.
    fn asked_of(&self, target: &str) -> usize {
        let target: SocketAddr = target.parse().unwrap();
        let spawns = self.spawns.lock().unwrap();
        spawns
            .iter()
            .rev()
            .find(|s| s.target == target && s.alive.load(Ordering::SeqCst))
            .map_or(0, |s| s.asked.load(Ordering::SeqCst))
    }

    /// Sends `n` passive signals `failure` about `target`, letting the supervisor take each.
    async fn passive(&self, target: &str, failure: Failure, n: usize) {
        for _ in 0..n {
            self.control.passive(target.parse().unwrap(), failure);
            settle().await;
        }
    }

    /// Probe tasks started for `target`, and how many of them still run.
    fn probes_of(&self, target: &str) -> (usize, usize) {
        let target: SocketAddr = target.parse().unwrap();
        let spawns = self.spawns.lock().unwrap();
        let of: Vec<&Spawned> = spawns.iter().filter(|s| s.target == target).collect();
        let alive = of.iter().filter(|s| s.alive.load(Ordering::SeqCst)).count();
        (of.len(), alive)
    }
}

/// Lets the supervisor (and aborted tasks) run until nothing is left to do; the paused clock
/// does not move.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_health_by_id_starts_new_servers_up_and_forgets_removed_ones() {
    let h = Harness::start(&config_text(A, "30s", ""));
    settle().await;
    h.report("127.0.0.1:5071", TIMEOUT, 2);
    settle().await;
    assert_eq!(h.server_state("a1").await, Some("down"));

    let next =
        r#"{ id = "a1", address = "127.0.0.1:5071" }, { id = "a3", address = "127.0.0.1:5073" }"#;
    h.reload(&config_text(next, "30s", "")).await;
    assert_eq!(
        h.server_state("a1").await,
        Some("down"),
        "health kept by id"
    );
    assert_eq!(
        h.server_state("a3").await,
        Some("up"),
        "a new server starts up"
    );
    assert_eq!(h.server_state("a2").await, None, "a removed server is gone");
    let t = h.tables.load();
    let a1 = t.pools[0].servers.iter().find(|s| s.id == "a1").unwrap();
    assert_eq!(
        a1.state,
        healthcheck::ServerState::Down,
        "the new table too"
    );

    // The same id at a new address is the same server: its health stays.
    let moved =
        r#"{ id = "a1", address = "127.0.0.1:5079" }, { id = "a3", address = "127.0.0.1:5073" }"#;
    h.reload(&config_text(moved, "30s", "")).await;
    assert_eq!(h.server_state("a1").await, Some("down"));
    h.report("127.0.0.1:5079", OK, 2);
    settle().await;
    assert_eq!(
        h.server_state("a1").await,
        Some("up"),
        "the probe at the new address reports for a1"
    );
}

#[tokio::test(start_paused = true)]
async fn probes_restart_only_when_a_servers_address_or_settings_change() {
    let h = Harness::start(&config_text(A, "30s", ""));
    settle().await;
    for s in ["127.0.0.1:5071", "127.0.0.1:5072", "127.0.0.1:5081"] {
        assert_eq!(h.probes_of(s), (1, 1), "{s} probed once");
    }

    h.reload(&config_text(A, "30s", "")).await;
    for s in ["127.0.0.1:5071", "127.0.0.1:5072", "127.0.0.1:5081"] {
        assert_eq!(h.probes_of(s), (1, 1), "{s}: same config, same probe");
    }

    let moved =
        r#"{ id = "a1", address = "127.0.0.1:5071" }, { id = "a2", address = "127.0.0.1:5073" }"#;
    h.reload(&config_text(moved, "30s", "")).await;
    assert_eq!(
        h.probes_of("127.0.0.1:5072"),
        (1, 0),
        "old address: stopped"
    );
    assert_eq!(h.probes_of("127.0.0.1:5073"), (1, 1), "new address: probed");
    assert_eq!(h.probes_of("127.0.0.1:5071"), (1, 1), "a1 untouched");

    h.reload(&config_text(moved, "30s", "interval = \"3s\""))
        .await;
    for s in ["127.0.0.1:5071", "127.0.0.1:5073", "127.0.0.1:5081"] {
        assert_eq!(h.probes_of(s), (2, 1), "{s}: new settings, new probe");
    }
    let last = {
        let spawns = h.spawns.lock().unwrap();
        spawns.last().map(|s| s.settings).unwrap()
    };
    assert_eq!(last.interval, Duration::from_secs(3));
    assert_eq!(last.confirm, 1, "fall - 1 confirmations");

    let only_a1 = r#"{ id = "a1", address = "127.0.0.1:5071" }"#;
    h.reload(&config_text(only_a1, "30s", "interval = \"3s\""))
        .await;
    assert_eq!(
        h.probes_of("127.0.0.1:5073"),
        (2, 0),
        "removed server: stopped"
    );
    assert_eq!(h.probes_of("127.0.0.1:5071"), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn drains_follow_the_config_and_an_operators_drain_survives_reloads() {
    let h = Harness::start(&config_text(A, "30s", ""));
    settle().await;
    h.control.op(Op::Drain("a1".into())).await.unwrap();
    assert_eq!(h.server_state("a1").await, Some("drained"));

    h.reload(&config_text(A, "30s", "")).await;
    assert_eq!(
        h.server_state("a1").await,
        Some("drained"),
        "the config did not change a1's drain: the operator's stays"
    );

    let a2_drained = r#"{ id = "a1", address = "127.0.0.1:5071" }, { id = "a2", address = "127.0.0.1:5072", drained = true }"#;
    h.reload(&config_text(a2_drained, "30s", "")).await;
    assert_eq!(
        h.server_state("a2").await,
        Some("drained"),
        "drained by the config"
    );
    assert_eq!(h.server_state("a1").await, Some("drained"));

    h.reload(&config_text(A, "30s", "")).await;
    assert_eq!(
        h.server_state("a2").await,
        Some("up"),
        "undrained by the config"
    );
    assert_eq!(h.server_state("a1").await, Some("drained"));
}

#[tokio::test(start_paused = true)]
async fn failback_waits_failback_after_even_across_a_reload_that_changes_it() {
    let h = Harness::start(&config_text(A, "30s", ""));
    settle().await;
    h.report("127.0.0.1:5071", TIMEOUT, 2);
    h.report("127.0.0.1:5072", TIMEOUT, 2);
    settle().await;
    assert!(
        h.a_failed_over(),
        "a is down and b is up: a's users go to b"
    );

    h.report("127.0.0.1:5071", OK, 2);
    settle().await;
    assert!(h.a_failed_over(), "a is up again: the hold time starts");

    tokio::time::advance(Duration::from_secs(20)).await;
    settle().await;
    assert!(h.a_failed_over());

    // The hold time becomes 60 s; the failover state and the time a has been up are kept.
    h.reload(&config_text(A, "60s", "")).await;
    assert!(h.a_failed_over(), "a reload keeps a pool's failover");
    tokio::time::advance(Duration::from_secs(15)).await;
    settle().await;
    assert!(h.a_failed_over(), "35 s up: the new 60 s hold applies");

    tokio::time::advance(Duration::from_secs(26)).await;
    settle().await;
    assert!(!h.a_failed_over(), "61 s up: users are home");
    let status = h.status().await;
    let a = &status.pools[0];
    assert_eq!(a.serving, "a");
    assert_eq!(a.reason.as_deref(), Some("pool up for failback_after"));
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_passive_signals_is_shed_and_counted_and_probe_results_still_land() {
    let h = Harness::start(&config_text(A, "30s", ""));
    settle().await;
    // The supervisor does not run while this loop does (one thread): the queue fills up.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let flood = super::PASSIVE_QUEUE + 1000;
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..flood {
            h.control
                .passive("127.0.0.1:5081".parse().unwrap(), Failure::PassiveRefused);
        }
    });
    assert!(
        metrics
            .render()
            .contains("siplb_passive_signals_shed_total 1000"),
        "what was shed is counted:\n{}",
        metrics.render()
    );

    h.report("127.0.0.1:5071", TIMEOUT, 2);
    settle().await;
    assert_eq!(
        h.server_state("a1").await,
        Some("down"),
        "the probe results behind the flood were not lost"
    );
    assert!(
        h.asked_of("127.0.0.1:5081") > 0,
        "the signals that were queued reached the supervisor: b1's probe was asked to confirm"
    );
    assert_eq!(
        h.server_state("b1").await,
        Some("up"),
        "b1 is its pool's only server: passive signals alone never take a pool's last half down"
    );
}

/// Pool `a` of four servers (a1..a4 at 127.0.0.1:5071..5074), paired with `b`.
const A4: &str = r#"{ id = "a1", address = "127.0.0.1:5071" }, { id = "a2", address = "127.0.0.1:5072" },
    { id = "a3", address = "127.0.0.1:5073" }, { id = "a4", address = "127.0.0.1:5074" }"#;

#[tokio::test(start_paused = true)]
async fn a_503_from_a_server_asks_its_probe_and_never_takes_it_down() {
    let h = Harness::start(&config_text(A4, "30s", ""));
    settle().await;
    for addr in ["127.0.0.1:5071", "127.0.0.1:5072", "127.0.0.1:5073"] {
        h.passive(addr, Failure::Passive503, 10).await;
    }
    for id in ["a1", "a2", "a3", "a4"] {
        assert_eq!(
            h.server_state(id).await,
            Some("up"),
            "{id}: busy is not dead"
        );
    }
    assert!(!h.a_failed_over());
    assert!(h.asked_of("127.0.0.1:5071") > 0, "a1's probe asked to look");
    assert_eq!(h.asked_of("127.0.0.1:5074"), 0, "a4 sent no 503");
    // A server that answers 503 and whose probes fail goes down as before: by its probes.
    h.report("127.0.0.1:5072", Outcome::Failed(Failure::Reply(503)), 2);
    settle().await;
    assert_eq!(h.server_state("a2").await, Some("down"));
}

#[tokio::test(start_paused = true)]
async fn icmp_signals_alone_take_at_most_half_of_a_pool_down_and_probes_confirm_the_rest() {
    let h = Harness::start(&config_text(A4, "30s", ""));
    settle().await;
    // fall = 2: two port unreachables take a server down, while the pool keeps half.
    for addr in [
        "127.0.0.1:5071",
        "127.0.0.1:5072",
        "127.0.0.1:5073",
        "127.0.0.1:5074",
    ] {
        h.passive(addr, Failure::PassiveRefused, 2).await;
    }
    let mut down = Vec::new();
    for id in ["a1", "a2", "a3", "a4"] {
        if h.server_state(id).await == Some("down") {
            down.push(id);
        }
    }
    assert_eq!(
        down,
        ["a1", "a2"],
        "half of the pool, no more, by passive signals"
    );
    for addr in ["127.0.0.1:5073", "127.0.0.1:5074"] {
        assert!(
            h.asked_of(addr) > 0,
            "{addr}: its probe was asked to confirm"
        );
    }
    // The probes confirm: a3's fail, a4's pass.
    h.report("127.0.0.1:5073", Outcome::Failed(Failure::Refused), 2);
    h.report("127.0.0.1:5074", OK, 2);
    settle().await;
    assert_eq!(h.server_state("a3").await, Some("down"));
    assert_eq!(h.server_state("a4").await, Some("up"));
}

/// A pool of a TLS server verified against a CA file (written into a directory of the test's
/// own, with `ca`'s PEM) and a UDP server.
fn tls_config(dir: &Path, ca_pem: &str, name: &str) -> String {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    format!(
        r#"
[listen]
udp = ["127.0.0.1:5060"]
[[pool]]
name = "a"
tls = {{ ca = "{}", server_name = "{name}" }}
servers = [
  {{ id = "a1", address = "127.0.0.1:5061", transport = "tls" }},
  {{ id = "a2", address = "127.0.0.1:5071" }},
]
[[route]]
pool = "a"
"#,
        ca.display()
    )
}

fn self_signed_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test(start_paused = true)]
async fn tls_servers_are_probed_over_tls_and_reprobed_when_their_tls_settings_change() {
    let dir = std::env::temp_dir().join(format!("siplb-health-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = self_signed_ca_pem();
    let h = Harness::start(&tls_config(&dir, &ca, "fe-dc1.contoso.com"));
    settle().await;
    let last_of = |target: &str| {
        let target: SocketAddr = target.parse().unwrap();
        let spawns = h.spawns.lock().unwrap();
        let s = spawns.iter().rev().find(|s| s.target == target).unwrap();
        (s.transport, s.tls_name.clone())
    };
    assert_eq!(
        last_of("127.0.0.1:5061"),
        (
            healthcheck::Transport::Tls,
            Some("fe-dc1.contoso.com".into())
        )
    );
    assert_eq!(
        last_of("127.0.0.1:5071"),
        (healthcheck::Transport::Udp, None)
    );

    // The same files: the same probes.
    h.reload(&tls_config(&dir, &ca, "fe-dc1.contoso.com")).await;
    assert_eq!(h.probes_of("127.0.0.1:5061"), (1, 1));
    // A new CA in the same file: the TLS server's probe restarts with it, the UDP one does not.
    h.reload(&tls_config(
        &dir,
        &self_signed_ca_pem(),
        "fe-dc1.contoso.com",
    ))
    .await;
    assert_eq!(h.probes_of("127.0.0.1:5061"), (2, 1));
    assert_eq!(h.probes_of("127.0.0.1:5071"), (1, 1));
    // Another name: likewise.
    h.reload(&tls_config(&dir, &ca, "fe-dc2.contoso.com")).await;
    assert_eq!(h.probes_of("127.0.0.1:5061"), (3, 1));
    assert_eq!(
        last_of("127.0.0.1:5061").1.as_deref(),
        Some("fe-dc2.contoso.com")
    );
    assert_eq!(h.probes_of("127.0.0.1:5071"), (1, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

// On two threads, so that the supervisor and the caller really race: the answer must not go out
// before the table is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_command_is_answered_only_once_its_table_is_in_use() {
    let h = Harness::start(&config_text(A, "30s", ""));
    let a1_state = |h: &Harness| h.tables.load().pools[0].servers[0].state;

    // Nothing between the answer and the look at the table: a request sent the moment the
    // command is answered must be routed the new way.
    for _ in 0..200 {
        h.control.op(Op::Drain("a1".into())).await.unwrap();
        assert_eq!(
            a1_state(&h),
            ServerState::Drained,
            "drain answered before its table"
        );
        h.control.op(Op::Undrain("a1".into())).await.unwrap();
        assert_eq!(
            a1_state(&h),
            ServerState::Up,
            "undrain answered before its table"
        );
        h.control.op(Op::Failover("a".into())).await.unwrap();
        assert!(h.a_failed_over(), "failover answered before its table");
        h.control.op(Op::Failback("a".into())).await.unwrap();
        assert!(!h.a_failed_over(), "failback answered before its table");
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_adding_thousands_of_servers_spreads_their_first_probes_over_an_interval() {
    let health = r#"interval = "2s""#;
    let h = Harness::start(&config_text(A, "30s", health));
    settle().await;
    let at_start = h.spawns.lock().unwrap().len();
    // The servers of the first config: a few, probed at once (within a few milliseconds).
    assert!(h
        .spawns
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.settings.first_after <= Duration::from_millis(2)));

    let many: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{ id = "n{i}", address = "127.0.0.2:{}" }}"#, 10_000 + i))
        .collect();
    h.reload(&config_text(
        &format!("{A}, {}", many.join(", ")),
        "30s",
        health,
    ))
    .await;
    let mut firsts: Vec<Duration> = h.spawns.lock().unwrap()[at_start..]
        .iter()
        .map(|s| s.settings.first_after)
        .collect();
    assert_eq!(firsts.len(), 3000, "one probe started per new server");
    firsts.sort();
    assert_eq!(firsts[0], Duration::ZERO, "the first goes out at once");
    let last = firsts[firsts.len() - 1];
    assert!(
        last > Duration::from_millis(1900) && last < Duration::from_secs(2),
        "spread over one 2 s interval, the last at {last:?}"
    );
    // Evenly: no 100 ms of the interval holds more than its share, give or take one.
    for slot in 0..20u32 {
        let (from, to) = (
            Duration::from_millis(100) * slot,
            Duration::from_millis(100) * (slot + 1),
        );
        let inside = firsts.iter().filter(|d| **d >= from && **d < to).count();
        assert!(
            (149..=151).contains(&inside),
            "{inside} first probes in {from:?}..{to:?}"
        );
    }

    // One more server later: probed at once.
    h.reload(&config_text(
        &format!(
            r#"{A}, {}, {{ id = "late", address = "127.0.0.3:5000" }}"#,
            many.join(", ")
        ),
        "30s",
        health,
    ))
    .await;
    let spawns = h.spawns.lock().unwrap();
    let late = spawns.last().unwrap();
    assert_eq!(late.target, "127.0.0.3:5000".parse::<SocketAddr>().unwrap());
    assert_eq!(late.settings.first_after, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn health_failover_drain_and_reload_are_recorded_as_events_newest_first() {
    use crate::events::Kind;
    let h = Harness::start(&config_text(A, "30s", ""));
    settle().await;
    h.report("127.0.0.1:5071", TIMEOUT, 2);
    h.report("127.0.0.1:5072", TIMEOUT, 2);
    settle().await;
    assert!(h.a_failed_over());
    h.control.op(Op::Drain("b1".into())).await.unwrap();
    let only_a1 = r#"{ id = "a1", address = "127.0.0.1:5071" }"#;
    h.reload(&config_text(only_a1, "30s", "")).await;

    let events = h.control.events().recent();
    let said: Vec<(Kind, Option<&str>, Option<&str>)> = events
        .iter()
        .map(|e| (e.kind, e.pool.as_deref(), e.server.as_deref()))
        .collect();
    assert_eq!(
        said,
        [
            (Kind::Reload, None, None),
            // With b1 drained b is down too, but a is no better: a stays failed over, so no
            // failback event.
            (Kind::Drain, Some("b"), Some("b1")),
            (Kind::Failover, Some("a"), None),
            (Kind::Health, Some("a"), Some("a2")),
            (Kind::Health, Some("a"), Some("a1")),
        ],
        "{events:#?}"
    );
    assert_eq!(
        events[0].message,
        "config reload: 0 servers added, 1 removed, 2 servers in 2 pools"
    );
    assert_eq!(events[1].message, "operator drain: up → drained");
    assert_eq!(events[2].message, "pool down, pair up: users served by b");
    assert_eq!(
        events[3].message,
        "up → down: 2 probes in a row failed, the last: probe timed out"
    );
}
