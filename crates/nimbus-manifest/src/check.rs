//! The validating walk over the spanned TOML tree.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use nimbus_core::{AsyncPolicy, Destination, FunctionSpec, Grants, KeepAlivePolicy, RuntimeKind, WasmOptions};
use toml::de::{DeTable, DeValue};

use crate::ctx::{check_path, valid_name, Ctx, FunctionLocations, Locations, Value, METHODS};
use crate::schedule::ScheduleSpec;
use crate::{
    defaults, edge, grants, limits, pricing, queues, resources, schedule, triggers, wasm, Diagnostic, Diagnostics,
    Manifest, Methods, Pricing, RouteSpec,
};

pub(crate) const TOP_KEYS: &[&str] = &[
    "name",
    "functions",
    "routes",
    "schedules",
    "pricing",
    "buckets",
    "kv",
    "queues",
    "triggers",
    "auth",
    "cors",
    "redirects",
    "rewrites",
    "headers",
    "static",
    "rate_limits",
    "cache",
];
pub(crate) const FUNCTION_KEYS: &[&str] = &[
    "runtime",
    "handler",
    "code",
    "component",
    "memory_mb",
    "timeout",
    "env",
    "min_instances",
    "max_instances",
    "keep_alive",
    "max_queued",
    "queue_timeout",
    "max_retry_attempts",
    "retry_backoff",
    "retry_backoff_max",
    "max_event_age",
    "on_success",
    "on_failure",
    "instance_reuse",
    "cpu_ms",
    "allowed_outbound_hosts",
    "ephemeral_storage_mb",
    "grants",
    "response_mode",
    "max_stream_bytes",
    "concurrency",
];
/// Keys only wasm functions take.
const WASM_KEYS: &[&str] = &["component", "instance_reuse"];
pub(crate) const ROUTE_KEYS: &[&str] =
    &["method", "path", "host", "function", "async", "auth", "cors", "rate_limit", "cache"];
/// Environment names the platform sets itself; a function may not override them.
const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_MAX_CONCURRENCY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];

pub(crate) fn manifest(src: &str, file: &str) -> Result<Manifest, Diagnostics> {
    manifest_with_locations(src, file).map(|(m, _)| m)
}

/// Parse, then check each part of the file in turn. The order of the parts is the order in
/// which problems at the same position are listed, so keep it.
pub(crate) fn manifest_with_locations(src: &str, file: &str) -> Result<(Manifest, Locations), Diagnostics> {
    let mut cx = Ctx::new(file, src);
    let (root, parse_errors) = DeTable::parse_recoverable(src);
    if !parse_errors.is_empty() {
        // Nothing else is checked: a broken file gives spans and keys that would mislead.
        for e in parse_errors {
            let start = e.span().map_or(0, |s| s.start);
            let msg = e.message().trim().replace('\n', " ");
            cx.err(start..start, "", format!("TOML syntax error: {msg}; fix the syntax and try again"));
        }
        return Err(Diagnostics::new(cx.into_errors()));
    }
    let root = root.get_ref();
    cx.unknown_keys(root, TOP_KEYS, "", "the top level");

    let name = app_name(&mut cx, root);
    let functions = functions(&mut cx, root);
    let routes = routes(&mut cx, root);
    route_conflicts(&mut cx, &routes);
    let declared = |name: &str| is_declared(root, name);
    destinations_exist(&mut cx, functions.refs.destinations, &declared);
    let buckets = resources::check(&mut cx, root, "buckets");
    let kv = resources::check(&mut cx, root, "kv");
    let queues = queues::check(&mut cx, root);
    grants_exist(&mut cx, functions.refs.grants, &declared, (&buckets, &kv, &queues));
    let schedules = schedules(&mut cx, root, &declared);
    let timeout = |f: &str| functions.specs.get(f).map(|s| s.timeout);
    let names = triggers::Names { functions: &declared, timeout: &timeout, buckets: &buckets, queues: &queues };
    let triggers = triggers::check(&mut cx, root, &names);
    let edge = edge::check(&mut cx, root);
    let assets = crate::assets::check(&mut cx, root);
    let pricing = match root.get("pricing") {
        Some(v) => pricing::check(&mut cx, v).unwrap_or_default(),
        None => Pricing::default(),
    };

    if cx.error_count() > 0 {
        return Err(Diagnostics::new(cx.into_errors()));
    }
    let mut specs = functions.specs;
    triggers::implied_grants(&triggers, &mut specs);
    let manifest = Manifest {
        pricing,
        name: name.unwrap_or_default(),
        functions: specs,
        routes: routes.into_iter().map(|(r, _)| r).collect(),
        schedules,
        buckets: buckets.valid,
        kv: kv.valid,
        queues: queues.valid,
        triggers,
        edge,
        assets: assets.as_ref().map(|(spec, _)| spec.clone()),
    };
    let mut locations = functions.locations;
    locations.jwks_files = edge::jwks_file_offsets(root);
    locations.assets = assets.map(|(_, at)| at);
    Ok((manifest, locations))
}

