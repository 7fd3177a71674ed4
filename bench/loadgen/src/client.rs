//! Clients: REGISTERs for a set of users at a fixed rate, for a fixed count, through a proxy
//! (or straight to the backends), over UDP (one socket carrying every user, retransmitting as
//! RFC 3261 §17.1.2.2 says) or over TCP/TLS (N connections, a user always on the same one, no
//! retransmission). One thread does it all: it sends what is due in small batches, reads
//! what came back in between, and times every transaction on the machine's monotonic clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::clock::now_ns;
use crate::sip::{read_answer, take_messages, write_register, Answer, Register};
use crate::udp::{Receiver, Sender, BATCH};

/// The transport of a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// What a run does.
pub struct Plan {
    /// Where REGISTERs go: the proxy, or (a direct run) the backends, a user always to the
    /// same one.
    pub to: Vec<SocketAddrV4>,
    pub transport: Transport,
    /// REGISTERs per second.
    pub rate: u64,
    /// REGISTERs in all (transaction i is user i mod users).
    pub count: u64,
    pub users: u64,
    pub domain: String,
    /// TCP/TLS connections (a user always on the same one).
    pub connections: usize,
    /// TLS: the clients' configuration and the name the proxy's certificate must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// RFC 3261 T1 (UDP retransmissions: T1, 2·T1, ... up to T2 = 4 s).
    pub t1_ns: u64,
    /// A transaction with no answer this long after its first send is lost.
    pub timeout_ns: u64,
    pub run: u32,
}

const T2_NS: u64 = 4_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Unsent,
    Pending,
    Done,
}

#[derive(Clone, Copy)]
struct Txn {
    first_sent: u64,
    retransmissions: u32,
    state: State,
}

/// Latency histograms, in microseconds.
pub struct Latency {
    /// Client send → client receive: the transaction.
    pub transaction: Histogram<u64>,
    /// Client send → backend receive: the request's way (through the proxy).
    pub request: Histogram<u64>,
    /// Backend send → client receive: the response's way back.
    pub response: Histogram<u64>,
}

/// What a run counted.
pub struct Tally {
    pub sent: u64,
    pub answered: u64,
    pub ok: u64,
    /// Retransmitted REGISTERs (messages).
    pub retransmissions: u64,
    /// Transactions retransmitted at least once.
    pub retransmitted: u64,
    /// Transactions answered after a retransmission.
    pub late: u64,
    /// Transactions without an answer by the end.
    pub lost: u64,
    /// Second answers to a transaction (to a retransmission).
    pub duplicates: u64,
    /// Answers matching no transaction of this run.
    pub stray: u64,
    /// Final answers other than 200, by code.
    pub codes: BTreeMap<u16, u64>,
    /// Connections the far end closed during the run.
    pub closed: u64,
    /// First send to last first send, seconds.
    pub send_secs: f64,
    /// First send to the end of the run, seconds.
    pub wall_secs: f64,
    /// The most a REGISTER went out after its slot, microseconds: how far behind the
    /// generator fell.
    pub max_lag_us: u64,
    pub latency: Latency,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits: constant bounds, which are valid.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// The state of a run, shared by the UDP and the stream loops.
struct Run<'a> {
    plan: &'a Plan,
    txns: Vec<Txn>,
    start: u64,
    next: u64,
    pending: u64,
    last_first_send: u64,
    tally: Tally,
    /// The transport's name in the Via.
    via: &'static str,
}

