//! Config reloads: the file watcher, SIGHUP, and the admin API all end in [`reload`].
//!
//! The watcher watches the config file's *directory*, not the file: an editor's in-place
//! write, an atomic rename over the file, and a Kubernetes ConfigMap's `..data` symlink swap
//! all show up there, while a watch on the file itself would lose track of it after the first
//! rename. The certificate and key files of the `[listen] tls` entries are watched the same
//! way (a renewal tool's rename, a Kubernetes Secret's `..data` swap), and a change to one of
//! them triggers the same reload as a config edit: the config is validated again (which checks
//! the files) and each TLS listener loads its pair again. Events are debounced, and a reload
//! runs only when the content of one of these files changed. After each reload the running
//! config says which files (and so which directories) to watch next.
//!
//! What they keep up to date is a [`Reloadable`]: the running proxy, or a witness
//! (`siplb witness`), which probes the servers of the same file with no SIP listener.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};
use xxhash_rust::xxh3::Xxh3;

use crate::config::{self, Config, ConfigError};
use crate::dns::{self, Answer, Lookup, Resolver};
use crate::events::{Event, Events, Kind};
use crate::server::Proxy;

/// What a config reload and the DNS refresh act on.
pub(crate) trait Reloadable: Send + Sync + 'static {
    /// The config in effect, as its file declares it.
    fn config(&self) -> Arc<Config>;
    /// Reads the config file again: the new config version, or every error (the running
    /// config stays).
    fn reload(&self) -> impl Future<Output = Result<u64, Vec<ConfigError>>> + Send;
    /// Where a refused reload is recorded for `/status`.
    fn events(&self) -> &Events;
    /// Records one round of DNS lookups; true when the servers were rebuilt from it.
    fn apply_dns(
        &self,
        results: Vec<(Lookup, Result<Answer, String>)>,
    ) -> impl Future<Output = bool> + Send;
    /// What wakes the DNS refresh before its time.
    fn dns_wake(&self) -> Arc<Notify>;
    /// Whether it has stopped (the DNS refresh ends then).
    fn has_stopped(&self) -> bool;
}

impl Reloadable for Proxy {
    fn config(&self) -> Arc<Config> {
        Proxy::config(self)
    }
    async fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        Proxy::reload(self).await
    }
    fn events(&self) -> &Events {
        self.control.events()
    }
    async fn apply_dns(&self, results: Vec<(Lookup, Result<Answer, String>)>) -> bool {
        Proxy::apply_dns(self, results).await
    }
    fn dns_wake(&self) -> Arc<Notify> {
        Proxy::dns_wake(self)
    }
    fn has_stopped(&self) -> bool {
        Proxy::has_stopped(self)
    }
}

/// Reloads the config file (and with it the admin token). Returns the new config version, or
/// every error (the running config stays).
pub(crate) async fn reload(proxy: &Proxy) -> Result<u64, Vec<String>> {
    reload_recorded(proxy).await
}

/// Reloads `target`'s config file; a refusal is recorded as an event with its errors.
async fn reload_recorded<R: Reloadable>(target: &R) -> Result<u64, Vec<String>> {
    target.reload().await.map_err(|errors| {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let message = format!("reload refused: {}", errors.join("; "));
        target.events().record(Event::now(Kind::Reload, message));
        errors
    })
}

/// The files a reload depends on: the config file, the certificate and key of each
/// `[listen] tls` entry of `cfg`, and each pool's TLS files towards its servers (CA bundle,
/// client certificate and key) — a renewed CA or client certificate is taken up like a
/// renewed listener certificate.
fn watched_files(cfg: &Config) -> Vec<PathBuf> {
    let mut files = vec![cfg.path.clone()];
    for tls in &cfg.listen.tls {
        files.push(tls.cert.clone());
        files.push(tls.key.clone());
    }
    for pool in &cfg.pools {
        if !pool.has_tls_servers() {
            continue;
        }
        files.push(pool.tls.ca_file().to_path_buf());
        if let Some(c) = &pool.tls.client_cert {
            files.push(c.cert.clone());
            files.push(c.key.clone());
        }
    }
    let mut seen = BTreeSet::new();
    files.retain(|f| seen.insert(f.clone()));
    files
}

/// The directory of each file, once (`.` for a bare file name).
fn dirs_of(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}

/// One hash over the contents of `files` (the config file first), in order; `None` while the
/// config file cannot be read (it is between rename steps, and its return is another event).
/// A certificate or key that cannot be read counts as a content of its own, so that its loss
/// is reported by a refused reload and its return reloads again.
fn content_hash(files: &[PathBuf]) -> Option<u64> {
    let mut h = Xxh3::new();
    for (i, f) in files.iter().enumerate() {
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update(&(bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(_) if i == 0 => return None,
            Err(_) => h.update(&u64::MAX.to_le_bytes()),
        }
    }
    Some(h.digest())
}

/// Makes the watched directories `wanted`: watches the new ones, unwatches the others. A
/// directory that cannot be watched (it does not exist yet) is logged and left out; the config
/// that names it was refused, or will be.
fn watch_dirs(
    watcher: &mut dyn Watcher,
    watching: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
) {
    for gone in watching.difference(&wanted) {
        let _ = watcher.unwatch(gone);
        tracing::info!(dir = %gone.display(), "no longer watching");
    }
    watching.retain(|d| wanted.contains(d));
    for dir in wanted {
        if watching.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "watching the config and certificate files");
                watching.insert(dir);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
        }
    }
}

