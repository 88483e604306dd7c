//! A hostile tenant: one Python function (`tests/fixtures/hostile`) tries every escape a function
//! on a shared platform might try — the admin token, a neighbour's code and secrets, killing
//! nimbus, writing its own code, filling `/tmp`, reaching the management API or the host's
//! loopback, invoking a function it was not granted, ptrace, mount, new namespaces, setuid —
//! and each attempt must be contained: the call fails inside the function, the attempt shows in
//! the function's own log, and nimbus and a neighbour keep serving.
//!
//! The table runs against nimbus as it runs here (root in CI: bwrap privileged, the function
//! drops to `nobody`) and, when the test runs as root, once more with nimbus running as an
//! unprivileged user (rootless: a user namespace).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The neighbour's secret: no other function may see it.
const SECRET: &str = "neighbour-secret-7d41c9";
/// The unprivileged user nimbus runs as in the rootless variant.
const ROOTLESS_UID: u32 = 1000;

/// hostile (granted `friend` only), neighbour (node, with a secret), friend, stranger.
fn hostile_app() -> App {
    let app = App::new("tenants").conformance("python", "friend", "").conformance("python", "stranger", "");
    copy_dir(&fixture("hostile"), &app.path().join("functions/hostile"));
    copy_dir(&fixture("conformance/node"), &app.path().join("functions/neighbour"));
    app.raw(
        "[functions.hostile]\nruntime = \"python\"\nhandler = \"handler.handler\"\ntimeout = \"30s\"\n\
         [functions.hostile.grants]\nfunctions = [\"friend\"]\n",
    )
    .raw(&format!(
        "[functions.neighbour]\nruntime = \"node\"\nhandler = \"index.handler\"\nenv = {{ SECRET = \"{SECRET}\" }}\n"
    ))
    .finish()
}

/// One attempt: the op and its arguments (see the fixture), and what it stands for.
struct Attempt {
    what: &'static str,
    event: Value,
}

/// Every escape, with what it needs to know about the host (paths and pids as nimbus sees them).
fn attempts(data_dir: &Path, nimbus_pid: i32, port: u16) -> Vec<Attempt> {
    let token = data_dir.join("admin.token").display().to_string();
    let neighbour_code = neighbour_code(data_dir).display().to_string();
    let a = |what, event| Attempt { what, event };
    vec![
        a("read the admin token by its host path", json!({"op": "read", "path": token})),
        a("read the admin token two directories up", json!({"op": "read", "path": "../../admin.token"})),
        a("read a neighbour's code", json!({"op": "read", "path": neighbour_code})),
        a("read the host's /etc/shadow", json!({"op": "read", "path": "/etc/shadow"})),
        a("read a neighbour's secret through /proc", json!({"op": "environ_scan", "secret": SECRET})),
        a("kill nimbus", json!({"op": "kill", "pid": nimbus_pid})),
        a("kill nimbus's parent", json!({"op": "kill", "pid": std::process::id()})),
        a("write its own code", json!({"op": "write", "path": "/var/task/handler.py"})),
        a("overwrite the admin token", json!({"op": "write", "path": token})),
        a("reach the management API on loopback", json!({"op": "connect", "host": "127.0.0.1", "port": port})),
        a("reach it through the egress proxy", json!({"op": "proxy_connect", "target": format!("127.0.0.1:{port}")})),
        a("reach it by name through the proxy", json!({"op": "proxy_connect", "target": format!("localhost:{port}")})),
        a("ask its own endpoint for the management API", json!({"op": "http_get", "path": "/v1/functions"})),
        a("invoke a function it was not granted", json!({"op": "invoke", "function": "stranger"})),
        a("ptrace", json!({"op": "ptrace"})),
        a("mount", json!({"op": "mount"})),
        a("make a new user namespace", json!({"op": "unshare"})),
        a("become root", json!({"op": "setuid0"})),
        a("fill the disk through /tmp", json!({"op": "fill_tmp", "limit_mb": 512})),
    ]
}

/// The host directory holding the neighbour's code (its artifact under the data dir).
fn neighbour_code(data_dir: &Path) -> PathBuf {
    let artifacts = data_dir.join("artifacts");
    for e in std::fs::read_dir(&artifacts).unwrap() {
        let index = e.unwrap().path().join("index.js");
        if index.is_file() {
            return index;
        }
    }
    panic!("no node artifact under {}", artifacts.display());
}

