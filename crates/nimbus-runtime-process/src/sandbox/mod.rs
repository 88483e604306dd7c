//! The sandbox every process instance (node, python, provided) runs in.
//!
//! # What an instance sees
//! Each instance gets its own mount, PID, IPC, UTS, network and cgroup namespaces, made by
//! bubblewrap (`bwrap`, Debian's `bubblewrap`), on a new root that holds only:
//! - the system's `/usr` (and `/bin`, `/lib*`, `/sbin` as the host has them) read-only, and from
//!   `/etc` only what runtimes need (certificates, resolver and hosts files, the dynamic linker's
//!   cache, time zone), plus a `passwd`/`group` with the one sandbox user;
//! - interpreters installed outside `/usr` (pyenv, nvm) read-only at their own paths;
//! - the function's code read-only at `/var/task` (the working directory, `LAMBDA_TASK_ROOT`),
//!   nimbus's bootstraps read-only at `/var/runtime`;
//! - a private `/tmp` (tmpfs of `ephemeral_storage_mb`), a private `/proc` and a minimal `/dev`;
//! - `/run/nimbus/api.sock`: the instance's own endpoint (Runtime API, Invoke API, egress).
//!
//! Nothing of `DATA_DIR`, other functions, home directories or the rest of the host is visible.
//! The network namespace has only loopback: `127.0.0.1:9001` inside is forwarded to
//! `api.sock` by nimbus's small init ([`init`]), which is the command bwrap runs; it starts the
//! runtime. `AWS_LAMBDA_RUNTIME_API` points there, so the official runtime clients work
//! unchanged, and nothing else of nimbus or the host's loopback is reachable.
//!
//! # Who the function runs as
//! Never root on the host. When nimbus runs as root, bwrap runs privileged (it needs no user
//! namespace to make the others) and the init drops to uid/gid 65534 (`nobody`) before it
//! starts the runtime, with every capability gone and `no_new_privs` set; inside and outside,
//! the function is 65534. When nimbus runs as a normal user (rootless), bwrap makes a user
//! namespace in which the function is uid 993 (`sbx_user1051`, as on Lambda), mapped to
//! nimbus's own unprivileged uid outside.
//!
//! # What it may not do
//! A seccomp filter (`seccomp.rs`) denies with EPERM what a function never needs: mounting,
//! new namespaces, ptrace, kexec, bpf, keyrings, perf events, userfaultfd, module loading,
//! io_uring, clock setting and the like. `clone3` answers ENOSYS so libc falls back to `clone`,
//! whose flags the filter can inspect.
//!
//! # Why bubblewrap
//! It is the sandbox of Flatpak: small, audited, setuid-free, and it gets the fiddly parts right
//! (pivot_root, a reaping PID 1, `--die-with-parent`, tmpfs sizes, loading a seccomp program).
//! The alternatives were writing the namespace and mount set-up by hand in a `pre_exec` hook
//! (more unsafe code to own, between fork and exec of a multi-threaded program) or a crate that
//! does it synchronously outside tokio's process handling (hakoniwa). The seccomp program is
//! compiled in Rust by `seccompiler` (Firecracker's) and handed to bwrap as a file descriptor.
//!
//! The cost is one more exec per cold start (bwrap, then the init); `nimbus-bench process`
//! measures it against `--insecure-no-sandbox`. The init is a small executable of its own
//! (`nimbus-sandbox-init`, built and installed with nimbus) so that exec stays cheap; without it
//! nimbus runs itself as the init.

pub mod init;
mod seccomp;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The address the runtime reaches nimbus at, inside the sandbox.
pub const INSIDE_API: &str = "127.0.0.1:9001";
/// Where the function's code is, inside.
pub const TASK_ROOT: &str = "/var/task";
/// Where nimbus's bootstraps are, inside.
pub const RUNTIME_DIR: &str = "/var/runtime";
/// The directory holding the instance's endpoint socket, inside.
pub const SOCKET_DIR: &str = "/run/nimbus";
/// The socket's file name.
pub const SOCKET_NAME: &str = "api.sock";
/// Where the init binary (nimbus itself) is, inside.
const INIT_PATH: &str = "/opt/nimbus/init";