fn app_name(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Option<String> {
    match root.get("name") {
        Some(v) => cx.string(v, "name").filter(|n| {
            let ok = valid_name(n);
            if !ok {
                cx.err(
                    v.span(),
                    "name",
                    format!("\"{n}\" is not a valid app name; use 1-64 letters, digits, '-' or '_'"),
                );
            }
            ok
        }),
        None => {
            cx.err(0..0, "name", "missing; add `name = \"my-app\"` at the top of the file");
            None
        }
    }
}

/// Whether `[functions.NAME]` is written, valid or not: a reference to a function whose table has
/// problems of its own is not a second problem.
fn is_declared(root: &DeTable<'_>, name: &str) -> bool {
    root.get("functions").and_then(|f| f.get_ref().as_table()).is_some_and(|t| t.get(name).is_some())
}

/// Functions a function names (destinations, grants), checked once every function is read.
#[derive(Default)]
struct NameRefs {
    destinations: Vec<DestinationRef>,
    grants: grants::GrantRefs,
}

/// The valid functions, where their keys were written, and the functions they name.
struct Functions {
    specs: BTreeMap<String, FunctionSpec>,
    locations: Locations,
    refs: NameRefs,
}

fn functions(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Functions {
    let mut out = Functions { specs: BTreeMap::new(), locations: Locations::default(), refs: NameRefs::default() };
    let Some(v) = root.get("functions") else {
        cx.err(0..0, "functions", "the app has no functions; add a `[functions.NAME]` table");
        return out;
    };
    let DeValue::Table(table) = v.get_ref() else {
        cx.err(
            v.span(),
            "functions",
            format!("expected a table of functions (`[functions.NAME]`), found {}", v.get_ref().type_str()),
        );
        return out;
    };
    for (key, fv) in table.iter() {
        let fname: &str = key.get_ref().as_ref();
        let field = format!("functions.{fname}");
        if !valid_name(fname) {
            cx.err(
                key.span(),
                &field,
                format!("\"{fname}\" is not a valid function name; use 1-64 letters, digits, '-' or '_'"),
            );
            continue;
        }
        if let Some((spec, loc)) = function(cx, fname, fv, &field, &mut out.refs) {
            out.specs.insert(fname.to_owned(), spec);
            out.locations.functions.insert(fname.to_owned(), loc);
        }
    }
    out
}

/// The valid routes, each with its span so conflicts can point at it.
fn routes(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Vec<(RouteSpec, Range<usize>)> {
    let mut routes = Vec::new();
    let limits = limits::check(cx, root);
    let profiles = crate::cache::check(cx, root);
    let Some(v) = root.get("routes") else { return routes };
    match v.get_ref() {
        DeValue::Array(list) => {
            for (i, rv) in list.iter().enumerate() {
                if let Some(r) = route(cx, rv, &format!("routes[{i}]"), root, (&limits, &profiles)) {
                    routes.push((r, rv.span()));
                }
            }
        }
        other => cx.err(
            v.span(),
            "routes",
            format!("expected an array of tables (`[[routes]]`), found {}", other.type_str()),
        ),
    }
    routes
}

/// `on_success`/`on_failure` may name a function declared after the one that names it, so
/// they are checked once every function has been read.
fn destinations_exist(cx: &mut Ctx<'_>, destinations: Vec<DestinationRef>, declared: &dyn Fn(&str) -> bool) {
    for (name, span, field) in destinations {
        if !declared(&name) {
            cx.err(
                span,
                &field,
                format!("no function named \"{name}\" to send the outcome to; declare it with [functions.{name}]"),
            );
        }
    }
}

/// A grant may name a function declared after the one that has it.
fn grants_exist(
    cx: &mut Ctx<'_>,
    refs: grants::GrantRefs,
    declared: &dyn Fn(&str) -> bool,
    (buckets, kv, queues): (&resources::Declared, &resources::Declared, &queues::Declared),
) {
    for (name, span, field) in refs.functions {
        if !declared(&name) {
            cx.err(span, &field, format!("no function named \"{name}\" to grant; declare it with [functions.{name}]"));
        }
    }
    for (name, span, field) in refs.buckets {
        if !buckets.written.contains(&name) {
            cx.err(span, &field, format!("no bucket named \"{name}\" to grant; declare it with [buckets.{name}]"));
        }
    }
    for (name, span, field) in refs.kv {
        if !kv.written.contains(&name) {
            cx.err(span, &field, format!("no KV namespace named \"{name}\" to grant; declare it with [kv.{name}]"));
        }
    }
    for (name, span, field) in refs.queues {
        if !queues.written.contains(&name) {
            cx.err(span, &field, format!("no queue named \"{name}\" to grant; declare it with [queues.{name}]"));
        }
    }
}

fn schedules(cx: &mut Ctx<'_>, root: &DeTable<'_>, declared: &dyn Fn(&str) -> bool) -> Vec<ScheduleSpec> {
    let mut schedules = Vec::new();
    let Some(v) = root.get("schedules") else { return schedules };
    match v.get_ref() {
        DeValue::Array(list) => {
            for (i, sv) in list.iter().enumerate() {
                if let Some(s) = schedule::check(cx, sv, &format!("schedules[{i}]"), declared) {
                    schedules.push(s);
                }
            }
        }
        other => cx.err(
            v.span(),
            "schedules",
            format!("expected an array of tables (`[[schedules]]`), found {}", other.type_str()),
        ),
    }
    schedules
}

/// A destination function named by `on_success`/`on_failure`: (name, span, field), checked once
/// all functions are known.
type DestinationRef = (String, Range<usize>, String);

/// One table being read (a function's or a route's): its keys, its own span for problems about
/// a missing key, and its field path.
struct Keys<'a, 'i> {
    t: &'a DeTable<'i>,
    v: &'a Value<'i>,
    field: &'a str,
}

impl<'a, 'i> Keys<'a, 'i> {
    fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.t.get(key)
    }

    /// The field path of one key, e.g. `functions.hello.timeout`.
    fn f(&self, key: &str) -> String {
        format!("{}.{key}", self.field)
    }
}

fn function(
    cx: &mut Ctx<'_>,
    name: &str,
    v: &Value<'_>,
    field: &str,
    refs: &mut NameRefs,
) -> Option<(FunctionSpec, FunctionLocations)> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[{field}]`), found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, FUNCTION_KEYS, field, "a function");
    let k = Keys { t, v, field };
    let mut loc = FunctionLocations { table: v.span().start, ..Default::default() };

    // Every group is read even after a problem, so that all problems are reported at once.
    let runtime = runtime(cx, &k);
    let handler = handler(cx, &k, runtime, &mut loc);
    let code = code(cx, &k, name, &mut loc);
    let wasm = wasm_keys(cx, &k, runtime, &mut loc);
    let limits = limits(cx, &k, runtime);
    let scaling = scaling(cx, &k, runtime);
    let async_policy = async_policy(cx, &k, &mut refs.destinations);
    let env = env(cx, &k);
    let ephemeral_storage_mb = ephemeral_storage(cx, &k, runtime);
    let allowed_outbound_hosts = outbound_hosts(cx, &k);
    let grants = grants_of(cx, &k, refs);
    let response = crate::response::response_keys(cx, k.get("response_mode"), k.get("max_stream_bytes"), field);
    if cx.error_count() > before {
        return None;
    }
    let (memory_mb, timeout, cpu_ms) = limits?;
    let s = scaling?;
    let spec = FunctionSpec {
        name: name.to_owned(),
        runtime: runtime?,
        handler: handler?,
        code: code?,
        memory_mb,
        timeout,
        cpu_ms,
        env,
        min_instances: s.min_instances,
        max_instances: s.max_instances,
        keep_alive: s.keep_alive,
        max_queued: s.max_queued,
        queue_timeout: s.queue_timeout,
        async_policy,
        wasm: wasm?,
        allowed_outbound_hosts: allowed_outbound_hosts?,
        ephemeral_storage_mb: ephemeral_storage_mb?,
        grants: grants?,
        keep_alive_policy: s.keep_alive_policy,
        response_mode: response?.0,
        max_stream_bytes: response?.1,
        concurrency: s.concurrency,
    };
    Some((spec, loc))
}

/// `allowed_outbound_hosts` (every runtime): `Some(None)` when absent, `None` on a problem.
fn outbound_hosts(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> Option<Option<Vec<String>>> {
    match k.get("allowed_outbound_hosts") {
        None => Some(None),
        Some(hv) => wasm::allowed_outbound_hosts(cx, hv, &k.f("allowed_outbound_hosts")).map(Some),
    }
}

/// `[functions.F.grants]`; the names it grants are checked against the app's functions later.
fn grants_of(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, refs: &mut NameRefs) -> Option<Grants> {
    k.get("grants").map_or(Some(Grants::default()), |gv| grants::check(cx, gv, &k.f("grants"), &mut refs.grants))
}

fn runtime(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> Option<RuntimeKind> {
    let Some(rv) = k.get("runtime") else {
        cx.err(
            k.v.span(),
            &k.f("runtime"),
            "missing; add `runtime = \"node\"` (or \"python\", \"provided\", \"wasm\")",
        );
        return None;
    };
    let s = cx.string(rv, &k.f("runtime"))?;
    let kind = RuntimeKind::parse(&s);
    if kind.is_none() {
        cx.err(
            rv.span(),
            &k.f("runtime"),
            format!("unknown runtime \"{s}\"; use \"node\", \"python\", \"provided\" or \"wasm\""),
        );
    }
    kind
}

