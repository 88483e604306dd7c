//! What one process instance may use — `memory_mb`, `cpu_ms`, 1,024 processes and threads,
//! 1,024 open files — and how each is held on this machine.
//!
//! # Memory (`memory_mb`), in this order
//! 1. **cgroup v2**: the instance's own cgroup with `memory.max` (and `memory.swap.max = 0`),
//!    where a v2 hierarchy delegates the memory controller to nimbus: nimbus's own cgroup can
//!    enable it for children (its `cgroup.subtree_control`), or, when nimbus sits in a leaf of a
//!    delegated cgroup (systemd `Delegate=yes` with `DelegateSubgroup=`), next to that leaf.
//! 2. **cgroup v1**: the memory controller's hierarchy, where nimbus can make a cgroup under its
//!    own: `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` where swap is accounted).
//! 3. **rlimit**: `RLIMIT_DATA` of `memory_mb` on each process of the instance. It is per
//!    process, not per instance (a function that forks gets `memory_mb` per child), and it
//!    makes allocations fail (MemoryError, ENOMEM) instead of the kernel killing the runtime.
//!
//! A cgroup's limit covers every process of the instance (bwrap, nimbus's init, the runtime and
//! what it starts) and the pages of its `/tmp` (tmpfs is memory). Past it the kernel's OOM killer
//! stops the largest process — the runtime — and nimbus reports `Runtime.OutOfMemory` from the
//! cgroup's OOM-kill counter.
//!
//! # Processes and threads
//! The pids controller (v2 `pids.max`, v1 `pids`) caps each instance at [`MAX_PROCESSES`]
//! tasks. `RLIMIT_NPROC` is no substitute — it counts per real uid across all instances (every
//! sandboxed function is uid 65534 when nimbus is root; nimbus's own uid when rootless) — so
//! without the pids controller nothing caps one instance; the PID namespace still ends every
//! process with the instance.
//!
//! # CPU time (`cpu_ms`)
//! Read from the instance's cgroup (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`), else summed
//! from `/proc` over the instance's process tree (`utime + stime` of the live processes and what
//! they reaped).
//!
//! # Open files
//! `RLIMIT_NOFILE` of [`MAX_OPEN_FILES`] (soft and hard), per process, everywhere.
//!
//! nimbus makes `nimbus-<pid>` under its own cgroup of each controller it uses, one cgroup per
//! instance in it, removes an instance's when the instance ends and its own at shutdown (and
//! those of earlier runs whose nimbus is gone, at start).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Processes and threads one instance may have (Lambda's limit).
pub const MAX_PROCESSES: u32 = 1024;
/// Open files per process (Lambda's limit).
pub const MAX_OPEN_FILES: u64 = 1024;

/// How `memory_mb` is held on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMode {
    CgroupV2,
    CgroupV1,
    Rlimit,
}

impl MemoryMode {
    /// The name `GET /v1/info` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryMode::CgroupV2 => "cgroup-v2",
            MemoryMode::CgroupV1 => "cgroup-v1",
            MemoryMode::Rlimit => "rlimit",
        }
    }
}

/// One line of `/proc/self/cgroup`: the controllers of a hierarchy (none for v2) and the path.
#[derive(Debug, PartialEq, Eq)]
struct Membership {
    v2: bool,
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let controllers: Vec<String> = ctrls.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
            Some(Membership { v2: id == "0" && controllers.is_empty(), controllers, path: path.to_owned() })
        })
        .collect()
}

/// A mounted cgroup file system: where, which cgroup is its root, v2 or the v1 controllers.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    root: String,
    v2: bool,
    controllers: Vec<String>,
}

/// The controllers nimbus uses, as v1 mount options name them.
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpuacct"];

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut f = left.split_whitespace().skip(3);
            let (root, point) = (f.next()?, f.next()?);
            let mut r = right.split_whitespace();
            let (fstype, _source, opts) = (r.next()?, r.next()?, r.next().unwrap_or(""));
            let v2 = fstype == "cgroup2";
            if !v2 && fstype != "cgroup" {
                return None;
            }
            let controllers =
                opts.split(',').filter(|o| !v2 && V1_CONTROLLERS.contains(o)).map(str::to_owned).collect();
            Some(Mount { point: PathBuf::from(point), root: root.to_owned(), v2, controllers })
        })
        .collect()
}

