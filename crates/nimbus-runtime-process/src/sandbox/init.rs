//! The first program of every sandbox (nimbus's own binary, run as `nimbus __sandbox-init`):
//! 1. when bwrap ran privileged (nimbus is root), drop to the sandbox user: supplementary groups,
//!    gid, uid — after which no capability is left;
//! 2. listen on `127.0.0.1:9001` inside the sandbox's network namespace and forward each
//!    connection to the instance's endpoint socket (`/run/nimbus/api.sock`), byte for byte, so
//!    TCP clients (the official runtime clients, AWS SDKs) reach nimbus and nothing else;
//! 3. in a user namespace (rootless nimbus), cap the processes of the sandbox user with
//!    `RLIMIT_NPROC` (see [`crate::limits`]: set here, inside the namespace, the kernel counts
//!    it per namespace, so per instance);
//! 4. start the runtime with the environment it was given, wait for it, and exit as it did.
//!
//! With `--hold` (a prepared sandbox, see `crate::shells`) the init does 1–3, then waits: it reads
//! the runtime's environment from its standard input (`KEY=VALUE` entries, each ended by a NUL)
//! until end-of-file, and only then starts the runtime with exactly that environment. Closing
//! the input with nothing written means the sandbox is not needed: the init exits quietly.
//!
//! Plain threads and blocking I/O, no async runtime: it handles a few connections (the runtime's
//! and the function's SDK calls) and must start in well under a millisecond.

use std::ffi::OsString;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

/// The hidden subcommand the nimbus binary dispatches to [`main`].
pub const SUBCOMMAND: &str = "__sandbox-init";

/// What the init was asked to do.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Only check that the sandbox works (used by `nimbus up` at start).
    Probe,
    Run {
        drop_to: Option<u32>,
        nproc: Option<u64>,
        /// Wait for the runtime's environment on stdin before starting it.
        hold: bool,
        listen: String,
        socket: String,
        program: OsString,
        args: Vec<OsString>,
    },
}

fn parse(args: &[OsString]) -> Result<Plan, String> {
    let mut it = args.iter();
    let (mut drop_to, mut nproc, mut listen, mut socket) = (None, None, None, None);
    let mut hold = false;
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next().and_then(|v| v.to_str()).map(str::to_owned).ok_or_else(|| format!("{name} needs a value"))
        };
        match a.to_str() {
            Some("--probe") => return Ok(Plan::Probe),
            Some("--hold") => hold = true,
            Some("--drop-to") => {
                drop_to = Some(value("--drop-to")?.parse().map_err(|_| "--drop-to needs a uid".to_owned())?)
            }
            Some("--nproc") => {
                nproc = Some(value("--nproc")?.parse().map_err(|_| "--nproc needs a number of processes".to_owned())?)
            }
            Some("--listen") => listen = Some(value("--listen")?),
            Some("--socket") => socket = Some(value("--socket")?),
            Some("--") => {
                let program = it.next().cloned().ok_or("no program after --")?;
                return Ok(Plan::Run {
                    drop_to,
                    nproc,
                    hold,
                    listen: listen.ok_or("--listen is missing")?,
                    socket: socket.ok_or("--socket is missing")?,
                    program,
                    args: it.cloned().collect(),
                });
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    Err("no program to run (expected -- PROGRAM ARGS…)".into())
}

/// Run the init; `args` are the arguments after the subcommand.
pub fn main(args: &[OsString]) -> ExitCode {
    match parse(args).and_then(run) {
        Ok(code) => code,
        Err(e) => {
            // The runtime's stderr is the instance's log: say why it never started.
            let _ = writeln!(std::io::stderr(), "nimbus sandbox: {e}");
            ExitCode::from(127)
        }
    }
}

fn run(plan: Plan) -> Result<ExitCode, String> {
    match plan {
        Plan::Probe => probe(),
        Plan::Run { drop_to, nproc, hold, listen, socket, program, args } => {
            if let Some(id) = drop_to {
                drop_privileges(id)?;
            }
            if let Some(n) = nproc {
                use nix::sys::resource::{setrlimit, Resource};
                setrlimit(Resource::RLIMIT_NPROC, n, n).map_err(|e| format!("cannot cap processes at {n}: {e}"))?;
            }
            let listener = TcpListener::bind(&listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            std::thread::Builder::new()
                .name("forward".into())
                .spawn(move || forward(&listener, &socket))
                .map_err(|e| format!("cannot start the forwarder: {e}"))?;
            let mut command = std::process::Command::new(&program);
            command.args(&args);
            if hold {
                let Some(env) = read_environment(std::io::stdin().lock())? else {
                    return Ok(ExitCode::SUCCESS);
                };
                command.env_clear().envs(env).stdin(std::process::Stdio::null());
            }
            let status = command.status().map_err(|e| format!("cannot execute {}: {e}", program.to_string_lossy()))?;
            Ok(exit_code(status))
        }
    }
}

/// A held sandbox's runtime environment: NUL-ended `KEY=VALUE` entries up to end-of-file.
/// `None` when nothing came (the sandbox was dropped unused).
fn read_environment(mut input: impl std::io::Read) -> Result<Option<Vec<(OsString, OsString)>>, String> {
    use std::os::unix::ffi::OsStringExt;
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(|e| format!("cannot read the runtime's environment: {e}"))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut env = Vec::new();
    for entry in bytes.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let at = entry.iter().position(|b| *b == b'=').ok_or("an environment entry without '='")?;
        let (key, value) = entry.split_at(at);
        env.push((OsString::from_vec(key.to_vec()), OsString::from_vec(value.get(1..).unwrap_or_default().to_vec())));
    }
    Ok(Some(env))
}

/// The sandbox works when the init runs in it; as root it must be able to stop being root.
fn probe() -> Result<ExitCode, String> {
    if nix::unistd::geteuid().is_root() {
        drop_privileges(65534)?;
    }
    if nix::unistd::geteuid().is_root() {
        return Err("still root after dropping privileges".into());
    }
    Ok(ExitCode::SUCCESS)
}

fn drop_privileges(id: u32) -> Result<(), String> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    setgroups(&[]).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
    setgid(Gid::from_raw(id)).map_err(|e| format!("cannot switch to gid {id}: {e}"))?;
    setuid(Uid::from_raw(id)).map_err(|e| format!("cannot switch to uid {id}: {e}"))?;
    Ok(())
}

