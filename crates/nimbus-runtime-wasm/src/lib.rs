//! The wasm runtime: WebAssembly components for the `wasi:http/proxy` world (WASIp2), run
//! in-process with wasmtime — the contract of `wasmtime serve` and Spin, so components built by
//! cargo (wasm32-wasip2), componentize-js or componentize-py run unmodified.
//!
//! Fast by construction:
//! - components are compiled ahead of time when a deployment is prepared, and the compiled
//!   artefact is cached on disk keyed by the component's sha256 and the engine's settings, so a
//!   restart loads it (mmap) instead of compiling;
//! - a loaded component is kept as a `ProxyPre` (imports resolved once), and instances come
//!   from wasmtime's pooling allocator;
//! - by default every request gets a fresh instance (nothing leaks between requests);
//!   `instance_reuse = true` keeps the initialised instance for the next request.
//!
//! Limits: `memory_mb` caps the store's linear memories (growth past it fails), `timeout` and
//! `cpu_ms` are enforced with epoch interruption (a ticker thread advances the epoch every
//! [`TICK`] while requests run; the guest yields at each tick so timers can fire).

mod error;
mod host;
mod instance;
mod kv;
mod log;
mod stream;

pub use error::WasmError;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_core::invoke::{MAX_LOG_BYTES, MAX_PAYLOAD_BYTES};
use nimbus_core::shards::Counter;
use nimbus_core::{FunctionVersion, Instance, KvStore, PrepareError, Runtime, StartError};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::host::Host;

/// Bytes of a linear memory slot kept resident between instances: a Rust guest's stack (1 MiB),
/// data and first heap pages fit.
const KEEP_RESIDENT: usize = 2 << 20;

/// How often the epoch advances while requests run: the precision of `timeout` and `cpu_ms`.
pub const TICK: Duration = Duration::from_millis(5);

/// Settings of the wasm runtime.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Per-invocation log bound.
    pub max_log_bytes: usize,
    /// Largest response body (the Invoke API's 6 MB limit applies to all runtimes).
    pub max_response_bytes: usize,
    /// Wasm instances alive at once across all functions (the pooling allocator's slots; each
    /// idle or busy instance slot of a pool holds one). `NIMBUS_WASM_INSTANCES`.
    pub pool_instances: u32,
}

impl Settings {
    pub fn new(cache_dir: PathBuf) -> Settings {
        Settings {
            cache_dir,
            max_log_bytes: MAX_LOG_BYTES,
            max_response_bytes: MAX_PAYLOAD_BYTES,
            pool_instances: 1000,
        }
    }
}

/// Runs `runtime = "wasm"` functions.
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    engine: Engine,
    linker: Linker<Host>,
    settings: Settings,
    /// What `wasi:keyvalue` reads and writes.
    kv: Arc<dyn KvStore>,
    /// Identifies the engine's compilation settings in cache file names.
    engine_key: String,
    /// Loaded components by `code digest/component file`.
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// One compile at a time: compiling is CPU-bound and already parallel inside.
    compiling: tokio::sync::Mutex<()>,
    ticker: Ticker,
}

/// A component ready to instantiate.
pub(crate) struct Loaded {
    pub pre: ProxyPre<Host>,
}

