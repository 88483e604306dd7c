//! The processes the bench starts: `nimbus up`, the bare reference servers and the bare
//! interpreters, all with the same cleared environment and real interpreter paths that nimbus
//! gives its own runtime instances (so no side pays for pyenv shims or inherited env).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::fixture::{Fixture, Lang, BODY};

/// The interpreters, resolved once the way nimbus resolves them (`NIMBUS_NODE` /
/// `NIMBUS_PYTHON`, else ask the interpreter on PATH for its real executable).
pub struct Interpreters {
    pub node: PathBuf,
    pub python: PathBuf,
}

impl Interpreters {
    pub fn resolve() -> Result<Self> {
        Ok(Interpreters {
            node: resolve("NIMBUS_NODE", "node", &["-p", "process.execPath"])?,
            python: resolve("NIMBUS_PYTHON", "python3", &["-c", "import sys;print(sys.executable)"])?,
        })
    }

    pub fn get(&self, lang: Lang) -> &Path {
        match lang {
            Lang::Node => &self.node,
            Lang::Python => &self.python,
        }
    }

    /// The environment nimbus gives an instance, minus the Lambda variables (the bare
    /// servers do not speak the Runtime API).
    pub fn env(&self, home: &Path) -> Vec<(String, String)> {
        let mut dirs: Vec<String> = Vec::new();
        for p in [&self.python, &self.node] {
            if let Some(d) = p.parent() {
                let d = d.display().to_string();
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        dirs.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
        let home = home.display().to_string();
        vec![
            ("PATH".into(), dirs.join(":")),
            ("LANG".into(), "C.UTF-8".into()),
            ("TZ".into(), "UTC".into()),
            ("HOME".into(), home.clone()),
            ("TMPDIR".into(), home),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ]
    }
}

/// Python alone, resolved like `Interpreters::resolve` does.
pub fn python() -> Result<PathBuf> {
    resolve("NIMBUS_PYTHON", "python3", &["-c", "import sys;print(sys.executable)"])
}

fn resolve(env_var: &str, program: &str, args: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}`: install it or set {env_var} to its path"))?;
    let path = String::from_utf8(out.stdout)?.trim().to_owned();
    if !out.status.success() || path.is_empty() {
        bail!("`{program} {}` did not print the interpreter's path; set {env_var} to it", args.join(" "));
    }
    Ok(PathBuf::from(path))
}

/// `nimbus` next to our own executable (both are built by `cargo build --release -p nimbus -p
/// nimbus-bench`), or the path given with `--nimbus`.
pub fn locate_nimbus(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--nimbus {}: no such file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot find the nimbus-bench executable's path")?;
    let dir = exe.parent().context("the nimbus-bench executable has no parent directory")?;
    let nimbus = dir.join("nimbus");
    if !nimbus.is_file() {
        bail!(
            "no nimbus binary next to {} (looked for {}); build both with `cargo build --release -p nimbus -p nimbus-bench` \
             (with the same CARGO_TARGET_DIR), or pass --nimbus PATH",
            exe.display(),
            nimbus.display()
        );
    }
    Ok(nimbus)
}

/// Spawn → exit of `program args` with the cleared environment, in ms, `n` times.
pub fn interpreter_startup(program: &Path, args: &[&str], env: &[(String, String)], n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let status = std::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !status.success() {
            bail!("`{} {}` failed: {status}", program.display(), args.join(" "));
        }
        out.push(ms);
    }
    Ok(out)
}

/// A running `nimbus up`.
pub struct Nimbus {
    child: Child,
    pub url: String,
    pub token: String,
    pub log: PathBuf,
}

impl Nimbus {
    /// nimbus on the fixture app, sandboxed or (`--insecure-no-sandbox`) not, each with its own
    /// data dir and log.
    pub async fn start(bin: &Path, fx: &Fixture, interps: &Interpreters, sandboxed: bool) -> Result<Nimbus> {
        // The same interpreters as the bare side, whatever PATH says.
        let env = [("NIMBUS_NODE", interps.node.as_path()), ("NIMBUS_PYTHON", interps.python.as_path())];
        let (data, log, args): (_, _, &[&str]) = if sandboxed {
            (fx.data.clone(), fx.root.join("nimbus.log"), &[])
        } else {
            (fx.root.join("data-nosbx"), fx.root.join("nimbus-nosbx.log"), &["--insecure-no-sandbox"])
        };
        Nimbus::launch_with(bin, &fx.app, &data, &log, &env, args).await
    }

    /// `nimbus up APP --listen 127.0.0.1:0 --data-dir DATA` with `env` added, stderr to `log`;
    /// returns once it prints `listening on URL`.
    pub async fn launch(bin: &Path, app: &Path, data: &Path, log: &Path, env: &[(&str, &Path)]) -> Result<Nimbus> {
        Nimbus::launch_with(bin, app, data, log, env, &[]).await
    }

    /// [`Nimbus::launch`] with more `nimbus up` arguments.
    pub async fn launch_with(
        bin: &Path,
        app: &Path,
        data: &Path,
        log: &Path,
        env: &[(&str, &Path)],
        args: &[&str],
    ) -> Result<Nimbus> {
        Nimbus::launch_under(&[], bin, app, data, log, env, args).await
    }

