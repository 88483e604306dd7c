//! A hostile tenant: one Python function (`tests/fixtures/hostile`) tries every escape a function
//! on a shared platform might try — the admin token, a neighbour's code and secrets, killing
//! nimbus, writing its own code, filling `/tmp`, reaching the management API or the host's
//! loopback, invoking a function it was not granted, ptrace, mount, new namespaces, setuid —
//! and each attempt must be contained: the call fails inside the function, the attempt shows in
//! the function's own log, and nimbus and a neighbour keep serving. Then the limits: a fork
//! flood and a file-descriptor flood fail inside the function; past `memory_mb` or `cpu_ms` the
//! invocation ends with `Runtime.OutOfMemory` or `Runtime.CpuLimitExceeded` and a fresh
//! instance serves the next one.
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

/// hostile (granted `friend` only), greedy and spinner (the hostile code at `memory_mb` and at
/// `cpu_ms`: one limit each, since at its memory limit the kernel reclaims before it kills, and
/// that reclaim burns CPU time, so with both limits either may end it first), neighbour (node,
/// with a secret), friend, stranger. hostile has memory for filling its 512 MB /tmp, since a
/// cgroup counts the pages of /tmp (tmpfs) as the instance's memory.
fn hostile_app() -> App {
    let app = App::new("tenants").conformance("python", "friend", "").conformance("python", "stranger", "");
    copy_dir(&fixture("hostile"), &app.path().join("functions/hostile"));
    copy_dir(&fixture("hostile"), &app.path().join("functions/greedy"));
    copy_dir(&fixture("hostile"), &app.path().join("functions/spinner"));
    copy_dir(&fixture("conformance/node"), &app.path().join("functions/neighbour"));
    app.raw(
        "[functions.hostile]\nruntime = \"python\"\nhandler = \"handler.handler\"\ntimeout = \"30s\"\nmemory_mb = 1024\n\
         [functions.hostile.grants]\nfunctions = [\"friend\"]\n\
         [functions.greedy]\nruntime = \"python\"\nhandler = \"handler.handler\"\ntimeout = \"30s\"\n\
         memory_mb = 128\n\
         [functions.spinner]\nruntime = \"python\"\nhandler = \"handler.handler\"\ntimeout = \"30s\"\ncpu_ms = 200\n",
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
        a("fork more than 1,024 processes", json!({"op": "fork_flood", "n": 2000})),
        a("open more than 1,024 files", json!({"op": "open_files", "n": 2000})),
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

    limits_hold(server).await;

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

/// Past `memory_mb` (128) and `cpu_ms` (200) the invocation ends with Lambda's error, the
/// instance is replaced, and `GET /v1/info` says how memory is held. In rlimit mode (no writable
/// memory cgroup, e.g. rootless) the allocation fails inside Python instead (MemoryError).
async fn limits_hold(server: &Server) {
    let info = server.admin("/v1/info").await;
    let mode = info["memory_limits"].as_str().unwrap_or_default().to_owned();
    assert!(["cgroup-v2", "cgroup-v1", "rlimit"].contains(&mode.as_str()), "{info}");
    let tail = [("x-amz-log-type", "Tail")];
    // Max Memory Used is the peak, not what is left: 48 MB allocated and freed again within
    // the invocation still count (whether the runtime reports it or nimbus reads /proc).
    let r = server.invoke_with("hostile", &json!({"op": "allocate", "mb": 48}), &tail).await;
    assert_eq!(r.body["allocated_mb"], 48, "{:?}", r.body);
    let log = r.log();
    let used =
        log.split("Max Memory Used: ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse::<u32>().ok());
    assert!(used.is_some_and(|mb| (48..=1024).contains(&mb)), "Max Memory Used {used:?} in:\n{log}");
    let warm = server.invoke_with("greedy", &json!({"op": "whoami"}), &tail).await;
    assert_eq!(warm.status, 200, "{}", String::from_utf8_lossy(&warm.raw));

    let r = server.invoke_with("greedy", &json!({"op": "allocate", "mb": 512}), &tail).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
    assert_eq!(r.function_error(), Some("Unhandled"), "512 MB fit in memory_mb = 128: {:?}", r.body);
    let error_type = r.body["errorType"].as_str().unwrap_or_default();
    if mode == "rlimit" {
        assert!(["Runtime.OutOfMemory", "MemoryError"].contains(&error_type), "{:?}", r.body);
    } else {
        assert_eq!(error_type, "Runtime.OutOfMemory", "{:?}", r.body);
        assert!(r.log().contains("Max Memory Used: 128 MB"), "{}", r.log());
        let next = server.invoke_with("greedy", &json!({"op": "whoami"}), &tail).await;
        assert_eq!((next.status, next.function_error()), (200, None), "{:?}", next.body);
        assert!(next.log().contains("Init Duration: "), "not a new instance:\n{}", next.log());
    }

    let r = server.invoke_with("spinner", &json!({"op": "spin", "ms": 2000}), &tail).await;
    assert_eq!(r.function_error(), Some("Unhandled"), "a 2 s spin fit in cpu_ms = 200: {:?}", r.body);
    assert_eq!(r.body["errorType"], "Runtime.CpuLimitExceeded", "{:?}", r.body);
    assert!(r.elapsed < std::time::Duration::from_millis(1500), "stopped only after {:?}", r.elapsed);
    assert!(r.log().contains("Runtime.CpuLimitExceeded"), "{}", r.log());
    let next = server.invoke_with("spinner", &json!({"op": "spin", "ms": 10}), &tail).await;
    assert_eq!((next.status, next.function_error()), (200, None), "{:?}", next.body);
    assert!(next.log().contains("Init Duration: "), "not a new instance:\n{}", next.log());
    assert!(process_alive(server.pid()), "nimbus died");
}

/// (pid, real uid on the host) of every process under `roots` that has no children: the
/// runtimes themselves, below bwrap and the sandbox's init.
fn leaf_processes(roots: &[i32]) -> Vec<(i32, u32)> {
    let parent_of = process_parents();
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
    // nimbus at a path the user can reach and the interpreters under /usr: root's home (where
    // the build and pyenv live) is not traversable by other users. A hard link, not a copy: the
    // debug binary is hundreds of MB and CI's disk may be nearly full. Not under `home`, which
    // is chowned to the user: that would reach the build's own file through the link.
    let bins = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bins.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bins.path().join("nimbus");
    link_or_copy(&nimbus_bin(), &bin);
    assert_ne!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o005, 0, "others cannot run {}", bin.display());
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

/// The host directories of the cgroups nimbus made for its instances (`…/nimbus-<pid>/<id>`),
/// read from where the instances' processes are.
async fn instance_cgroups(server: &Server) -> Vec<PathBuf> {
    let marker = format!("/nimbus-{}/", server.pid());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount_of = |controllers: &str| {
        mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let (fstype, opts) = (r.next()?, r.nth(1).unwrap_or(""));
            let fits = if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && controllers.split(',').all(|c| opts.split(',').any(|o| o == c))
            };
            fits.then(|| PathBuf::from(point))
        })
    };
    let mut dirs = Vec::new();
    for pid in server.instance_pids().await {
        for line in std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default().lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            if path.contains(&marker) {
                dirs.push(mount_of(controllers).unwrap().join(path.trim_start_matches('/')));
            }
        }
    }
    dirs
}