/// Watches the config file's directory and the directories of the TLS listeners' files, and
/// reloads on SIGHUP, until the task is dropped.
pub(crate) fn spawn_watchers<R: Reloadable>(
    proxy: Arc<R>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path: PathBuf = proxy.config().path.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let file_tx = tx.clone();
    let tx_start = tx.clone();
    let mut debouncer =
        notify_debouncer_mini::new_debouncer(Duration::from_millis(200), move |res| {
            if let Ok(events) = res {
                let events: Vec<notify_debouncer_mini::DebouncedEvent> = events;
                if !events.is_empty() {
                    let _ = file_tx.send(false);
                }
            }
        })?;
    let mut files = watched_files(&proxy.config());
    // The config's own directory must be watchable; a certificate's may come later.
    let config_dir = dirs_of(std::slice::from_ref(&path));
    let mut watching = BTreeSet::new();
    for dir in &config_dir {
        debouncer
            .watcher()
            .watch(dir, RecursiveMode::NonRecursive)?;
        watching.insert(dir.clone());
        tracing::info!(dir = %dir.display(), "watching the config directory");
    }
    watch_dirs(debouncer.watcher(), &mut watching, dirs_of(&files));

    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                if tx.send(true).is_err() {
                    break;
                }
            }
        });
    }

    // The files may have changed between siplb reading them and the watch starting: hash
    // them first, then compare the config file with the config that runs, and reload at once
    // if they differ (a later change is an event, and its hash differs from this one).
    let hashed = content_hash(&files);
    let same = std::fs::read_to_string(&path)
        .ok()
        .is_some_and(|text| config::parse(&path, &text).is_ok_and(|c| c == *proxy.config()));
    let mut last = if same { hashed } else { None };
    if last.is_none() {
        let _ = tx_start.send(false);
    }
    Ok(tokio::spawn(async move {
        let mut debouncer = debouncer;
        while let Some(forced) = rx.recv().await {
            let now = content_hash(&files);
            if !forced && (now.is_none() || now == last) {
                continue; // unrelated file, or the config file is between rename steps
            }
            last = now;
            let _ = reload_recorded(&*proxy).await;
            // The config in effect (new, or the old one after a refusal) names the files.
            let next = watched_files(&proxy.config());
            if next != files {
                files = next;
                last = content_hash(&files);
                watch_dirs(debouncer.watcher(), &mut watching, dirs_of(&files));
            }
        }
    }))
}

/// Asks DNS for every name of the running config once (so that the servers they give are in
/// the table before siplb says it is ready), then again every `[dns] refresh` and at once after
/// a reload, in a task that ends when the proxy stops or is dropped. The proxy's servers follow
/// a changed answer ([`Reloadable::apply_dns`]); a config without names asks nothing.
pub(crate) async fn start_dns<R: Reloadable>(proxy: &Arc<R>) -> tokio::task::JoinHandle<()> {
    let mut resolver = None;
    refresh_dns(&**proxy, &mut resolver).await;
    let weak = Arc::downgrade(proxy);
    let wake = proxy.dns_wake();
    tokio::spawn(async move {
        loop {
            let refresh = match weak.upgrade() {
                Some(proxy) if !proxy.has_stopped() => proxy.config().dns.refresh,
                _ => return,
            };
            tokio::select! {
                _ = tokio::time::sleep(refresh) => {}
                _ = wake.notified() => {}
            }
            match weak.upgrade() {
                Some(proxy) if !proxy.has_stopped() => refresh_dns(&*proxy, &mut resolver).await,
                _ => return,
            }
        }
    })
}

/// One round: every lookup of the running config, asked at once, handed to the proxy. The
/// resolver is made again when `[dns]` changed.
async fn refresh_dns<R: Reloadable>(proxy: &R, resolver: &mut Option<Resolver>) {
    let cfg = proxy.config();
    let lookups = dns::lookups(&cfg);
    if lookups.is_empty() {
        // Forgets the names a previous config had.
        proxy.apply_dns(Vec::new()).await;
        return;
    }
    if resolver.as_ref().is_none_or(|r| *r.settings() != cfg.dns) {
        *resolver = match Resolver::new(&cfg.dns) {
            Ok(r) => Some(r),
            Err(e) => {
                let failed = lookups.into_iter().map(|l| (l, Err(e.clone()))).collect();
                proxy.apply_dns(failed).await;
                return;
            }
        };
    }
    if let Some(r) = resolver {
        let results = r.lookup_all(&lookups).await;
        proxy.apply_dns(results).await;
    }
}