/// nimbus's own cgroup directory in the v2 hierarchy (`controller = None`) or in the v1
/// hierarchy of `controller`.
fn own_cgroup(mounts: &[Mount], members: &[Membership], controller: Option<&str>) -> Option<PathBuf> {
    let fits = |v2: bool, ctrls: &[String]| match controller {
        None => v2,
        Some(c) => !v2 && ctrls.iter().any(|x| x == c),
    };
    let member = members.iter().find(|m| fits(m.v2, &m.controllers))?;
    let mount = mounts.iter().find(|m| fits(m.v2, &m.controllers))?;
    // Paths are relative to the cgroup namespace; a mount of a sub-tree shows it as its root.
    let rel = member.path.strip_prefix(mount.root.as_str()).unwrap_or(&member.path);
    Some(mount.point.join(rel.trim_start_matches('/')))
}

/// `key N` lines (`memory.events`, `memory.oom_control`, `cpu.stat`): the value of `key`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Where nimbus makes the cgroups of one controller: `nimbus-<pid>`, in v1 or v2.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ctrl {
    base: PathBuf,
    v2: bool,
}

/// The limits machinery this nimbus uses, found once at start by [`Resources::detect`].
#[derive(Debug, Default)]
pub struct Resources {
    memory: Option<Ctrl>,
    pids: Option<Ctrl>,
    cpu: Option<Ctrl>,
    notes: Vec<String>,
}

impl Resources {
    /// No cgroups: rlimits only (tests, and machines without a writable hierarchy).
    pub fn rlimits_only() -> Resources {
        Resources::default()
    }

    /// Look at this machine's cgroups and pick, per controller, the first that works.
    pub fn detect() -> Resources {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let members = parse_proc_cgroup(&read("/proc/self/cgroup"));
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo"));
        let name = format!("nimbus-{}", std::process::id());
        let mut r = Resources::default();
        if let Some(own) = own_cgroup(&mounts, &members, None) {
            match v2_base(&own, &name) {
                Ok((base, pids)) => {
                    let ctrl = Ctrl { base, v2: true };
                    r.pids = pids.then(|| ctrl.clone());
                    r.cpu = Some(ctrl.clone());
                    r.memory = Some(ctrl);
                }
                Err(why) => r.notes.push(why),
            }
        }
        for c in V1_CONTROLLERS {
            let slot = match *c {
                "memory" => &mut r.memory,
                "pids" => &mut r.pids,
                _ => &mut r.cpu,
            };
            if slot.is_some() {
                continue;
            }
            let Some(own) = own_cgroup(&mounts, &members, Some(c)) else { continue };
            remove_stale(&own);
            match std::fs::create_dir(own.join(&name)) {
                Ok(()) => *slot = Some(Ctrl { base: own.join(&name), v2: false }),
                Err(e) => r.notes.push(format!("cgroup v1 {c}: cannot create {}: {e}", own.join(&name).display())),
            }
        }
        r
    }

    /// How `memory_mb` is held.
    pub fn memory_mode(&self) -> MemoryMode {
        match &self.memory {
            Some(Ctrl { v2: true, .. }) => MemoryMode::CgroupV2,
            Some(Ctrl { v2: false, .. }) => MemoryMode::CgroupV1,
            None => MemoryMode::Rlimit,
        }
    }

    /// Whether processes per instance are capped (the pids controller is in use).
    pub fn caps_processes(&self) -> bool {
        self.pids.is_some()
    }