/// A runtime killed by a signal exits the init the way a shell reports it (128 + signal), so
/// nimbus's description of the exit still names the signal.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        _ => ExitCode::FAILURE,
    }
}

/// Accept forever; each connection gets its own pair of copying threads.
fn forward(listener: &TcpListener, socket: &str) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let _ = tcp.set_nodelay(true);
        let socket = socket.to_owned();
        let _ = std::thread::Builder::new().name("conn".into()).spawn(move || pipe(tcp, &socket));
    }
}

/// Copy both ways until both sides are done.
fn pipe(tcp: TcpStream, socket: &str) {
    let Ok(unix) = UnixStream::connect(socket) else {
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut tcp_read), Ok(mut unix_write)) = (tcp.try_clone(), unix.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_read, &mut unix_write);
        let _ = unix_write.shutdown(Shutdown::Write);
    });
    let (mut unix_read, mut tcp_write) = (unix, tcp);
    let _ = std::io::copy(&mut unix_read, &mut tcp_write);
    let _ = tcp_write.shutdown(Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_parse_or_say_what_is_wrong() {
        assert_eq!(parse(&os(&["--probe"])), Ok(Plan::Probe));
        let plan =
            parse(&os(&["--drop-to", "65534", "--listen", "127.0.0.1:9001", "--socket", "/s", "--", "node", "a"]));
        assert_eq!(
            plan,
            Ok(Plan::Run {
                drop_to: Some(65534),
                nproc: None,
                hold: false,
                listen: "127.0.0.1:9001".into(),
                socket: "/s".into(),
                program: "node".into(),
                args: vec!["a".into()],
            })
        );
        assert!(parse(&os(&["--listen", "x", "--", "p"])).unwrap_err().contains("--socket"));
        assert!(parse(&os(&["--drop-to", "x"])).unwrap_err().contains("uid"));
        assert!(parse(&os(&["--nproc", "many"])).unwrap_err().contains("number of processes"));
        let capped = parse(&os(&["--nproc", "1024", "--listen", "l", "--socket", "s", "--", "p"]));
        assert!(matches!(capped, Ok(Plan::Run { nproc: Some(1024), .. })), "{capped:?}");
        assert!(parse(&os(&["--listen", "x", "--socket", "y"])).unwrap_err().contains("no program"));
        let held = parse(&os(&["--hold", "--listen", "l", "--socket", "s", "--", "p"]));
        assert!(matches!(held, Ok(Plan::Run { hold: true, .. })), "{held:?}");
    }

    #[test]
    fn a_held_environment_is_read_whole_or_not_at_all() {
        assert_eq!(read_environment(&b""[..]), Ok(None));
        let env = read_environment(&b"A=1\0EMPTY=\0URL=http://x/?a=b\0"[..]).unwrap().unwrap();
        let pairs: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap())).collect();
        assert_eq!(
            pairs,
            [("A", "1"), ("EMPTY", ""), ("URL", "http://x/?a=b")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(read_environment(&b"NOEQUALS\0"[..]).unwrap_err().contains("'='"));
    }

    /// Bytes go both ways through the forwarder, and the half-close of each side reaches the
    /// other (an HTTP/1.0-style exchange ends).
    #[test]
    fn connections_are_forwarded_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let socket = path.display().to_string();
        std::thread::spawn(move || forward(&tcp, &socket));
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut got).unwrap();
            s.write_all(&got.iter().rev().copied().collect::<Vec<u8>>()).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"abc").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut back).unwrap();
        assert_eq!(back, b"cba");
        echo.join().unwrap();
    }
}
