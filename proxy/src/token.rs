//! The admin bearer token: read from `[ops] admin_token_file` or, failing that,
//! `SIPLB_ADMIN_TOKEN`, and read again on every config reload so that a token can be rotated
//! without a restart. The ops endpoint checks requests against it; reload refreshes it.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::config::Config;

/// The admin token, shared by whoever checks it and refreshed on reload. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Token(Arc<ArcSwapOption<String>>);

impl Token {
    /// Reads the token as `cfg` says: its `admin_token_file`, else `SIPLB_ADMIN_TOKEN`. An
    /// unreadable or empty file is an error (running with an admin API the operator believes
    /// is protected by a file that is not there would be worse).
    pub(crate) fn load(cfg: &Config) -> anyhow::Result<Token> {
        let t = Token::default();
        t.refresh(cfg)?;
        Ok(t)
    }

    /// A token fixed by the program (the demo's), not read from the config.
    pub(crate) fn fixed(token: &str) -> Token {
        let t = Token::default();
        t.0.store(Some(Arc::new(token.to_string())));
        t
    }

    /// The token itself, to show to the person who runs the demo.
    pub(crate) fn secret(&self) -> Option<String> {
        self.0.load_full().map(|t| t.to_string())
    }

    /// Reads the token again (after a config reload).
    pub(crate) fn refresh(&self, cfg: &Config) -> anyhow::Result<()> {
        let token = match &cfg.ops.admin_token_file {
            Some(file) => Some(read_token(file)?),
            None => std::env::var("SIPLB_ADMIN_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        self.0.store(token.map(Arc::new));
        Ok(())
    }

    /// Whether an admin API exists at all.
    pub(crate) fn is_configured(&self) -> bool {
        self.0.load().is_some()
    }

    /// Whether `given` is the token, compared in constant time. Always false when no token is
    /// configured.
    pub(crate) fn admits(&self, given: &str) -> bool {
        let Some(expected) = self.0.load_full() else {
            return false;
        };
        constant_time_eq(given.as_bytes(), expected.as_bytes())
    }
}

fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read admin_token_file {}: {e}", file.display()))?;
    let token = text.trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "admin_token_file {} is empty",
        file.display()
    );
    Ok(token)
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn admits_only_the_configured_token() {
        assert!(!Token::default().admits(""), "no token admits nothing");
        let t = Token::fixed("s3cret");
        assert!(t.admits("s3cret"));
        assert!(!t.admits("s3cre"));
    }
}
