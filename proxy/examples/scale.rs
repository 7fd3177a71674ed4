//! How siplb's core cost grows with the configuration, without sockets.
//!
//! ```text
//! scale pairs CONFIG [N]        N REGISTER + 200 OK pairs through the core (as `hotpath` does),
//!                               routed by the table of CONFIG; the REGISTERs are for
//!                               userI@contoso.com, request-URI sip:contoso.com
//! scale build CONFIG [REPEAT]   builds CONFIG's routing table REPEAT times; prints the time per
//!                               build and the memory the table holds
//! ```
//!
//! `bench/scale.sh` writes the configurations (servers per pool, routes before the one that
//! matches, 10,000-server tables) and runs this under callgrind (`pairs`) and by itself
//! (`build`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

mod pairs;

use siplb::table::{ConfigHealth, RoutingTable};

/// Counts the bytes the process holds on the heap, to tell what a routing table takes.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments, so `System`'s
// guarantees are ours; the counting is one atomic add or subtract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |i: usize, default: usize| {
        args.get(i)
            .map(|a| a.parse().expect("a count"))
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("pairs") if args.len() >= 2 => pairs::run(&table(&args[1]), count(2, 200_000)),
        Some("build") if args.len() >= 2 => build(&args[1], count(2, 10)),
        _ => {
            eprintln!("usage: scale pairs CONFIG [N] | scale build CONFIG [REPEAT]");
            std::process::exit(2);
        }
    }
}

fn config(path: &str) -> siplb::config::Config {
    let text = std::fs::read_to_string(path).expect("readable config");
    siplb::config::parse(Path::new(path), &text).expect("valid config")
}

fn table(path: &str) -> RoutingTable {
    RoutingTable::unbound(&config(path), &ConfigHealth)
}

/// The process's resident memory in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn build(path: &str, repeat: usize) {
    let cfg = config(path);
    let before = rss_kib();
    let heap_before = HELD.load(Ordering::Relaxed);
    // The first table, kept: what a running siplb holds.
    let start = Instant::now();
    let kept = RoutingTable::unbound(&cfg, &ConfigHealth);
    let first = start.elapsed();
    let held = rss_kib().saturating_sub(before);
    let heap = HELD.load(Ordering::Relaxed).saturating_sub(heap_before);
    let servers = kept.server_count();
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let start = Instant::now();
        let t = RoutingTable::unbound(&cfg, &ConfigHealth);
        times.push(start.elapsed());
        drop(t);
    }
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or(first);
    println!(
        "{servers} servers in {} pools, {} routes: first build {:.2} ms, median of {repeat} \
         rebuilds {:.2} ms (fastest {:.2} ms); the table holds {} KiB of heap ({} bytes a \
         server; RSS grew {held} KiB)",
        kept.pools.len(),
        kept.routes.len(),
        first.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        times.first().copied().unwrap_or(first).as_secs_f64() * 1e3,
        heap / 1024,
        heap / servers.max(1),
    );
    drop(kept);
}
