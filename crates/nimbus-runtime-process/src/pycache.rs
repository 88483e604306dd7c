//! Python bytecode compiled once per artifact, ahead of the first start.
//!
//! Instances run with `PYTHONDONTWRITEBYTECODE=1`: a function's code directory is read-only
//! (inside the sandbox and as a stored artifact), so without help every cold start would compile
//! every user module again. Instead, when a Python function version is prepared (at deploy and
//! when nimbus starts with a live deployment), nimbus compiles its `.py` files with the
//! function's own interpreter into `DATA_DIR/cache/pyc/<code digest>/`, laid out the way
//! `PYTHONPYCACHEPREFIX` expects for the paths the runtime sees (`/var/task/…` in the sandbox,
//! the artifact's host path without it). Instances get that directory as their
//! `PYTHONPYCACHEPREFIX`, read-only: bound read-only in the sandbox, and never written by an
//! instance anywhere (`PYTHONDONTWRITEBYTECODE` stays), so no instance can put bytecode where
//! another instance, or another function with the same code, would run it.
//!
//! The `.pyc` files are the timestamp kind: Python still checks each against its source's
//! mtime and size, so a cache from another interpreter version (the file names carry the
//! version tag) or a stale one is ignored, never run. Compilation problems (a syntax error) are
//! left for the import to report as it always has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nimbus_core::{FunctionVersion, RuntimeKind};

/// Where the cache is mounted inside the sandbox.
pub(crate) const INSIDE: &str = "/var/cache/nimbus-pyc";

/// The marker written once a digest's cache is complete.
const DONE: &str = ".complete";

/// The longest a compilation may take before it is given up (the instances then compile as
/// before).
const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Compiles every `.py` under CODE (argv 2) for the path the runtime sees it at, SEEN (argv 3),
/// into the prefix tree under OUT (argv 1).
const SCRIPT: &str = r#"
import importlib.util, os, py_compile, sys
out, code, seen = sys.argv[1:4]
sys.pycache_prefix = out
for d, dirs, files in os.walk(code):
    dirs[:] = [x for x in dirs if x not in ("__pycache__", ".git", "node_modules")]
    for f in files:
        if not f.endswith(".py"):
            continue
        src = os.path.join(d, f)
        inside = os.path.join(seen, os.path.relpath(src, code))
        try:
            py_compile.compile(src, cfile=importlib.util.cache_from_source(inside), dfile=inside, doraise=True)
        except Exception:
            pass
"#;

/// The cache directory of `function`'s code, if it has been compiled.
pub(crate) fn cached(data_dir: &Path, function: &FunctionVersion) -> Option<PathBuf> {
    let dir = dir_of(data_dir, function)?;
    dir.join(DONE).is_file().then_some(dir)
}

fn dir_of(data_dir: &Path, function: &FunctionVersion) -> Option<PathBuf> {
    let digest = &function.code_digest;
    // The digest names a directory: anything but hex would be a path of its own.
    if digest.is_empty() || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(data_dir.join("cache/pyc").join(digest))
}

/// Compile `function`'s modules once (a Python function whose code has no cache yet). `seen`
/// is where the runtime sees the code (`/var/task` in the sandbox). Failures are logged: the
/// function still runs, compiling at each start as before.
pub(crate) async fn prepare(python: &Path, data_dir: &Path, function: &FunctionVersion, seen: &Path) {
    if function.spec.runtime != RuntimeKind::Python {
        return;
    }
    let Some(dir) = dir_of(data_dir, function) else { return };
    if dir.join(DONE).is_file() {
        return;
    }
    if let Err(e) = compile(python, &dir, &function.code_path, seen).await {
        tracing::warn!(function = %function.spec.name, "cannot precompile the function's Python modules: {e}");
    }
}

async fn compile(python: &Path, dir: &Path, code: &Path, seen: &Path) -> Result<(), String> {
    let parent = dir.parent().ok_or("no parent directory")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let tmp = tempfile::tempdir_in(parent).map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg("-S").arg("-c").arg(SCRIPT).arg(tmp.path()).arg(code).arg(seen);
    cmd.env_clear().stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let out = match tokio::time::timeout(COMPILE_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", python.display())),
        Err(_) => return Err(format!("gave up after {}s", COMPILE_TIMEOUT.as_secs())),
    };
    if !out.status.success() {
        return Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    std::fs::write(tmp.path().join(DONE), b"").map_err(|e| format!("cannot mark the cache complete: {e}"))?;
    // Readable by the sandbox user (nimbus may run as root, the function as nobody).
    let tmp = tmp.keep();
    let _ = make_readable(&tmp);
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another deploy of the same code finished first: its cache is as good.
        Err(_) if dir.join(DONE).is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(format!("cannot move the cache into place: {e}"))
        }
    }
}

/// Directories 0755 and files 0644 (a temp dir is made 0700).
fn make_readable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_readable(&entry.path())?;
        } else {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// `PYTHONPYCACHEPREFIX` for an instance of `function`, when its modules are compiled.
pub(crate) fn prefix_env(rt: &crate::ProcessRuntime, function: &FunctionVersion) -> Option<(String, String)> {
    if function.spec.runtime != RuntimeKind::Python {
        return None;
    }
    let dir = cached(rt.data_dir(), function)?;
    let seen = if rt.sandbox.is_some() { INSIDE.to_owned() } else { dir.display().to_string() };
    Some(("PYTHONPYCACHEPREFIX".into(), seen))
}
