//! Servers by DNS name: the lookups a config needs, asking them, and remembering the answers.
//!
//! A config names servers three ways besides `IP:port`: a server `address = "host:port"`
//! (A/AAAA of the host), a pool's `srv = "_sip._udp.NAME"` (SRV records, then each target's
//! A/AAAA) and a pool's `dns = "NAME:port"` (every A/AAAA of the name). [`lookups`] lists what a
//! config asks, [`Resolver::lookup_all`] asks it (hickory-resolver, the `[dns]` nameservers or
//! those of `/etc/resolv.conf`), and [`Answers::record`] keeps the last good answer of each
//! name: a name that stops resolving keeps its last addresses, is logged once when it starts
//! failing and is shown in `/status` until it resolves again. [`expand::expand`] turns the
//! file's config and the answers into the config the routing table and the probes are built
//! from; the refresh loop that ties them to a running proxy is `reload::spawn_dns`.

pub(crate) mod expand;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::{Config, Dns, PoolDns};
use crate::events::{Event, Kind};

/// One question siplb asks DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Lookup {
    /// Every A and AAAA record of a host name.
    Host(String),
    /// The SRV records of a name, and the addresses of their targets.
    Srv(String),
}

impl Lookup {
    /// The name asked.
    pub(crate) fn name(&self) -> &str {
        match self {
            Lookup::Host(n) | Lookup::Srv(n) => n,
        }
    }
}

/// One SRV record with its target's addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SrvTarget {
    pub(crate) priority: u16,
    pub(crate) weight: u16,
    /// Lower-case, without the trailing dot.
    pub(crate) target: String,
    pub(crate) port: u16,
    /// Sorted, IPv4 first.
    pub(crate) addrs: Vec<IpAddr>,
}

/// What DNS answered, in a stable order (so that replicas, and two refreshes, compare equal
/// whatever order the server gave the records in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Addresses sorted, IPv4 first, no duplicates.
    Host(Vec<IpAddr>),
    /// Records sorted by priority, target, port.
    Srv(Vec<SrvTarget>),
}

impl Answer {
    /// The answer as a few words for logs and `/status`: `10.0.0.1, 10.0.0.2`, or
    /// `0 10 fe1.contoso.com:5060 (10.0.0.1)` per SRV record.
    pub(crate) fn describe(&self) -> Vec<String> {
        match self {
            Answer::Host(ips) => ips.iter().map(ToString::to_string).collect(),
            Answer::Srv(targets) => targets
                .iter()
                .map(|t| {
                    let ips: Vec<String> = t.addrs.iter().map(ToString::to_string).collect();
                    format!(
                        "{} {} {}:{} ({})",
                        t.priority,
                        t.weight,
                        t.target,
                        t.port,
                        ips.join(", ")
                    )
                })
                .collect(),
        }
    }
}

/// Every lookup `cfg` needs, each once, in a stable order.
pub(crate) fn lookups(cfg: &Config) -> Vec<Lookup> {
    let mut all: Vec<Lookup> = Vec::new();
    for pool in &cfg.pools {
        all.extend(pool.named.iter().map(|n| Lookup::Host(n.name.clone())));
        match &pool.dns {
            Some(PoolDns::Srv { name, .. }) => all.push(Lookup::Srv(name.clone())),
            Some(PoolDns::All { name, .. }) => all.push(Lookup::Host(name.clone())),
            None => {}
        }
    }
    all.sort();
    all.dedup();
    all
}

/// What siplb knows of one name.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// The last good answer; kept while the name fails.
    answer: Option<Answer>,
    last_ok: Option<SystemTime>,
    /// Why the last lookup failed, while it fails.
    last_error: Option<String>,
    /// When the name started failing (the last lookup failed).
    failing_since: Option<SystemTime>,
}

/// The last answer of every name asked, and how its lookups go.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    entries: BTreeMap<Lookup, Entry>,
}

/// What one round of lookups did.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// An answer in use changed: the servers must be built again.
    pub(crate) changed: bool,
    /// For the event list: answers changed, names that started failing or resolve again.
    pub(crate) events: Vec<Event>,
}