impl WasmRuntime {
    /// A runtime whose components reach `kv` through `wasi:keyvalue`.
    pub fn new(settings: Settings, kv: Arc<dyn KvStore>) -> Result<WasmRuntime, WasmError> {
        std::fs::create_dir_all(&settings.cache_dir)
            .map_err(|source| WasmError::CacheDir { dir: settings.cache_dir.clone(), source })?;
        let engine = match Engine::new(&config(Some(&settings))) {
            Ok(e) => e,
            Err(e) => {
                // Some sandboxes cap virtual memory below what the pool reserves up front.
                tracing::warn!(
                    "the pooling allocator is unavailable ({e:#}); wasm instances will be allocated on demand"
                );
                Engine::new(&config(None)).map_err(|e| WasmError::Engine(format!("{e:#}")))?
            }
        };
        let mut linker = Linker::new(&engine);
        // The whole WASIp2 command world as well as wasi:http, like `wasmtime serve -S cli`:
        // components from std toolchains import wasi:cli/environment and friends. Files and
        // sockets stay closed (no preopens, no socket permissions).
        let link = |what| move |e: wasmtime::Error| WasmError::Link { what, detail: format!("{e:#}") };
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link("WASI"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link("WASI HTTP"))?;
        kv::add_to_linker(&mut linker, |h: &mut Host| kv::KvView { table: &mut h.table, kv: &mut h.kv })
            .map_err(link("wasi:keyvalue"))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        let ticker = Ticker::start(engine.clone());
        Ok(WasmRuntime {
            inner: Arc::new(Inner {
                engine,
                linker,
                settings,
                kv,
                engine_key,
                loaded: Mutex::new(HashMap::new()),
                compiling: tokio::sync::Mutex::new(()),
                ticker,
            }),
        })
    }
}

fn config(pool: Option<&Settings>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if let Some(s) = pool {
        let n = s.pool_instances;
        let mut p = PoolingAllocationConfig::new();
        // Components from JS and Python toolchains hold many core instances and tables.
        p.total_component_instances(n)
            .total_core_instances(n * 10)
            .total_memories(n * 2)
            .total_tables(n * 10)
            .total_stacks(n)
            .max_memories_per_module(2)
            .table_elements(host::MAX_TABLE_ELEMENTS)
            .max_memory_size(4 << 30)
            // Reset a reused slot by restoring only its dirty pages (PAGEMAP_SCAN, Linux ≥ 6.7)
            // and keep them resident: the default madvise(DONTNEED) + fault-in cycle cost a
            // TLB shootdown on every core per request (perf: ~16 % of CPU at c=32).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    config
}

impl Inner {
    fn key(f: &FunctionVersion) -> String {
        format!("{}/{}", f.code_digest, f.spec.wasm.component)
    }

    fn cached(&self, f: &FunctionVersion) -> Option<Arc<Loaded>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(&Self::key(f)).cloned()
    }

    /// The loaded component of `f`: from memory, else from the compile cache, else compiled.
    async fn load(self: &Arc<Self>, f: &FunctionVersion) -> Result<Arc<Loaded>, WasmError> {
        if let Some(l) = self.cached(f) {
            return Ok(l);
        }
        let _one = self.compiling.lock().await;
        if let Some(l) = self.cached(f) {
            return Ok(l);
        }
        let me = self.clone();
        let path = f.code_path.join(&f.spec.wasm.component);
        let shown = f.spec.wasm.component.clone();
        let loaded =
            tokio::task::spawn_blocking(move || me.load_blocking(&path, &shown)).await.map_err(WasmError::Task)??;
        let loaded = Arc::new(loaded);
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).insert(Self::key(f), loaded.clone());
        Ok(loaded)
    }

    fn load_blocking(&self, path: &Path, shown: &str) -> Result<Loaded, WasmError> {
        let named = |detail| (shown.to_owned(), detail);
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read { component: shown.to_owned(), source })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let cached = self.settings.cache_dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        let component = match deserialize(&self.engine, &cached) {
            Some(c) => c,
            None => {
                tracing::info!(
                    component = shown,
                    "compiling ahead of time (once; cached in {})",
                    self.settings.cache_dir.display()
                );
                let started = Instant::now();
                let compiled = self.engine.precompile_component(&bytes).map_err(|e| {
                    let (component, detail) = named(format!("{e:#}"));
                    WasmError::NotAComponent { component, detail }
                })?;
                tracing::info!(component = shown, "compiled in {:.0?}", started.elapsed());
                // Write then rename, so a crash never leaves a torn artefact under the final name.
                let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, &compiled)
                    .and_then(|()| std::fs::rename(&tmp, &cached))
                    .map_err(|source| WasmError::CacheWrite { path: cached.clone(), source })?;
                deserialize(&self.engine, &cached)
                    .ok_or_else(|| WasmError::Reload { component: shown.to_owned(), path: cached.clone() })?
            }
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let (component, detail) = named(format!("{e:#}"));
            WasmError::Imports { component, detail }
        })?;
        let pre = ProxyPre::new(pre).map_err(|e| {
            let (component, detail) = named(format!("{e:#}"));
            WasmError::NoHandler { component, detail }
        })?;
        Ok(Loaded { pre })
    }
}

