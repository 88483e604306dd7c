//! `wasi:keyvalue` through the wasm runtime: the committed guest `tests/fixtures/wasm/kv.wasm`
//! (source in `tests/fixtures/wasm/guest-kv`) runs on a `WasmRuntime` whose KV store is the
//! in-memory one below, so every answer the guest gives and every value the store holds is
//! what the host made of the guest's calls. Grants, refusals and their log lines, error texts,
//! list-keys paging, batches, and increments from many instances at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::function::Access;
use nimbus_core::kv::{CasOutcome, KvEntry, KvError, KvKey, KvNamespace, KvPage, KvStore, MAX_LIST_LIMIT};
use nimbus_core::{FunctionVersion, Instance, Invocation, InvokeOutcome, Runtime, RuntimeKind, Trigger};
use nimbus_runtime_wasm::{Settings, WasmRuntime};

/// This package's directory: the test runner's `CARGO_MANIFEST_DIR` (this checkout), else the
/// one compiled in (a shared target dir may hold a binary built in another checkout).
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// A KV store in memory. Every call yields to the scheduler before it takes the lock, so a host
/// that built `increment` from a `get` and a `set` would lose updates under concurrency.
#[derive(Default)]
struct MemKv {
    spaces: Mutex<BTreeMap<String, BTreeMap<String, KvEntry>>>,
}

impl MemKv {
    fn with<R>(&self, ns: &str, f: impl FnOnce(&mut BTreeMap<String, KvEntry>) -> R) -> Result<R, KvError> {
        let mut spaces = self.spaces.lock().unwrap();
        let space = spaces.get_mut(ns).ok_or_else(|| KvError::NoSuchNamespace(ns.to_owned()))?;
        Ok(f(space))
    }

    fn value(&self, ns: &str, key: &str) -> Option<String> {
        self.with(ns, |s| s.get(key).map(|e| String::from_utf8_lossy(&e.value).into_owned())).unwrap()
    }

    fn write(space: &mut BTreeMap<String, KvEntry>, key: &str, value: Bytes) -> u64 {
        let version = space.get(key).map_or(1, |e| e.version + 1);
        space.insert(key.to_owned(), KvEntry { value, version, expires_ms: None });
        version
    }
}