/// One name in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct NameStatus {
    pub(crate) name: String,
    /// `host` (A/AAAA) or `srv`.
    pub(crate) kind: &'static str,
    /// The answer in use: addresses, or `priority weight target:port (addresses)`; empty
    /// while the name never resolved.
    pub(crate) answer: Vec<String>,
    /// When a lookup last succeeded (RFC 3339), if ever.
    pub(crate) last_ok: Option<String>,
    /// Why the last lookup failed, while the name fails; its last answer stays in use.
    pub(crate) last_error: Option<String>,
    /// Since when the name fails.
    pub(crate) failing_since: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Answers {
    /// The last good answer for `lookup`.
    pub(crate) fn get(&self, lookup: &Lookup) -> Option<&Answer> {
        self.entries.get(lookup).and_then(|e| e.answer.as_ref())
    }

    /// Records the results of one round of lookups at `now`, and forgets names that are no
    /// longer asked (`results` holds every name asked). Says whether an answer in use changed,
    /// with an event for each changed answer, each name that starts failing and each that
    /// resolves again (not for every failed refresh); logs the same and counts
    /// `siplb_dns_changes_total{name}` and `siplb_dns_failures_total{name}`.
    pub(crate) fn record(
        &mut self,
        results: Vec<(Lookup, Result<Answer, String>)>,
        now: SystemTime,
    ) -> Recorded {
        let mut events = Vec::new();
        let asked: BTreeSet<&Lookup> = results.iter().map(|(l, _)| l).collect();
        let before = self.entries.len();
        self.entries.retain(|l, _| asked.contains(l));
        let mut changed = self.entries.len() != before;
        for (lookup, result) in results {
            let name = lookup.name().to_string();
            let entry = self.entries.entry(lookup).or_default();
            match result {
                Ok(mut answer) => {
                    keep_target_addresses(&mut answer, entry.answer.as_ref());
                    if entry.failing_since.is_some() {
                        tracing::info!(name, "DNS name resolves again");
                        events.push(Event::now(Kind::Dns, format!("{name} resolves again")));
                    }
                    if entry.answer.as_ref() != Some(&answer) {
                        let described = answer.describe().join("; ");
                        tracing::info!(
                            name,
                            answer = %described,
                            "DNS answer changed; the servers follow"
                        );
                        events.push(Event::now(
                            Kind::Dns,
                            format!("{name} answers {described}; the servers follow"),
                        ));
                        metrics::counter!("siplb_dns_changes_total", "name" => name).increment(1);
                        entry.answer = Some(answer);
                        changed = true;
                    }
                    entry.last_ok = Some(now);
                    entry.last_error = None;
                    entry.failing_since = None;
                }
                Err(error) => {
                    if entry.failing_since.is_none() {
                        let kept = entry
                            .answer
                            .as_ref()
                            .map_or("none yet".to_string(), |a| a.describe().join("; "));
                        tracing::warn!(
                            name,
                            error = %error,
                            kept = %kept,
                            "DNS name does not resolve; its last addresses stay in use"
                        );
                        events.push(Event::now(
                            Kind::Dns,
                            format!(
                                "{name} does not resolve ({error}); its last answer stays in \
                                 use: {kept}"
                            ),
                        ));
                        entry.failing_since = Some(now);
                    }
                    metrics::counter!("siplb_dns_failures_total", "name" => name).increment(1);
                    entry.last_error = Some(error);
                }
            }
        }
        Recorded { changed, events }
    }

    /// Every name, for `/status`.
    pub(crate) fn status(&self) -> Vec<NameStatus> {
        self.entries
            .iter()
            .map(|(lookup, e)| NameStatus {
                name: lookup.name().to_string(),
                kind: match lookup {
                    Lookup::Host(_) => "host",
                    Lookup::Srv(_) => "srv",
                },
                answer: e.answer.as_ref().map(Answer::describe).unwrap_or_default(),
                last_ok: e.last_ok.map(rfc3339),
                last_error: e.last_error.clone(),
                failing_since: e.failing_since.map(rfc3339),
            })
            .collect()
    }
}

/// An SRV target that did not resolve this time keeps the addresses it had in `last` (the same
/// target and port), as a name that stops resolving keeps its own.
fn keep_target_addresses(answer: &mut Answer, last: Option<&Answer>) {
    let (Answer::Srv(targets), Some(Answer::Srv(last))) = (answer, last) else {
        return;
    };
    for t in targets.iter_mut().filter(|t| t.addrs.is_empty()) {
        if let Some(old) = last
            .iter()
            .find(|o| o.target == t.target && o.port == t.port)
        {
            t.addrs = old.addrs.clone();
        }
    }
}

/// Lookups asked at once: a config of thousands of names asks its nameserver a few dozen
/// questions at a time, not all of them in one burst.
const MAX_IN_FLIGHT: usize = 32;

/// Asks DNS, with the settings of one `[dns]`.
#[derive(Clone)]
pub(crate) struct Resolver {
    inner: TokioResolver,
    settings: Dns,
}

