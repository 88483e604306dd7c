//! Golden UI tests: each `tests/ui/<case>.toml` is loaded the way `nimbus up` loads an app, and
//! what the user would see is compared with `tests/ui/<case>.err`.
//!
//! How a case is run:
//! - The runner makes an empty temporary app directory and copies `<case>.toml` into it as
//!   `nimbus.toml`. If a directory `tests/ui/<case>/` exists, its files are copied in too,
//!   keeping their permission bits: that is the app's code (`functions/NAME/index.js`, an
//!   executable `bootstrap`, …). Most cases need none, because validation problems are reported
//!   before nimbus looks for any code; only cases that reach the existence checks (and valid
//!   cases) carry a directory.
//! - The app is loaded with `nimbus_manifest::load_as(dir, "nimbus.toml")`, the entry the
//!   gateway uses on deploy, so paths in messages are the stable `nimbus.toml` and never the
//!   temporary directory.
//! - A refused manifest renders as its `Diagnostics` (`2 problems in the app manifest:` and one
//!   indented line per problem), byte for byte what the CLI prints. A valid manifest renders as
//!   the single line in [`VALID`], so a case that should pass says so in its `.err` file.
//! - Every `.toml` starts with a `#` comment line saying what the case checks.
//!
//! `UPDATE_EXPECT=1 cargo test -p nimbus-manifest --test ui` (re)writes the `.err` files from
//! the current code instead of failing; review the change with `git diff`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// This package's directory: the test runner's `CARGO_MANIFEST_DIR` (this checkout), else the
/// one compiled in (a shared target dir may hold a binary built in another checkout).
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// What a case whose manifest is accepted renders as.
const VALID: &str = "valid: no problems in the app manifest\n";

#[test]
fn ui() {
    let dir = Path::new(&manifest_dir()).join("tests/ui");
    let update = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let cases = cases(&dir);
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    let mut failures = Vec::new();
    for case in &cases {
        let toml = std::fs::read_to_string(case.with_extension("toml")).unwrap();
        assert!(toml.starts_with('#'), "{}: start the case with a `#` line saying what it checks", name(case));
        let actual = render(case);
        let expected_path = case.with_extension("err");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(mismatch(case, &expected, &actual));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} UI cases differ (rerun with UPDATE_EXPECT=1 to accept the new output, then review `git diff`):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every case, as its path without extension, in name order so runs are reproducible.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.with_extension(""))
        .collect();
    out.sort();
    out
}

fn name(case: &Path) -> String {
    case.file_name().unwrap().to_string_lossy().into_owned()
}

/// Lay the case out as an app directory and load it as `nimbus up` would.
fn render(case: &Path) -> String {
    let app = tempfile::tempdir().unwrap();
    std::fs::copy(case.with_extension("toml"), app.path().join(nimbus_manifest::MANIFEST_FILE)).unwrap();
    if case.is_dir() {
        copy_tree(case, app.path());
    }
    match nimbus_manifest::load_as(app.path(), nimbus_manifest::MANIFEST_FILE) {
        Ok(_) => VALID.to_owned(),
        Err(diagnostics) => diagnostics.to_string(),
    }
}

/// Copy files and directories; `std::fs::copy` keeps the permission bits, so an executable
/// `bootstrap` stays executable.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The case's name and a line diff: `-` lines are expected only, `+` lines actual only.
fn mismatch(case: &Path, expected: &str, actual: &str) -> String {
    let mut out = format!("--- tests/ui/{0}.err (expected)\n+++ tests/ui/{0}.toml (actual)\n", name(case));
    for line in diff(&expected.lines().collect::<Vec<_>>(), &actual.lines().collect::<Vec<_>>()) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// A longest-common-subsequence line diff; the outputs are a few lines, so the quadratic table
/// is no concern.
fn diff(a: &[&str], b: &[&str]) -> Vec<String> {
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out
}