/// The entry point: `FILE.EXPORT` for node and python, optional for provided, refused for wasm.
/// With an unknown runtime only the type is checked, since the right shape is not known.
fn handler(
    cx: &mut Ctx<'_>,
    k: &Keys<'_, '_>,
    runtime: Option<RuntimeKind>,
    loc: &mut FunctionLocations,
) -> Option<String> {
    let example = |rt: RuntimeKind| if rt == RuntimeKind::Node { "index.handler" } else { "app.handler" };
    match k.get("handler") {
        Some(hv) if runtime == Some(RuntimeKind::Wasm) => {
            cx.err(
                hv.span(),
                &k.f("handler"),
                "a wasm function has no handler (nimbus calls the component's wasi:http/incoming-handler export); remove it and name the file with `component`",
            );
            None
        }
        Some(hv) => {
            loc.handler = Some(hv.span().start);
            let h = cx.string(hv, &k.f("handler"));
            if let (Some(h), Some(rt)) = (&h, runtime) {
                if rt != RuntimeKind::Provided && !valid_handler(h) {
                    cx.err(
                        hv.span(),
                        &k.f("handler"),
                        format!("\"{h}\" is not a handler; write it as FILE.EXPORT, e.g. \"{}\"", example(rt)),
                    );
                }
            }
            h
        }
        None => match runtime {
            Some(RuntimeKind::Provided | RuntimeKind::Wasm) | None => Some(String::new()),
            Some(rt) => {
                cx.err(k.v.span(), &k.f("handler"), format!("missing; add `handler = \"{}\"`", example(rt)));
                None
            }
        },
    }
}