/// The sandbox user when nimbus is root: `nobody`.
const ROOT_MODE_ID: u32 = 65534;
/// The sandbox user inside a user namespace (rootless nimbus), as on Lambda.
const USERNS_UID: u32 = 993;
const USERNS_GID: u32 = 990;

/// `/etc` entries a runtime may need, copied into the sandbox's `/etc` when the host has them.
const ETC: &[&str] = &[
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "crypto-policies",
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "localtime",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "os-release",
    "mime.types",
];

/// Top-level system directories that are either symlinks into `/usr` or real directories.
const SYSTEM_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Why process instances cannot be sandboxed on this machine.
#[derive(Debug, thiserror::Error)]
pub enum SandboxUnavailable {
    #[error(
        "bubblewrap (bwrap) is not installed; install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) or set NIMBUS_BWRAP to its path"
    )]
    NoBwrap,
    #[error("cannot prepare the sandbox: {0}")]
    Setup(String),
    #[error(
        "a test sandbox failed to start ({0}); the kernel must allow namespaces for bubblewrap — for a rootless nimbus, unprivileged user namespaces (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1 where it exists, and no AppArmor restriction on bwrap)"
    )]
    Probe(String),
}

/// A bind of a host path into the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// Read-only at the same path.
    Bind(PathBuf),
    /// A symlink `path -> target` (e.g. `/lib -> usr/lib` on merged-/usr systems).
    Symlink { target: PathBuf, path: PathBuf },
}

/// How instances are sandboxed; made once at start by [`Sandbox::detect`].
#[derive(Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    /// nimbus runs as root: bwrap runs privileged and the init drops to [`ROOT_MODE_ID`].
    privileged: bool,
    /// The compiled seccomp program (cBPF), written for bwrap to read.
    seccomp: PathBuf,
    /// The generated `passwd` and `group` of the sandbox user.
    etc_dir: PathBuf,
    system: Vec<Entry>,
    /// Interpreter installations outside `/usr`, bound read-only at their own paths.
    extra: Vec<PathBuf>,
    /// The sandbox's init: `nimbus-sandbox-init` next to this binary, else this binary.
    init: PathBuf,
    /// `NIMBUS_SANDBOX_SHARED_DIR`: a host directory every sandbox sees read-write at the same
    /// path. For tests and local development (functions report to the test through it); it
    /// breaks the isolation between functions that use it, so nimbus warns when it is set.
    shared: Option<PathBuf>,
}

/// What one instance's sandbox is made of.
pub(crate) struct InstanceSpec<'a> {
    /// The function's code (→ `/var/task`).
    pub code: &'a Path,
    /// nimbus's bootstraps (→ `/var/runtime`).
    pub runtime_dir: &'a Path,
    /// The directory of the instance's endpoint socket (→ `/run/nimbus`).
    pub socket_dir: &'a Path,
    /// The size of `/tmp`.
    pub tmp_mb: u32,
    /// The runtime's program and arguments, as paths inside the sandbox.
    pub program: &'a str,
    pub args: &'a [String],
    /// A prepared sandbox: the init waits for the runtime's environment on stdin.
    pub hold: bool,
    /// The function's compiled Python modules (→ `crate::pycache::INSIDE`, read-only).
    pub pyc: Option<&'a Path>,
}

