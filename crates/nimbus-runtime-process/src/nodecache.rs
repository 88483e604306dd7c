//! Node's compile cache, and why nimbus's Node functions start without one.
//!
//! Python's bytecode can be compiled ahead without running any of the function (see
//! `crate::pycache`); V8's compile cache cannot: `module.enableCompileCache` (Node ≥ 22) writes
//! the code cache from the process that compiles, i.e. from a function instance running the
//! function's code, and every later instance would load what it wrote. That makes a writable
//! cache shared between instances, which nimbus does not give instances (one instance must not
//! be able to plant code another one runs). Node 20 has no such cache at all. So Node
//! functions compile their code at every cold start, and `nimbus up` says so once, in its banner.

use std::path::Path;

/// The major version of `node` (`v20.20.2` → 20).
fn major(version: &str) -> Option<u32> {
    version.trim().strip_prefix('v')?.split('.').next()?.parse().ok()
}

/// One line for `nimbus up`'s banner about the compile cache of the `node` nimbus runs
/// (`NIMBUS_NODE`, else `node` on PATH, as the runtime finds it); `None` without node.
pub fn banner_line() -> Option<String> {
    let node = std::env::var_os("NIMBUS_NODE").map_or_else(|| std::path::PathBuf::from("node"), Into::into);
    banner_line_of(&node)
}

fn banner_line_of(node: &Path) -> Option<String> {
    let out = std::process::Command::new(node).arg("--version").stdin(std::process::Stdio::null()).output().ok()?;
    let version = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    Some(note(&version, major(&version)?))
}

fn note(version: &str, major: u32) -> String {
    if major < 22 {
        format!(
            "node functions compile their code at every cold start: node {version} has no V8 compile cache (module.enableCompileCache needs Node 22 or later)"
        )
    } else {
        format!(
            "node functions compile their code at every cold start: node {version}'s module.enableCompileCache is written by the function's own instances, and nimbus shares nothing instances can write"
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn versions_without_a_compile_cache_say_so() {
        assert_eq!(major("v20.20.2\n"), Some(20));
        assert_eq!(major("20.1"), None);
        assert!(note("v20.20.2", 20).contains("has no V8 compile cache"));
        assert!(note("v22.3.0", 22).contains("enableCompileCache is written"));
    }
}