/// The code directory, relative to the app; it must stay inside it, since the app directory is
/// what gets uploaded and copied.
fn code(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, name: &str, loc: &mut FunctionLocations) -> Option<String> {
    let Some(cv) = k.get("code") else { return Some(format!("functions/{name}")) };
    loc.code = Some(cv.span().start);
    cx.string(cv, &k.f("code")).filter(|c| {
        let ok = !c.is_empty() && !std::path::Path::new(c).is_absolute() && !c.split(['/', '\\']).any(|p| p == "..");
        if !ok {
            cx.err(
                cv.span(),
                &k.f("code"),
                format!("\"{c}\" must be a directory inside the app, relative to nimbus.toml, without \"..\""),
            );
        }
        ok
    })
}

/// The wasm-only keys: read for a wasm function, refused for the others. With an unknown runtime
/// they are left alone, since it is not known whether they belong.
fn wasm_keys(
    cx: &mut Ctx<'_>,
    k: &Keys<'_, '_>,
    runtime: Option<RuntimeKind>,
    loc: &mut FunctionLocations,
) -> Option<WasmOptions> {
    if runtime == Some(RuntimeKind::Wasm) {
        return wasm::options(cx, k.t, k.field, loc);
    }
    if runtime.is_some() {
        for key in WASM_KEYS {
            if let Some(kv) = k.get(key) {
                cx.err(kv.span(), &k.f(key), format!("`{key}` is only for `runtime = \"wasm\"` functions; remove it"));
            }
        }
    }
    Some(WasmOptions::default())
}

