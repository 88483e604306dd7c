//! Black-box test harness: builds app directories from the shared fixtures and runs the real
//! `nimbus` binary on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// This package's directory: the test runner's `CARGO_MANIFEST_DIR` (this checkout), else the
/// one compiled in (a shared target dir may hold a binary built in another checkout).
pub fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

pub fn repo_root() -> PathBuf {
    Path::new(&manifest_dir()).join("../..").canonicalize().unwrap()
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// Where `scripts/test-deps.sh` installs awslambdaric and boto3.
pub fn test_pythonpath() -> PathBuf {
    if let Some(p) = std::env::var_os("NIMBUS_TEST_PYTHONPATH") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/nimbus/py")
}

/// The `lambda_runtime` fixture binary, built with the workspace (`cargo build --workspace`).
pub fn rust_fixture_binary() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_nimbus"));
    let bin = exe.parent().unwrap().join("lambda-rust-hello");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, which scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Puts a build output (a binary of tens to hundreds of MB) at `to` without a second copy on
/// disk: a hard link, or a copy where the two paths are on different filesystems. Callers only
/// read and run it; a test that writes to `to` must copy instead.
pub fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "__pycache__" {
            continue;
        }
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The conformance runtimes: (function name, manifest lines).
pub const RUNTIMES: &[&str] = &["node", "python", "ric", "rust"];

/// An app directory under construction.
pub struct App {
    pub dir: tempfile::TempDir,
    toml: String,
}

impl App {
    pub fn new(name: &str) -> App {
        App { dir: tempfile::tempdir().unwrap(), toml: format!("name = \"{name}\"\n") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Add a conformance function of `runtime` (node, python, ric, rust) called `name`, with
    /// extra manifest lines.
    pub fn conformance(mut self, runtime: &str, name: &str, extra: &str) -> App {
        let code = self.path().join("functions").join(name);
        let (rt, handler) = match runtime {
            "node" => {
                copy_dir(&fixture("conformance/node"), &code);
                ("node", "index.handler")
            }
            "python" => {
                copy_dir(&fixture("conformance/python"), &code);
                ("python", "handler.handler")
            }
            "ric" => {
                copy_dir(&fixture("conformance/awslambdaric"), &code);
                // As on Lambda, a function bundles its dependencies: the runtime client and its
                // own dependencies are copied into the code (the sandbox shows nothing else).
                vendor_python(&code, &["awslambdaric", "simplejson", "snapshot_restore_py.py", "runtime_client"]);
                ("provided", "handler.handler")
            }
            "rust" => {
                std::fs::create_dir_all(&code).unwrap();
                link_or_copy(&rust_fixture_binary(), &code.join("bootstrap"));
                ("provided", "")
            }
            "wasm" => {
                std::fs::create_dir_all(&code).unwrap();
                std::fs::copy(fixture("wasm/conformance.wasm"), code.join("conformance.wasm")).unwrap();
                ("wasm", "")
            }
            other => panic!("unknown runtime {other}"),
        };
        let env = String::from("GREETING = \"hi\"");
        let handler = if rt == "wasm" { String::new() } else { format!("handler = \"{handler}\"\n") };
        self.toml.push_str(&format!("\n[functions.{name}]\nruntime = \"{rt}\"\n{handler}env = {{ {env} }}\n{extra}\n"));
        self
    }

    pub fn raw(mut self, toml: &str) -> App {
        self.toml.push_str(toml);
        self.toml.push('\n');
        self
    }

    pub fn route(self, method: &str, path: &str, function: &str) -> App {
        self.raw(&format!("[[routes]]\nmethod = \"{method}\"\npath = \"{path}\"\nfunction = \"{function}\""))
    }

    pub fn write_file(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn finish(self) -> App {
        std::fs::write(self.path().join("nimbus.toml"), &self.toml).unwrap();
        self
    }
}

/// Copy the named packages (directories, modules, or extension modules by prefix) from the
/// test Python path into `code`, as a function would vendor them.
pub fn vendor_python(code: &Path, names: &[&str]) {
    let from = test_pythonpath();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !names.iter().any(|n| name == *n || (name.starts_with(n) && name.ends_with(".so"))) {
            continue;
        }
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &code.join(&name));
        } else {
            std::fs::copy(entry.path(), code.join(&name)).unwrap();
        }
    }
    assert!(
        code.join("awslambdaric").is_dir() || !names.contains(&"awslambdaric"),
        "awslambdaric is not in {}",
        from.display()
    );
}

/// The directory every test sandbox shares read-write (`NIMBUS_SANDBOX_SHARED_DIR`): functions
/// write markers and logs for the tests there. Nothing else of the host is visible to them.
pub fn shared_root() -> PathBuf {
    let root = std::env::temp_dir().join("nimbus-test-shared");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    root
}

/// A temp dir inside [`shared_root`] that a sandboxed function (another uid) can write to.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(shared_root()).unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    dir
}

