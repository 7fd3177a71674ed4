//! Turning a TOML syntax error or a serde shape error (unknown key, wrong type, missing key)
//! into a [`ConfigError`] with a line and a dotted key path.
//!
//! toml reports a byte span. The key path is found by parsing the document again into
//! toml's spanned tree ([`DeTable::parse_recoverable`], which keeps what it could read around a
//! syntax error) and looking for the smallest key, value or array item whose span holds the
//! error. toml's own message is kept (for an unknown key it lists the accepted keys), on one
//! line, with serde's Rust type names replaced by TOML words.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::super::ConfigError;

/// The `ConfigError` for a document serde refused.
pub(super) fn to_config_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = readable(err.message());
    let Some(span) = err.span() else {
        return ConfigError::new(path, 1, "", message);
    };
    let offset = span.start.min(text.len());
    let line = super::line_of(text, offset);
    let mut key = key_at(text, offset);
    // The span of a missing key is its table; name the key itself.
    if let Some(missing) = backticked_after(&message, "missing field ") {
        key = if key.is_empty() {
            missing.to_string()
        } else {
            format!("{key}.{missing}")
        };
    }
    ConfigError::new(path, line, key, message)
}

/// The first `` `name` `` right after `prefix` in `message`.
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}

/// toml's message on one line, in the file's words rather than Rust's.
fn readable(message: &str) -> String {
    let mut out = message.split_whitespace().collect::<Vec<_>>().join(" ");
    for rust in ["i64", "u64", "u32", "u16", "usize"] {
        out = out.replace(&format!("expected {rust}"), "expected a whole number");
    }
    out = out.replace("a sequence", "an array");
    if out == "duplicate key" {
        out.push_str("; each key and each [table] may be defined only once");
    }
    // `expected struct RawPool` → `expected a table`.
    while let Some(start) = out.find("struct Raw") {
        let name = start + "struct ".len();
        let end = out[name..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |n| name + n);
        out.replace_range(start..end, "a table");
    }
    out
}

/// One key, value or array item of the document: its dotted path and its span.
struct Node {
    path: String,
    span: Range<usize>,
    /// A table or an array-of-tables item: a place a syntax error can be inside of.
    is_table: bool,
}

/// The dotted path of the most specific key, value or array item at `offset`; the enclosing
/// table when nothing is at `offset` itself; `""` when not even that is found.
fn key_at(text: &str, offset: usize) -> String {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut nodes = Vec::new();
    collect(doc.get_ref(), "", &mut nodes);
    let specificity = |n: &Node| {
        (
            n.span.end.saturating_sub(n.span.start),
            usize::MAX - n.path.len(),
        )
    };
    let holds = |n: &Node| n.span.start <= offset && offset < n.span.end;
    let touches = |n: &Node| n.span.start <= offset && offset <= n.span.end;
    let best = nodes
        .iter()
        .filter(|n| holds(n))
        .min_by_key(|n| specificity(n))
        .or_else(|| {
            nodes
                .iter()
                .filter(|n| touches(n))
                .min_by_key(|n| specificity(n))
        })
        .or_else(|| {
            nodes
                .iter()
                .filter(|n| n.is_table && n.span.start <= offset)
                .max_by_key(|n| (n.span.start, n.path.len()))
        });
    best.map(|n| n.path.clone()).unwrap_or_default()
}

fn collect(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Node>) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let is_table = matches!(v.get_ref(), DeValue::Table(_));
        out.push(Node {
            path: path.clone(),
            span: k.span(),
            is_table: false,
        });
        out.push(Node {
            path: path.clone(),
            span: v.span(),
            is_table,
        });
        collect_value(v.get_ref(), &path, out);
    }
}

fn collect_value(value: &DeValue<'_>, path: &str, out: &mut Vec<Node>) {
    match value {
        DeValue::Table(t) => collect(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                let is_table = matches!(item.get_ref(), DeValue::Table(_));
                out.push(Node {
                    path: item_path.clone(),
                    span: item.span(),
                    is_table,
                });
                collect_value(item.get_ref(), &item_path, out);
            }
        }
        _ => {}
    }
}