#[async_trait]
impl KvStore for MemKv {
    async fn create_namespace(&self, ns: &str) -> Result<bool, KvError> {
        Ok(self.spaces.lock().unwrap().insert(ns.to_owned(), BTreeMap::new()).is_none())
    }
    async fn delete_namespace(&self, ns: &str) -> Result<bool, KvError> {
        Ok(self.spaces.lock().unwrap().remove(ns).is_some())
    }
    async fn namespaces(&self) -> Result<Vec<KvNamespace>, KvError> {
        let spaces = self.spaces.lock().unwrap();
        Ok(spaces
            .iter()
            .map(|(n, s)| KvNamespace { name: n.clone(), keys: s.len() as u64, bytes: 0, created_ms: 0 })
            .collect())
    }
    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        tokio::task::yield_now().await;
        self.with(ns, |s| s.get(key).cloned())
    }
    async fn put(&self, ns: &str, key: &str, value: Bytes, _ttl: Option<Duration>) -> Result<u64, KvError> {
        tokio::task::yield_now().await;
        self.with(ns, |s| Self::write(s, key, value))
    }
    async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        tokio::task::yield_now().await;
        self.with(ns, |s| s.remove(key).is_some())
    }
    async fn list(&self, ns: &str, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<KvPage, KvError> {
        tokio::task::yield_now().await;
        let limit = limit.min(MAX_LIST_LIMIT);
        self.with(ns, |s| {
            let mut keys: Vec<KvKey> = s
                .keys()
                .filter(|k| k.starts_with(prefix) && cursor.is_none_or(|c| k.as_str() > c))
                .take(limit + 1)
                .map(|k| KvKey { name: k.clone(), expires_ms: None })
                .collect();
            let more = keys.len() > limit;
            keys.truncate(limit);
            let cursor = if more { keys.last().map(|k| k.name.clone()) } else { None };
            KvPage { keys, cursor }
        })
    }
    async fn increment(&self, ns: &str, key: &str, by: i64, _ttl: Option<Duration>) -> Result<i64, KvError> {
        tokio::task::yield_now().await;
        self.with(ns, |s| {
            let now = match s.get(key) {
                Some(e) => std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or_else(|| KvError::NotANumber(key.to_owned()))?,
                None => 0,
            };
            let sum = now.checked_add(by).ok_or_else(|| KvError::Overflow(key.to_owned()))?;
            Self::write(s, key, Bytes::from(sum.to_string()));
            Ok(sum)
        })?
    }
    async fn compare_and_swap(
        &self,
        _ns: &str,
        _key: &str,
        _expected: Option<u64>,
        _value: Bytes,
        _ttl: Option<Duration>,
    ) -> Result<CasOutcome, KvError> {
        unreachable!("wasi:keyvalue@0.2.0-draft has no compare-and-swap")
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(manifest_dir()).join("../../tests/fixtures/wasm")
}

struct Setup {
    kv: Arc<MemKv>,
    rt: WasmRuntime,
    _cache: tempfile::TempDir,
}

/// A runtime over a store with the namespaces `counters`, `logs`, `drop` and `secret`.
async fn setup() -> Setup {
    let kv = Arc::new(MemKv::default());
    for ns in ["counters", "logs", "drop", "secret"] {
        kv.create_namespace(ns).await.unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(cache.path().join("wasm-cache"));
    settings.pool_instances = 16;
    let rt = WasmRuntime::new(settings, kv.clone()).unwrap();
    Setup { kv, rt, _cache: cache }
}

/// The guest as function `f`, with these KV grants.
fn function(grants: &[(&str, Access)]) -> Arc<FunctionVersion> {
    let mut spec = nimbus_core::FunctionSpec {
        name: "f".into(),
        runtime: RuntimeKind::Wasm,
        handler: String::new(),
        code: ".".into(),
        memory_mb: 64,
        timeout: Duration::from_secs(10),
        cpu_ms: None,
        env: BTreeMap::new(),
        min_instances: 0,
        max_instances: 8,
        keep_alive: Duration::from_secs(60),
        max_queued: 0,
        queue_timeout: Duration::from_secs(1),
        async_policy: Default::default(),
        wasm: Default::default(),
        allowed_outbound_hosts: None,
        ephemeral_storage_mb: 512,
        grants: Default::default(),
        keep_alive_policy: Default::default(),
        response_mode: Default::default(),
        max_stream_bytes: nimbus_core::DEFAULT_MAX_STREAM_BYTES,
        concurrency: 1,
    };
    spec.wasm.component = "kv.wasm".into();
    spec.grants.kv = grants.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect();
    Arc::new(FunctionVersion {
        spec,
        version: "1".into(),
        code_digest: "kv-guest".into(),
        code_path: fixture(),
        key_cache: Default::default(),
    })
}

/// The usual grants: `counters` read-write, `logs` read, `drop` write-only, `secret` none.
fn granted() -> Arc<FunctionVersion> {
    function(&[("counters", Access::ReadWrite), ("logs", Access::Read), ("drop", Access::Write)])
}

/// What the guest answered: status, body, and the invocation's log.
struct Answer {
    status: u16,
    body: String,
    log: String,
}

async fn call(instance: &mut dyn Instance, method: &str, uri: &str, body: &str) -> Answer {
    let mut inv = Invocation::new("req".into(), Bytes::from(body.to_owned()), Trigger::Http, Duration::from_secs(10));
    inv.http = Some(Arc::new(nimbus_core::invoke::HttpRequestHead {
        method: method.parse().unwrap(),
        uri: uri.parse().unwrap(),
        authority: "localhost".into(),
        headers: Default::default(),
    }));
    let r = instance.invoke(inv).await.unwrap();
    let InvokeOutcome::Success(body) = r.outcome else { panic!("{method} {uri} failed: {:?}\n{}", r.outcome, r.log) };
    let status = r.http.map(|h| h.status.as_u16()).unwrap();
    Answer { status, body: String::from_utf8_lossy(&body).into_owned(), log: r.log }
}

async fn start(s: &Setup, f: &Arc<FunctionVersion>) -> Box<dyn Instance> {
    s.rt.start(f.clone(), "i".into()).await.unwrap()
}

#[tokio::test]
async fn set_get_exists_delete_reach_the_store() {
    let s = setup().await;
    let mut i = start(&s, &granted()).await;
    let a = call(&mut *i, "PUT", "/kv/greeting", "hello wasm").await;
    assert_eq!((a.status, a.body.as_str()), (200, "stored"));
    assert_eq!(s.kv.value("counters", "greeting").as_deref(), Some("hello wasm"), "set wrote the store");
    assert_eq!(call(&mut *i, "GET", "/kv/greeting", "").await.body, "hello wasm");
    assert_eq!(call(&mut *i, "GET", "/exists/greeting", "").await.body, "true");
    s.kv.put("counters", "from-outside", Bytes::from_static(b"42"), None).await.unwrap();
    assert_eq!(call(&mut *i, "GET", "/kv/from-outside", "").await.body, "42", "get reads what others wrote");
    assert_eq!(call(&mut *i, "DELETE", "/kv/greeting", "").await.status, 200);
    assert_eq!(s.kv.value("counters", "greeting"), None, "delete removed it from the store");
    let a = call(&mut *i, "GET", "/kv/greeting", "").await;
    assert_eq!((a.status, a.body.as_str()), (404, "absent"));
    assert_eq!(call(&mut *i, "GET", "/exists/greeting", "").await.body, "false");
    assert_eq!(call(&mut *i, "DELETE", "/kv/never-there", "").await.status, 200, "deleting an absent key is fine");
}

#[tokio::test]
async fn open_of_an_ungranted_namespace_is_access_denied_and_logged() {
    let s = setup().await;
    s.kv.put("secret", "k", Bytes::from_static(b"hidden"), None).await.unwrap();
    let mut i = start(&s, &granted()).await;
    let a = call(&mut *i, "GET", "/kv/k?ns=secret", "").await;
    assert_eq!((a.status, a.body.as_str()), (403, "access-denied"));
    assert!(
        a.log.contains("[nimbus] wasi:keyvalue open on KV namespace \"secret\" denied")
            && a.log.contains("function \"f\" has no grant on it")
            && a.log.contains("[functions.f.grants] kv = { secret = \"read-write\" }"),
        "{}",
        a.log
    );
    // A namespace that does not exist at all is refused the same way: nothing leaks about it.
    let a = call(&mut *i, "GET", "/open?ns=nowhere", "").await;
    assert_eq!((a.status, a.body.as_str()), (403, "access-denied"));
    assert_eq!(call(&mut *i, "GET", "/open", "").await.body, "opened", "the granted one opens");
}

#[tokio::test]
async fn a_read_grant_refuses_writes_and_a_write_grant_refuses_reads() {
    let s = setup().await;
    s.kv.put("logs", "line", Bytes::from_static(b"one"), None).await.unwrap();
    let mut i = start(&s, &granted()).await;
    assert_eq!(call(&mut *i, "GET", "/kv/line?ns=logs", "").await.body, "one");
    for (method, uri) in [("PUT", "/kv/line?ns=logs"), ("DELETE", "/kv/line?ns=logs"), ("POST", "/incr/n?ns=logs")] {
        let a = call(&mut *i, method, uri, "two").await;
        assert_eq!((a.status, a.body.as_str()), (403, "access-denied"), "{method} {uri}");
        assert!(
            a.log.contains("on KV namespace \"logs\" denied: it needs write access")
                && a.log.contains("is granted only \"read\" on it"),
            "{}",
            a.log
        );
    }
    assert_eq!(s.kv.value("logs", "line").as_deref(), Some("one"), "nothing was written");
    assert_eq!(s.kv.value("logs", "n"), None);

    assert_eq!(call(&mut *i, "PUT", "/kv/x?ns=drop", "v").await.status, 200, "write-only may write");
    assert_eq!(s.kv.value("drop", "x").as_deref(), Some("v"));
    for uri in ["/kv/x?ns=drop", "/exists/x?ns=drop", "/list?ns=drop", "/batch?ns=drop&keys=x"] {
        let a = call(&mut *i, "GET", uri, "").await;
        assert_eq!((a.status, a.body.as_str()), (403, "access-denied"), "{uri}");
        assert!(a.log.contains("it needs read access and function \"f\" is granted only \"write\""), "{}", a.log);
    }
}

#[tokio::test]
async fn store_errors_reach_the_guest_with_their_text() {
    let s = setup().await;
    let f = function(&[("counters", Access::ReadWrite), ("gone", Access::ReadWrite)]);
    let mut i = start(&s, &f).await;
    let long = "k".repeat(600);
    let a = call(&mut *i, "PUT", &format!("/kv/{long}"), "v").await;
    assert_eq!((a.status, a.body.as_str()), (500, "other: the key is 600 bytes; keys are 1 to 512 bytes"));
    s.kv.put("counters", "word", Bytes::from_static(b"abc"), None).await.unwrap();
    let a = call(&mut *i, "POST", "/incr/word", "").await;
    assert_eq!(a.status, 500);
    assert_eq!(a.body, "other: the value of \"word\" is not a decimal integer, so it cannot be incremented");
    s.kv.put("counters", "neg", Bytes::from_static(b"-5"), None).await.unwrap();
    let a = call(&mut *i, "POST", "/incr/neg", "").await;
    assert_eq!(a.status, 500);
    assert!(a.body.contains("is -4, below 0"), "{}", a.body);
    let a = call(&mut *i, "POST", "/incr/big?by=18446744073709551615", "").await;
    assert_eq!(a.status, 500);
    assert!(a.body.contains("increment by 18446744073709551615 is too large"), "{}", a.body);
    // Granted and declared, but deleted since (`nimbus kv rm-namespace`).
    let a = call(&mut *i, "GET", "/kv/k?ns=gone", "").await;
    assert_eq!((a.status, a.body.as_str()), (404, "no-such-store"));
    assert!(a.log.contains("wasi:keyvalue get: there is no KV namespace \"gone\""), "{}", a.log);
}

#[tokio::test]
async fn list_keys_pages_through_every_key() {
    let s = setup().await;
    for n in 0..2500 {
        let key = if n % 2 == 0 { format!("user:{n:04}") } else { format!("item:{n:04}") };
        s.kv.put("counters", &key, Bytes::from_static(b"1"), None).await.unwrap();
    }
    let mut i = start(&s, &granted()).await;
    let a = call(&mut *i, "GET", "/list?prefix=user:", "").await;
    let keys: Vec<&str> = a.body.lines().collect();
    let want: Vec<String> = (0..2500).filter(|n| n % 2 == 0).map(|n| format!("user:{n:04}")).collect();
    assert_eq!(keys, want, "three pages of list-keys, every key once, in order");
    assert_eq!(call(&mut *i, "GET", "/list", "").await.body.lines().count(), 2500);
    assert_eq!(call(&mut *i, "GET", "/list?ns=logs", "").await.body, "", "an empty namespace lists nothing");
}

#[tokio::test]
async fn batches_set_get_and_delete_many() {
    let s = setup().await;
    let mut i = start(&s, &granted()).await;
    let a = call(&mut *i, "PUT", "/batch", "a=1\nb=2\nc=3").await;
    assert_eq!((a.status, a.body.as_str()), (200, "stored 3"));
    assert_eq!(s.kv.value("counters", "b").as_deref(), Some("2"));
    assert_eq!(call(&mut *i, "GET", "/batch?keys=a,zz,c", "").await.body, "a=1\nzz!\nc=3");
    assert_eq!(call(&mut *i, "DELETE", "/batch?keys=a,c,zz", "").await.status, 200);
    assert_eq!((s.kv.value("counters", "a"), s.kv.value("counters", "c")), (None, None));
    assert_eq!(s.kv.value("counters", "b").as_deref(), Some("2"), "only the named keys went");
    let a = call(&mut *i, "PUT", "/batch?ns=logs", "a=1").await;
    assert_eq!((a.status, a.body.as_str()), (403, "access-denied"), "set-many needs write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_many_instances_at_once_are_all_counted() {
    const INSTANCES: usize = 8;
    const EACH: usize = 25;
    let s = setup().await;
    let f = granted();
    let mut tasks = Vec::new();
    for n in 0..INSTANCES {
        let mut i = s.rt.start(f.clone(), format!("i{n}")).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut last = Vec::new();
            for _ in 0..EACH {
                let a = call(&mut *i, "POST", "/incr/hits?by=2", "").await;
                assert_eq!(a.status, 200, "{}", a.body);
                last.push(a.body.parse::<u64>().unwrap());
            }
            last
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap());
    }
    let total = (INSTANCES * EACH * 2) as u64;
    assert_eq!(s.kv.value("counters", "hits"), Some(total.to_string()), "no increment was lost");
    seen.sort_unstable();
    let want: Vec<u64> = (1..=(INSTANCES * EACH) as u64).map(|n| n * 2).collect();
    assert_eq!(seen, want, "every call got a distinct sum");
}