/// Each instance is in a cgroup of its own under nimbus's `nimbus-<pid>`; a graceful stop removes
/// them, and a killed nimbus's are removed when the next nimbus starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_cgroups_are_removed_at_stop_and_after_a_kill() {
    let app = App::new("cgroups").conformance("python", "f", "").finish();
    let data = tempfile::tempdir().unwrap();
    let bases_of = |dirs: &[PathBuf]| -> Vec<PathBuf> { dirs.iter().map(|d| d.parent().unwrap().to_owned()).collect() };

    let mut server = Server::start_with(app.path(), data.path(), &[]);
    if server.admin("/v1/info").await["memory_limits"] == "rlimit" {
        eprintln!("skipped: no writable cgroup hierarchy here (rlimit mode)");
        return;
    }
    assert_eq!(server.invoke("f", &json!({"op": "echo"})).await.status, 200);
    let dirs = instance_cgroups(&server).await;
    assert!(!dirs.is_empty(), "the instance is in no cgroup of nimbus's");
    assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
    let bases = bases_of(&dirs);
    let status = server.stop();
    assert!(status.success(), "nimbus did not stop cleanly: {status:?}");
    for b in &bases {
        assert!(!b.exists(), "{} is left after a graceful stop", b.display());
    }

    let server = Server::start_with(app.path(), data.path(), &[]);
    assert_eq!(server.invoke("f", &json!({"op": "echo"})).await.status, 200);
    let bases = bases_of(&instance_cgroups(&server).await);
    assert!(!bases.is_empty());
    drop(server); // SIGKILL: nimbus cannot clean up
    assert!(bases.iter().all(|b| b.is_dir()), "the killed nimbus's cgroups stay until the next start");
    let mut next = Server::start_with(app.path(), data.path(), &[]);
    for b in &bases {
        assert!(!b.exists(), "{} of the killed nimbus is left after the next start", b.display());
    }
    let status = next.stop();
    assert!(status.success(), "nimbus did not stop cleanly: {status:?}");
}