/// `memory_mb`, `timeout` and `cpu_ms` (every runtime): what one invocation may use.
fn limits(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, runtime: Option<RuntimeKind>) -> Option<(u32, Duration, Option<u32>)> {
    // A wasm32 component cannot address more than 4 GiB; its memory can be as small as needed.
    let (min_memory, max_memory) = if runtime == Some(RuntimeKind::Wasm) { (1, 4096) } else { (64, 10_240) };
    let memory_mb = k
        .get("memory_mb")
        .map_or(Some(defaults::MEMORY_MB), |mv| cx.u32(mv, &k.f("memory_mb"), min_memory, max_memory));
    let timeout = k.get("timeout").map_or(Some(defaults::TIMEOUT), |tv| {
        cx.duration(tv, &k.f("timeout"), Duration::from_millis(1), Duration::from_secs(15 * 60))
    });
    let cpu_ms = k.get("cpu_ms").map_or(Some(None), |cv| cx.u32(cv, &k.f("cpu_ms"), 1, 15 * 60 * 1000).map(Some));
    Some((memory_mb?, timeout?, cpu_ms?))
}

/// The size of a process instance's `/tmp` (wasm functions have no file system to size).
fn ephemeral_storage(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, runtime: Option<RuntimeKind>) -> Option<u32> {
    let Some(ev) = k.get("ephemeral_storage_mb") else {
        return Some(nimbus_core::function::DEFAULT_EPHEMERAL_STORAGE_MB);
    };
    if runtime == Some(RuntimeKind::Wasm) {
        cx.err(
            ev.span(),
            &k.f("ephemeral_storage_mb"),
            "wasm functions have no /tmp to size (no file system is opened to them); remove the key",
        );
        return None;
    }
    cx.u32(ev, &k.f("ephemeral_storage_mb"), 512, 10_240)
}

/// `concurrency`: invocations one instance runs at once (1–1000). A wasm function takes a fresh
/// store per request, which is cheap, so it has no use for more than 1.
fn concurrency(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, runtime: Option<RuntimeKind>) -> Option<u32> {
    let Some(cv) = k.get("concurrency") else { return Some(1) };
    let n = cx.u32(cv, &k.f("concurrency"), 1, 1000)?;
    if n > 1 && runtime == Some(RuntimeKind::Wasm) {
        cx.err(
            cv.span(),
            &k.f("concurrency"),
            format!(
                "a wasm function runs each request in its own store, so concurrency = {n} buys nothing; remove the key (raise max_instances for more requests at once)"
            ),
        );
        return None;
    }
    Some(n)
}

/// How many instances a function may have, how long idle ones live, and how requests wait.
struct Scaling {
    min_instances: u32,
    max_instances: u32,
    keep_alive: Duration,
    max_queued: u32,
    queue_timeout: Duration,
    keep_alive_policy: KeepAlivePolicy,
    concurrency: u32,
}