/// A running `nimbus up`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub stdout_rest: std::sync::mpsc::Receiver<String>,
}

pub fn nimbus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nimbus"))
}

impl Server {
    pub fn start(app: &Path) -> Server {
        Server::start_with(app, &app.join(".nimbus"), &[])
    }

    /// Start `nimbus up` and wait for its "listening on" line.
    pub fn start_with(app: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_listening(app, data_dir, env, "127.0.0.1:0")
    }

    /// Start with extra `nimbus up` flags.
    pub fn start_args(app: &Path, data_dir: &Path, args: &[&str]) -> Server {
        Server::launch(app, data_dir, &[], "127.0.0.1:0", args)
    }

    /// Start on `listen`; the URL the tests use always points at loopback.
    pub fn start_listening(app: &Path, data_dir: &Path, env: &[(&str, &str)], listen: &str) -> Server {
        Server::launch(app, data_dir, env, listen, &[])
    }

    pub fn launch(app: &Path, data_dir: &Path, env: &[(&str, &str)], listen: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new(nimbus_bin());
        cmd.arg("up").arg(app).arg("--listen").arg(listen).arg("--data-dir").arg(data_dir).arg("--drain").arg("10s");
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd, data_dir)
    }

    /// Run a prepared `nimbus up` command and wait for its "listening on" line.
    pub fn spawn(mut cmd: Command, data_dir: &Path) -> Server {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        if cmd.get_envs().all(|(k, _)| k != "NIMBUS_LOG") {
            cmd.env("NIMBUS_LOG", "warn");
        }
        // A variable the functions must not see: instances start from a cleared environment.
        cmd.env("NIMBUS_TEST_LEAK", "leaked");
        if cmd.get_envs().all(|(k, _)| k != "NIMBUS_SANDBOX_SHARED_DIR") {
            cmd.env("NIMBUS_SANDBOX_SHARED_DIR", shared_root());
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Generous: a deploy may compile a large wasm component first (about 10 s on 2 cores).
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find("listening on ") {
                        break line[i + "listening on ".len()..].trim().replace("0.0.0.0", "127.0.0.1");
                    }
                }
                Err(_) => {
                    let status = child.try_wait().unwrap();
                    panic!("nimbus up did not start (exit: {status:?})");
                }
            }
        };
        let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
        Server { child, url, token, data_dir: data_dir.to_owned(), stdout_rest: rx }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM and wait for the exit status (bounded).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.pid(), libc::SIGTERM);
        wait_child(&mut self.child, Duration::from_secs(20))
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
    }

    pub async fn invoke(&self, function: &str, event: &Value) -> Invoked {
        self.invoke_with(function, event, &[]).await
    }

    pub async fn invoke_with(&self, function: &str, event: &Value, headers: &[(&str, &str)]) -> Invoked {
        let mut req = self
            .client()
            .post(format!("{}/2015-03-31/functions/{function}/invocations", self.url))
            .body(event.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let started = Instant::now();
        let resp = req.send().await.unwrap();
        Invoked::from(resp, started).await
    }

    /// Invoke `function` with the conformance `sleep` op in the background; returns once the
    /// function is running (it writes a marker named like `marker` into a directory shared with
    /// the sandbox before sleeping). The handle yields the answer.
    pub async fn start_sleeping(&self, function: &str, ms: u64, marker: &Path) -> tokio::task::JoinHandle<Invoked> {
        let dir = shared_tempdir();
        let marker = dir.path().join(marker.file_name().unwrap_or_default());
        let url = format!("{}/2015-03-31/functions/{function}/invocations", self.url);
        let body = serde_json::json!({"op": "sleep", "ms": ms, "marker": marker.display().to_string()}).to_string();
        let client = self.client();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let answer = Invoked::from(client.post(url).body(body).send().await.unwrap(), started).await;
            drop(dir);
            answer
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !marker.exists() {
            if handle.is_finished() {
                let answer = handle.await.unwrap();
                panic!("{function} answered before it started sleeping: {} {:?}", answer.status, answer.body);
            }
            assert!(Instant::now() < deadline, "{} never appeared: the function did not start", marker.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handle
    }

    /// POST a raw body to the Invoke API; `function` may carry a query (`"f?Qualifier=1"`).
    pub async fn invoke_raw(&self, function: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let (name, query) = function.split_once('?').map_or((function, String::new()), |(n, q)| (n, format!("?{q}")));
        self.client()
            .post(format!("{}/2015-03-31/functions/{name}/invocations{query}", self.url))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client().get(format!("{}{path}", self.url)).send().await.unwrap()
    }

    pub async fn admin(&self, path: &str) -> Value {
        let r = self.client().get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Any method on the management API with the admin token: status, headers and body.
    pub async fn admin_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let r = self
            .client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.bytes().await.unwrap().to_vec())
    }

    /// The pids of every instance the server reports.
    pub async fn instance_pids(&self) -> Vec<i32> {
        let fns = self.admin("/v1/functions").await;
        let mut pids = vec![];
        for f in fns.as_array().unwrap() {
            for p in f["pools"].as_array().unwrap() {
                for i in p["instances"].as_array().unwrap() {
                    if let Some(pid) = i["pid"].as_i64() {
                        pids.push(pid as i32);
                    }
                }
            }
        }
        pids
    }

    /// Poll the management API until `check` holds (bounded; the server's own state is the signal).
    pub async fn wait_for(&self, what: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.admin("/v1/functions").await;
            if check(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last state: {v:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The invocation records of `function`, once at least `n` exist (records are written by a
    /// background writer within moments of each invocation).
    pub async fn records(&self, function: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.admin(&format!("/v1/invocations?function={function}&limit=1000")).await;
            let rows = v.as_array().cloned().unwrap_or_default();
            if rows.len() >= n {
                return rows;
            }
            assert!(Instant::now() < deadline, "{function}: only {} of {n} records appeared: {v:#}", rows.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Run a CLI client command against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_as(&self.token, args)
    }

    /// Run a CLI client command with `token` (a token from `nimbus token create`).
    pub fn cli_as(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(nimbus_bin()).args(args).arg("--server").arg(&self.url).arg("--token").arg(token).output().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe_kill(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

pub fn wait_child(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "process did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[allow(unsafe_code)]
pub fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we own.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Give `cmd` the `nimbus` profile of `data_dir`'s credentials file and none of the caller's own
/// AWS settings, as a user points a client at nimbus (boto3 reads `AWS_DEFAULT_REGION`, the CLI
/// and the JS SDK `AWS_REGION`).
pub fn aws_env<'a>(cmd: &'a mut Command, data_dir: &Path) -> &'a mut Command {
    cmd.env("AWS_SHARED_CREDENTIALS_FILE", data_dir.join("aws-credentials"))
        .env("AWS_PROFILE", "nimbus")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
}

/// `python3 -c script args…` with boto3 on its path and the credentials of [`aws_env`].
pub fn boto3(script: &str, args: &[&str], data_dir: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args).env("PYTHONPATH", test_pythonpath());
    aws_env(&mut cmd, data_dir);
    cmd
}

/// Run a client command that must succeed; its stdout parsed as JSON.
pub fn run_json(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "client failed (scripts/test-deps.sh installs the clients):\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Run a Python script (with boto3 and awslambdaric on its path) with `args`; returns its stdout
/// parsed as JSON.
pub fn run_python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out =
        Command::new("python3").arg("-c").arg(script).args(args).env("PYTHONPATH", test_pythonpath()).output().unwrap();
    assert!(
        out.status.success(),
        "python script failed (scripts/test-deps.sh installs boto3 and awslambdaric):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn process_alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Every process on the host, as (pid, parent pid), from `/proc`.
pub fn process_parents() -> Vec<(i32, i32)> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse::<i32>().unwrap();
        parent_of.push((pid, ppid));
    }
    parent_of
}

/// Wait (bounded) until none of `pids` is alive.
pub async fn wait_gone(pids: &[i32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| process_alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "processes still alive: {:?}",
            pids.iter().filter(|p| process_alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An Invoke API answer.
pub struct Invoked {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
    pub elapsed: Duration,
}

impl Invoked {
    pub async fn from(resp: reqwest::Response, started: Instant) -> Invoked {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.bytes().await.unwrap().to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Invoked { status, headers, body, raw, elapsed: started.elapsed() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn function_error(&self) -> Option<&str> {
        self.header("x-amz-function-error")
    }

    pub fn log(&self) -> String {
        use base64::Engine as _;
        let b64 = self.header("x-amz-log-result").unwrap_or_default();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }
}

/// A function that appends what it ran (`n`, request id, schedule time, whole event) to
/// $RUN_LOG before answering, so a test can count executions, duplicates and losses.
pub const APPENDER: &str = r#"
import json, os
def handler(event, context):
    line = json.dumps({"n": event.get("n"), "id": context.aws_request_id, "event": event})
    fd = os.open(os.environ["RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\n").encode())
    os.close(fd)
    if event.get("sleep"):
        import time
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"n": event.get("n")}
"#;

pub fn appender(app: App, name: &str, log: &Path, extra: &str) -> App {
    app.write_file(&format!("functions/{name}/app.py"), APPENDER);
    app.raw(&format!(
        "[functions.{name}]\nruntime = \"python\"\nhandler = \"app.handler\"\ntimeout = \"5s\"\nenv = {{ RUN_LOG = \"{}\" }}\n{extra}\n",
        log.display()
    ))
}

pub fn runs(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Poll `check` until it holds (bounded).
pub async fn wait_until(what: &str, within: Duration, check: impl FnMut() -> bool) {
    wait_every(Duration::from_millis(20), what, within, check).await;
}

/// [`wait_until`], polling every `every` (for checks that cost more, such as a long log).
pub async fn wait_every(every: Duration, what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// A raw HTTP/1.1 connection: sends what reqwest will not (oversized heads, stalled bodies),
/// sees the connection close, and holds a connection open.
pub struct Raw(pub std::net::TcpStream);

impl Raw {
    pub fn connect(url: &str) -> Raw {
        let addr = url.trim_start_matches("http://").trim_start_matches("https://");
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// One response: (status, head, body), the body read by its Content-Length.
    pub fn response(&mut self) -> (u16, String, Vec<u8>) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = self.0.read(&mut byte).unwrap_or_else(|e| panic!("no response head ({e}); got {buf:?}"));
            assert_eq!(n, 1, "connection closed before a full response head: {:?}", String::from_utf8_lossy(&buf));
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let status = head[9..12].parse().unwrap();
        let len = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        (status, head, body)
    }

    /// A GET on this connection (kept alive).
    pub fn get(&mut self, path: &str) -> (u16, String, Vec<u8>) {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes());
        self.response()
    }

    /// Whether the server closes the connection (EOF or reset) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.0.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => panic!("unexpected bytes after the response: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("the connection stayed open ({e})"),
        }
    }
}