impl Sandbox {
    /// Find bwrap, write the seccomp program and the sandbox user's files under `work_dir`, and
    /// start one test sandbox to prove the kernel allows it. `extra` are interpreter
    /// installations outside `/usr` the runtimes need.
    pub fn detect(work_dir: &Path, extra: Vec<PathBuf>) -> Result<Sandbox, SandboxUnavailable> {
        let bwrap = find_bwrap().ok_or(SandboxUnavailable::NoBwrap)?;
        let setup = |what: &str, e: std::io::Error| SandboxUnavailable::Setup(format!("{what}: {e}"));
        std::fs::create_dir_all(work_dir).map_err(|e| setup("cannot create its directory", e))?;
        let program = seccomp::program().map_err(SandboxUnavailable::Setup)?;
        let seccomp = work_dir.join("seccomp.bpf");
        std::fs::write(&seccomp, program).map_err(|e| setup("cannot write the seccomp program", e))?;
        let privileged = nix::unistd::geteuid().is_root();
        let etc_dir = work_dir.join("etc");
        write_etc(&etc_dir, privileged).map_err(|e| setup("cannot write the sandbox user's files", e))?;
        let init = init_program().map_err(|e| setup("cannot find nimbus's own binary", e))?;
        let extra = extra.into_iter().filter(|p| p.is_dir() && !p.starts_with("/usr")).collect();
        let shared = std::env::var_os("NIMBUS_SANDBOX_SHARED_DIR").map(PathBuf::from).filter(|p| p.is_dir());
        let sandbox = Sandbox { bwrap, privileged, seccomp, etc_dir, system: system_entries(), extra, init, shared };
        sandbox.probe()?;
        Ok(sandbox)
    }

    /// The directory shared read-write with every sandbox, if one is set.
    pub fn shared_dir(&self) -> Option<&Path> {
        self.shared.as_deref()
    }

    /// Whether bwrap runs as root (nimbus is root) and the init drops privileges itself.
    pub fn privileged(&self) -> bool {
        self.privileged
    }

    /// The uid the function runs as on the host.
    pub fn host_uid(&self) -> u32 {
        if self.privileged {
            ROOT_MODE_ID
        } else {
            nix::unistd::geteuid().as_raw()
        }
    }