/// `keep_alive`: a duration, or `"adaptive"` (windows learnt from the function's idle times,
/// the default duration while they are not representative).
fn keep_alive(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> Option<(Duration, KeepAlivePolicy)> {
    let Some(kv) = k.get("keep_alive") else { return Some((defaults::KEEP_ALIVE, KeepAlivePolicy::Fixed)) };
    if let DeValue::String(s) = kv.get_ref() {
        if s.trim().eq_ignore_ascii_case("adaptive") {
            return Some((defaults::KEEP_ALIVE, KeepAlivePolicy::Adaptive));
        }
        if crate::ctx::parse_duration(s).is_none() {
            cx.err(
                kv.span(),
                &k.f("keep_alive"),
                format!("\"{s}\" is neither a duration nor \"adaptive\"; write it like \"30s\", \"10m\" or \"1h\", or \"adaptive\" to learn it from the function's idle times"),
            );
            return None;
        }
    }
    let d = cx.duration(kv, &k.f("keep_alive"), Duration::from_millis(100), Duration::from_secs(24 * 3600))?;
    Some((d, KeepAlivePolicy::Fixed))
}

fn scaling(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, runtime: Option<RuntimeKind>) -> Option<Scaling> {
    let min_instances = k.get("min_instances").map_or(Some(0), |mv| cx.u32(mv, &k.f("min_instances"), 0, 1000));
    let max_instances =
        k.get("max_instances").map_or(Some(defaults::MAX_INSTANCES), |mv| cx.u32(mv, &k.f("max_instances"), 1, 1000));
    if let (Some(min), Some(max)) = (min_instances, max_instances) {
        if min > max {
            let span = k.get("min_instances").map_or(k.v.span(), |s| s.span());
            cx.err(
                span,
                &k.f("min_instances"),
                format!("min_instances ({min}) is above max_instances ({max}); lower it or raise max_instances"),
            );
        }
    }
    let keep_alive = keep_alive(cx, k);
    let max_queued =
        k.get("max_queued").map_or(Some(defaults::MAX_QUEUED), |mv| cx.u32(mv, &k.f("max_queued"), 0, 100_000));
    let queue_timeout = k.get("queue_timeout").map_or(Some(defaults::QUEUE_TIMEOUT), |qv| {
        cx.duration(qv, &k.f("queue_timeout"), Duration::from_millis(1), Duration::from_secs(15 * 60))
    });
    let concurrency = concurrency(cx, k, runtime);
    Some(Scaling {
        min_instances: min_instances?,
        max_instances: max_instances?,
        keep_alive: keep_alive?.0,
        max_queued: max_queued?,
        queue_timeout: queue_timeout?,
        keep_alive_policy: keep_alive?.1,
        concurrency: concurrency?,
    })
}

/// Async invocations: retries, event age and destinations (docs/manifest.md, `[functions.NAME]`).
/// A key with a problem keeps its default; the problem itself refuses the function.
fn async_policy(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, destinations: &mut Vec<DestinationRef>) -> AsyncPolicy {
    let mut policy = AsyncPolicy::default();
    if let Some(n) = k.get("max_retry_attempts").and_then(|x| cx.u32(x, &k.f("max_retry_attempts"), 0, 10)) {
        policy.max_retry_attempts = n;
    }
    for (key, lo, hi) in [
        ("retry_backoff", Duration::from_millis(1), Duration::from_secs(3600)),
        ("retry_backoff_max", Duration::from_millis(1), Duration::from_secs(24 * 3600)),
        ("max_event_age", Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600)),
    ] {
        if let Some(d) = k.get(key).and_then(|x| cx.duration(x, &k.f(key), lo, hi)) {
            match key {
                "retry_backoff" => policy.retry_backoff = d,
                "retry_backoff_max" => policy.retry_backoff_max = d,
                _ => policy.max_event_age = d,
            }
        }
    }
    // Only a destination that is written replaces the default (on_failure defaults to the DLQ).
    for key in ["on_success", "on_failure"] {
        if let Some(d) = destination(cx, k, key, destinations) {
            if key == "on_success" {
                policy.on_success = Some(d);
            } else {
                policy.on_failure = Some(d);
            }
        }
    }
    policy
}

/// `on_success` or `on_failure`. A named function is remembered in `destinations` and checked
/// once all functions are known.
fn destination(
    cx: &mut Ctx<'_>,
    k: &Keys<'_, '_>,
    key: &str,
    destinations: &mut Vec<DestinationRef>,
) -> Option<Destination> {
    let x = k.get(key)?;
    let s = cx.string(x, &k.f(key))?;
    match Destination::parse(&s) {
        Some(Destination::Function(n)) if !valid_name(&n) => {
            cx.err(x.span(), &k.f(key), format!("\"{n}\" is not a function name"));
            None
        }
        Some(d) => {
            if let Destination::Function(n) = &d {
                destinations.push((n.clone(), x.span(), k.f(key)));
            }
            Some(d)
        }
        None => {
            cx.err(x.span(), &k.f(key), format!("\"{s}\" is not a destination; use \"function:NAME\" or \"dlq\""));
            None
        }
    }
}