    /// Where CPU time is read from: "cgroup-v2", "cgroup-v1" or "proc".
    pub fn cpu_source(&self) -> &'static str {
        match &self.cpu {
            Some(Ctrl { v2: true, .. }) => "cgroup-v2",
            Some(Ctrl { v2: false, .. }) => "cgroup-v1",
            None => "proc",
        }
    }

    /// Why a cgroup mechanism is not used, for the start-up log.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Make the cgroups of one instance with its limits set; `None` when no controller is used.
    pub(crate) fn instance(&self, id: &str, memory_mb: u32) -> std::io::Result<Option<InstanceCgroup>> {
        if self.memory.is_none() && self.pids.is_none() && self.cpu.is_none() {
            return Ok(None);
        }
        let mut cg = InstanceCgroup::default();
        let memory = self.memory.as_ref().map(|c| cg.make_dir(c, id)).transpose()?;
        let pids = self.pids.as_ref().map(|c| cg.make_dir(c, id)).transpose()?;
        cg.cpu = self.cpu.as_ref().map(|c| cg.make_dir(c, id)).transpose()?;
        let bytes = u64::from(memory_mb) * 1024 * 1024;
        if let Some((dir, v2)) = &memory {
            let (limit, swap) = if *v2 { ("memory.max", "memory.swap.max") } else { ("memory.limit_in_bytes", "") };
            write_file(&dir.join(limit), &bytes.to_string())?;
            // No swap past the limit: where swap is accounted, memory plus swap is the limit too.
            let (swap, value) =
                if *v2 { (swap, "0".to_owned()) } else { ("memory.memsw.limit_in_bytes", bytes.to_string()) };
            if dir.join(swap).exists() {
                write_file(&dir.join(swap), &value)?;
            }
        }
        cg.memory = memory;
        if let Some((dir, _)) = &pids {
            write_file(&dir.join("pids.max"), &MAX_PROCESSES.to_string())?;
        }
        for dir in &cg.dirs {
            // cgroup v1: the child writes itself into `tasks` (it is one thread between fork and
            // exec, so that moves the whole process). Writing `cgroup.procs` takes the kernel's
            // thread-group lock, which waits out an RCU grace period: 7-24 ms of every cold start
            // on this VM, against 0.3 ms for `tasks`. cgroup v2 has only `cgroup.procs`.
            let file = if dir.join("tasks").exists() { "tasks" } else { "cgroup.procs" };
            let f = std::fs::OpenOptions::new().write(true).open(dir.join(file))?;
            cg.procs.push(OwnedFd::from(f));
        }
        Ok(Some(cg))
    }

    /// Remove nimbus's cgroups (and any instance's left behind). At shutdown, once instances
    /// are stopped.
    pub fn cleanup(&self) {
        if self.memory.is_none() && self.pids.is_none() && self.cpu.is_none() {
            return;
        }
        let mut bases: Vec<&Path> = Vec::new();
        for c in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            if !bases.contains(&c.base.as_path()) {
                bases.push(&c.base);
            }
        }
        for base in bases {
            remove_tree(base);
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A v2 base for nimbus's instances, with the memory controller (and pids, when delegated too)
/// enabled for them; `Err` says why v2 cannot be used.
fn v2_base(own: &Path, name: &str) -> Result<(PathBuf, bool), String> {
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!("cgroup v2: the memory controller is not delegated to nimbus's cgroup {}", own.display()));
    }
    remove_stale(own);
    // Either nimbus's own cgroup can enable it for children, or (nimbus in a leaf) its parent has.
    let parent = if enable(own, "memory") { own } else { own.parent().unwrap_or(own) };
    let base = parent.join(name);
    std::fs::create_dir(&base).map_err(|e| format!("cgroup v2: cannot create {}: {e}", base.display()))?;
    if !enable(&base, "memory") {
        let _ = std::fs::remove_dir(&base);
        return Err(format!("cgroup v2: cannot enable the memory controller in {}", base.display()));
    }
    Ok((base.clone(), enable(&base, "pids")))
}

/// Enable `controller` for the children of `dir` (or find it enabled).
fn enable(dir: &Path, controller: &str) -> bool {
    let on = |d: &Path| {
        std::fs::read_to_string(d.join("cgroup.subtree_control"))
            .is_ok_and(|t| t.split_whitespace().any(|c| c == controller))
    };
    on(dir) || (write_file(&dir.join("cgroup.subtree_control"), &format!("+{controller}")).is_ok() && on(dir))
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes()).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// `nimbus-<pid>` cgroups under `dir` whose nimbus is gone (it was killed before its cleanup).
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten().take(10_000) {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("nimbus-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree(&e.path());
        }
    }
}

/// Kill what is left in `base` and its children, then remove them; bounded in tries and time.
fn remove_tree(base: &Path) {
    for _ in 0..50 {
        let children: Vec<PathBuf> = std::fs::read_dir(base)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).take(10_000).collect())
            .unwrap_or_default();
        for dir in &children {
            kill_all(dir);
            let _ = std::fs::remove_dir(dir);
        }
        kill_all(base);
        if std::fs::remove_dir(base).is_ok() || !base.exists() {
            return;
        }
        // Killed processes leave their cgroup as they exit, a moment after the signal.
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("cannot remove the cgroup {}: processes are still in it", base.display());
}

