//! The repository's own rules, checked on every test run in the manner of rust-analyzer's
//! `tidy.rs`, so that ARCHITECTURE.md and the house style cannot silently go false:
//! - the crate dependency edges are exactly the ones ARCHITECTURE.md's table allows;
//! - every Rust file starts with a `//!` line saying what it is for;
//! - nothing cites a document outside the repository;
//! - no product function is longer than a reader can hold in their head (60 lines), unless it
//!   is listed below as a data table or a flat registration list, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// This package's directory: the test runner's `CARGO_MANIFEST_DIR` (this checkout), else the
/// one compiled in (a shared target dir may hold a binary built in another checkout).
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

fn root() -> PathBuf {
    Path::new(&manifest_dir()).join("../..").canonicalize().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Files of the repository (not build output, dependencies or VCS data).
fn files(under: &Path) -> impl Iterator<Item = PathBuf> {
    walkdir::WalkDir::new(under)
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            !(e.file_type().is_dir()
                && matches!(name.as_ref(), "target" | "node_modules" | ".git" | ".nimbus" | "__pycache__"))
        })
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// `crate -> crates it may depend on`, from the table between the `tidy:crate-edges` markers
/// in ARCHITECTURE.md: `| crate | may depend on |` with the names in backticks.
fn allowed_edges() -> BTreeMap<String, BTreeSet<String>> {
    let text = read(&root().join("ARCHITECTURE.md"));
    let start = text.find("<!-- tidy:crate-edges -->").expect("ARCHITECTURE.md has no <!-- tidy:crate-edges --> table");
    let end = text[start..].find("<!-- /tidy:crate-edges -->").expect("the crate-edges table is not closed") + start;
    let mut edges = BTreeMap::new();
    for line in text[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let names =
            |cell: &str| -> BTreeSet<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
        let krate = names(cells[0]).into_iter().next().unwrap();
        edges.insert(krate, names(cells.get(1).copied().unwrap_or_default()));
    }
    edges
}

/// `crate -> workspace crates it depends on` (normal and build dependencies) from every
/// member's Cargo.toml.
fn actual_edges() -> BTreeMap<String, BTreeSet<String>> {
    let manifests: Vec<(PathBuf, toml::Table)> = ["crates", "fixtures"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root().join(d)).unwrap())
        .map(|e| e.unwrap().path().join("Cargo.toml"))
        .filter(|p| p.is_file())
        .map(|p| {
            let t: toml::Table = read(&p).parse().unwrap();
            (p, t)
        })
        .collect();
    let name = |t: &toml::Table| t["package"]["name"].as_str().unwrap().to_owned();
    let members: BTreeSet<String> = manifests.iter().map(|(_, t)| name(t)).collect();
    manifests
        .iter()
        .map(|(_, t)| {
            let deps = ["dependencies", "build-dependencies"]
                .iter()
                .filter_map(|k| t.get(*k).and_then(|v| v.as_table()))
                .flat_map(|d| d.keys().cloned())
                .filter(|d| members.contains(d))
                .collect();
            (name(t), deps)
        })
        .collect()
}

#[test]
fn crate_edges_are_the_ones_architecture_md_allows() {
    let allowed = allowed_edges();
    let actual = actual_edges();
    let mut problems = Vec::new();
    for (krate, deps) in &actual {
        let Some(ok) = allowed.get(krate) else {
            problems.push(format!("{krate} is not in ARCHITECTURE.md's crate-edges table; add a row for it"));
            continue;
        };
        for d in deps.difference(ok) {
            problems.push(format!("{krate} depends on {d}, which ARCHITECTURE.md does not allow"));
        }
        for d in ok.difference(deps) {
            problems.push(format!(
                "ARCHITECTURE.md allows {krate} -> {d}, but {krate} does not depend on it: keep the table exact"
            ));
        }
    }
    for krate in allowed.keys().filter(|k| !actual.contains_key(*k)) {
        problems.push(format!("ARCHITECTURE.md lists {krate}, which is not a workspace crate"));
    }
    assert!(problems.is_empty(), "crate edges:\n  {}", problems.join("\n  "));
}

#[test]
fn the_allowed_edges_point_one_way() {
    // A cycle in the table would make "lower" meaningless even if Cargo refused it anyway.
    let allowed = allowed_edges();
    fn visit(k: &str, g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>) {
        assert!(!path.iter().any(|p| p == k), "cycle in the crate-edges table: {} -> {k}", path.join(" -> "));
        path.push(k.to_owned());
        for d in g.get(k).into_iter().flatten() {
            visit(d, g, path);
        }
        path.pop();
    }
    for k in allowed.keys() {
        visit(k, &allowed, &mut Vec::new());
    }
}

fn rust_files() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = ["crates", "fixtures", "tests", "examples"]
        .iter()
        .flat_map(|d| files(&root().join(d)))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    all.sort();
    all
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let missing: Vec<String> =
        rust_files().into_iter().filter(|p| !read(p).starts_with("//!")).map(|p| rel(&p)).collect();
    assert!(missing.is_empty(), "files that do not start with a `//!` line:\n  {}", missing.join("\n  "));
}