fn env(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(ev) = k.get("env") else { return env };
    let DeValue::Table(et) = ev.get_ref() else {
        cx.err(
            ev.span(),
            &k.f("env"),
            format!("expected a table like `env = {{ KEY = \"value\" }}`, found {}", ev.get_ref().type_str()),
        );
        return env;
    };
    for (name, val) in et.iter() {
        let key: &str = name.get_ref().as_ref();
        let kf = format!("{}.{key}", k.f("env"));
        if !valid_env_name(key) {
            cx.err(name.span(), &kf, format!("\"{key}\" is not a valid environment variable name; use letters, digits and '_', not starting with a digit"));
            continue;
        }
        if RESERVED_ENV.contains(&key) {
            cx.err(
                name.span(),
                &kf,
                format!("{key} is set by nimbus for every instance and cannot be overridden; remove it"),
            );
            continue;
        }
        if let Some(text) = env_value(cx, val, &kf) {
            env.insert(key.to_owned(), text);
        }
    }
    env
}

/// Environment values are text; numbers and booleans are taken as written, so `N = 3` is "3".
fn env_value(cx: &mut Ctx<'_>, val: &Value<'_>, field: &str) -> Option<String> {
    match val.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => Some(i.as_str().to_owned()),
        DeValue::Float(x) => Some(x.as_str().to_owned()),
        DeValue::Boolean(b) => Some(b.to_string()),
        other => {
            cx.err(val.span(), field, format!("expected a string, found {}", other.type_str()));
            None
        }
    }
}

fn route(
    cx: &mut Ctx<'_>,
    v: &Value<'_>,
    field: &str,
    root: &DeTable<'_>,
    (limits, profiles): (&limits::Limits, &crate::cache::Profiles),
) -> Option<RouteSpec> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[[routes]]`), found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, ROUTE_KEYS, field, "a route");
    let k = Keys { t, v, field };

    // Every key is read even after a problem, so that all problems are reported at once.
    let methods = methods(cx, &k);
    let path = path(cx, &k);
    let host = host(cx, &k);
    let function = function_ref(cx, &k, root.get("functions"));
    let is_async = is_async(cx, &k);
    let (auth, cors) = edge::route_refs(cx, root, t, field);
    let rate_limit = limits::route_limit(cx, t, &k.f("rate_limit"), limits);
    let cache = crate::cache::route_cache(cx, t, &k.f("cache"), profiles);

    if cx.error_count() > before {
        return None;
    }
    Some(RouteSpec {
        methods: methods?,
        path: path?,
        host,
        function: function?,
        is_async,
        rate_limit: rate_limit.ok()?,
        cache: cache.as_ref().ok()?.0,
        auth,
        cors,
        cache_profile: cache.ok()?.1,
    })
}

/// `method`: one method, a list, or "*"/"ANY" (also the default). Methods are upper-cased and
/// deduplicated; `None` when none of the listed methods is valid.
fn methods(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> Option<Methods> {
    let Some(mv) = k.get("method") else { return Some(Methods::Any) };
    let raw: Vec<(String, Range<usize>)> = match mv.get_ref() {
        DeValue::String(s) => vec![(s.to_string(), mv.span())],
        DeValue::Array(list) => {
            list.iter().filter_map(|x| cx.string(x, &k.f("method")).map(|s| (s, x.span()))).collect()
        }
        other => {
            cx.err(
                mv.span(),
                &k.f("method"),
                format!("expected a method, \"*\" or a list of methods, found {}", other.type_str()),
            );
            Vec::new()
        }
    };
    if raw.iter().any(|(m, _)| m == "*" || m.eq_ignore_ascii_case("ANY")) {
        return Some(Methods::Any);
    }
    let mut list = Vec::new();
    for (m, span) in raw {
        let up = m.to_ascii_uppercase();
        if METHODS.contains(&up.as_str()) {
            if !list.contains(&up) {
                list.push(up);
            }
        } else {
            cx.err(
                span,
                &k.f("method"),
                format!("\"{m}\" is not an HTTP method; use one of {}, or \"*\"", METHODS.join(", ")),
            );
        }
    }
    (!list.is_empty()).then_some(Methods::List(list))
}

fn path(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> Option<String> {
    let Some(pv) = k.get("path") else {
        cx.err(k.v.span(), &k.f("path"), "missing; add `path = \"/hello\"`");
        return None;
    };
    cx.string(pv, &k.f("path")).filter(|p| match check_path(p) {
        Ok(()) => true,
        Err(msg) => {
            cx.err(pv.span(), &k.f("path"), msg);
            false
        }
    })
}

