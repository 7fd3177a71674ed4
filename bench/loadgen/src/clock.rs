//! One clock for every timestamp: CLOCK_MONOTONIC, in nanoseconds. It is the machine's, not
//! the process's: a backend and a client read the same clock, even in two processes.

use nix::time::{clock_gettime, ClockId};

/// Now, in nanoseconds of CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux; a failure would read as time zero.
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The CPU time (user + system) this process used so far, in seconds.
pub fn process_cpu_secs() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            secs(u.user_time()) + secs(u.system_time())
        })
        .unwrap_or(0.0)
}
