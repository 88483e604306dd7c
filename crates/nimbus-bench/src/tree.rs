//! Process trees from /proc: the descendants of a server (nimbus's instances, nginx's workers,
//! cargo-lambda's function), their summed RSS and CPU, and killing all of them, process groups
//! included, whatever happened to the bench in between.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, getpgrp, Pid};

/// At most this many processes are followed: a tree larger than this is not a server we started.
const MAX_PROCESSES: usize = 4096;

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out
}

/// Every live descendant of `pid` (not `pid` itself), breadth first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut next = 0;
    let mut frontier = children(pid);
    while let Some(&p) = frontier.get(next) {
        next += 1;
        if out.contains(&p) || out.len() >= MAX_PROCESSES {
            continue;
        }
        out.push(p);
        frontier.extend(children(p));
    }
    out
}

/// `pid` and its descendants.
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(descendants(pid));
    all
}

/// utime + stime of one process, in clock ticks (USER_HZ = 100 on Linux).
pub fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of each thread of `pid`, in nanoseconds, summed by thread name without its trailing
/// number (`tokio-rt-worker`, `nimbus-records`). From `/proc/PID/task/TID/schedstat`, the
/// scheduler's run-time clock: `ticks` counts in 10 ms, too coarse for a thread that spends a
/// few milliseconds in a sub-second phase.
pub fn thread_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(name), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("schedstat")))
        else {
            continue;
        };
        let Some(ns) = stat.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()) else { continue };
        let name = name.trim().trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
        *out.entry(name.to_owned()).or_default() += ns;
    }
    out
}

/// The KiB figure on the `key` line of a `/proc/PID/` file (`VmRSS:` in `status`, `Pss:` in
/// `smaps_rollup`).
fn kib_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|r| r.split_whitespace().next())?.parse().ok()
}

/// `per` of `pid` plus `per` of each of its descendants that still answers, KiB.
fn tree_sum(pid: u32, per: fn(u32) -> Option<u64>) -> Option<u64> {
    Some(per(pid)? + descendants(pid).into_iter().filter_map(per).sum::<u64>())
}

/// VmRSS of one process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    kib_field(pid, "status", "VmRSS:")
}

/// The summed VmRSS of `pid` and all its descendants, KiB (pages shared between them, such as
/// the interpreter's text, count once per process: an upper bound of what the tree holds).
pub fn tree_rss_kib(pid: u32) -> Option<u64> {
    tree_sum(pid, rss_kib)
}

/// PSS (proportional set size: each shared page divided among the processes mapping it) of
/// one process, KiB, from `smaps_rollup`. Dearer to read than `VmRSS` (the kernel walks the
/// page tables: 0.4 ms for nimbus), so it is read at rest, not sampled under load.
pub fn pss_kib(pid: u32) -> Option<u64> {
    kib_field(pid, "smaps_rollup", "Pss:")
}

/// The summed PSS of `pid` and all its descendants, KiB: what the tree holds, each page once
/// (a zygote's children share most of its pages, which summed `VmRSS` counts once per child).
pub fn tree_pss_kib(pid: u32) -> Option<u64> {
    tree_sum(pid, pss_kib)
}

/// SIGKILL `pid`, every descendant, and every process group among them (servers are started in
/// groups of their own, and nimbus starts each instance in its own group). Never signals the
/// bench's own group. Safe to call on a tree that is already gone.
pub fn kill_tree(pid: u32) {
    kill_all(&with_descendants(pid));
}

/// SIGKILL these processes and their process groups (except the bench's own group). For a tree
/// listed before its root was stopped: once the root is gone, its orphans are no longer its
/// descendants in /proc.
pub fn kill_all(pids: &[u32]) {
    let own_group = getpgrp();
    let mut groups = Vec::new();
    for &p in pids {
        let Ok(raw) = i32::try_from(p) else { continue };
        if let Ok(g) = getpgid(Some(Pid::from_raw(raw))) {
            if g != own_group && g.as_raw() > 1 && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    for g in groups {
        let _ = killpg(g, Signal::SIGKILL);
    }
    for &p in pids {
        if let Ok(raw) = i32::try_from(p) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// SIGTERM to one process (a graceful stop request).
pub fn terminate(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    }
}

/// Kills the tree rooted at its pid when dropped: every server the bench starts is held by one,
/// so an error (or a panic in a dependency) on any path still leaves nothing running.
pub struct TreeGuard {
    pid: Option<u32>,
}

impl TreeGuard {
    pub fn new(pid: Option<u32>) -> TreeGuard {
        TreeGuard { pid }
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            kill_tree(pid);
        }
    }
}