impl<'a> Run<'a> {
    fn new(plan: &'a Plan) -> Run<'a> {
        Run {
            plan,
            txns: vec![
                Txn {
                    first_sent: 0,
                    retransmissions: 0,
                    state: State::Unsent
                };
                plan.count as usize
            ],
            start: 0,
            next: 0,
            pending: 0,
            last_first_send: 0,
            via: match plan.transport {
                Transport::Udp => "UDP",
                Transport::Tcp => "TCP",
                Transport::Tls => "TLS",
            },
            tally: Tally {
                sent: 0,
                answered: 0,
                ok: 0,
                retransmissions: 0,
                retransmitted: 0,
                late: 0,
                lost: 0,
                duplicates: 0,
                stray: 0,
                codes: BTreeMap::new(),
                closed: 0,
                send_secs: 0.0,
                wall_secs: 0.0,
                max_lag_us: 0,
                latency: Latency {
                    transaction: histogram(),
                    request: histogram(),
                    response: histogram(),
                },
            },
        }
    }

    /// The time transaction `i` is due.
    fn slot(&self, i: u64) -> u64 {
        self.start + (i as u128 * 1_000_000_000 / self.plan.rate as u128) as u64
    }

    /// How many transactions are due by `now` (all of them at most).
    fn due(&self, now: u64) -> u64 {
        let n = (now.saturating_sub(self.start) as u128 * self.plan.rate as u128 / 1_000_000_000)
            as u64
            + 1;
        n.min(self.plan.count)
    }

    fn user(&self, i: u64) -> u64 {
        i % self.plan.users
    }

    fn write(&self, buf: &mut Vec<u8>, i: u64, local: SocketAddr) {
        write_register(
            buf,
            &Register {
                transport: self.via,
                local,
                domain: &self.plan.domain,
                user: self.user(i),
                run: self.plan.run,
                txn: i,
            },
        );
    }

    /// Transaction `i` went out for the first time at `now`.
    fn sent(&mut self, i: u64, now: u64) {
        let lag = now.saturating_sub(self.slot(i)) / 1000;
        self.tally.max_lag_us = self.tally.max_lag_us.max(lag);
        let t = &mut self.txns[i as usize];
        t.first_sent = now;
        t.state = State::Pending;
        self.pending += 1;
        self.tally.sent += 1;
        self.last_first_send = now;
    }

    fn answer(&mut self, a: Answer, now: u64) {
        if a.run != self.plan.run || a.txn >= self.plan.count {
            self.tally.stray += 1;
            return;
        }
        if a.code < 200 {
            return;
        }
        let t = &mut self.txns[a.txn as usize];
        match t.state {
            State::Unsent => self.tally.stray += 1,
            State::Done => self.tally.duplicates += 1,
            State::Pending => {
                t.state = State::Done;
                self.pending -= 1;
                self.tally.answered += 1;
                if a.code == 200 {
                    self.tally.ok += 1;
                } else {
                    *self.tally.codes.entry(a.code).or_default() += 1;
                }
                if t.retransmissions > 0 {
                    // Which copy was answered is unknown: no latency from it.
                    self.tally.late += 1;
                    return;
                }
                let l = &mut self.tally.latency;
                let _ = l
                    .transaction
                    .record(now.saturating_sub(t.first_sent) / 1000);
                if let Some((received, sent)) = a.backend_ns {
                    let _ = l
                        .request
                        .record(received.saturating_sub(t.first_sent) / 1000);
                    let _ = l.response.record(now.saturating_sub(sent) / 1000);
                }
            }
        }
    }

    /// Whether the run is over at `now`: everything sent, and everything answered or timed out.
    fn over(&self, now: u64) -> bool {
        self.next == self.plan.count
            && (self.pending == 0 || now > self.last_first_send + self.plan.timeout_ns)
    }

    /// Milliseconds to wait for answers before the next thing to do at `wake`.
    fn wait_ms(now: u64, wake: u64) -> u16 {
        wake.saturating_sub(now).div_ceil(1_000_000).min(100) as u16
    }

    fn finish(mut self, end: u64) -> Tally {
        self.tally.lost = self.pending;
        self.tally.retransmitted =
            self.txns.iter().filter(|t| t.retransmissions > 0).count() as u64;
        self.tally.send_secs = self.last_first_send.saturating_sub(self.start) as f64 / 1e9;
        self.tally.wall_secs = end.saturating_sub(self.start) as f64 / 1e9;
        self.tally
    }
}

/// Runs `plan` and returns what it counted.
pub fn run(plan: &Plan) -> Result<Tally> {
    if plan.rate == 0 || plan.count == 0 || plan.users == 0 || plan.to.is_empty() {
        bail!("rate, count, users and the destination must not be zero or empty");
    }
    match plan.transport {
        Transport::Udp => run_udp(plan),
        Transport::Tcp | Transport::Tls => run_streams(plan),
    }
}

fn run_udp(plan: &Plan) -> Result<Tally> {
    let socket = crate::udp::bind("127.0.0.1:0".parse()?)?;
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let epoll = Epoll::new(EpollCreateFlags::empty())?;
    epoll.add(socket.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
    let mut events = [EpollEvent::empty(); 4];
    let mut rx = Receiver::new();
    let mut tx = Sender::new();
    let mut msgs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut to: Vec<SocketAddrV4> = Vec::with_capacity(BATCH);
    // Retransmission timers: (when, transaction).
    let mut timers: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut r = Run::new(plan);
    r.start = now_ns();
    let dest = |r: &Run<'_>, i: u64| plan.to[(r.user(i) % plan.to.len() as u64) as usize];
    loop {
        // Answers first: when this process was not scheduled for a while, the answers waiting
        // in the socket must not be taken for losses by the retransmission timers below.
        while rx.recv(&socket, false)? > 0 {
            let at = now_ns();
            for k in 0..rx.got.len() {
                if let Some(a) = read_answer(rx.datagram(k)) {
                    r.answer(a, at);
                } else {
                    r.tally.stray += 1;
                }
            }
        }
        let now = now_ns();
        // What is due, in batches.
        let due = r.due(now);
        while r.next < due {
            let first = r.next;
            let n = ((due - first) as usize).min(BATCH);
            to.clear();
            for (i, msg) in (first..).zip(msgs.iter_mut().take(n)) {
                msg.clear();
                r.write(msg, i, local);
                to.push(dest(&r, i));
            }
            // The send time is read before the call: the backend may read the first message
            // before sendmmsg returns.
            let at = now_ns();
            tx.send(&socket, &msgs[..n], &to);
            for i in first..first + n as u64 {
                r.sent(i, at);
                timers.push(Reverse((at + plan.t1_ns, i)));
            }
            r.next += n as u64;
        }
        // Retransmissions that are due (RFC 3261 §17.1.2.2: timer E, T1 doubling up to T2).
        let mut n = 0;
        to.clear();
        while let Some(&Reverse((at, i))) = timers.peek() {
            if at > now || n == BATCH {
                break;
            }
            timers.pop();
            let t = r.txns[i as usize];
            if t.state != State::Pending || now >= t.first_sent + plan.timeout_ns {
                continue;
            }
            msgs[n].clear();
            r.write(&mut msgs[n], i, local);
            to.push(dest(&r, i));
            n += 1;
            let t = &mut r.txns[i as usize];
            t.retransmissions += 1;
            let interval = (plan.t1_ns << t.retransmissions.min(16)).min(T2_NS);
            timers.push(Reverse((now + interval, i)));
        }
        if n > 0 {
            tx.send(&socket, &msgs[..n], &to);
            r.tally.retransmissions += n as u64;
        }
        let now = now_ns();
        if r.over(now) {
            return Ok(r.finish(now));
        }
        let mut wake = if r.next < plan.count {
            r.slot(r.next)
        } else {
            r.last_first_send + plan.timeout_ns + 1
        };
        if let Some(&Reverse((at, _))) = timers.peek() {
            wake = wake.min(at);
        }
        match epoll.wait(&mut events, Run::wait_ms(now, wake)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("epoll_wait"),
        }
    }
}

/// A client connection over TCP or TLS.
struct Conn {
    sock: TcpStream,
    tls: Option<rustls::ClientConnection>,
    local: SocketAddr,
    inbuf: Vec<u8>,
    /// TCP: bytes not written yet.
    out: Vec<u8>,
    open: bool,
    /// Registered for writability too.
    want_out: bool,
}

impl Conn {
    fn connect(
        to: SocketAddrV4,
        tls: Option<&(Arc<rustls::ClientConfig>, String)>,
    ) -> Result<Conn> {
        let mut sock = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
        sock.set_nodelay(true)?;
        let local = sock.local_addr()?;
        let tls = match tls {
            Some((config, name)) => {
                let server = rustls::pki_types::ServerName::try_from(name.clone())
                    .with_context(|| format!("{name} is not a server name"))?;
                let mut conn = rustls::ClientConnection::new(config.clone(), server)?;
                // A batch is queued whole, then written as far as the socket takes it.
                conn.set_buffer_limit(None);
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock)
                        .with_context(|| format!("TLS handshake with {to}"))?;
                }
                Some(conn)
            }
            None => None,
        };
        sock.set_nonblocking(true)?;
        Ok(Conn {
            sock,
            tls,
            local,
            inbuf: Vec::with_capacity(64 << 10),
            out: Vec::with_capacity(64 << 10),
            open: true,
            want_out: false,
        })
    }