/// SIGKILL every process in the cgroup `dir`.
fn kill_all(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|p| *p > 0) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// The cgroups of one instance: removed (after killing what is left) when dropped.
#[derive(Debug, Default)]
pub(crate) struct InstanceCgroup {
    dirs: Vec<PathBuf>,
    memory: Option<(PathBuf, bool)>,
    cpu: Option<(PathBuf, bool)>,
    /// Each cgroup's `tasks` (v1) or `cgroup.procs` (v2), opened before the spawn for the child to
    /// write itself into.
    procs: Vec<OwnedFd>,
    /// `memory.events` (v2) or `memory.oom_control` (v1), opened at the first
    /// [`InstanceCgroup::oom_kills`] and read with `pread` after that: the count is read at
    /// the start of every invocation, and open, statx, three reads and close were five of the
    /// warm path's syscalls.
    oom_file: std::sync::OnceLock<Option<std::fs::File>>,
}

impl InstanceCgroup {
    /// The instance's cgroup of controller `c` (made once: v2 controllers share one).
    fn make_dir(&mut self, c: &Ctrl, id: &str) -> std::io::Result<(PathBuf, bool)> {
        let dir = c.base.join(id);
        if !self.dirs.contains(&dir) {
            std::fs::create_dir(&dir)?;
            self.dirs.push(dir.clone());
        }
        Ok((dir, c.v2))
    }

    /// Whether memory is held by the cgroup (else by an rlimit).
    pub(crate) fn holds_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// How many times the kernel's OOM killer has stopped a process of the instance.
    pub(crate) fn oom_kills(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let Some((dir, v2)) = &self.memory else { return 0 };
        let file = self.oom_file.get_or_init(|| {
            let name = if *v2 { "memory.events" } else { "memory.oom_control" };
            std::fs::File::open(dir.join(name)).ok()
        });
        let mut buf = [0u8; 512];
        let Some(n) = file.as_ref().and_then(|f| f.read_at(&mut buf, 0).ok()) else { return 0 };
        let text = buf.get(..n).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();
        keyed(text, "oom_kill").unwrap_or(0)
    }

    /// CPU time used by the instance's processes so far, in ns.
    pub(crate) fn cpu_ns(&self) -> Option<u64> {
        let (dir, v2) = self.cpu.as_ref()?;
        if *v2 {
            let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
            keyed(&text, "usage_usec").map(|us| us.saturating_mul(1000))
        } else {
            std::fs::read_to_string(dir.join("cpuacct.usage")).ok()?.trim().parse().ok()
        }
    }

    /// Kill what is left and remove the cgroups, retrying while the killed processes exit.
    pub(crate) async fn remove(&mut self) {
        for _ in 0..100 {
            if self.try_remove() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn try_remove(&mut self) -> bool {
        self.procs.clear();
        self.oom_file = std::sync::OnceLock::new();
        self.dirs.retain(|dir| {
            kill_all(dir);
            std::fs::remove_dir(dir).is_err() && dir.exists()
        });
        self.dirs.is_empty()
    }
}

impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        // What cannot be removed yet (processes still exiting) goes at shutdown.
        self.try_remove();
    }
}

/// Put the child into the instance's cgroups and set its rlimits, between fork and exec: the
/// runtime is in its cgroup before it can run (or fork) anything. Writing "0" to `tasks` (v1) or
/// `cgroup.procs` (v2) moves the writer itself, so the hook needs no formatting; the files were opened by nimbus
/// before the fork (close-on-exec, so the runtime never holds them). The rlimits are set here
/// rather than in the sandbox's init so they also hold without a sandbox; they are inherited by
/// bwrap, the init and the runtime alike, and the init's privilege drop leaves no capability to
/// raise them. `data_bytes`: `RLIMIT_DATA`, in rlimit mode.
#[allow(unsafe_code)]
pub(crate) fn pre_exec_hook(
    cmd: &mut tokio::process::Command,
    cgroup: Option<&InstanceCgroup>,
    data_bytes: Option<u64>,
) {
    let fds: Vec<i32> = cgroup.map(|c| c.procs.iter().map(AsRawFd::as_raw_fd).collect()).unwrap_or_default();
    // SAFETY: the closure runs between fork and exec; it only calls write(2) on descriptors that
    // stay open until the spawn returns (the instance holds them) and setrlimit(2), both
    // async-signal-safe, and allocates nothing (the Vec was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let files = libc::rlimit { rlim_cur: MAX_OPEN_FILES, rlim_max: MAX_OPEN_FILES };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &files) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(bytes) = data_bytes {
                let data = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
                if libc::setrlimit(libc::RLIMIT_DATA, &data) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// CPU time of the process tree under `root` (live processes, and the children they reaped), in
/// ns, from `/proc`: for machines without a cpu accounting cgroup.
pub(crate) fn tree_cpu_ns(root: u32) -> Option<u64> {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0)?;
    let per_tick = 1_000_000_000 / u64::try_from(tick).ok()?;
    let mut todo = vec![root];
    let mut ticks = 0u64;
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 4 * MAX_PROCESSES as usize {
            break;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        ticks = ticks.saturating_add(stat_cpu_ticks(&stat).unwrap_or(0));
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    }
    Some(ticks.saturating_mul(per_tick))
}

