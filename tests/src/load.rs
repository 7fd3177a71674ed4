//! Steady REGISTER load: a client that keeps registering users at a fixed pace in the background
//! and remembers, for every request, when it left and whether (and when) its final answer came.
//!
//! This is what a health test measures a failure against: the requests that got no answer are
//! the ones siplb sent to a dead server, and their send times bound when siplb stopped doing so.
//! Nothing is retransmitted, so one lost request is one lost request. Sending is paced by the
//! clock (request `i` leaves at `start + i / rate`); a sender and a receiver thread share one
//! socket. Every run is bounded by a deadline given at start.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::request::Request;
use crate::sip::Msg;

/// How long [`Load::stop`] waits for answers still in flight.
pub const GRACE: Duration = Duration::from_millis(500);

/// One request of a load run.
#[derive(Debug, Clone)]
pub struct Sent {
    pub aor: String,
    pub call_id: String,
    pub at: Instant,
    /// The final answer's status and arrival time, if it came.
    pub answer: Option<(u16, Instant)>,
}

impl Sent {
    /// Answered with a final status.
    pub fn answered(&self) -> bool {
        self.answer.is_some()
    }

    pub fn status(&self) -> Option<u16> {
        self.answer.map(|(s, _)| s)
    }
}

#[derive(Default)]
struct Record {
    sent: Vec<(String, String, Instant)>,
    answers: HashMap<String, (u16, Instant)>,
}

struct Shared {
    record: Mutex<Record>,
    stop_sending: AtomicBool,
    stop_listening: AtomicBool,
    sent: AtomicUsize,
    answered: AtomicUsize,
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running load: REGISTERs of `aors`, round robin, at `rate` per second.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts registering `aors` in turn through `to` from a socket on `bind` (port 0 picks
    /// one), at `rate` requests per second, for at most `limit`.
    pub fn start(
        bind: SocketAddr,
        to: SocketAddr,
        aors: Vec<String>,
        rate: u32,
        limit: Duration,
    ) -> Load {
        assert!(
            !aors.is_empty() && rate > 0,
            "a load needs users and a rate"
        );
        let socket = UdpSocket::bind(bind).expect("bind load socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("set read timeout");
        let receiving = socket.try_clone().expect("clone load socket");
        let shared = Arc::new(Shared {
            record: Mutex::new(Record::default()),
            stop_sending: AtomicBool::new(false),
            stop_listening: AtomicBool::new(false),
            sent: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
        });
        let started = Instant::now();
        let deadline = started + limit;
        let sender = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("load-send".into())
                .spawn(move || send(&socket, to, &aors, rate, deadline, &shared))
                .expect("spawn load sender")
        };
        let receiver = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("load-recv".into())
                .spawn(move || receive(&receiving, deadline + GRACE, &shared))
                .expect("spawn load receiver")
        };
        Load {
            shared,
            threads: vec![sender, receiver],
            started,
        }
    }

    /// Like [`Load::start`] from `127.0.0.1`.
    pub fn on_loopback(to: SocketAddr, aors: Vec<String>, rate: u32, limit: Duration) -> Load {
        Load::start(SocketAddr::from(([127, 0, 0, 1], 0)), to, aors, rate, limit)
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How many requests got their final answer so far.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Every request so far with its answer (if any yet).
    pub fn snapshot(&self) -> Vec<Sent> {
        let r = self.shared.record();
        r.sent
            .iter()
            .map(|(aor, call_id, at)| Sent {
                aor: aor.clone(),
                call_id: call_id.clone(),
                at: *at,
                answer: r.answers.get(call_id).copied(),
            })
            .collect()
    }

    /// How many requests were sent so far.
    pub fn sent(&self) -> usize {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Stops sending, waits for the answers still in flight (at most [`GRACE`]), and returns
    /// every request.
    pub fn stop(mut self) -> Vec<Sent> {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stop_sending.store(true, Ordering::Relaxed);
        let mut threads = std::mem::take(&mut self.threads).into_iter();
        // The sender stops at once; the receiver listens until every request is answered or
        // the grace period is over (a lost request is never answered).
        if let Some(sender) = threads.next() {
            let _ = sender.join();
        }
        let until = Instant::now() + GRACE;
        let answered_all = || {
            self.shared.answered.load(Ordering::Relaxed) >= self.shared.sent.load(Ordering::Relaxed)
        };
        while !answered_all() && Instant::now() < until {
            // Polling a condition under a deadline.
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.stop_listening.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

fn send(
    socket: &UdpSocket,
    to: SocketAddr,
    aors: &[String],
    rate: u32,
    deadline: Instant,
    shared: &Shared,
) {
    let start = Instant::now();
    let gap = Duration::from_secs(1) / rate;
    for i in 0u32.. {
        if shared.stop_sending.load(Ordering::Relaxed) {
            return;
        }
        let due = start + gap * i;
        if due >= deadline {
            return;
        }
        let now = Instant::now();
        if due > now {
            // Pacing the load, not waiting for a result.
            std::thread::sleep(due - now);
        }
        let aor = &aors[i as usize % aors.len()];
        let req = Request::register(aor);
        let call_id = req.call_id();
        let at = Instant::now();
        shared.record().sent.push((aor.clone(), call_id, at));
        shared.sent.fetch_add(1, Ordering::Relaxed);
        // A send that fails (e.g. ICMP noise) is a request without an answer: counted as lost.
        let _ = socket.send_to(&req.bytes(), to);
    }
}

fn receive(socket: &UdpSocket, deadline: Instant, shared: &Shared) {
    let mut buf = vec![0u8; 70_000];
    loop {
        if shared.stop_listening.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(_) => continue,
        };
        let at = Instant::now();
        let Some(m) = Msg::parse(&buf[..n]) else {
            continue;
        };
        let (Some(status), Some(call_id)) = (m.status(), m.call_id()) else {
            continue;
        };
        if status < 200 {
            continue;
        }
        let mut r = shared.record();
        if !r.answers.contains_key(call_id) {
            r.answers.insert(call_id.to_string(), (status, at));
            shared.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}
