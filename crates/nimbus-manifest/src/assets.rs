//! `[static]`: the app's static files (`dir`), served by the gateway where no route matches,
//! and stored with each deployment so a rollback serves the old files again.
//!
//! The keys are checked here (a relative path inside the app directory); that the directory and
//! the fallback file exist is checked with the other files in `files.rs`.

use std::path::{Component, Path};

use toml::de::{DeTable, DeValue};

use crate::ctx::{AssetLocations, Ctx};

/// Keys of `[static]`.
pub(crate) const KEYS: &[&str] = &["dir", "spa_fallback"];

/// `[static]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticSpec {
    /// The directory of files, relative to the app directory (`public`).
    pub dir: String,
    /// A file under `dir` (`index.html`) that answers a GET for a path no file and no route
    /// matches, when the client accepts HTML: the entry point of a single-page app.
    pub spa_fallback: Option<String>,
}

pub(crate) fn check(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Option<(StaticSpec, AssetLocations)> {
    let v = root.get("static")?;
    let DeValue::Table(table) = v.get_ref() else {
        cx.err(v.span(), "static", format!("expected a table (`[static]`), found {}", v.get_ref().type_str()));
        return None;
    };
    cx.unknown_keys(table, KEYS, "static", "[static]");
    let Some(dv) = table.get("dir") else {
        cx.err(v.span(), "static.dir", "[static] needs `dir`, the directory of files to serve (e.g. dir = \"public\")");
        return None;
    };
    let dir =
        cx.string(dv, "static.dir").filter(|d| relative_inside(cx, dv.span(), "static.dir", d, "the app directory"));
    let mut locations = AssetLocations { dir: dv.span().start, spa_fallback: None };
    let spa_fallback = match table.get("spa_fallback") {
        Some(fv) => {
            locations.spa_fallback = Some(fv.span().start);
            let f = cx.string(fv, "static.spa_fallback");
            Some(f.filter(|f| relative_inside(cx, fv.span(), "static.spa_fallback", f, "`dir`"))?)
        }
        None => None,
    };
    Some((StaticSpec { dir: dir?, spa_fallback }, locations))
}

/// A path that names something inside its base: relative, not empty, no `..`.
fn relative_inside(cx: &mut Ctx<'_>, span: std::ops::Range<usize>, field: &str, p: &str, base: &str) -> bool {
    let path = Path::new(p);
    let problem = if p.is_empty() {
        Some("is empty")
    } else if path.is_absolute() {
        Some("is an absolute path")
    } else if path.components().any(|c| c == Component::ParentDir) {
        Some("has a \"..\" component")
    } else {
        None
    };
    if let Some(problem) = problem {
        cx.err(span, field, format!("\"{p}\" {problem}; write a path relative to {base} that stays inside it"));
    }
    problem.is_none()
}
