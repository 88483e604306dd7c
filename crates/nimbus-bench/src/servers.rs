//! Starting and stopping the servers of `nimbus-bench all`, whatever they are: each is spawned in
//! a process group of its own, held by a `TreeGuard` (killed with all its descendants when
//! dropped, even on an error path), and counted as started only when it has answered the hello
//! request correctly: the time from spawn to that first good answer is its cold start.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::load::{self, Expect};
use crate::tree::{self, TreeGuard};

/// How the bench learns where a server listens.
pub enum Ready {
    /// Chosen by the bench before the start (passed on the command line or in a config file).
    Port(u16),
    /// The server writes its port to this file (`nimbus-bench bare-hyper`).
    PortFile(PathBuf),
    /// The server prints a line on stderr containing this marker followed by its URL
    /// (`wasmtime serve`: "Serving HTTP on http://127.0.0.1:PORT/").
    StderrUrl(&'static str),
    /// The same on stdout (`nimbus up`: "listening on http://127.0.0.1:PORT").
    StdoutUrl(&'static str),
}

/// What to spawn and how to tell it is up.
pub struct Launch {
    pub cmd: Command,
    pub ready: Ready,
    /// The path of the hello request (appended to the base URL).
    pub path: String,
    /// The answer that counts as good (None: any 200).
    pub expect: Option<Expect>,
    /// Where the server's output goes (and what error messages quote).
    pub log: PathBuf,
    /// Spawn → first good answer may take at most this long.
    pub timeout: Duration,
    /// Stop with SIGTERM first and wait up to this long (nimbus stops its instances itself).
    pub graceful: Option<Duration>,
}

/// A server that has answered the hello request correctly once.
pub struct Server {
    // Declared first so it is dropped first: it kills the tree while the root still holds it.
    guard: TreeGuard,
    child: Child,
    pub base: String,
    pub url: String,
    /// Spawn → first good answer, ms.
    pub start_ms: f64,
    pub log: PathBuf,
    graceful: Option<Duration>,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stop the server and everything it started.
    pub async fn stop(mut self) {
        let pids = self.child.id().map(tree::with_descendants).unwrap_or_default();
        if let (Some(grace), Some(pid)) = (self.graceful, self.child.id()) {
            tree::terminate(pid);
            let _ = tokio::time::timeout(grace, self.child.wait()).await;
        }
        // Whatever is left, orphans included (they were listed while the root was alive).
        tree::kill_all(&pids);
        drop(self.guard);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// A free port on 127.0.0.1 (bound and released: the server binds it a moment later).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    crate::procs::tail(path)
}

fn url_after(line: &str, marker: &str) -> Option<String> {
    let (_, rest) = line.split_once(marker)?;
    let url = rest.split_whitespace().next()?.trim_end_matches('/');
    url.starts_with("http://").then(|| url.to_owned())
}

/// Read lines from `stream` until one contains `marker` + URL; the rest goes on to `log`.
async fn wait_for_url<R>(stream: R, marker: &'static str, log: PathBuf) -> Result<Option<String>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(stream).lines();
    let mut seen = String::new();
    let mut found = None;
    while let Some(line) = lines.next_line().await? {
        seen.push_str(&line);
        seen.push('\n');
        if let Some(url) = url_after(&line, marker) {
            found = Some(url);
            break;
        }
    }
    let _ = std::fs::write(&log, &seen);
    // Keep draining (into the log) so the server never blocks on a full pipe.
    tokio::spawn(async move {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).ok();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    Ok(found)
}

/// This executable as one of its own reference servers (`subcommand` and its `args`, e.g.
/// `bare-objects`), writing its port into `dir/port` and its output into `dir/log`.
pub async fn start_own(dir: &Path, subcommand: &str, args: &[&str]) -> Result<Server> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (mut cmd, ready) = own_command(dir, subcommand)?;
    cmd.args(args);
    start(Launch {
        cmd,
        ready,
        path: "/".into(),
        expect: None,
        log: dir.join("log"),
        timeout: Duration::from_secs(30),
        graceful: None,
    })
    .await
}

/// This executable as `nimbus-bench SUBCOMMAND --port-file DIR/port`, and how to tell it is up.
pub fn own_command(dir: &Path, subcommand: &str) -> Result<(Command, Ready)> {
    let exe = std::env::current_exe().context("cannot find the nimbus-bench executable's path")?;
    let port_file = dir.join("port");
    let mut cmd = Command::new(exe);
    cmd.arg(subcommand).arg("--port-file").arg(&port_file);
    Ok((cmd, Ready::PortFile(port_file)))
}

/// Spawn `l` and wait for its first good answer.
pub async fn start(mut l: Launch) -> Result<Server> {
    let log_file = std::fs::File::create(&l.log).with_context(|| format!("cannot create {}", l.log.display()))?;
    let err_file = log_file.try_clone()?;
    l.cmd.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    match &l.ready {
        Ready::StdoutUrl(_) => l.cmd.stdout(Stdio::piped()).stderr(Stdio::from(err_file)),
        Ready::StderrUrl(_) => l.cmd.stdout(Stdio::from(log_file)).stderr(Stdio::piped()),
        _ => l.cmd.stdout(Stdio::from(log_file)).stderr(Stdio::from(err_file)),
    };
    if let Ready::PortFile(f) = &l.ready {
        let _ = std::fs::remove_file(f);
    }
    let program = l.cmd.as_std().get_program().to_string_lossy().into_owned();
    let t0 = Instant::now();
    let mut child = l.cmd.spawn().with_context(|| format!("cannot start {program}"))?;
    let guard = TreeGuard::new(child.id());
    let deadline = t0 + l.timeout;
    let base = base_url(&l, &mut child, &program, deadline).await?;
    let url = format!("{base}{}", l.path);
    answered(&l, &mut child, &program, &url, deadline).await?;
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(Server { guard, child, base, url, start_ms, log: l.log, graceful: l.graceful })
}

/// Where the spawned `child` listens, learnt the way `l.ready` says.
async fn base_url(l: &Launch, child: &mut Child, program: &str, deadline: Instant) -> Result<String> {
    Ok(match &l.ready {
        Ready::Port(p) => format!("http://127.0.0.1:{p}"),
        Ready::PortFile(f) => loop {
            if let Some(p) = std::fs::read_to_string(f).ok().and_then(|t| t.trim().parse::<u16>().ok()) {
                break format!("http://127.0.0.1:{p}");
            }
            if let Some(status) = child.try_wait()? {
                bail!("{program} exited ({status}) before writing its port:\n{}", tail(&l.log));
            }
            if Instant::now() > deadline {
                bail!("{program} did not write {} within {:?}", f.display(), l.timeout);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        },
        Ready::StderrUrl(marker) | Ready::StdoutUrl(marker) => {
            let marker = *marker;
            let found = if matches!(l.ready, Ready::StdoutUrl(_)) {
                let out = child.stdout.take().context("no stdout pipe")?;
                tokio::time::timeout(l.timeout, wait_for_url(out, marker, l.log.clone())).await
            } else {
                let err = child.stderr.take().context("no stderr pipe")?;
                tokio::time::timeout(l.timeout, wait_for_url(err, marker, l.log.clone())).await
            };
            match found {
                Ok(Ok(Some(url))) => url,
                Ok(Ok(None)) => bail!("{program} exited before printing `{marker}URL`:\n{}", tail(&l.log)),
                Ok(Err(e)) => return Err(e).with_context(|| format!("cannot read {program}'s output")),
                Err(_) => bail!("{program} did not print `{marker}URL` within {:?}:\n{}", l.timeout, tail(&l.log)),
            }
        }
    })
}

/// Ask `url` every millisecond until `child` answers it correctly (`l.expect`), exits, answers
/// wrongly, or `deadline` passes.
async fn answered(l: &Launch, child: &mut Child, program: &str, url: &str, deadline: Instant) -> Result<()> {
    let uri = load::uri(url)?;
    let client = load::client();
    loop {
        // Not listening yet, or not ready (any status but 200): try again. A 200 with the
        // wrong answer is a wrong answer: fail now.
        let last_error = match load::get(&client, &uri, None).await {
            Ok((status, ct, body)) if status == hyper::StatusCode::OK => match &l.expect {
                None => return Ok(()),
                Some(e) => match load::check(&uri, e, status, ct.as_deref(), &body) {
                    Ok(()) => return Ok(()),
                    Err(e) => bail!("{program} answered wrongly: {e:#}"),
                },
            },
            Ok((status, _, body)) => format!("GET {url} answered {status} {:?}", String::from_utf8_lossy(&body)),
            Err(e) => format!("{e:#}"),
        };
        if let Some(status) = child.try_wait()? {
            bail!("{program} exited ({status}) before answering GET {url}:\n{}", tail(&l.log));
        }
        if Instant::now() > deadline {
            bail!(
                "{program} did not answer GET {url} correctly within {:?} (last: {last_error}):\n{}",
                l.timeout,
                tail(&l.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// An nginx configuration for a bench: one server on 127.0.0.1:`port` whose `server` block
/// ends with `body` (its root and locations), everything nginx writes kept under `dir`.
pub fn nginx_conf(what: &str, dir: &Path, port: u16, body: &str) -> String {
    let d = dir.display();
    format!(
        "# nimbus-bench: {what} (written by the bench, deleted after the run).
daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port};
{body}
  }}
}}
"
    )
}
