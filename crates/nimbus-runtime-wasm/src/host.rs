//! What a wasm store holds: WASI and WASI HTTP state, the memory limiter, the CPU meter, the
//! outbound HTTP policy, and the invocation log (`log.rs`) and `wasi:keyvalue` state (`kv.rs`)
//! these write to.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use nimbus_core::outbound::OutboundPattern;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::log::LogPipe;

/// The `T` of every `Store<T>` the wasm runtime makes.
pub(crate) struct Host {
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub outbound: Outbound,
    pub kv: crate::kv::KvCtx,
    pub limiter: Limiter,
    pub cpu: Arc<CpuMeter>,
    /// `cpu_ms` in nanoseconds.
    pub cpu_limit_ns: Option<u64>,
    /// Set by the epoch callback when it stopped the guest for using too much CPU.
    pub cpu_exceeded: bool,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// Caps the store's linear memories at `memory_mb` and remembers the peak.
pub(crate) struct Limiter {
    pub max_bytes: usize,
    /// Sum of the current sizes of all linear memories in the store.
    pub total: usize,
    pub peak: usize,
    /// Set when a growth was refused (the guest then usually traps).
    pub refused: Option<usize>,
    pub log: LogPipe,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.max_bytes {
            self.refused = Some(total);
            self.log.note(&format!(
                "memory growth to {} MB refused: above memory_mb = {}",
                total.div_ceil(1 << 20),
                self.max_bytes >> 20
            ));
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Tables past this are refused (the pooling allocator's slots are sized for it).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// CPU time of the current request: the time spent inside polls of the guest call (guest code
/// and synchronous host calls), not time waiting on timers or I/O.
#[derive(Default)]
pub(crate) struct CpuMeter {
    /// Nanoseconds of finished polls.
    used_ns: AtomicU64,
    /// When the poll in progress started (ns since `origin`), 0 when none is.
    poll_start_ns: AtomicU64,
    origin: std::sync::OnceLock<Instant>,
}

impl CpuMeter {
    fn now_ns(&self) -> u64 {
        let origin = self.origin.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    pub fn reset(&self) {
        self.used_ns.store(0, Ordering::Relaxed);
        self.poll_start_ns.store(0, Ordering::Relaxed);
    }

    pub fn poll_started(&self) {
        self.poll_start_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    pub fn poll_ended(&self) {
        let start = self.poll_start_ns.swap(0, Ordering::Relaxed);
        if start != 0 {
            self.used_ns.fetch_add(self.now_ns().saturating_sub(start), Ordering::Relaxed);
        }
    }

    /// CPU time used so far, including the poll in progress.
    pub fn used_ns(&self) -> u64 {
        let start = self.poll_start_ns.load(Ordering::Relaxed);
        let running = if start == 0 { 0 } else { self.now_ns().saturating_sub(start) };
        self.used_ns.load(Ordering::Relaxed) + running
    }
}

/// A future that charges the time spent polling it to a [`CpuMeter`].
pub(crate) struct Metered<'a, F> {
    pub inner: Pin<Box<F>>,
    pub meter: &'a CpuMeter,
}

impl<F: std::future::Future> std::future::Future for Metered<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.meter.poll_started();
        let r = self.inner.as_mut().poll(cx);
        self.meter.poll_ended();
        r
    }
}

/// The outbound HTTP policy: only origins matching `allowed_outbound_hosts` are reachable.
pub(crate) struct Outbound {
    pub allowed: Arc<Vec<OutboundPattern>>,
    pub log: LogPipe,
}

/// wasmtime-wasi-http's forbidden headers, built once: its default `is_forbidden_header`
/// allocates a filter closure and builds the list on every call (six calls a warm request,
/// ~1.1k instructions; callgrind).
static FORBIDDEN_HEADERS: [http::HeaderName; 9] = wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS;

impl WasiHttpHooks for Outbound {
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        FORBIDDEN_HEADERS.contains(name)
    }

    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_owned();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
        if !self.allowed.iter().any(|p| p.allows(&scheme, &host, port)) {
            let origin = format!("{scheme}://{host}:{port}");
            self.log.note(&format!(
                "outbound HTTP to {origin} denied: it is not in allowed_outbound_hosts; add \"{origin}\" to the function in nimbus.toml"
            ));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CpuMeter;

    /// The forbidden headers stay wasmtime-wasi-http's (a guest cannot set hop-by-hop headers
    /// or `host`), the same list its default hook checks.
    #[test]
    fn guests_may_not_set_the_headers_wasi_http_forbids() {
        use wasmtime_wasi_http::WasiHttpHooks;
        let mut hooks = super::Outbound { allowed: Default::default(), log: crate::log::LogPipe::new(10) };
        for name in wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS {
            assert!(hooks.is_forbidden_header(&name), "{name}");
        }
        for allowed in ["content-type", "set-cookie", "x-custom"] {
            assert!(!hooks.is_forbidden_header(&http::HeaderName::from_static(allowed)), "{allowed}");
        }
    }

    #[test]
    fn the_cpu_meter_counts_only_time_inside_polls() {
        let m = CpuMeter::default();
        m.poll_started();
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.poll_ended();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let used = m.used_ns();
        assert!((20_000_000..40_000_000).contains(&used), "{used} ns");
        m.reset();
        assert_eq!(m.used_ns(), 0);
    }
}
