//! The checking context the parts of the manifest walk share: where problems are collected, the
//! typed readers of spanned TOML values, and where each function's keys were written. It
//! depends on nothing else in the crate but `diag`, so every checker can use it without an
//! import cycle.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::Diagnostic;

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Where things were written, for the file checks that run after validation.
#[derive(Default)]
pub(crate) struct Locations {
    pub functions: HashMap<String, FunctionLocations>,
    /// Where each `[auth.NAME]`'s `jwks_file` was written, by policy name.
    pub jwks_files: HashMap<String, usize>,
    pub assets: Option<AssetLocations>,
}

#[derive(Default, Clone)]
pub(crate) struct FunctionLocations {
    pub table: usize,
    pub code: Option<usize>,
    pub handler: Option<usize>,
    pub component: Option<usize>,
}

/// Collects every problem instead of stopping at the first, each placed by its byte offset.
pub(crate) struct Ctx<'s> {
    file: &'s str,
    src: &'s str,
    errors: Vec<Diagnostic>,
}

impl<'s> Ctx<'s> {
    /// An error at each key of `t` that belongs to another kind of table (`other`), saying
    /// `message(key)`.
    pub(crate) fn misplaced(&mut self, t: &DeTable<'_>, field: &str, other: &[&str], message: impl Fn(&str) -> String) {
        for (key, _) in t.iter() {
            let k: &str = key.get_ref().as_ref();
            if other.contains(&k) {
                self.err(key.span(), &format!("{field}.{k}"), message(k));
            }
        }
    }

    /// `file` is the name messages show; `src` is the manifest text spans point into.
    pub(crate) fn new(file: &'s str, src: &'s str) -> Self {
        Ctx { file, src, errors: Vec::new() }
    }

    pub(crate) fn src(&self) -> &'s str {
        self.src
    }

    /// How many problems so far; a checker compares it before and after to tell whether its
    /// own part was clean.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn into_errors(self) -> Vec<Diagnostic> {
        self.errors
    }

    pub(crate) fn err(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        self.errors.push(Diagnostic::at(self.file, self.src, span.start, field, message.into()));
    }

    pub(crate) fn unknown_keys(&mut self, table: &DeTable<'_>, known: &[&str], prefix: &str, what: &str) {
        for (key, _) in table.iter() {
            let k: &str = key.get_ref().as_ref();
            if !known.contains(&k) {
                let hint = closest(k, known).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
                let takes = if known.is_empty() { " no keys".to_owned() } else { format!(": {}", known.join(", ")) };
                self.err(key.span(), &join(prefix, k), format!("unknown key `{k}`{hint}; {what} takes{takes}"));
            }
        }
    }

    pub(crate) fn string(&mut self, v: &Value<'_>, field: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.err(v.span(), field, format!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, v: &Value<'_>, field: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.err(v.span(), field, format!("expected true or false, found {}", other.type_str()));
                None
            }
        }
    }

    fn int(&mut self, v: &Value<'_>, field: &str, lo: i64, hi: i64) -> Option<i64> {
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            other => {
                self.err(v.span(), field, format!("expected an integer, found {}", other.type_str()));
                return None;
            }
        };
        match parsed {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            _ => {
                self.err(v.span(), field, format!("must be between {lo} and {hi}"));
                None
            }
        }
    }

    pub(crate) fn u32(&mut self, v: &Value<'_>, field: &str, lo: u32, hi: u32) -> Option<u32> {
        self.int(v, field, i64::from(lo), i64::from(hi)).and_then(|n| u32::try_from(n).ok())
    }

    pub(crate) fn duration(&mut self, v: &Value<'_>, field: &str, lo: Duration, hi: Duration) -> Option<Duration> {
        let text = self.string(v, field)?;
        match parse_duration(&text) {
            Some(d) if d >= lo && d <= hi => Some(d),
            Some(_) => {
                self.err(
                    v.span(),
                    field,
                    format!("\"{text}\" is out of range; use a duration between {} and {}", fmt_d(lo), fmt_d(hi)),
                );
                None
            }
            None => {
                self.err(
                    v.span(),
                    field,
                    format!("\"{text}\" is not a duration; write it like \"250ms\", \"10s\", \"5m\" or \"1h\""),
                );
                None
            }
        }
    }
}

/// Parse a duration the way the manifest writes them: "250ms", "10s", "5m", "1h".
pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn fmt_d(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The known key nearest to a misspelt one, if it is close enough to be a typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known.iter().map(|k| (edit_distance(key, k), *k)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let cur = row.get(j + 1).copied().unwrap_or(0);
            let best = if ca == *cb { prev } else { 1 + prev.min(cur).min(row.get(j).copied().unwrap_or(0)) };
            if let Some(slot) = row.get_mut(j + 1) {
                *slot = best;
            }
            prev = cur;
        }
    }
    row.last().copied().unwrap_or(0)
}

/// Whether `s` is a valid name for an app, a function or a KV namespace: 1-64 letters, digits,
/// '-' or '_'.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Where `[static]`'s keys were written, for the file checks.
#[derive(Clone, Debug, Default)]
pub(crate) struct AssetLocations {
    pub dir: usize,
    pub spa_fallback: Option<usize>,
}

/// The HTTP methods a route (or a CORS policy) may name.
pub(crate) const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A route path (or a redirect's, rewrite's or headers rule's source): literal segments,
/// whole-segment `{name}` parameters, an optional trailing `*`.
pub(crate) fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("\"{p}\" must start with '/'"));
    }
    if p.contains(['?', '#', ' ']) {
        return Err(format!("\"{p}\" must be a plain path without query, fragment or spaces"));
    }
    let segments: Vec<&str> = p.split('/').skip(1).collect();
    let mut params = Vec::new();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i != last {
            return Err(format!("\"{p}\" has an empty segment ('//'); remove it"));
        }
        if *seg == "*" {
            if i != last {
                return Err(format!("\"{p}\": '*' is only allowed as the last segment (\"/static/*\")"));
            }
            continue;
        }
        if let Some(inner) = seg.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(format!("\"{p}\": segment \"{seg}\" must be a whole {{param}}"));
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("\"{p}\": parameter \"{name}\" must be letters, digits or '_'"));
            }
            if name == "proxy" {
                return Err(format!(
                    "\"{p}\": \"proxy\" is the name of the trailing wildcard; choose another parameter name"
                ));
            }
            if params.contains(&name) {
                return Err(format!("\"{p}\": parameter \"{name}\" appears twice"));
            }
            params.push(name);
        } else if seg.contains(['{', '}', '*']) {
            return Err(format!("\"{p}\": segment \"{seg}\" mixes text with '{{', '}}' or '*'; parameters and wildcards take a whole segment"));
        }
    }
    Ok(())
}
