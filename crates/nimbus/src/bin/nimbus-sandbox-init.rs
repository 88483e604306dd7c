//! `nimbus-sandbox-init`: the first program of every sandbox, as a small executable of its own.
//! It is the same code as `nimbus __sandbox-init` (`nimbus_runtime_process::sandbox::init`);
//! nimbus uses it when it is installed next to the `nimbus` binary, because starting this small
//! program costs a fraction of starting nimbus's own large one, on every cold start.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The first argument may be the subcommand, as when nimbus itself is the init.
    let skip = if args.get(1).is_some_and(|a| a == nimbus_runtime_process::sandbox::init::SUBCOMMAND) { 2 } else { 1 };
    nimbus_runtime_process::sandbox::init::main(args.get(skip..).unwrap_or_default())
}