/// Run every attempt, then check that nimbus, the neighbour and granted calls still work and
/// that the function never ran as root on the host.
async fn contain(server: &Server) {
    // The neighbour is warm, with its secret in its environment.
    let env = server.invoke("neighbour", &json!({"op": "env", "names": ["SECRET"]})).await;
    assert_eq!(env.body["SECRET"], SECRET, "{:?}", env.body);

    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    for Attempt { what, event } in attempts(&server.data_dir, server.pid(), port) {
        let op = event["op"].as_str().unwrap().to_owned();
        let r = server.invoke_with("hostile", &event, &[("x-amz-log-type", "Tail")]).await;
        assert_eq!(r.status, 200, "{what}: {}", String::from_utf8_lossy(&r.raw));
        assert_eq!(r.body["contained"], true, "{what} was NOT contained: {}", r.body["detail"]);
        eprintln!("{what}: {}", r.body["detail"]);
        let log = r.log();
        assert!(log.contains(&format!("hostile: {op} -> contained")), "{what}: the attempt is not in the log:\n{log}");
        assert!(process_alive(server.pid()), "{what}: nimbus died");
    }

    // A granted call works, and the refused one was logged by nimbus in the caller's log.
    let r = server.invoke_with("hostile", &json!({"op": "invoke", "function": "friend"}), &[]).await;
    assert_eq!(r.body["contained"], false, "a granted invoke failed: {}", r.body["detail"]);
    let r = server
        .invoke_with("hostile", &json!({"op": "invoke", "function": "stranger"}), &[("x-amz-log-type", "Tail")])
        .await;
    assert!(r.log().contains("stranger"), "the refusal is not in the function's log:\n{}", r.log());

    // The neighbour still serves its secret, to itself; nimbus still answers.
    let env = server.invoke("neighbour", &json!({"op": "env", "names": ["SECRET"]})).await;
    assert_eq!(env.body["SECRET"], SECRET, "{:?}", env.body);
    assert_eq!(server.get("/healthz").await.status(), 200);

    // Inside: an unprivileged user at /var/task. Outside: never root.
    let who = server.invoke("hostile", &json!({"op": "whoami"})).await.body;
    assert_ne!(who["uid"], 0, "{who}");
    assert_eq!(who["cwd"], "/var/task", "{who}");
    let leaves = leaf_processes(&server.instance_pids().await);
    assert!(!leaves.is_empty(), "no instance processes found");
    for (pid, uid) in leaves {
        assert_ne!(uid, 0, "instance process {pid} runs as root on the host");
    }
}

/// (pid, real uid on the host) of every process under `roots` that has no children: the
/// runtimes themselves, below bwrap and the sandbox's init.
fn leaf_processes(roots: &[i32]) -> Vec<(i32, u32)> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse::<i32>().unwrap();
        parent_of.push((pid, ppid));
    }
    let under = |mut p: i32| loop {
        if roots.contains(&p) {
            return true;
        }
        match parent_of.iter().find(|(c, _)| *c == p) {
            Some((_, pp)) if *pp > 1 => p = *pp,
            _ => return false,
        }
    };
    parent_of
        .iter()
        .filter(|(pid, _)| under(*pid) && !parent_of.iter().any(|(_, pp)| pp == pid))
        .filter_map(|(pid, _)| Some((*pid, real_uid(*pid)?)))
        .collect()
}

fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_is_contained() {
    let app = hostile_app();
    let data = tempfile::tempdir().unwrap();
    // No shared test directory: this function sees exactly what a user's function sees.
    let server = Server::start_with(app.path(), data.path(), &[("NIMBUS_SANDBOX_SHARED_DIR", "")]);
    contain(&server).await;
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The same table with nimbus running as an unprivileged user: the sandbox is then a user
/// namespace. Runs when the test runs as root (it needs to become another user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_is_contained_when_nimbus_is_not_root() {
    if !is_root() {
        eprintln!("skipped: run as root to also test nimbus as another user (this run is rootless already)");
        return;
    }
    let app = hostile_app();
    let home = tempfile::tempdir().unwrap();
    // The user's own copy of nimbus and the interpreters under /usr: root's home (where the
    // build and pyenv live) is not readable by other users.
    let bin = home.path().join("nimbus");
    std::fs::copy(nimbus_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = home.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for dir in [home.path(), app.path()] {
        chown_tree(dir, ROOTLESS_UID);
    }
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("up").arg(app.path()).args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
    std::os::unix::process::CommandExt::uid(&mut cmd, ROOTLESS_UID);
    std::os::unix::process::CommandExt::gid(&mut cmd, ROOTLESS_UID);
    cmd.env("HOME", home.path())
        .env("NIMBUS_PYTHON", "/usr/bin/python3")
        .env("NIMBUS_NODE", "/usr/bin/node")
        .env("NIMBUS_WASM_CACHE", home.path().join("wasm-cache"))
        .env("NIMBUS_SANDBOX_SHARED_DIR", "");
    let server = Server::spawn(cmd, &data);
    let info = server.admin("/v1/info").await;
    assert_eq!(info["sandbox"]["mode"], "user-namespace", "{info}");
    assert_eq!(info["sandbox"]["hostUid"], ROOTLESS_UID, "{info}");
    contain(&server).await;
}

fn chown_tree(dir: &Path, uid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            chown_tree(&path, uid);
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).unwrap();
        }
    }
}