    /// [`Nimbus::launch_with`] under a wrapper: `wrapper` (a program and its arguments, e.g.
    /// `valgrind --tool=callgrind …`) runs the nimbus binary. A wrapped nimbus may take ten
    /// minutes to listen (a wrapper may be an emulator), a bare one a minute.
    pub async fn launch_under(
        wrapper: &[&str],
        bin: &Path,
        app: &Path,
        data: &Path,
        log: &Path,
        env: &[(&str, &Path)],
        args: &[&str],
    ) -> Result<Nimbus> {
        let log = log.to_owned();
        let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let ready = Duration::from_secs(if wrapper.is_empty() { 60 } else { 600 });
        let mut child = cmd
            .arg("up")
            .arg(app)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("nimbus up has no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let wait = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(i) = line.find("listening on ") {
                    return Ok::<_, anyhow::Error>(Some(
                        line.get(i + "listening on ".len()..).unwrap_or_default().trim().to_owned(),
                    ));
                }
            }
            Ok(None)
        };
        let url = match tokio::time::timeout(ready, wait).await {
            Ok(Ok(Some(url))) => url,
            Ok(Ok(None)) => bail!("nimbus up exited before listening; see {}:\n{}", log.display(), tail(&log)),
            Ok(Err(e)) => return Err(e).context("cannot read nimbus up's stdout"),
            Err(_) => bail!("nimbus up did not print `listening on` within {ready:?}; see {}", log.display()),
        };
        // Keep draining stdout so nimbus never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token_path = data.join("admin.token");
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("cannot read {}", token_path.display()))?
            .trim()
            .to_owned();
        Ok(Nimbus { child, url, token, log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM (graceful: nimbus stops its instances), then SIGKILL after 15 s.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines.get(lines.len().saturating_sub(20)..).unwrap_or_default().join("\n")
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A bare reference server (one interpreter process).
pub struct Bare {
    child: Child,
    pub url: String,
    /// Spawn → first successful response, in ms.
    pub first_response_ms: f64,
}

impl Bare {
    /// Spawn the server and time it until it has answered one request correctly. Readiness is
    /// polled with plain `connect` every 100 µs (a refused connect costs ~10 µs), so the
    /// figure has ~0.1 ms resolution and no help from the server.
    pub async fn start(lang: Lang, fx: &Fixture, interps: &Interpreters) -> Result<Bare> {
        let port = free_port()?;
        let code = fx.code(lang).display().to_string();
        let (script_args, log) = match lang {
            Lang::Node => (vec![fx.node_server.display().to_string()], fx.root.join("bare-node.log")),
            // -S like nimbus starts python (no site-packages .pth processing).
            Lang::Python => {
                (vec!["-S".to_owned(), fx.python_server.display().to_string()], fx.root.join("bare-python.log"))
            }
        };
        let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let home = fx.root.join("home");
        std::fs::create_dir_all(&home)?;
        let mut cmd = Command::new(interps.get(lang));
        cmd.args(&script_args)
            .arg(&code)
            .arg(port.to_string())
            .env_clear()
            .envs(interps.env(&home))
            .current_dir(fx.code(lang))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let t0 = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", interps.get(lang).display()))?;
        let stream = connect_when_listening(&mut child, addr, lang, &log, t0)?;
        let (status, body, first_response_ms) = first_answer(stream, port, t0).await?;
        if status != hyper::StatusCode::OK || body != BODY.as_bytes() {
            bail!(
                "the bare {} server answered {status} {:?}, not 200 {BODY:?}",
                lang.as_str(),
                String::from_utf8_lossy(&body)
            );
        }
        Ok(Bare { child, url: format!("http://127.0.0.1:{port}/"), first_response_ms })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A connection to `addr` once the bare server `child` (spawned at `t0`) listens there.
fn connect_when_listening(
    child: &mut Child,
    addr: std::net::SocketAddr,
    lang: Lang,
    log: &Path,
    t0: Instant,
) -> Result<std::net::TcpStream> {
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(_) => {
                if let Some(status) = child.try_wait()? {
                    bail!("the bare {} server exited ({status}) before answering:\n{}", lang.as_str(), tail(log));
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    bail!("the bare {} server did not listen within 20 s:\n{}", lang.as_str(), tail(log));
                }
                // Blocking on purpose: nothing else runs during a cold start and tokio's
                // timers have 1 ms resolution.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

/// `GET /` over `stream` (HTTP/1.1, closed afterwards): the status, the body, and the ms from
/// `t0` (the spawn) until the body was read.
async fn first_answer(stream: std::net::TcpStream, port: u16, t0: Instant) -> Result<(hyper::StatusCode, Bytes, f64)> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("/").header(hyper::header::HOST, format!("127.0.0.1:{port}")).body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .context("the bare server accepted but did not answer within 20 s")??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let first_response_ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(sender);
    conn.abort();
    Ok((status, body, first_response_ms))
}
