//! Config reloads: the file watcher, SIGHUP, and the admin API all end in [`reload`].
//!
//! The watcher watches the config file's *directory*, not the file: an editor's in-place
//! write, an atomic rename over the file, and a Kubernetes ConfigMap's `..data` symlink swap
//! all show up there, while a watch on the file itself would lose track of it after the first
//! rename. Events are debounced, and a reload runs only when the file's content changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use tokio::sync::mpsc;
use xxhash_rust::xxh3::xxh3_64;

use crate::config;
use crate::server::Proxy;

/// Reloads the config file (and with it the admin token). Returns the new config version, or
/// every error (the running config stays).
pub(crate) async fn reload(proxy: &Proxy) -> Result<u64, Vec<String>> {
    proxy
        .reload()
        .await
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

fn content_hash(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|bytes| xxh3_64(&bytes))
}

/// Watches the config file's directory and reloads on SIGHUP, until the task is dropped.
pub(crate) fn spawn_watchers(proxy: Arc<Proxy>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path: PathBuf = proxy.config().path.clone();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
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
    debouncer
        .watcher()
        .watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the config directory");

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

    // The file may have changed between siplb reading it and the watch starting: compare what
    // is there now with the config that runs, and reload at once if they differ.
    let mut last = std::fs::read_to_string(&path).ok().and_then(|text| {
        let same = config::parse(&path, &text).is_ok_and(|c| c == *proxy.config());
        same.then(|| xxh3_64(text.as_bytes()))
    });
    if last.is_none() {
        let _ = tx_start.send(false);
    }
    Ok(tokio::spawn(async move {
        let _keep_watching = debouncer;
        while let Some(forced) = rx.recv().await {
            let now = content_hash(&path);
            if !forced && (now.is_none() || now == last) {
                continue; // unrelated file, or the file is between rename steps
            }
            last = now;
            let _ = reload(&proxy).await;
        }
    }))
}
