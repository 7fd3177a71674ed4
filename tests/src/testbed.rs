//! A farm of backends behind one siplb with a client in front, and one request through it and
//! its answer back, checked byte for byte both ways.
//!
//! [`Testbed::exchange`] sends the client's exact bytes, finds the one backend that received the
//! request (by Call-ID and CSeq), proves the forwarded copy is the original plus siplb's allowed
//! edits, and proves the response the client got is the backend's response less siplb's Via.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::backend::{Behaviour, Datagram};
use crate::client::{Client, ANSWER_WITHIN};
use crate::config::Config;
use crate::edits::{assert_forwarded_intact, assert_response_intact, Hop};
use crate::farm::Farm;
use crate::ops::Ops;
use crate::placement::{sweep, Placement};
use crate::process::Siplb;
use crate::request::Request;
use crate::sip::{show, Msg};

/// What one exchange showed.
#[derive(Debug)]
pub struct Exchange {
    /// Id of the backend that received the request.
    pub server: String,
    /// The branch of siplb's Via on the forwarded request.
    pub branch: String,
    /// The forwarded request as the backend received it.
    pub forwarded: Datagram,
    /// The final response the client received (none for ACK and BENOTIFY).
    pub response: Option<Msg>,
}

/// A farm of backends behind one siplb, and a client in front: what most tests start from.
pub struct Testbed {
    pub farm: Farm,
    pub siplb: Siplb,
    pub client: Client,
}

impl Testbed {
    /// `siplb` with `config` in front of `farm`.
    pub fn new(farm: Farm, config: &Config) -> Testbed {
        let siplb = Siplb::start(&config.render());
        Testbed {
            farm,
            siplb,
            client: Client::new(),
        }
    }

    /// `farm` behind an already started `siplb` (one whose config has `[ops]`), a client, and
    /// siplb's ops endpoint.
    pub fn with_ops(farm: Farm, siplb: Siplb) -> (Testbed, Ops) {
        let ops = Ops::of(&siplb);
        let tb = Testbed {
            farm,
            siplb,
            client: Client::new(),
        };
        (tb, ops)
    }

    /// `n` backends `fe1..fe<n>` answering per `behaviour`, one pool `fe`, one route to it.
    pub fn single_pool(n: usize, behaviour: Behaviour) -> Testbed {
        let farm = Farm::start("fe", n, behaviour);
        let config = Config::single_pool(&farm.backends);
        Testbed::new(farm, &config)
    }

    /// The hop as siplb sees it from this testbed's client.
    pub fn hop(&self) -> Hop {
        Hop {
            siplb: self.siplb.addr(),
            client: self.client.addr(),
        }
    }

    /// Sends `sent` and checks it arrives intact at one backend and its answer comes back
    /// intact.
    pub fn exchange(&mut self, sent: &[u8]) -> Exchange {
        self.exchange_expecting(sent, sent)
    }

    /// Like [`Testbed::exchange`], when the backend must receive `expected` (before siplb's
    /// edits) rather than exactly what was sent: a body cut at Content-Length, a Route naming
    /// siplb removed.
    pub fn exchange_expecting(&mut self, sent: &[u8], expected: &[u8]) -> Exchange {
        let req = Msg::must_parse(expected);
        let call_id = req.call_id().expect("request without Call-ID").to_string();
        let cseq = req
            .header("cseq")
            .expect("request without CSeq")
            .to_string();
        let answered = !matches!(req.method(), Some("ACK" | "BENOTIFY"));

        self.client.send_raw(self.siplb.addr(), sent);
        let response = answered.then(|| {
            self.client
                .wait_for(ANSWER_WITHIN, |m| {
                    m.status().is_some_and(|s| s >= 200)
                        && m.call_id() == Some(call_id.as_str())
                        && m.header("cseq") == Some(cseq.as_str())
                })
                .unwrap_or_else(|| panic!("no final response to\n{}", show(sent)))
        });

        let (server, forwarded) = self.farm.wait_forwarded(&call_id, &cseq, ANSWER_WITHIN);
        let branch = assert_forwarded_intact(expected, &forwarded.bytes, self.hop());
        if let Some(response) = &response {
            let answer = self
                .farm
                .get(&server)
                .sent_with_call_id(&call_id)
                .into_iter()
                .rev()
                .find(|d| {
                    d.msg()
                        .is_some_and(|m| m.header("cseq") == Some(cseq.as_str()))
                })
                .expect("backend recorded no answer");
            assert_response_intact(&answer.bytes, &response.raw, self.siplb.addr());
        }
        Exchange {
            server,
            branch,
            forwarded,
            response,
        }
    }
}

impl Testbed {
    /// Registers every user once through siplb (its first listener) and returns where each
    /// went; see [`sweep`].
    pub fn sweep(&mut self, users: &[String]) -> Placement {
        sweep(&self.farm, &mut self.client, self.siplb.addr(), users)
    }

    /// Registers `aor` through siplb (its first listener); see [`Testbed::register_via`].
    pub fn register(&mut self, aor: &str) -> (u16, Option<String>) {
        self.register_via(self.siplb.addr(), aor)
    }

    /// Registers `aor` through siplb's listener `to`; returns the final status and the id of
    /// the server that received the REGISTER (`None` when none did: siplb answered itself).
    /// Panics if two servers received it.
    pub fn register_via(&mut self, to: SocketAddr, aor: &str) -> (u16, Option<String>) {
        let req = Request::register(aor);
        let answer = self.client.transact(to, &req);
        let call_id = req.call_id();
        // A backend records a request before it answers, so the record is there by now.
        let reached: Vec<&str> = self
            .farm
            .backends
            .iter()
            .filter(|b| !b.with_call_id(&call_id).is_empty())
            .map(|b| b.id())
            .collect();
        assert!(reached.len() <= 1, "REGISTER {aor} reached {reached:?}");
        (
            answer.status().unwrap_or_default(),
            reached.first().map(|id| id.to_string()),
        )
    }
}

impl Farm {
    /// Waits until a backend has received the request (`call_id`, `cseq`); panics if none has by
    /// then, or if more than one has. Returns that backend's id and the last such datagram.
    pub fn wait_forwarded(
        &self,
        call_id: &str,
        cseq: &str,
        within: Duration,
    ) -> (String, Datagram) {
        let deadline = Instant::now() + within;
        loop {
            let mut found: Vec<(String, Datagram)> = Vec::new();
            for b in &self.backends {
                let hit = b
                    .with_call_id(call_id)
                    .into_iter()
                    .rev()
                    .find(|d| d.msg().is_some_and(|m| m.header("cseq") == Some(cseq)));
                if let Some(d) = hit {
                    found.push((b.id().to_string(), d));
                }
            }
            match found.len() {
                1 => return found.remove(0),
                0 if Instant::now() < deadline => {
                    // Polling a condition under a deadline: no backend has it yet.
                    std::thread::sleep(Duration::from_millis(5));
                }
                0 => panic!("no backend received Call-ID {call_id} CSeq {cseq} within {within:?}"),
                _ => panic!(
                    "Call-ID {call_id} CSeq {cseq} reached several backends: {:?}",
                    found.iter().map(|(id, _)| id).collect::<Vec<_>>()
                ),
            }
        }
    }
}
