//! A directory of a unit test's own under the system's temporary directory, removed when
//! dropped: where tests write the certificates, keys and config files siplb reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory, removed with everything in it when dropped.
pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    /// A new empty directory; `name` tells the test's directories apart.
    pub(crate) fn new(name: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "siplb-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    /// The path of `file` in the directory.
    pub(crate) fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Writes `bytes` to `file` in the directory (making its parent directories); its path.
    pub(crate) fn write(&self, file: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