/// Without a sandbox nimbus refuses to start, saying what is missing; `--insecure-no-sandbox`
/// starts it, loudly: on `/healthz`, in `GET /v1/info` and in the banner.
#[tokio::test]
async fn never_silently_unsandboxed() {
    let app = App::new("plain").conformance("python", "f", "").finish();
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(nimbus_bin())
        .arg("up")
        .arg(app.path())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("NIMBUS_BWRAP", "/nonexistent/bwrap")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nimbus started without a sandbox: {stderr}");
    assert!(stderr.contains("cannot sandbox node, python and provided functions"), "{stderr}");
    assert!(stderr.contains("--insecure-no-sandbox"), "the way out is not named: {stderr}");

    let server = Server::start_args(app.path(), data.path(), &["--insecure-no-sandbox"]);
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    let warnings = health["warnings"].as_array().unwrap_or_else(|| panic!("no warnings on /healthz: {health}"));
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("WITHOUT a sandbox")), "{health}");
    let info = server.admin("/v1/info").await;
    assert_eq!(info["sandbox"]["enabled"], false, "{info}");
    let r = server.invoke("f", &json!({"op": "echo"})).await;
    assert_eq!(r.status, 200);
}

/// Sandboxed, `/healthz` carries no warning beyond the test's shared directory and
/// `GET /v1/info` says how.
#[tokio::test]
async fn info_says_how_functions_are_isolated() {
    let app = App::new("plain").conformance("python", "f", "").finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(app.path(), data.path(), &[("NIMBUS_SANDBOX_SHARED_DIR", "")]);
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert!(health.get("warnings").is_none(), "{health}");
    let info = server.admin("/v1/info").await;
    assert_eq!(info["sandbox"]["enabled"], true, "{info}");
    let expected_mode = if is_root() { "privileged" } else { "user-namespace" };
    assert_eq!(info["sandbox"]["mode"], expected_mode, "{info}");
    assert_ne!(info["sandbox"]["hostUid"], 0, "{info}");
}

/// `allowed_outbound_hosts` holds for a process function too: the egress proxy refuses any
/// other origin, and the refusal is in the function's log with what to add.
#[tokio::test]
async fn allowed_outbound_hosts_narrow_a_process_functions_egress() {
    let app = App::new("egress");
    copy_dir(&fixture("hostile"), &app.path().join("functions/f"));
    let app = app
        .raw(
            "[functions.f]\nruntime = \"python\"\nhandler = \"handler.handler\"\n\
             allowed_outbound_hosts = [\"https://api.allowed.test\"]\n",
        )
        .finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(app.path(), data.path(), &[("NIMBUS_SANDBOX_SHARED_DIR", "")]);
    let event = json!({"op": "proxy_connect", "target": "elsewhere.test:443"});
    let r = server.invoke_with("f", &event, &[("x-amz-log-type", "Tail")]).await;
    assert_eq!(r.body["contained"], true, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("403"), "{}", r.body);
    let log = r.log();
    assert!(
        log.contains("https://elsewhere.test") && log.contains("allowed_outbound_hosts"),
        "the refusal does not say what to add:\n{log}"
    );
    // Another port of an allowed host is another origin.
    let event = json!({"op": "proxy_connect", "target": "api.allowed.test:8443"});
    let r = server.invoke_with("f", &event, &[("x-amz-log-type", "Tail")]).await;
    assert_eq!(r.body["contained"], true, "{}", r.body);
    assert!(r.log().contains("https://api.allowed.test:8443"), "{}", r.log());
}

/// Stack traces show the function's own paths (`/var/task/…`, as on Lambda), never the host's.
#[tokio::test]
async fn stack_traces_show_var_task_not_the_host() {
    let app = App::new("traces").conformance("node", "n", "").conformance("python", "p", "").finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(app.path(), data.path(), &[("NIMBUS_SANDBOX_SHARED_DIR", "")]);
    for (function, file) in [("n", "/var/task/index.js"), ("p", "/var/task/handler.py")] {
        let r = server
            .invoke_with(function, &json!({"op": "error", "message": "kaboom"}), &[("x-amz-log-type", "Tail")])
            .await;
        assert_eq!(r.function_error(), Some("Unhandled"));
        let seen = format!("{}\n{}", String::from_utf8_lossy(&r.raw), r.log());
        assert!(seen.contains(file), "{function}: no {file} in the error or its log:\n{seen}");
        let host = data.path().display().to_string();
        assert!(!seen.contains(&host), "{function}: the host path {host} leaks:\n{seen}");
    }
}