    /// Run `init --probe` in a sandbox like an instance's: it checks it is not root and exits.
    fn probe(&self) -> Result<(), SandboxUnavailable> {
        let dir = tempfile::tempdir().map_err(|e| SandboxUnavailable::Setup(format!("cannot make a temp dir: {e}")))?;
        let spec = InstanceSpec {
            code: dir.path(),
            runtime_dir: dir.path(),
            socket_dir: dir.path(),
            tmp_mb: 1,
            program: "--probe",
            args: &[],
            hold: false,
            pyc: None,
        };
        let (args, fd) = self.args(&spec).map_err(|e| SandboxUnavailable::Setup(e.to_string()))?;
        let mut cmd = std::process::Command::new(&self.bwrap);
        cmd.args(&args).env_clear().stdin(std::process::Stdio::null());
        use command_fds::CommandFdExt;
        cmd.fd_mappings(vec![command_fds::FdMapping { parent_fd: fd, child_fd: SECCOMP_FD }])
            .map_err(|e| SandboxUnavailable::Setup(e.to_string()))?;
        let out = cmd.output().map_err(|e| SandboxUnavailable::Probe(format!("cannot run bwrap: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(SandboxUnavailable::Probe(format!("{}: {stderr}", out.status)))
    }

    /// The bwrap command for one instance: its arguments and the seccomp program's descriptor
    /// (to be given to the child as [`SECCOMP_FD`]).
    pub(crate) fn command(&self, spec: &InstanceSpec<'_>) -> std::io::Result<tokio::process::Command> {
        let (args, fd) = self.args(spec)?;
        let mut cmd = tokio::process::Command::new(&self.bwrap);
        cmd.args(args);
        use command_fds::CommandFdExt;
        cmd.fd_mappings(vec![command_fds::FdMapping { parent_fd: fd, child_fd: SECCOMP_FD }])
            .map_err(std::io::Error::other)?;
        Ok(cmd)
    }

    fn args(&self, spec: &InstanceSpec<'_>) -> std::io::Result<(Vec<OsString>, OwnedFd)> {
        let seccomp = OwnedFd::from(std::fs::File::open(&self.seccomp)?);
        let mut a = Args::default();
        self.namespaces(&mut a);
        self.root(&mut a);
        a.dirs(TASK_ROOT).ro(spec.code, TASK_ROOT);
        a.dirs(RUNTIME_DIR).ro(spec.runtime_dir, RUNTIME_DIR);
        a.dirs(SOCKET_DIR).flag("--bind").path(spec.socket_dir).path(SOCKET_DIR);
        a.dirs("/opt/nimbus").ro(&self.init, INIT_PATH);
        if let Some(pyc) = spec.pyc {
            a.dirs(crate::pycache::INSIDE).ro(pyc, crate::pycache::INSIDE);
        }
        let tmp_bytes = u64::from(spec.tmp_mb.max(1)) * 1024 * 1024;
        a.flag("--perms").flag("1777").flag("--size").flag(&tmp_bytes.to_string()).flag("--tmpfs").flag("/tmp");
        a.1.insert(PathBuf::from("/tmp"));
        // After /tmp: a shared directory under /tmp (as the tests' is) stays visible.
        if let Some(shared) = &self.shared {
            a.dirs(shared).flag("--bind").path(shared).path(shared);
        }
        a.flag("--chdir").flag(TASK_ROOT);
        a.flag("--seccomp").flag(&SECCOMP_FD.to_string());
        // The command: the init, then the runtime.
        a.path(INIT_PATH).flag(init::SUBCOMMAND);
        if spec.program == "--probe" {
            a.flag("--probe");
        } else {
            if self.privileged {
                a.flag("--drop-to").flag(&ROOT_MODE_ID.to_string());
            } else {
                // In the instance's own user namespace RLIMIT_NPROC counts that namespace's
                // processes: a per-instance cap even without the pids cgroup controller.
                a.flag("--nproc").flag(&crate::limits::MAX_PROCESSES.to_string());
            }
            if spec.hold {
                a.flag("--hold");
            }
            a.flag("--listen").flag(INSIDE_API);
            a.flag("--socket").flag(&format!("{SOCKET_DIR}/{SOCKET_NAME}"));
            a.flag("--").flag(spec.program);
            for arg in spec.args {
                a.flag(arg);
            }
        }
        Ok((a.0, seccomp))
    }

    fn namespaces(&self, a: &mut Args) {
        for ns in ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try"] {
            a.flag(ns);
        }
        if self.privileged {
            // Only what the init needs to drop to the sandbox user; gone once it has.
            a.flag("--cap-drop").flag("ALL").flag("--cap-add").flag("CAP_SETUID").flag("--cap-add").flag("CAP_SETGID");
        } else {
            a.flag("--unshare-user").flag("--uid").flag(&USERNS_UID.to_string());
            a.flag("--gid").flag(&USERNS_GID.to_string()).flag("--disable-userns");
        }
        a.flag("--hostname").flag("sandbox").flag("--die-with-parent").flag("--new-session");
    }

    /// The system part of the root: /usr and friends, the sandbox's /etc, interpreters.
    fn root(&self, a: &mut Args) {
        for e in &self.system {
            match e {
                Entry::Bind(p) => {
                    a.dirs_of_parent(p).ro(p, p);
                }
                Entry::Symlink { target, path } => {
                    a.flag("--symlink").path(target).path(path);
                }
            }
        }
        a.ro(&self.etc_dir, "/etc");
        a.1.insert(PathBuf::from("/etc"));
        for p in &self.extra {
            a.dirs(p).ro(p, p);
        }
        a.flag("--proc").flag("/proc").flag("--dev").flag("/dev");
    }
}

/// The child-side descriptor bwrap reads the seccomp program from.
const SECCOMP_FD: i32 = 3;

/// bwrap's argument list, with helpers for the repetitive parts; `made` are the directories
/// already created, so each is made once.
#[derive(Default)]
struct Args(Vec<OsString>, std::collections::HashSet<PathBuf>);

impl Args {
    fn flag(&mut self, s: &str) -> &mut Self {
        self.0.push(s.into());
        self
    }

    fn path(&mut self, p: impl AsRef<Path>) -> &mut Self {
        self.0.push(p.as_ref().as_os_str().to_owned());
        self
    }

    fn ro(&mut self, src: impl AsRef<Path>, dest: impl AsRef<Path>) -> &mut Self {
        self.flag("--ro-bind").path(src).path(dest)
    }

    /// Make every directory of `path` (bwrap would make missing ones mode 0700 when
    /// privileged, which the sandbox user could not enter).
    fn dirs(&mut self, path: impl AsRef<Path>) -> &mut Self {
        let mut cur = PathBuf::from("/");
        for part in path.as_ref().components().skip(1) {
            cur.push(part);
            if self.1.insert(cur.clone()) {
                self.flag("--perms").flag("0755").flag("--dir").path(&cur);
            }
        }
        self
    }

    fn dirs_of_parent(&mut self, path: &Path) -> &mut Self {
        match path.parent() {
            Some(parent) if parent != Path::new("/") => self.dirs(parent),
            _ => self,
        }
    }
}

/// The program bwrap runs first: the small `nimbus-sandbox-init` executable installed next to
/// nimbus (`cargo build` and `cargo install` make both), else nimbus itself. Both take the same
/// arguments; the small one starts in about 1 ms instead of nimbus's 3-4 ms (a 200 MB binary
/// whose 84,000 relocations touch ~600 pages), on every cold start.
fn init_program() -> std::io::Result<PathBuf> {
    Ok(init_beside(std::env::current_exe()?))
}

fn init_beside(nimbus: PathBuf) -> PathBuf {
    let small = nimbus.with_file_name(INIT_BINARY);
    if is_executable(&small) {
        small
    } else {
        nimbus
    }
}

/// The file name of the small init executable.
pub const INIT_BINARY: &str = "nimbus-sandbox-init";

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_bwrap() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NIMBUS_BWRAP") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).map(|d| d.join("bwrap")).find(|p| p.is_file())
}

/// `/usr` and the top-level system directories as the host has them.
fn system_entries() -> Vec<Entry> {
    let mut out = vec![Entry::Bind(PathBuf::from("/usr"))];
    for d in SYSTEM_DIRS {
        let path = Path::new("/").join(d);
        match std::fs::read_link(&path) {
            Ok(target) => out.push(Entry::Symlink { target, path }),
            Err(_) if path.is_dir() => out.push(Entry::Bind(path)),
            Err(_) => {}
        }
    }
    out
}

/// The sandbox's `/etc`, made once at start and bound read-only as one directory (every bind
/// costs bwrap a pass over the mount table, on every cold start): copies of the chosen host
/// entries (links kept as links; what nimbus cannot read is left out, as the sandbox user could
/// not read it either), and `passwd` and `group` with the sandbox user only.
fn write_etc(dir: &Path, privileged: bool) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for e in ETC {
        copy_entry(&Path::new("/etc").join(e), &dir.join(e));
    }
    let (uid, gid) = if privileged { (ROOT_MODE_ID, ROOT_MODE_ID) } else { (USERNS_UID, USERNS_GID) };
    std::fs::write(dir.join("passwd"), format!("sbx_user1051:x:{uid}:{gid}:sandbox:/tmp:/sbin/nologin\n"))?;
    std::fs::write(dir.join("group"), format!("sbx_user1051:x:{gid}:\n"))?;
    Ok(())
}