impl Resolver {
    /// A resolver for `dns`: its nameservers (UDP, then TCP for a truncated answer), or those
    /// of `/etc/resolv.conf` (with its search domains and `ndots`, as a Kubernetes pod needs
    /// for a short Service name). Nothing is cached: every refresh asks the nameservers.
    pub(crate) fn new(dns: &Dns) -> Result<Resolver, String> {
        let mut builder = if dns.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS settings: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for &addr in &dns.nameservers {
                group.push(NameServerConfig::new(addr, Protocol::Udp));
                group.push(NameServerConfig::new(addr, Protocol::Tcp));
            }
            let config = ResolverConfig::from_parts(None, vec![], group);
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let opts = builder.options_mut();
        opts.timeout = dns.timeout;
        opts.attempts = 1;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        Ok(Resolver {
            inner: builder.build(),
            settings: dns.clone(),
        })
    }

    /// The `[dns]` this resolver was made for.
    pub(crate) fn settings(&self) -> &Dns {
        &self.settings
    }

    /// Asks every lookup, [`MAX_IN_FLIGHT`] at a time; each result within about twice
    /// `[dns] timeout` of its start.
    pub(crate) async fn lookup_all(
        &self,
        lookups: &[Lookup],
    ) -> Vec<(Lookup, Result<Answer, String>)> {
        let mut tasks = tokio::task::JoinSet::new();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        for (i, lookup) in lookups.iter().enumerate() {
            let (this, lookup) = (self.clone(), lookup.clone());
            let limit = self.settings.timeout * 2;
            let in_flight = in_flight.clone();
            tasks.spawn(async move {
                // The semaphore is never closed, so a permit always comes.
                let _permit = in_flight.acquire_owned().await;
                let result = match tokio::time::timeout(limit, this.lookup(&lookup)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {limit:?}")),
                };
                (i, lookup, result)
            });
        }
        let mut results = Vec::with_capacity(lookups.len());
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                results.push(r);
            }
        }
        results.sort_by_key(|(i, _, _)| *i);
        results.into_iter().map(|(_, l, r)| (l, r)).collect()
    }

    async fn lookup(&self, lookup: &Lookup) -> Result<Answer, String> {
        match lookup {
            Lookup::Host(name) => self.host(name).await.map(Answer::Host),
            Lookup::Srv(name) => self.srv(name).await.map(Answer::Srv),
        }
    }

    /// Every address of `name`, sorted, IPv4 first.
    async fn host(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let found = self
            .inner
            .lookup_ip(name)
            .await
            .map_err(|e| e.to_string())?;
        let mut ips: Vec<IpAddr> = found.iter().collect();
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return Err(format!("no A or AAAA record for {name}"));
        }
        Ok(ips)
    }

    /// The SRV records of `name` with their targets' addresses. A target that does not resolve
    /// comes without addresses (it keeps its last ones, [`Answers::record`]); when none
    /// resolves the lookup fails, naming them. A record with the target "." says the service
    /// is not offered there (RFC 2782).
    async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, String> {
        let found = self
            .inner
            .srv_lookup(name)
            .await
            .map_err(|e| e.to_string())?;
        let mut targets = Vec::new();
        let mut errors = Vec::new();
        for record in found.iter() {
            let target = record.target().to_utf8().to_ascii_lowercase();
            let target = target.strip_suffix('.').unwrap_or(&target).to_string();
            if target.is_empty() {
                continue;
            }
            let addrs = match self.host(&target).await {
                Ok(addrs) => addrs,
                Err(e) => {
                    errors.push(format!("{target}: {e}"));
                    // Filled from the last answer, if the target had one (`Answers::record`).
                    Vec::new()
                }
            };
            targets.push(SrvTarget {
                priority: record.priority(),
                weight: record.weight(),
                target,
                port: record.port(),
                addrs,
            });
        }
        if targets.iter().all(|t| t.addrs.is_empty()) {
            return Err(if errors.is_empty() {
                format!("no usable SRV record for {name}")
            } else {
                format!("no SRV target of {name} resolves ({})", errors.join("; "))
            });
        }
        targets.sort();
        targets.dedup();
        Ok(targets)
    }
}

/// The address of `addrs` a server uses: the first (IPv4 before IPv6, each ascending) that
/// `usable` accepts — the same on every replica, whatever order DNS gave.
pub(crate) fn first_usable(
    addrs: &[IpAddr],
    port: u16,
    usable: impl Fn(&SocketAddr) -> bool,
) -> Option<SocketAddr> {
    addrs
        .iter()
        .map(|&ip| SocketAddr::new(ip, port))
        .find(|a| usable(a))
}

#[cfg(test)]
mod tests;
