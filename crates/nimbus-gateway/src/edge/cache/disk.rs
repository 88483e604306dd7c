//! The response cache's disk tier: entries the memory tier evicts (or that are too large for
//! it) go to `DATA_DIR/cache/http/`, one file per entry named by a hash of its key, and a
//! memory miss looks here before it asks the function.
//!
//! - The index (key → file, size, last use, path and tags for purges) lives in memory; the
//!   files hold the entries. Bounded by a byte budget, least recently used first; one entry
//!   may take an eighth of it at most.
//! - Writes go to a temporary file and are renamed into place, without fsync: this is a cache,
//!   and a torn or foreign file is caught by its header (magic, length, CRC-32 of the rest,
//!   and the key inside must be the one asked for) and read as a miss, then removed.
//! - At start the directory is emptied (its entries belong to deployments that may be gone and
//!   the index is not persisted); a purge or a new live deployment empties it again.
//! - Every file operation runs on tokio's blocking pool (`spawn_blocking`), never on the
//!   request's task. A write joins the index only when it is complete and the cache has not
//!   been emptied since it began (a generation number), so an emptied cache never gets an old
//!   entry back. Writes waiting past [`MAX_PENDING`] are dropped (an entry is lost, nothing
//!   waits).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::Digest;

use super::Entry;
use crate::edge::freshness::Directives;

/// The first bytes of every entry file (the format's version is its last digit).
const MAGIC: &[u8; 8] = b"NIMBUSC1";
/// Magic, payload length (u64) and CRC-32 of the payload (u32).
const HEADER: usize = 8 + 8 + 4;
/// Writes queued on the blocking pool at most; past it evicted entries are dropped.
const MAX_PENDING: usize = 64;

/// What the index knows of one file.
struct Meta {
    name: String,
    size: u64,
    used: u64,
    path: String,
    tags: Vec<String>,
}

#[derive(Default)]
struct Index {
    files: HashMap<String, Meta>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, String>,
    bytes: u64,
    tick: u64,
    /// Bumped by every emptying; a write begun before it is discarded.
    generation: u64,
}

impl Index {
    fn touch(&mut self, key: &str) -> Option<String> {
        self.tick += 1;
        let tick = self.tick;
        let meta = self.files.get_mut(key)?;
        self.order.remove(&meta.used);
        meta.used = tick;
        self.order.insert(tick, key.to_owned());
        Some(meta.name.clone())
    }

    fn remove(&mut self, key: &str) -> Option<String> {
        let meta = self.files.remove(key)?;
        self.order.remove(&meta.used);
        self.bytes = self.bytes.saturating_sub(meta.size);
        Some(meta.name)
    }

    /// Add a written file (it replaces the key's earlier one: a key has one file name); the
    /// keys evicted to stay within `budget`, whose files are to be deleted.
    fn add(&mut self, key: String, mut meta: Meta, budget: u64) -> Vec<String> {
        self.remove(&key);
        let mut doomed = Vec::new();
        while self.bytes + meta.size > budget {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if self.remove(&oldest).is_some() {
                doomed.push(oldest);
            }
        }
        self.tick += 1;
        meta.used = self.tick;
        self.bytes += meta.size;
        self.order.insert(self.tick, key.clone());
        self.files.insert(key, meta);
        doomed
    }
}

/// The disk tier. See the module doc.
pub(crate) struct Disk {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    pending: AtomicUsize,
}

impl Disk {
    /// The tier in `dir` with a budget of `budget` bytes, emptying what a previous run left
    /// there (`None`, with a warning, when the directory cannot be made).
    pub(crate) fn open(dir: &Path, budget: u64) -> Option<Disk> {
        if dir.exists() {
            // A rename is quick; the old entries are deleted off the start-up path, with any a
            // run stopped before it finished deleting.
            let old = dir.with_extension(format!("old-{}", std::process::id()));
            match std::fs::rename(dir, &old) {
                Ok(()) => drop(std::thread::spawn(move || remove_old(&old))),
                Err(e) => tracing::warn!("cannot move the old response cache {} away: {e}", dir.display()),
            }
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!("the response cache's disk tier is off: cannot create {}: {e}", dir.display());
            return None;
        }
        Some(Disk { dir: dir.to_owned(), budget, index: Mutex::new(Index::default()), pending: AtomicUsize::new(0) })
    }