/// Copy `from` to `to` as `cp -a` would, best effort: a missing or unreadable entry is skipped,
/// and so are private keys (`ssl/private`), which no function needs.
fn copy_entry(from: &Path, to: &Path) {
    if from.file_name().is_some_and(|n| n == "private") {
        return;
    }
    let Ok(meta) = std::fs::symlink_metadata(from) else { return };
    if meta.file_type().is_symlink() {
        if let Ok(target) = std::fs::read_link(from) {
            let _ = std::os::unix::fs::symlink(target, to);
        }
    } else if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(from) else { return };
        if std::fs::create_dir(to).is_err() {
            return;
        }
        for e in entries.flatten() {
            copy_entry(&e.path(), &to.join(e.file_name()));
        }
        let _ = std::fs::set_permissions(to, meta.permissions());
    } else if meta.is_file() && std::fs::copy(from, to).is_ok() {
        let _ = std::fs::set_permissions(to, meta.permissions());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_small_init_beside_nimbus_is_preferred_and_nimbus_itself_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let nimbus = dir.path().join("nimbus");
        std::fs::write(&nimbus, b"").unwrap();
        assert_eq!(init_beside(nimbus.clone()), nimbus, "no small init: nimbus runs itself");
        let small = dir.path().join(INIT_BINARY);
        std::fs::write(&small, b"").unwrap();
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(init_beside(nimbus.clone()), nimbus, "a small init that cannot be executed is not used");
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(init_beside(nimbus), small);
    }
}