/// utime + stime + cutime + cstime of one `/proc/PID/stat` line, in clock ticks.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3 (index 0 here); utime..cstime are fields 14..17.
    let sum = (11..15).map(|i| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)).sum();
    Some(sum)
}

/// Peak resident set of a process in MB (`VmHWM`), the figure Lambda reports as Max Memory Used.
/// `status` is `/proc/PID/status`, kept open: procfs regenerates the file on every read at
/// offset 0, and reusing the descriptor saves open, statx and close on every invocation.
pub(crate) fn peak_rss_mb(status: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let n = status.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    u32::try_from(kb.div_ceil(1024)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout in the issue: cgroup hybrid, v1 controllers mounted per controller,
    /// nimbus in memory:/process_api/ID, an empty v2 hierarchy at /sys/fs/cgroup/unified.
    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/6ea7\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
36 25 0:32 / /proc rw - proc proc rw
";

    #[test]
    fn a_hybrid_machine_places_each_controller_in_its_own_hierarchy() {
        let members = parse_proc_cgroup(HYBRID_CGROUP);
        let mounts = parse_mountinfo(HYBRID_MOUNTS);
        assert_eq!(mounts.len(), 5, "only cgroup file systems: {mounts:?}");
        let own = |c| own_cgroup(&mounts, &members, c);
        assert_eq!(own(Some("memory")), Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/6ea7")));
        assert_eq!(own(Some("pids")), Some(PathBuf::from("/sys/fs/cgroup/pids")));
        assert_eq!(own(Some("cpuacct")), Some(PathBuf::from("/sys/fs/cgroup/cpuacct")));
        assert_eq!(own(None), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    /// A v2-only machine (systemd, a delegated service), and a container whose cgroup mount is
    /// a sub-tree: the path in /proc/self/cgroup is taken relative to the mount's root.
    #[test]
    fn a_v2_machine_and_a_mounted_sub_tree_are_found() {
        let members = parse_proc_cgroup("0::/system.slice/nimbus.service/supervisor\n");
        let mounts = parse_mountinfo("24 18 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n");
        assert!(own_cgroup(&mounts, &members, Some("memory")).is_none(), "no v1 hierarchy");
        assert_eq!(
            own_cgroup(&mounts, &members, None),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/nimbus.service/supervisor"))
        );
        let members = parse_proc_cgroup("5:memory:/docker/abc\n");
        let mounts =
            parse_mountinfo("40 30 0:29 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n");
        assert_eq!(own_cgroup(&mounts, &members, Some("memory")), Some(PathBuf::from("/sys/fs/cgroup/memory")));
    }

    #[test]
    fn a_machine_without_cgroups_has_no_cgroup_and_uses_rlimits() {
        assert!(own_cgroup(&parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), &[], None).is_none());
        let r = Resources::rlimits_only();
        assert_eq!(r.memory_mode(), MemoryMode::Rlimit);
        assert_eq!(r.memory_mode().as_str(), "rlimit");
        assert!(!r.caps_processes());
        assert_eq!(r.cpu_source(), "proc");
        assert!(r.instance("i1", 128).unwrap().is_none());
    }

    #[test]
    fn counters_are_read_from_keyed_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(2));
        let events = "low 0\nhigh 0\nmax 14\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1), "not oom_group_kill");
        assert_eq!(keyed("usage_usec 1500\nuser_usec 1000\n", "usage_usec"), Some(1500));
        assert_eq!(keyed("oom 1\n", "oom_kill"), None);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 20 10 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), Some(40));
        assert!(tree_cpu_ns(std::process::id()).is_some(), "this process's own tree");
    }

    #[test]
    fn memory_modes_have_the_names_info_shows() {
        assert_eq!(MemoryMode::CgroupV2.as_str(), "cgroup-v2");
        assert_eq!(MemoryMode::CgroupV1.as_str(), "cgroup-v1");
    }
}
