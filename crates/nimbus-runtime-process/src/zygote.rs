//! The zygote: a prepared sandbox (`crate::shells`) of a Python or Node function holds an
//! interpreter that has already started, with nimbus's bootstrap and the standard modules it
//! and most handlers need loaded, instead of an init waiting to exec one.
//!
//! The sandbox's init starts `python3 -S bootstrap.pyc --zygote` (or `node bootstrap.js
//! --zygote`) at once, with a fixed platform environment (no instance identity: no credentials,
//! ids, Runtime API or user variables). The bootstrap loads what it needs and blocks reading its
//! standard input. Claiming the spare writes the instance's environment there (NUL-ended
//! `KEY=VALUE` entries, the same bytes a held init reads) and closes it; the bootstrap replaces
//! its environment with it, applies what the interpreter reads from the environment only at
//! start-up (Python: `PYTHONPATH` into `sys.path`, `PYTHONPYCACHEPREFIX`,
//! `PYTHONDONTWRITEBYTECODE`, `TZ`; Node: `NODE_PATH`'s module paths), and only then loads the
//! handler: user code never runs before the instance's environment is in place. Closed with
//! nothing written, the zygote exits quietly (the spare was not needed).
//!
//! One zygote per prepared sandbox, so per instance: no interpreter state is shared between
//! instances or functions (no fork from a common parent), and everything the sandbox guarantees
//! holds for the zygote from its first instruction.
//!
//! A function whose `env` sets what the interpreter reads only at start-up and the zygote
//! cannot apply afterwards gets the held init instead: Python's `PYTHON*` other than
//! `PYTHONPATH`; Node's `NODE_*` other than `NODE_PATH` and `NODE_ENV` (`NODE_OPTIONS`,
//! `NODE_EXTRA_CA_CERTS`, ...), `UV_*` and `OPENSSL_*`; for both `LANG` and `LC_*`.
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
    let locale = |k: &str| k == "LANG" || k.starts_with("LC_");
    match runtime {
        RuntimeKind::Python => !env.any(|k| (k.starts_with("PYTHON") && k != "PYTHONPATH") || locale(k)),
        RuntimeKind::Node => !env.any(|k| {
            (k.starts_with("NODE_") && k != "NODE_PATH" && k != "NODE_ENV")
                || k.starts_with("UV_")
                || k.starts_with("OPENSSL_")
                || locale(k)
        }),
        RuntimeKind::Provided | RuntimeKind::Wasm => false,
    }
}

/// The runtime's arguments for a zygote of `function`.
pub(crate) fn args(args: &[String], function: &FunctionVersion) -> Vec<String> {
    args_with(args, function.spec.runtime, function.spec.concurrency)
}

fn args_with(args: &[String], runtime: RuntimeKind, concurrency: u32) -> Vec<String> {
    let mut args = args.to_vec();
    args.push(FLAG.to_owned());
    if runtime == RuntimeKind::Python && concurrency > 1 {
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
    fn python_and_node_functions_without_start_up_settings_get_a_zygote() {
        let fits = |runtime: RuntimeKind, env: &[&str]| {
            let env: Vec<String> = env.iter().map(|k| (*k).to_owned()).collect();
            fits_with(runtime, env.iter())
        };
        assert!(fits(RuntimeKind::Python, &[]));
        assert!(fits(RuntimeKind::Python, &["PYTHONPATH", "GREETING"]));
        assert!(!fits(RuntimeKind::Python, &["PYTHONHASHSEED"]));
        assert!(!fits(RuntimeKind::Python, &["LC_ALL"]));
        assert!(fits(RuntimeKind::Node, &[]));
        assert!(fits(RuntimeKind::Node, &["NODE_PATH", "NODE_ENV", "GREETING"]));
        assert!(!fits(RuntimeKind::Node, &["NODE_OPTIONS"]));
        assert!(!fits(RuntimeKind::Node, &["NODE_EXTRA_CA_CERTS"]));
        assert!(!fits(RuntimeKind::Node, &["UV_THREADPOOL_SIZE"]));
        assert!(!fits(RuntimeKind::Node, &["LANG"]));
        assert!(!fits(RuntimeKind::Provided, &[]));
        let py = |c| args_with(&["-S".into(), "b.pyc".into()], RuntimeKind::Python, c);
        assert_eq!(py(1), ["-S", "b.pyc", FLAG]);
        assert_eq!(py(2), ["-S", "b.pyc", FLAG, ASYNCIO_FLAG]);
        assert_eq!(args_with(&["b.js".into()], RuntimeKind::Node, 2), ["b.js", FLAG]);
    }
}