    /// The largest entry the tier takes, in bytes.
    pub(crate) fn max_entry(&self) -> u64 {
        self.budget / 8
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        match self.index.lock() {
            Ok(i) => i,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Write `entry` under `key` in the background (dropped when too large or too many writes
    /// are waiting).
    pub(super) fn save(self: &Arc<Self>, key: String, entry: Arc<Entry>) {
        if entry.size() as u64 > self.max_entry() {
            return;
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        let (me, generation) = (self.clone(), self.index().generation);
        rt.spawn_blocking(move || {
            me.write(key, &entry, generation);
            me.pending.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn write(&self, key: String, entry: &Entry, generation: u64) {
        let name = file_name(&key);
        let data = encode(&key, entry);
        let tmp = self.dir.join(format!("{name}.{}.tmp", rand::random::<u32>()));
        let failed = |e: std::io::Error| {
            tracing::debug!("response cache: cannot write {}: {e}", tmp.display());
            let _ = std::fs::remove_file(&tmp);
        };
        if let Err(e) = std::fs::write(&tmp, &data) {
            return failed(e);
        }
        let meta = Meta {
            name: name.clone(),
            size: data.len() as u64,
            used: 0,
            path: entry.path.clone(),
            tags: entry.tags.clone(),
        };
        // Renamed under the index's lock: the file appears exactly when the index has it, so a
        // reader that sees the file finds the entry (and an emptying in between discards it).
        let doomed = {
            let mut index = self.index();
            if index.generation != generation {
                drop(index);
                return failed(std::io::Error::other("the cache was emptied meanwhile"));
            }
            if let Err(e) = std::fs::rename(&tmp, self.dir.join(&name)) {
                drop(index);
                return failed(e);
            }
            index.add(key, meta, self.budget)
        };
        self.delete(doomed);
    }

    /// Delete the files of `keys` the index no longer has. Each under the index's lock, as
    /// writes rename under it: a delete that runs late never takes the file a newer write of
    /// the same key put there.
    fn delete(&self, keys: Vec<String>) {
        for key in keys {
            let index = self.index();
            if !index.files.contains_key(&key) {
                let _ = std::fs::remove_file(self.dir.join(file_name(&key)));
            }
        }
    }

    /// [`Disk::delete`] on the blocking pool.
    fn delete_later(self: &Arc<Self>, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let me = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || me.delete(keys));
        }
    }

    /// The entry stored under `key`, read on the blocking pool (`None`: not here, or its file
    /// is missing, torn or not this key's, which also drops it from the index).
    pub(super) async fn load(self: &Arc<Self>, key: &str) -> Option<Entry> {
        let name = self.index().touch(key)?;
        let path = self.dir.join(&name);
        let owned = key.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let entry = std::fs::read(&path).ok().and_then(|d| decode(&owned, &d));
            if entry.is_none() {
                let _ = std::fs::remove_file(&path);
            }
            entry
        });
        match read.await {
            Ok(Some(entry)) => Some(entry),
            _ => {
                tracing::debug!("response cache: the disk entry {name} is unreadable; treated as a miss");
                self.index().remove(key);
                None
            }
        }
    }

    /// Drop `key` (its file is deleted in the background).
    pub(crate) fn remove(self: &Arc<Self>, key: &str) {
        if self.index().remove(key).is_some() {
            self.delete_later(vec![key.to_owned()]);
        }
    }

    /// Drop every entry `matches` (by path and tags); how many went.
    pub(crate) fn purge(self: &Arc<Self>, matches: impl Fn(&str, &[String]) -> bool) -> usize {
        let keys: Vec<String> = {
            let mut index = self.index();
            let doomed: Vec<String> =
                index.files.iter().filter(|(_, m)| matches(&m.path, &m.tags)).map(|(k, _)| k.clone()).collect();
            doomed.into_iter().filter(|k| index.remove(k).is_some()).collect()
        };
        let n = keys.len();
        self.delete_later(keys);
        n
    }

    /// Drop every entry, and any write under way.
    pub(crate) fn clear(self: &Arc<Self>) {
        let keys: Vec<String> = {
            let mut index = self.index();
            let generation = index.generation + 1;
            let old = std::mem::take(&mut *index);
            index.generation = generation;
            old.files.into_keys().collect()
        };
        self.delete_later(keys);
    }
}

/// Delete `old` and its siblings of the same kind (`http.old-<pid>`) that earlier runs left.
fn remove_old(old: &Path) {
    let (Some(parent), Some(name)) = (old.parent(), old.file_name().and_then(|n| n.to_str())) else { return };
    let Some((stem, _)) = name.split_once(".old-") else { return };
    let prefix = format!("{stem}.old-");
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The file of a key: the first 128 bits of its SHA-256, in hex.
fn file_name(key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("{}.entry", hex::encode(digest.get(..16).unwrap_or_default()))
}

/// `u64::MAX` stands for "none" in the file.
const NONE: u64 = u64::MAX;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// An entry as a file: header, then key, status, times, `stale-*` extensions, path, tags,
/// headers and body.
fn encode(key: &str, e: &Entry) -> Vec<u8> {
    let mut p = Vec::with_capacity(e.size() + key.len() + 128);
    put_bytes(&mut p, key.as_bytes());
    p.extend_from_slice(&e.status.as_u16().to_le_bytes());
    for n in [e.stored_at, e.initial_age, e.lifetime] {
        p.extend_from_slice(&n.to_le_bytes());
    }
    for n in [e.directives.stale_while_revalidate, e.directives.stale_if_error] {
        p.extend_from_slice(&n.unwrap_or(NONE).to_le_bytes());
    }
    put_bytes(&mut p, e.path.as_bytes());
    p.extend_from_slice(&(e.tags.len() as u64).to_le_bytes());
    for t in &e.tags {
        put_bytes(&mut p, t.as_bytes());
    }
    p.extend_from_slice(&(e.headers.len() as u64).to_le_bytes());
    for (k, v) in &e.headers {
        put_bytes(&mut p, k.as_str().as_bytes());
        put_bytes(&mut p, v.as_bytes());
    }
    put_bytes(&mut p, &e.body);
    let mut out = Vec::with_capacity(HEADER + p.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(p.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// Reads a payload front to back; every read checks the length left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// The entry in a file, if the file is whole and holds `key`.
fn decode(key: &str, data: &[u8]) -> Option<Entry> {
    let mut r = Reader(data);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let len = usize::try_from(r.u64()?).ok()?;
    let crc = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    if r.0.len() != len || crc32fast::hash(r.0) != crc {
        return None;
    }
    if r.bytes()? != key.as_bytes() {
        return None;
    }
    let status = StatusCode::from_u16(u16::from_le_bytes(r.take(2)?.try_into().ok()?)).ok()?;
    let (stored_at, initial_age, lifetime) = (r.u64()?, r.u64()?, r.u64()?);
    let some = |n: u64| (n != NONE).then_some(n);
    let (swr, sie) = (some(r.u64()?), some(r.u64()?));
    let path = r.text()?;
    let tags = (0..r.u64()?).map(|_| r.text()).collect::<Option<Vec<_>>>()?;
    let mut headers = HeaderMap::new();
    for _ in 0..r.u64()? {
        let name = HeaderName::from_bytes(r.bytes()?).ok()?;
        headers.append(name, HeaderValue::from_bytes(r.bytes()?).ok()?);
    }
    let body = Bytes::copy_from_slice(r.bytes()?);
    let mut directives = Directives::of(&headers);
    (directives.stale_while_revalidate, directives.stale_if_error) = (swr, sie);
    Some(Entry { status, headers, body, stored_at, initial_age, lifetime, directives, path, tags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut directives = Directives::of(&headers);
        directives.stale_if_error = Some(30);
        Entry {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"hello"),
            stored_at: 1_800_000_000,
            initial_age: 3,
            lifetime: 60,
            directives,
            path: "/a/b".into(),
            tags: vec!["t1".into(), "t2".into()],
        }
    }

    #[test]
    fn an_entry_survives_the_round_trip() {
        let e = entry();
        let back = decode("k", &encode("k", &e)).unwrap();
        assert_eq!(
            (back.status, &back.body, back.stored_at, back.initial_age, back.lifetime),
            (e.status, &e.body, 1_800_000_000, 3, 60)
        );
        assert_eq!(
            (&back.path, &back.tags, &back.headers, &back.directives),
            (&e.path, &e.tags, &e.headers, &e.directives)
        );
    }

    #[test]
    fn a_torn_flipped_or_foreign_file_is_a_miss() {
        let data = encode("k", &entry());
        assert!(decode("other key", &data).is_none(), "another key's file (a hash collision)");
        for cut in [0, 7, HEADER, data.len() / 2, data.len() - 1] {
            assert!(decode("k", &data[..cut]).is_none(), "torn at {cut}");
        }
        for at in [0, 9, HEADER + 3, data.len() - 2] {
            let mut bad = data.clone();
            bad[at] ^= 0x40;
            assert!(decode("k", &bad).is_none(), "flipped at {at}");
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(decode("k", &longer).is_none());
    }

    /// A fresh directory under the system's temporary one.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nimbus-cache-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn entries_are_written_read_purged_and_emptied() {
        let dir = scratch("cycle");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stale.entry"), b"from an earlier run").unwrap();
        let disk = Arc::new(Disk::open(&dir, 1 << 20).unwrap());
        assert_eq!(files(&dir), 0, "emptied at start");
        disk.write("k1".into(), &entry(), 0);
        disk.write("k2".into(), &Entry { path: "/other".into(), tags: Vec::new(), ..entry() }, 0);
        assert_eq!(files(&dir), 2);
        assert_eq!(disk.load("k1").await.unwrap().body, "hello");
        assert!(disk.load("k3").await.is_none());
        assert_eq!(disk.purge(|_, tags| tags.iter().any(|t| t == "t2")), 1, "k1 carries t2");
        assert!(disk.load("k1").await.is_none());
        disk.clear();
        assert!(disk.load("k2").await.is_none());
        // A write begun before the emptying does not come back, and leaves no file.
        disk.write("k4".into(), &entry(), 0);
        assert!(disk.load("k4").await.is_none());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while files(&dir) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(files(&dir), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_damaged_file_is_a_miss_and_goes() {
        let dir = scratch("damaged");
        let disk = Arc::new(Disk::open(&dir, 1 << 20).unwrap());
        disk.write("k".into(), &entry(), 0);
        let file = dir.join(file_name("k"));
        let mut data = std::fs::read(&file).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&file, data).unwrap();
        assert!(disk.load("k").await.is_none());
        assert!(!file.exists() && disk.index().files.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A key moved back to memory and then written again: the first file's delete, run late
    /// on the blocking pool, leaves the newer file alone.
    #[tokio::test]
    async fn a_late_delete_leaves_a_newer_file_of_the_same_key() {
        let dir = scratch("late");
        let disk = Arc::new(Disk::open(&dir, 1 << 20).unwrap());
        disk.write("k".into(), &entry(), 0);
        assert!(disk.index().remove("k").is_some(), "moved back to memory");
        disk.write("k".into(), &Entry { body: Bytes::from_static(b"newer"), ..entry() }, 0);
        disk.delete(vec!["k".into()]);
        assert_eq!(disk.load("k").await.map(|e| e.body), Some(Bytes::from_static(b"newer")));
        disk.index().remove("k");
        disk.delete(vec!["k".into()]);
        assert_eq!(files(&dir), 0, "a key the index no longer has loses its file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_index_evicts_least_recently_used_past_its_budget() {
        let meta = |n: &str| Meta { name: n.into(), size: 40, used: 0, path: "/".into(), tags: Vec::new() };
        let mut i = Index::default();
        assert!(i.add("a".into(), meta("fa"), 100).is_empty());
        assert!(i.add("b".into(), meta("fb"), 100).is_empty());
        assert_eq!(i.touch("a").as_deref(), Some("fa"));
        assert_eq!(i.add("c".into(), meta("fc"), 100), ["b"], "b was used least recently");
        assert_eq!(i.add("a".into(), meta("fa"), 100), Vec::<String>::new(), "same file replaced in place");
        assert_eq!((i.bytes, i.files.len()), (80, 2));
    }
}
