//! The Python zygote: a prepared sandbox (`crate::shells`) of a Python function holds an
//! interpreter that has already started, with nimbus's bootstrap and the standard modules it
//! and most handlers need imported, instead of an init waiting to exec one.
//!
//! The sandbox's init starts `python3 -S bootstrap.pyc --zygote` at once, with a fixed platform
//! environment (no instance identity: no credentials, ids, Runtime API or user variables). The
//! bootstrap imports what it needs and blocks reading its standard input. Claiming the spare
//! writes the instance's environment there (NUL-ended `KEY=VALUE` entries, the same bytes a held
//! init reads) and closes it; the bootstrap replaces `os.environ` with it, applies what Python
//! reads from the environment only at start-up (`PYTHONPATH` into `sys.path`,
//! `PYTHONPYCACHEPREFIX`, `PYTHONDONTWRITEBYTECODE`, `TZ`), and only then imports the handler:
//! user code never runs before the instance's environment is in place. Closed with nothing
//! written, the zygote exits quietly (the spare was not needed).
//!
//! One zygote per prepared sandbox, so per instance: no interpreter state is shared between
//! instances or functions (no fork from a common parent), and everything the sandbox guarantees
//! holds for the zygote from its first instruction.
//!
//! A function whose `env` sets what Python reads only at start-up and the zygote cannot apply
//! afterwards (`PYTHON*` other than `PYTHONPATH`, `LANG`, `LC_*`) gets the held init instead.
//! Without the sandbox (`--insecure-no-sandbox`) there are no prepared spares and no zygote.

use std::process::Stdio;

use nimbus_core::{FunctionVersion, RuntimeKind, StartError};

use crate::ProcessRuntime;

/// The bootstrap's argument that makes it a zygote.
pub(crate) const FLAG: &str = "--zygote";
/// And the one that makes the zygote import asyncio too: for functions with `concurrency` > 1,
/// where `async def` handlers run many at once on an event loop. Importing it costs ~75 ms on
/// a 2-core machine (it pulls in ssl, logging, inspect), which would otherwise be the first
/// invocation's; other functions' spares do not pay it.
const ASYNCIO_FLAG: &str = "--preload-asyncio";

/// Whether a prepared sandbox of `function` holds a zygote rather than a waiting init.
pub(crate) fn fits(function: &FunctionVersion) -> bool {
    fits_with(function.spec.runtime, function.spec.env.keys())
}

fn fits_with<'a>(runtime: RuntimeKind, mut env: impl Iterator<Item = &'a String>) -> bool {
    runtime == RuntimeKind::Python
        && !env.any(|k| (k.starts_with("PYTHON") && k != "PYTHONPATH") || k == "LANG" || k.starts_with("LC_"))
}

/// The runtime's arguments for a zygote of a function with `concurrency`.
pub(crate) fn args(args: &[String], concurrency: u32) -> Vec<String> {
    let mut args = args.to_vec();
    args.push(FLAG.to_owned());
    if concurrency > 1 {
        args.push(ASYNCIO_FLAG.to_owned());
    }
    args
}

/// The zygote's own environment: what every Python instance has, and nothing of an instance.
fn environment(rt: &ProcessRuntime) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), rt.instance_path()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), "UTC".into()),
        ("HOME".into(), "/tmp".into()),
        ("TMPDIR".into(), "/tmp".into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ]
}

/// A held start's input: a pipe as the process's stdin, whose write end gets the instance's
/// environment when the spare is claimed. A zygote also gets its own environment now.
pub(crate) fn hold_input(
    rt: &ProcessRuntime,
    cmd: &mut tokio::process::Command,
    zygote: bool,
) -> Result<std::io::PipeWriter, StartError> {
    let (input, go) = std::io::pipe().map_err(|e| StartError::Platform(format!("cannot create a pipe: {e}")))?;
    cmd.stdin(Stdio::from(input));
    if zygote {
        cmd.envs(environment(rt));
    }
    Ok(go)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn only_python_functions_without_start_up_settings_get_a_zygote() {
        let fits = |runtime: RuntimeKind, env: &[&str]| {
            let env: Vec<String> = env.iter().map(|k| (*k).to_owned()).collect();
            fits_with(runtime, env.iter())
        };
        assert!(fits(RuntimeKind::Python, &[]));
        assert!(fits(RuntimeKind::Python, &["PYTHONPATH", "GREETING"]));
        assert!(!fits(RuntimeKind::Node, &[]));
        assert!(!fits(RuntimeKind::Python, &["PYTHONHASHSEED"]));
        assert!(!fits(RuntimeKind::Python, &["LC_ALL"]));
        assert_eq!(args(&["-S".into(), "b.pyc".into()], 1), ["-S", "b.pyc", FLAG]);
        assert_eq!(args(&["b.pyc".into()], 2), ["b.pyc", FLAG, ASYNCIO_FLAG]);
    }
}