#[test]
fn nothing_cites_documents_outside_the_repository() {
    // The brief and notes these names refer to live outside the repository; a reader of the
    // repository cannot follow such a citation. (Spelled in pieces so this file passes.)
    let outside = [
        ["DESIGN", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["FIELD", "-NOTES"].concat(),
        ["../", "shared"].concat(),
    ];
    let me = root().join("crates/nimbus-tidy/tests/tidy.rs");
    let mut hits = Vec::new();
    for path in files(&root()).filter(|p| *p != me) {
        let Ok(text) = std::fs::read_to_string(&path) else { continue }; // binary files
        for (i, line) in text.lines().enumerate() {
            if let Some(cite) = outside.iter().find(|c| line.contains(c.as_str())) {
                hits.push(format!("{}:{}: cites {cite}", rel(&path), i + 1));
            }
        }
    }
    assert!(hits.is_empty(), "citations of documents outside the repository:\n  {}", hits.join("\n  "));
}

/// Longer functions that are data tables or flat lists, with why they stay whole.
const LONG_ALLOWED: &[(&str, &str, &str)] = &[(
    "crates/nimbus-gateway/src/metrics.rs",
    "render",
    "a flat list: one registration per metric family, in the order /metrics shows them",
)];

/// The longest a product function may be, signature to closing brace.
const MAX_FN_LINES: usize = 60;

/// Files compiled only for tests: declared as `#[cfg(test)] mod NAME;` somewhere.
fn test_only_files(sources: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for path in sources {
        let text = read(path);
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            if pair[0].trim() != "#[cfg(test)]" {
                continue;
            }
            let decl = pair[1].trim().trim_start_matches("pub(crate) ").trim_start_matches("pub ");
            let Some(name) = decl.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) else { continue };
            let stem = path.file_stem().unwrap().to_string_lossy();
            let dir = if matches!(stem.as_ref(), "lib" | "main" | "mod") {
                path.parent().unwrap().to_owned()
            } else {
                path.parent().unwrap().join(stem.as_ref())
            };
            out.insert(dir.join(format!("{name}.rs")));
            out.insert(dir.join(name).join("mod.rs"));
        }
    }
    out
}

/// (first line, name, length) of every function outside `#[cfg(test)]` modules.
fn functions(text: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        // Skip an inline test module: from `#[cfg(test)]` + `mod … {` to its closing brace.
        if t == "#[cfg(test)]"
            && lines.get(i + 1).is_some_and(|n| n.trim_start().starts_with("mod ") && n.ends_with('{'))
        {
            let close = format!("{}}}", " ".repeat(indent(line)));
            i += 2;
            while i < lines.len() && lines[i] != close {
                i += 1;
            }
            i += 1;
            continue;
        }
        let sig = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        if let Some(rest) = sig.strip_prefix("fn ") {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // The body starts at the first line of the signature that ends with `{`; a line
            // ending with `;` first is a declaration without a body.
            let mut j = i;
            while j < lines.len() && !lines[j].ends_with('{') && !lines[j].ends_with(';') && !lines[j].ends_with('}') {
                j += 1;
            }
            if j < lines.len() && lines[j].ends_with('{') {
                let close = format!("{}}}", " ".repeat(indent(line)));
                let mut k = j + 1;
                while k < lines.len() && lines[k] != close {
                    k += 1;
                }
                out.push((i + 1, name, k + 1 - i));
            }
        }
        i += 1;
    }
    out
}

#[test]
fn product_functions_fit_in_a_readers_head() {
    // Product code: the crates' sources (test fixtures and example guests are conformance
    // tables of operations, not product code).
    let crates = root().join("crates");
    let sources: Vec<PathBuf> = rust_files()
        .into_iter()
        .filter(|p| p.starts_with(&crates) && p.components().any(|c| c.as_os_str() == "src"))
        .collect();
    let test_only = test_only_files(&sources);
    let mut long = Vec::new();
    for path in sources.iter().filter(|p| !test_only.contains(*p)) {
        let shown = rel(path);
        for (line, name, len) in functions(&read(path)) {
            let allowed = LONG_ALLOWED.iter().any(|(f, n, _)| shown.ends_with(f) && *n == name);
            if len > MAX_FN_LINES && !allowed {
                long.push(format!("{shown}:{line}: fn {name} is {len} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them, or list a data table in LONG_ALLOWED with the reason):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_function_scanner_measures_what_rustfmt_writes() {
    let src = "fn a() {\n    x();\n}\n\npub(crate) async fn b(\n    y: u8,\n) -> u8 {\n    y\n}\ntrait T {\n    fn c(&self);\n}\n#[cfg(test)]\nmod tests {\n    fn long() {\n    }\n}\n";
    let got: Vec<(usize, String, usize)> = functions(src);
    assert_eq!(got, vec![(1, "a".to_owned(), 3), (5, "b".to_owned(), 5)]);
}