/// Load a compiled component from the cache; `None` when absent or built by another engine.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file is one nimbus wrote itself with `precompile_component` into its own cache
    // directory (renamed into place only once complete), which is what `deserialize_file`
    // requires; wasmtime still checks the header against this engine and refuses a mismatch.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("ignoring the cached {}: {e:#}", path.display());
            None
        }
    }
}

#[async_trait]
impl Runtime for WasmRuntime {
    async fn prepare(&self, function: &FunctionVersion) -> Result<(), PrepareError> {
        self.inner.load(function).await.map(|_| ()).map_err(PrepareError::from)
    }

    async fn start(
        &self,
        function: Arc<FunctionVersion>,
        instance_id: String,
    ) -> Result<Box<dyn Instance>, StartError> {
        let started = Instant::now();
        let loaded = self.inner.load(&function).await.map_err(|e| StartError::Platform(e.to_string()))?;
        let instance =
            instance::WasmInstance::start(self.inner.clone(), loaded, function, instance_id, started).await?;
        Ok(Box::new(instance))
    }
}

/// Advances the engine's epoch every [`TICK`] while requests run, and for a second after the
/// last one (so steady traffic never pays a thread wake-up per request); an idle server's
/// ticker sleeps instead of waking 200 times a second.
pub(crate) struct Ticker {
    shared: Arc<TickerState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the requests and the ticker thread share. Every request counts itself in and out of
/// `active`, per thread ([`Counter`]): one atomic shared by every worker was two writes to one
/// cache line per request from every core (`perf`: its two RMWs were about 0.1 µs of a warm
/// request's samples). `parked` and `stop`, which requests only read, are on a line of their
/// own, so it stays in every core's cache while the ticker runs.
#[derive(Default)]
struct TickerState {
    active: Counter,
    flags: Flags,
}

/// Aligned (and so padded) to 128 bytes: the pair of lines a core's prefetcher fetches together.
#[derive(Default)]
#[repr(align(128))]
struct Flags {
    parked: AtomicBool,
    stop: AtomicBool,
}

/// How long the ticker keeps ticking after the last request ended.
const TICK_LINGER: Duration = Duration::from_secs(1);

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let shared = Arc::new(TickerState::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nimbus-wasm-epoch".into())
            .spawn(move || {
                let mut last_busy = Instant::now();
                while !s.flags.stop.load(Ordering::SeqCst) {
                    if s.active.sum() > 0 {
                        last_busy = Instant::now();
                    } else if last_busy.elapsed() > TICK_LINGER {
                        // Announce the park, then look again: a request that starts in between
                        // either sees `parked` and unparks (the token makes `park` return), or
                        // is seen here. The sum reads the shards one after another, so it may
                        // miss a request's count up (and see its count down elsewhere); a count
                        // it missed was made after it announced the park, so that request unparks.
                        s.flags.parked.store(true, Ordering::SeqCst);
                        if s.active.sum() <= 0 && !s.flags.stop.load(Ordering::SeqCst) {
                            std::thread::park();
                        }
                        s.flags.parked.store(false, Ordering::SeqCst);
                        last_busy = Instant::now();
                        continue;
                    }
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Ticker { shared, thread }
    }

    /// Count a running request for as long as the guard lives.
    pub(crate) fn running(&self) -> Running<'_> {
        self.shared.active.add(1);
        if self.shared.flags.parked.load(Ordering::SeqCst) {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        Running(self)
    }
}

pub(crate) struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.active.add(-1);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.flags.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
