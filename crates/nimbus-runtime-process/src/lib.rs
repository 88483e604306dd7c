//! Process runtimes: `node`, `python` and `provided` functions run as OS processes that speak
//! the AWS Lambda Runtime API to nimbus.
//!
//! Each instance gets its own Runtime API endpoint (a listener on `127.0.0.1:0`), so identity
//! comes from the connection, never from anything the runtime says, and the official runtime
//! clients work unmodified (they only read `AWS_LAMBDA_RUNTIME_API`). The process starts with a
//! cleared environment (the inherited one can cost tens of ms per start: NODE_EXTRA_CA_CERTS,
//! pyenv shims), in its own process group so timeouts and shutdown kill everything it spawned,
//! with PR_SET_PDEATHSIG so it dies with nimbus even on `kill -9`.

mod api;
mod attribution;
mod egress;
mod exchange;
mod follow;
mod instance;
pub mod limits;
mod logs;
pub mod nodecache;
mod pycache;
pub mod sandbox;
mod services;
mod shells;
mod stream;
mod zygote;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::{FunctionVersion, Instance, Runtime, RuntimeKind, StartError};

pub use instance::ProcessInstance;
pub use limits::{MemoryMode, Resources};
pub use sandbox::{Sandbox, SandboxUnavailable};
pub use services::{AwsSlot, CallsSlot};
pub use shells::MAX_SPARES;

/// The Node.js bootstrap nimbus ships (Runtime API client + handler loader).
pub const NODE_BOOTSTRAP: &str = include_str!("../bootstrap/node/bootstrap.js");
/// The Python bootstrap nimbus ships.
pub const PYTHON_BOOTSTRAP: &str = include_str!("../bootstrap/python/bootstrap.py");
/// The `nimbus` module Node functions `require` with nothing to install (on `NODE_PATH`).
pub const NODE_CLIENT: &str = include_str!("../bootstrap/node/lib/nimbus.js");
/// The `nimbus` module Python functions `import` with nothing to install (the bootstrap puts
/// its directory on `sys.path`, after the function's own code).
pub const PYTHON_CLIENT: &str = include_str!("../bootstrap/python/lib/nimbus.py");

/// How long after a start the spare for the next one is made (see `Runtime::start`).
const REPLENISH_AFTER: Duration = Duration::from_millis(100);

/// Limits every process instance runs under.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest response a runtime may post (Lambda: 6 MB).
    pub max_response_bytes: usize,
    /// How long a runtime may take from spawn to its first `/next`.
    pub init_timeout: Duration,
    /// Per-invocation log bound; output beyond it is dropped with a marker.
    pub max_log_bytes: usize,
    /// Grace between SIGTERM and SIGKILL at shutdown.
    pub stop_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_response_bytes: nimbus_core::invoke::MAX_PAYLOAD_BYTES,
            init_timeout: Duration::from_secs(10),
            max_log_bytes: nimbus_core::invoke::MAX_LOG_BYTES,
            stop_grace: Duration::from_millis(500),
        }
    }
}

/// Makes process instances. Cheap to clone (paths and shared handles): the background task
/// that prepares sandboxes ahead of demand holds a clone.
#[derive(Clone)]
pub struct ProcessRuntime {
    pub(crate) node: Option<PathBuf>,
    pub(crate) python: Option<PathBuf>,
    /// What the python runtime runs: the precompiled bootstrap, or its source.
    pub(crate) python_entry: PathBuf,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) scratch_dir: PathBuf,
    pub(crate) limits: Limits,
    /// How instances are isolated; `None` runs them unsandboxed (`--insecure-no-sandbox`).
    pub(crate) sandbox: Option<Arc<Sandbox>>,
    /// The gateway's answer to calls functions make (set once the gateway exists).
    pub(crate) calls: CallsSlot,
    /// The AWS APIs functions reach with their instance's key (set once the AWS side exists).
    pub(crate) aws: AwsSlot,
    /// How `memory_mb`, `cpu_ms`, processes and open files are held (see [`limits`]).
    pub(crate) resources: Arc<Resources>,
    /// Sandboxes prepared ahead of demand (see [`shells`]).
    pub(crate) spares: Arc<shells::Spares>,
}

