//! The validating walk over the spanned TOML tree.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use nimbus_core::{AsyncPolicy, Destination, FunctionSpec, RuntimeKind, WasmOptions};
use toml::de::{DeTable, DeValue};

use crate::ctx::{Ctx, FunctionLocations, Locations, Value};
use crate::{defaults, Diagnostic, Diagnostics, Manifest, Methods, RouteSpec};

const TOP_KEYS: &[&str] = &["name", "functions", "routes", "schedules", "pricing"];
const FUNCTION_KEYS: &[&str] = &[
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
];
/// Keys only wasm functions take.
const WASM_KEYS: &[&str] = &["component", "instance_reuse", "cpu_ms", "allowed_outbound_hosts"];
const ROUTE_KEYS: &[&str] = &["method", "path", "host", "function", "async"];
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
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
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];

pub(crate) fn manifest(src: &str, file: &str) -> Result<Manifest, Diagnostics> {
    manifest_with_locations(src, file).map(|(m, _)| m)
}

pub(crate) fn manifest_with_locations(src: &str, file: &str) -> Result<(Manifest, Locations), Diagnostics> {
    let mut cx = Ctx::new(file, src);
    let (root, parse_errors) = DeTable::parse_recoverable(src);
    if !parse_errors.is_empty() {
        for e in parse_errors {
            let start = e.span().map_or(0, |s| s.start);
            let msg = e.message().trim().replace('\n', " ");
            cx.err(start..start, "", format!("TOML syntax error: {msg}; fix the syntax and try again"));
        }
        return Err(Diagnostics::new(cx.into_errors()));
    }
    let root = root.get_ref();
    cx.unknown_keys(root, TOP_KEYS, "", "the top level");

    let name = match root.get("name") {
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
    };

    let mut locations = Locations::default();
    let mut functions = BTreeMap::new();
    let mut destinations: Vec<DestinationRef> = Vec::new();
    match root.get("functions") {
        Some(v) => match v.get_ref() {
            DeValue::Table(table) => {
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
                    if let Some((spec, loc)) = function(&mut cx, fname, fv, &field, &mut destinations) {
                        functions.insert(fname.to_owned(), spec);
                        locations.functions.insert(fname.to_owned(), loc);
                    }
                }
            }
            other => cx.err(
                v.span(),
                "functions",
                format!("expected a table of functions (`[functions.NAME]`), found {}", other.type_str()),
            ),
        },
        None => cx.err(0..0, "functions", "the app has no functions; add a `[functions.NAME]` table"),
    }

    let mut routes = Vec::new();
    if let Some(v) = root.get("routes") {
        match v.get_ref() {
            DeValue::Array(list) => {
                for (i, rv) in list.iter().enumerate() {
                    if let Some(r) = route(&mut cx, rv, &format!("routes[{i}]"), root.get("functions")) {
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
    }
    route_conflicts(&mut cx, &routes);

    let declared =
        |name: &str| root.get("functions").and_then(|f| f.get_ref().as_table()).is_some_and(|t| t.get(name).is_some());
    for (name, span, field) in destinations {
        if !declared(&name) {
            cx.err(
                span,
                &field,
                format!("no function named \"{name}\" to send the outcome to; declare it with [functions.{name}]"),
            );
        }
    }

    let mut schedules = Vec::new();
    if let Some(v) = root.get("schedules") {
        match v.get_ref() {
            DeValue::Array(list) => {
                for (i, sv) in list.iter().enumerate() {
                    if let Some(s) = crate::schedule::check(&mut cx, sv, &format!("schedules[{i}]"), &declared) {
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
    }

    let pricing = match root.get("pricing") {
        Some(v) => crate::pricing::check(&mut cx, v).unwrap_or_default(),
        None => crate::Pricing::default(),
    };

    if cx.error_count() > 0 {
        return Err(Diagnostics::new(cx.into_errors()));
    }
    let manifest = Manifest {
        pricing,
        name: name.unwrap_or_default(),
        functions,
        routes: routes.into_iter().map(|(r, _)| r).collect(),
        schedules,
    };
    Ok((manifest, locations))
}

/// A destination function named by `on_success`/`on_failure`: (name, span, field), checked once
/// all functions are known.
type DestinationRef = (String, Range<usize>, String);

fn function(
    cx: &mut Ctx<'_>,
    name: &str,
    v: &Value<'_>,
    field: &str,
    destinations: &mut Vec<DestinationRef>,
) -> Option<(FunctionSpec, FunctionLocations)> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[{field}]`), found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, FUNCTION_KEYS, field, "a function");
    let f = |k: &str| format!("{field}.{k}");
    let mut loc = FunctionLocations { table: v.span().start, ..Default::default() };

    let runtime = match t.get("runtime") {
        Some(rv) => cx.string(rv, &f("runtime")).and_then(|s| match RuntimeKind::parse(&s) {
            Some(k) => Some(k),
            None => {
                cx.err(
                    rv.span(),
                    &f("runtime"),
                    format!("unknown runtime \"{s}\"; use \"node\", \"python\", \"provided\" or \"wasm\""),
                );
                None
            }
        }),
        None => {
            cx.err(
                v.span(),
                &f("runtime"),
                "missing; add `runtime = \"node\"` (or \"python\", \"provided\", \"wasm\")",
            );
            None
        }
    };

    let handler = match t.get("handler") {
        Some(hv) if runtime == Some(RuntimeKind::Wasm) => {
            cx.err(
                hv.span(),
                &f("handler"),
                "a wasm function has no handler (nimbus calls the component's wasi:http/incoming-handler export); remove it and name the file with `component`",
            );
            None
        }
        Some(hv) => {
            loc.handler = Some(hv.span().start);
            let h = cx.string(hv, &f("handler"));
            if let (Some(h), Some(rt)) = (&h, runtime) {
                if rt != RuntimeKind::Provided && !valid_handler(h) {
                    let example = if rt == RuntimeKind::Node { "index.handler" } else { "app.handler" };
                    cx.err(
                        hv.span(),
                        &f("handler"),
                        format!("\"{h}\" is not a handler; write it as FILE.EXPORT, e.g. \"{example}\""),
                    );
                }
            }
            h
        }
        None => match runtime {
            Some(RuntimeKind::Provided | RuntimeKind::Wasm) | None => Some(String::new()),
            Some(rt) => {
                let example = if rt == RuntimeKind::Node { "index.handler" } else { "app.handler" };
                cx.err(v.span(), &f("handler"), format!("missing; add `handler = \"{example}\"`"));
                None
            }
        },
    };

    let code = match t.get("code") {
        Some(cv) => {
            loc.code = Some(cv.span().start);
            cx.string(cv, &f("code")).filter(|c| {
                let ok =
                    !c.is_empty() && !std::path::Path::new(c).is_absolute() && !c.split(['/', '\\']).any(|p| p == "..");
                if !ok {
                    cx.err(
                        cv.span(),
                        &f("code"),
                        format!("\"{c}\" must be a directory inside the app, relative to nimbus.toml, without \"..\""),
                    );
                }
                ok
            })
        }
        None => Some(format!("functions/{name}")),
    };
    let wasm = if runtime == Some(RuntimeKind::Wasm) {
        crate::wasm::options(cx, t, field, &mut loc)
    } else {
        if runtime.is_some() {
            for key in WASM_KEYS {
                if let Some(kv) = t.get(*key) {
                    cx.err(
                        kv.span(),
                        &f(key),
                        format!("`{key}` is only for `runtime = \"wasm\"` functions; remove it"),
                    );
                }
            }
        }
        Some(WasmOptions::default())
    };

    // A wasm32 component cannot address more than 4 GiB.
    // A wasm32 component cannot address more than 4 GiB; its memory can be as small as needed.
    let (min_memory, max_memory) = if runtime == Some(RuntimeKind::Wasm) { (1, 4096) } else { (64, 10_240) };
    let memory_mb =
        t.get("memory_mb").map_or(Some(defaults::MEMORY_MB), |mv| cx.u32(mv, &f("memory_mb"), min_memory, max_memory));
    let timeout = t.get("timeout").map_or(Some(defaults::TIMEOUT), |tv| {
        cx.duration(tv, &f("timeout"), Duration::from_millis(1), Duration::from_secs(15 * 60))
    });
    let min_instances = t.get("min_instances").map_or(Some(0), |mv| cx.u32(mv, &f("min_instances"), 0, 1000));
    let max_instances =
        t.get("max_instances").map_or(Some(defaults::MAX_INSTANCES), |mv| cx.u32(mv, &f("max_instances"), 1, 1000));
    if let (Some(min), Some(max)) = (min_instances, max_instances) {
        if min > max {
            let span = t.get("min_instances").map_or(v.span(), |s| s.span());
            cx.err(
                span,
                &f("min_instances"),
                format!("min_instances ({min}) is above max_instances ({max}); lower it or raise max_instances"),
            );
        }
    }
    let keep_alive = t.get("keep_alive").map_or(Some(defaults::KEEP_ALIVE), |kv| {
        cx.duration(kv, &f("keep_alive"), Duration::from_millis(100), Duration::from_secs(24 * 3600))
    });
    let max_queued =
        t.get("max_queued").map_or(Some(defaults::MAX_QUEUED), |mv| cx.u32(mv, &f("max_queued"), 0, 100_000));
    let queue_timeout = t.get("queue_timeout").map_or(Some(defaults::QUEUE_TIMEOUT), |qv| {
        cx.duration(qv, &f("queue_timeout"), Duration::from_millis(1), Duration::from_secs(15 * 60))
    });

    // Async invocations: retries, event age and destinations (docs/manifest.md, `[functions.NAME]`).
    let mut async_policy = AsyncPolicy::default();
    if let Some(n) = t.get("max_retry_attempts").and_then(|x| cx.u32(x, &f("max_retry_attempts"), 0, 10)) {
        async_policy.max_retry_attempts = n;
    }
    for (key, lo, hi) in [
        ("retry_backoff", Duration::from_millis(1), Duration::from_secs(3600)),
        ("retry_backoff_max", Duration::from_millis(1), Duration::from_secs(24 * 3600)),
        ("max_event_age", Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600)),
    ] {
        if let Some(d) = t.get(key).and_then(|x| cx.duration(x, &f(key), lo, hi)) {
            match key {
                "retry_backoff" => async_policy.retry_backoff = d,
                "retry_backoff_max" => async_policy.retry_backoff_max = d,
                _ => async_policy.max_event_age = d,
            }
        }
    }
    for key in ["on_success", "on_failure"] {
        let Some(x) = t.get(key) else { continue };
        let Some(s) = cx.string(x, &f(key)) else { continue };
        match Destination::parse(&s) {
            Some(Destination::Function(n)) if !valid_name(&n) => {
                cx.err(x.span(), &f(key), format!("\"{n}\" is not a function name"));
            }
            Some(d) => {
                if let Destination::Function(n) = &d {
                    destinations.push((n.clone(), x.span(), f(key)));
                }
                if key == "on_success" {
                    async_policy.on_success = Some(d);
                } else {
                    async_policy.on_failure = Some(d);
                }
            }
            None => {
                cx.err(x.span(), &f(key), format!("\"{s}\" is not a destination; use \"function:NAME\" or \"dlq\""));
            }
        }
    }

    let env = match t.get("env") {
        None => BTreeMap::new(),
        Some(ev) => match ev.get_ref() {
            DeValue::Table(et) => {
                let mut env = BTreeMap::new();
                for (k, val) in et.iter() {
                    let key: &str = k.get_ref().as_ref();
                    let kf = format!("{}.{key}", f("env"));
                    if !valid_env_name(key) {
                        cx.err(k.span(), &kf, format!("\"{key}\" is not a valid environment variable name; use letters, digits and '_', not starting with a digit"));
                        continue;
                    }
                    if RESERVED_ENV.contains(&key) {
                        cx.err(
                            k.span(),
                            &kf,
                            format!("{key} is set by nimbus for every instance and cannot be overridden; remove it"),
                        );
                        continue;
                    }
                    let text = match val.get_ref() {
                        DeValue::String(s) => Some(s.to_string()),
                        DeValue::Integer(i) => Some(i.as_str().to_owned()),
                        DeValue::Float(x) => Some(x.as_str().to_owned()),
                        DeValue::Boolean(b) => Some(b.to_string()),
                        other => {
                            cx.err(val.span(), &kf, format!("expected a string, found {}", other.type_str()));
                            None
                        }
                    };
                    if let Some(text) = text {
                        env.insert(key.to_owned(), text);
                    }
                }
                env
            }
            other => {
                cx.err(
                    ev.span(),
                    &f("env"),
                    format!("expected a table like `env = {{ KEY = \"value\" }}`, found {}", other.type_str()),
                );
                BTreeMap::new()
            }
        },
    };

    if cx.error_count() > before {
        return None;
    }
    Some((
        FunctionSpec {
            name: name.to_owned(),
            runtime: runtime?,
            handler: handler?,
            code: code?,
            memory_mb: memory_mb?,
            timeout: timeout?,
            env,
            min_instances: min_instances?,
            max_instances: max_instances?,
            keep_alive: keep_alive?,
            max_queued: max_queued?,
            queue_timeout: queue_timeout?,
            async_policy,
            wasm: wasm?,
        },
        loc,
    ))
}

fn route(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str, functions: Option<&Value<'_>>) -> Option<RouteSpec> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[[routes]]`), found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, ROUTE_KEYS, field, "a route");
    let f = |k: &str| format!("{field}.{k}");

    let methods = match t.get("method") {
        None => Some(Methods::Any),
        Some(mv) => {
            let raw: Vec<(String, Range<usize>)> = match mv.get_ref() {
                DeValue::String(s) => vec![(s.to_string(), mv.span())],
                DeValue::Array(list) => {
                    list.iter().filter_map(|x| cx.string(x, &f("method")).map(|s| (s, x.span()))).collect()
                }
                other => {
                    cx.err(
                        mv.span(),
                        &f("method"),
                        format!("expected a method, \"*\" or a list of methods, found {}", other.type_str()),
                    );
                    Vec::new()
                }
            };
            if raw.iter().any(|(m, _)| m == "*" || m.eq_ignore_ascii_case("ANY")) {
                Some(Methods::Any)
            } else {
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
                            &f("method"),
                            format!("\"{m}\" is not an HTTP method; use one of {}, or \"*\"", METHODS.join(", ")),
                        );
                    }
                }
                (!list.is_empty()).then_some(Methods::List(list))
            }
        }
    };

    let path = match t.get("path") {
        Some(pv) => cx.string(pv, &f("path")).filter(|p| match check_path(p) {
            Ok(()) => true,
            Err(msg) => {
                cx.err(pv.span(), &f("path"), msg);
                false
            }
        }),
        None => {
            cx.err(v.span(), &f("path"), "missing; add `path = \"/hello\"`");
            None
        }
    };

    let host = t.get("host").and_then(|hv| {
        let h = cx.string(hv, &f("host"))?.to_ascii_lowercase();
        if h.is_empty() || h.contains(['/', ':', ' ']) {
            cx.err(
                hv.span(),
                &f("host"),
                format!("\"{h}\" is not a host name; write it without scheme or port, e.g. \"api.example.com\""),
            );
            return None;
        }
        Some(h)
    });

    let function = match t.get("function") {
        Some(fv) => cx.string(fv, &f("function")).filter(|name| {
            let exists = functions.and_then(|f| f.get_ref().as_table()).is_some_and(|t| t.get(name.as_str()).is_some());
            if !exists {
                let known: Vec<String> = functions
                    .and_then(|f| f.get_ref().as_table())
                    .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect())
                    .unwrap_or_default();
                let hint = if known.is_empty() {
                    "declare it with [functions.NAME]".to_owned()
                } else {
                    format!("declared functions: {}", known.join(", "))
                };
                cx.err(fv.span(), &f("function"), format!("no function named \"{name}\"; {hint}"));
            }
            exists
        }),
        None => {
            cx.err(v.span(), &f("function"), "missing; add `function = \"NAME\"`");
            None
        }
    };

    let is_async = match t.get("async") {
        None => false,
        Some(av) => match av.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                cx.err(av.span(), &f("async"), format!("expected true or false, found {}", other.type_str()));
                false
            }
        },
    };

    if cx.error_count() > before {
        return None;
    }
    Some(RouteSpec { methods: methods?, path: path?, host, function: function?, is_async })
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

fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("\"{p}\" must start with '/'"));
    }
    if p.contains(['?', '#', ' ']) {
        return Err(format!("\"{p}\" must be a plain path without query, fragment or spaces"));
    }
    let segments: Vec<&str> = p.split('/').skip(1).collect();
    let mut params = Vec::new();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i != last {
            return Err(format!("\"{p}\" has an empty segment ('//'); remove it"));
        }
        if *seg == "*" {
            if i != last {
                return Err(format!("\"{p}\": '*' is only allowed as the last segment (\"/static/*\")"));
            }
            continue;
        }
        if let Some(inner) = seg.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(format!("\"{p}\": segment \"{seg}\" must be a whole {{param}}"));
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("\"{p}\": parameter \"{name}\" must be letters, digits or '_'"));
            }
            if name == "proxy" {
                return Err(format!(
                    "\"{p}\": \"proxy\" is the name of the trailing wildcard; choose another parameter name"
                ));
            }
            if params.contains(&name) {
                return Err(format!("\"{p}\": parameter \"{name}\" appears twice"));
            }
            params.push(name);
        } else if seg.contains(['{', '}', '*']) {
            return Err(format!("\"{p}\": segment \"{seg}\" mixes text with '{{', '}}' or '*'; parameters and wildcards take a whole segment"));
        }
    }
    Ok(())
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
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
