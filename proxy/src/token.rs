//! The admin bearer token: read from `[ops] admin_token_file` or, failing that,
//! `SIPLB_ADMIN_TOKEN`, and read again on every config reload so that a token can be rotated
//! without a restart. The ops endpoint checks requests against it; reload refreshes it.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::config::Config;

/// The admin token, held by the proxy, checked by the ops endpoint and refreshed on every
/// config reload. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Token {
    current: Arc<ArcSwapOption<String>>,
    /// Set by the program ([`Token::fixed`]), not read from the config: reloads keep it.
    fixed: bool,
}

impl Token {
    /// Reads the token as `cfg` says: its `admin_token_file`, else `SIPLB_ADMIN_TOKEN`. An
    /// unreadable or empty file is an error (running with an admin API the operator believes
    /// is protected by a file that is not there would be worse).
    pub(crate) fn load(cfg: &Config) -> anyhow::Result<Token> {
        let t = Token::default();
        t.refresh(cfg)?;
        Ok(t)
    }

    /// A token fixed by the program (the demo's), not read from the config; reloads keep it.
    pub(crate) fn fixed(token: &str) -> Token {
        Token {
            current: Arc::new(ArcSwapOption::from_pointee(token.to_string())),
            fixed: true,
        }
    }

    /// The token itself, to show to the person who runs the demo.
    pub(crate) fn secret(&self) -> Option<String> {
        self.current.load_full().map(|t| t.to_string())
    }

    /// Reads the token again (after a config reload); a fixed token stays as it is.
    pub(crate) fn refresh(&self, cfg: &Config) -> anyhow::Result<()> {
        if self.fixed {
            return Ok(());
        }
        let token = match &cfg.ops.admin_token_file {
            Some(file) => Some(read_token(file)?),
            None => std::env::var("SIPLB_ADMIN_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        self.current.store(token.map(Arc::new));
        Ok(())
    }

    /// Whether an admin API exists at all.
    pub(crate) fn is_configured(&self) -> bool {
        self.current.load().is_some()
    }

    /// Whether `given` is the token, compared in constant time. Always false when no token is
    /// configured.
    pub(crate) fn admits(&self, given: &str) -> bool {
        let Some(expected) = self.current.load_full() else {
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
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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

    #[test]
    fn a_fixed_token_survives_a_reload() {
        let text = "[listen]\nudp = [\"127.0.0.1:0\"]\n[[pool]]\nname = \"a\"\n\
                    servers = [{ address = \"127.0.0.1:5071\" }]\n[[route]]\npool = \"a\"\n";
        let cfg = crate::config::parse(Path::new("t.toml"), text).expect("valid config");
        let t = Token::fixed("demo");
        t.refresh(&cfg).expect("nothing to read");
        assert!(t.admits("demo"));
    }
}