/// `host`, lower-cased, since host names match case-insensitively.
fn host(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> Option<String> {
    let hv = k.get("host")?;
    let h = cx.string(hv, &k.f("host"))?.to_ascii_lowercase();
    if h.is_empty() || h.contains(['/', ':', ' ']) {
        cx.err(
            hv.span(),
            &k.f("host"),
            format!("\"{h}\" is not a host name; write it without scheme or port, e.g. \"api.example.com\""),
        );
        return None;
    }
    Some(h)
}

/// The route's `function`, which must be declared; the message lists the declared ones.
fn function_ref(cx: &mut Ctx<'_>, k: &Keys<'_, '_>, functions: Option<&Value<'_>>) -> Option<String> {
    let Some(fv) = k.get("function") else {
        cx.err(k.v.span(), &k.f("function"), "missing; add `function = \"NAME\"`");
        return None;
    };
    let declared = functions.and_then(|f| f.get_ref().as_table());
    cx.string(fv, &k.f("function")).filter(|name| {
        let exists = declared.is_some_and(|t| t.get(name.as_str()).is_some());
        if !exists {
            let known: Vec<String> =
                declared.map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect()).unwrap_or_default();
            let hint = if known.is_empty() {
                "declare it with [functions.NAME]".to_owned()
            } else {
                format!("declared functions: {}", known.join(", "))
            };
            cx.err(fv.span(), &k.f("function"), format!("no function named \"{name}\"; {hint}"));
        }
        exists
    })
}

fn is_async(cx: &mut Ctx<'_>, k: &Keys<'_, '_>) -> bool {
    let Some(av) = k.get("async") else { return false };
    match av.get_ref() {
        DeValue::Boolean(b) => *b,
        other => {
            cx.err(av.span(), &k.f("async"), format!("expected true or false, found {}", other.type_str()));
            false
        }
    }
}

/// Two routes conflict when the router could not tell them apart, or when they share a path and
/// a method.
fn route_conflicts(cx: &mut Ctx<'_>, routes: &[(RouteSpec, Range<usize>)]) {
    let mut routers: HashMap<Option<String>, matchit::Router<usize>> = HashMap::new();
    let mut seen: HashMap<(Option<String>, String), Vec<usize>> = HashMap::new();
    for (i, (r, span)) in routes.iter().enumerate() {
        let key = (r.host.clone(), r.matcher_path());
        let field = format!("routes[{i}]");
        if let Some(earlier) = seen.get(&key) {
            for &j in earlier {
                let Some((other, other_span)) = routes.get(j) else { continue };
                let overlap = match (&r.methods, &other.methods) {
                    (Methods::Any, _) | (_, Methods::Any) => true,
                    (Methods::List(a), Methods::List(b)) => a.iter().any(|m| b.contains(m)),
                };
                if overlap {
                    let (line, _) = line_of(cx.src(), other_span.start);
                    cx.err(span.clone(), &field, format!("{} {} is already routed by the route at line {line}; remove one or give them different methods", r.methods.describe(), r.path));
                }
            }
            seen.entry(key).or_default().push(i);
            continue;
        }
        seen.entry(key.clone()).or_default().push(i);
        let router = routers.entry(r.host.clone()).or_default();
        if let Err(e) = router.insert(key.1.clone(), i) {
            cx.err(
                span.clone(),
                &field,
                format!("path \"{}\" conflicts with another route ({e}); make the paths distinguishable", r.path),
            );
        }
    }
}

fn line_of(src: &str, offset: usize) -> (usize, usize) {
    let d = Diagnostic::at("", src, offset, "", String::new());
    (d.line, d.column)
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_handler(h: &str) -> bool {
    match h.rsplit_once('.') {
        Some((file, export)) => {
            !file.is_empty()
                && !export.is_empty()
                && export.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        }
        None => false,
    }
}