    /// Queues a message (TLS: encrypts it into rustls's buffer).
    fn queue(&mut self, msg: &[u8]) -> Result<()> {
        match self.tls.as_mut() {
            Some(c) => c.writer().write_all(msg)?,
            None => self.out.extend_from_slice(msg),
        }
        Ok(())
    }

    /// Writes what the socket takes now; returns whether bytes are left.
    fn flush(&mut self) -> Result<bool> {
        match self.tls.as_mut() {
            Some(c) => {
                while c.wants_write() {
                    match c.write_tls(&mut self.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(false)
            }
            None => {
                let mut at = 0;
                while at < self.out.len() {
                    match self.sock.write(&self.out[at..]) {
                        Ok(0) => bail!("connection closed while writing"),
                        Ok(n) => at += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                self.out.drain(..at);
                Ok(!self.out.is_empty())
            }
        }
    }

    /// Reads what arrived into `inbuf`; returns false when the far end closed.
    fn fill(&mut self, chunk: &mut [u8]) -> Result<bool> {
        loop {
            match self.tls.as_mut() {
                Some(c) => match c.read_tls(&mut self.sock) {
                    Ok(0) => return Ok(false),
                    Ok(_) => {
                        c.process_new_packets()?;
                        loop {
                            match c.reader().read(chunk) {
                                Ok(0) => return Ok(false),
                                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e.into()),
                },
                None => match self.sock.read(chunk) {
                    Ok(0) => return Ok(false),
                    Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e.into()),
                },
            }
        }
    }
}

fn run_streams(plan: &Plan) -> Result<Tally> {
    let mut conns = Vec::with_capacity(plan.connections.max(1));
    for j in 0..plan.connections.max(1) {
        conns.push(Conn::connect(
            plan.to[j % plan.to.len()],
            plan.tls.as_ref(),
        )?);
    }
    let epoll = Epoll::new(EpollCreateFlags::empty())?;
    for (j, c) in conns.iter().enumerate() {
        epoll.add(
            c.sock.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, j as u64),
        )?;
    }
    let mut events = vec![EpollEvent::empty(); 256];
    let mut chunk = vec![0u8; 64 << 10];
    let mut touched: Vec<usize> = Vec::new();
    let mut msg: Vec<u8> = Vec::with_capacity(512);
    let mut r = Run::new(plan);
    r.start = now_ns();
    let n_conns = conns.len() as u64;
    loop {
        let now = now_ns();
        let due = r.due(now);
        touched.clear();
        while r.next < due {
            let i = r.next;
            let j = (r.user(i) % n_conns) as usize;
            r.next += 1;
            if !conns[j].open {
                continue;
            }
            msg.clear();
            r.write(&mut msg, i, conns[j].local);
            conns[j].queue(&msg)?;
            if !touched.contains(&j) {
                touched.push(j);
            }
        }
        let at = now_ns();
        for &j in &touched {
            let left = conns[j].flush()?;
            if left != conns[j].want_out {
                conns[j].want_out = left;
                let flags = if left {
                    EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
                } else {
                    EpollFlags::EPOLLIN
                };
                epoll.modify(conns[j].sock.as_fd(), &mut EpollEvent::new(flags, j as u64))?;
            }
        }
        while r.tally.sent < r.next {
            let i = r.tally.sent;
            r.sent(i, at);
        }
        let now = now_ns();
        if r.over(now) {
            return Ok(r.finish(now));
        }
        let wake = if r.next < plan.count {
            r.slot(r.next)
        } else {
            r.last_first_send + plan.timeout_ns + 1
        };
        let n = match epoll.wait(&mut events, Run::wait_ms(now, wake)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        let got = now_ns();
        for e in &events[..n] {
            let j = e.data() as usize;
            let c = &mut conns[j];
            if !c.open {
                continue;
            }
            if e.events().contains(EpollFlags::EPOLLOUT) && !c.flush()? && c.want_out {
                c.want_out = false;
                epoll.modify(
                    c.sock.as_fd(),
                    &mut EpollEvent::new(EpollFlags::EPOLLIN, j as u64),
                )?;
            }
            let alive = match c.fill(&mut chunk) {
                Ok(alive) => alive,
                Err(e) => {
                    eprintln!("connection {} ({}): {e:#}", j, c.local);
                    false
                }
            };
            take_messages(&mut c.inbuf, |msg| match read_answer(msg) {
                Some(a) => r.answer(a, got),
                None => r.tally.stray += 1,
            });
            if !alive {
                c.open = false;
                r.tally.closed += 1;
                let _ = epoll.delete(c.sock.as_fd());
            }
        }
    }
}