impl ProcessRuntime {
    /// Write the bundled bootstraps under `data_dir/runtime` and find the real interpreters
    /// (resolving pyenv/nvm shims once here, so instances start the interpreter directly).
    pub fn new(data_dir: &Path, limits: Limits) -> std::io::Result<Self> {
        let runtime_dir = data_dir.join("runtime");
        for (sub, file, text) in [
            ("node", "bootstrap.js", NODE_BOOTSTRAP),
            ("python", "bootstrap.py", PYTHON_BOOTSTRAP),
            ("node/lib", "nimbus.js", NODE_CLIENT),
            ("python/lib", "nimbus.py", PYTHON_CLIENT),
        ] {
            let dir = runtime_dir.join(sub);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                let tmp = dir.join(format!(".{file}.tmp"));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &path)?;
            }
        }
        let python = resolve_interpreter("NIMBUS_PYTHON", "python3", &["-c", "import sys; print(sys.executable)"]);
        let python_entry = python.as_deref().and_then(|py| precompile(py, &runtime_dir.join("python")));
        let scratch_dir = data_dir.join("instances");
        // Temp dirs of instances from a previous run are garbage by now.
        let _ = std::fs::remove_dir_all(&scratch_dir);
        std::fs::create_dir_all(&scratch_dir)?;
        Ok(ProcessRuntime {
            node: resolve_interpreter("NIMBUS_NODE", "node", &["-p", "process.execPath"]),
            python,
            python_entry: python_entry.unwrap_or_else(|| runtime_dir.join("python/bootstrap.py")),
            runtime_dir,
            scratch_dir,
            limits,
            sandbox: None,
            calls: CallsSlot::default(),
            aws: AwsSlot::default(),
            resources: Arc::new(Resources::detect()),
            spares: Arc::default(),
        })
    }

    /// The sandbox instances run in (`None`: unsandboxed).
    pub fn sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.clone()
    }

    /// How instances' limits are held (the memory mode, the pids and cpu controllers).
    pub fn resources(&self) -> Arc<Resources> {
        self.resources.clone()
    }

    /// Where to set the gateway's [`nimbus_core::FunctionCalls`] once it is built.
    pub fn calls_slot(&self) -> CallsSlot {
        self.calls.clone()
    }

    /// Where to set the AWS side's [`nimbus_core::FunctionAws`] (instances started before it is
    /// set get placeholder keys that nothing accepts).
    pub fn aws_slot(&self) -> AwsSlot {
        self.aws.clone()
    }

    /// Run every instance in `sandbox` (see [`sandbox`]).
    pub fn sandboxed(mut self, sandbox: Arc<Sandbox>) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// Where the interpreters nimbus found are installed, when that is outside `/usr` (pyenv,
    /// nvm): the sandbox must show them to the runtime. Found without starting a runtime.
    pub fn interpreter_roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        for exe in [&self.python, &self.node].into_iter().flatten() {
            let exe = exe.canonicalize().unwrap_or_else(|_| exe.clone());
            // `PREFIX/bin/python3.11` → PREFIX, which holds the standard library and libpython.
            if let Some(root) = exe.parent().and_then(Path::parent) {
                if !root.starts_with("/usr") && root != Path::new("/") && !roots.iter().any(|r| root.starts_with(r)) {
                    roots.push(root.to_owned());
                }
            }
        }
        roots
    }

    /// The interpreter paths found at start-up, for diagnostics.
    pub fn interpreters(&self) -> (Option<&Path>, Option<&Path>) {
        (self.node.as_deref(), self.python.as_deref())
    }

    /// The command line that starts an instance of `f`, with paths as the runtime sees them
    /// (inside the sandbox: the code at `/var/task`, the bootstraps at `/var/runtime`).
    pub(crate) fn command_for(&self, f: &FunctionVersion) -> Result<(PathBuf, Vec<String>), StartError> {
        let (program, args) = self.host_command_for(f)?;
        if self.sandbox.is_none() {
            return Ok((program, args));
        }
        let inside = |p: &Path| {
            if let Ok(rest) = p.strip_prefix(&f.code_path) {
                Path::new(sandbox::TASK_ROOT).join(rest)
            } else if let Ok(rest) = p.strip_prefix(&self.runtime_dir) {
                Path::new(sandbox::RUNTIME_DIR).join(rest)
            } else {
                p.to_owned()
            }
        };
        let args = args.iter().map(|a| inside(Path::new(a)).display().to_string()).collect();
        Ok((inside(&program), args))
    }

    fn host_command_for(&self, f: &FunctionVersion) -> Result<(PathBuf, Vec<String>), StartError> {
        let missing = |what: &str, var: &str| {
            StartError::Platform(format!(
                "no {what} interpreter was found on PATH when nimbus started; install it or set {var} to its path, then restart nimbus"
            ))
        };
        match f.spec.runtime {
            RuntimeKind::Node => {
                let node = self.node.clone().ok_or_else(|| missing("node", "NIMBUS_NODE"))?;
                Ok((node, vec![self.runtime_dir.join("node/bootstrap.js").display().to_string()]))
            }
            RuntimeKind::Python => {
                let python = self.python.clone().ok_or_else(|| missing("python3", "NIMBUS_PYTHON"))?;
                // -S skips site-packages: pyenv's .pth files cost ~35 ms per start (measured:
                // `python -c pass` from pyenv took 47 ms with site, 11 ms with -S).
                // Like Lambda, dependencies are vendored into the code directory.
                Ok((python, vec!["-S".into(), self.python_entry.display().to_string()]))
            }
            RuntimeKind::Provided => Ok((f.code_path.join("bootstrap"), Vec::new())),
            RuntimeKind::Wasm => {
                Err(StartError::Platform("wasm functions run in the wasm runtime, not as processes".into()))
            }
        }
    }

    /// The data dir (`runtime_dir` is `DATA_DIR/runtime`).
    pub(crate) fn data_dir(&self) -> &Path {
        self.runtime_dir.parent().unwrap_or(&self.runtime_dir)
    }

    /// PATH for instances: the resolved interpreters first, then the system directories.
    pub(crate) fn instance_path(&self) -> String {
        let mut dirs: Vec<String> = Vec::new();
        for p in [&self.python, &self.node].into_iter().flatten() {
            if let Some(d) = p.parent() {
                let d = d.display().to_string();
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        dirs.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
        dirs.join(":")
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    /// Python functions: compile their modules once per artifact (see the `pycache` module).
    async fn prepare(&self, function: &FunctionVersion) -> Result<(), nimbus_core::PrepareError> {
        if let Some(python) = &self.python {
            let seen = if self.sandbox.is_some() { Path::new(sandbox::TASK_ROOT) } else { &function.code_path };
            pycache::prepare(python, self.data_dir(), function, seen).await;
        }
        Ok(())
    }

    async fn start(
        &self,
        function: Arc<FunctionVersion>,
        instance_id: String,
    ) -> Result<Box<dyn Instance>, StartError> {
        let started = match self.spares.take(&function) {
            Some(shell) => shell.claim(self, function.clone(), instance_id).await,
            None => ProcessInstance::start(self, function.clone(), instance_id).await,
        };
        // The next cold start of this version finds a sandbox ready again, made a moment later:
        // making it (bwrap, and a zygote's interpreter start) takes tens of ms of CPU,
        // which would otherwise compete with the request this start was for.
        let (rt, f) = (self.clone(), function.clone());
        tokio::spawn(async move {
            tokio::time::sleep(REPLENISH_AFTER).await;
            rt.spares.replenish(&rt, &f);
        });
        Ok(Box::new(started?))
    }

    fn live(&self, function: &Arc<FunctionVersion>) {
        self.spares.live(self, function);
    }

    fn retire(&self, function: &FunctionVersion) {
        self.spares.retire(function);
    }

    fn prepared(&self, function: &FunctionVersion) -> bool {
        self.spares.ready(function)
    }

    async fn shutdown(&self) {
        self.spares.shutdown().await;
    }
}

/// Compile the Python bootstrap once for this interpreter. Python never caches the bytecode of
/// the script it is asked to run, and compiling ours costs ~3.6 ms of every cold start (measured
/// with the bootstrap's start-up benchmark). Compiled at every nimbus start, so a changed
/// interpreter never meets a stale .pyc; on any failure the source is used. Tracebacks name the
/// bootstrap by its path inside the sandbox (`/var/runtime/python/bootstrap.py`), never the
/// host's data dir.
fn precompile(python: &Path, dir: &Path) -> Option<PathBuf> {
    let src = dir.join("bootstrap.py");
    let out = dir.join("bootstrap.pyc");
    let shown = format!("{}/python/bootstrap.py", sandbox::RUNTIME_DIR);
    let status = std::process::Command::new(python)
        .args([
            "-S",
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True)",
        ])
        .arg(&src)
        .arg(&out)
        .arg(&shown)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(out)
}

fn resolve_interpreter(env_var: &str, program: &str, args: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    let out = std::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).output().ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}
