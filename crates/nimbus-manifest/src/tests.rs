//! Table tests: manifests in, every expected message out.

use super::*;

const GOOD: &str = r#"
name = "shop"

[functions.hello]
runtime = "node"
handler = "index.handler"
memory_mb = 256
timeout = "250ms"
env = { GREETING = "hi", N = 3 }
min_instances = 1
max_instances = 4
keep_alive = "5m"

[functions.py]
runtime = "python"
handler = "app.handler"
code = "src/py"

[[routes]]
method = ["get", "POST"]
path = "/hello/{name}"
function = "hello"

[[routes]]
path = "/static/*"
host = "Api.Example.com"
function = "py"
"#;

#[test]
fn a_good_manifest_resolves_with_defaults() {
    let m = parse(GOOD, "nimbus.toml").unwrap();
    assert_eq!(m.name, "shop");
    let hello = &m.functions["hello"];
    assert_eq!(hello.runtime, nimbus_core::RuntimeKind::Node);
    assert_eq!(hello.code, "functions/hello");
    assert_eq!(hello.timeout, Duration::from_millis(250));
    assert_eq!(hello.env["N"], "3");
    assert_eq!((hello.min_instances, hello.max_instances, hello.memory_mb), (1, 4, 256));
    let py = &m.functions["py"];
    assert_eq!(py.timeout, defaults::TIMEOUT);
    assert_eq!(py.max_instances, defaults::MAX_INSTANCES);
    assert_eq!(m.routes[0].methods, Methods::List(vec!["GET".into(), "POST".into()]));
    assert_eq!(m.routes[1].host.as_deref(), Some("api.example.com"));
    assert_eq!(m.routes[1].matcher_path(), "/static/{*proxy}");
    assert_eq!(m.routes[1].route_key(), "ANY /static/{proxy+}");
}

fn errors(src: &str) -> Vec<String> {
    parse(src, "nimbus.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
}

#[test]
fn every_error_is_reported_at_once_with_its_location() {
    let src = r#"name = "shop"
colour = "blue"

[functions.hello]
runtime = "nodejs"
handler = "index"
timeout = "10x"
memroy_mb = 128
min_instances = 5
max_instances = 2

[[routes]]
method = "FETCH"
path = "hello"
function = "nope"
"#;
    let got = errors(src);
    let want = [
        "nimbus.toml:2:1: colour: unknown key `colour`; the top level takes: name, functions, routes, schedules, pricing",
        "nimbus.toml:5:11: functions.hello.runtime: unknown runtime \"nodejs\"; use \"node\", \"python\", \"provided\" or \"wasm\"",
        "nimbus.toml:7:11: functions.hello.timeout: \"10x\" is not a duration; write it like \"250ms\", \"10s\", \"5m\" or \"1h\"",
        "nimbus.toml:8:1: functions.hello.memroy_mb: unknown key `memroy_mb` (did you mean `memory_mb`?); a function takes: runtime, handler, code, component, memory_mb, timeout, env, min_instances, max_instances, keep_alive, max_queued, queue_timeout, max_retry_attempts, retry_backoff, retry_backoff_max, max_event_age, on_success, on_failure, instance_reuse, cpu_ms, allowed_outbound_hosts",
        "nimbus.toml:9:17: functions.hello.min_instances: min_instances (5) is above max_instances (2); lower it or raise max_instances",
        "nimbus.toml:13:10: routes[0].method: \"FETCH\" is not an HTTP method; use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, or \"*\"",
        "nimbus.toml:14:8: routes[0].path: \"hello\" must start with '/'",
        "nimbus.toml:15:12: routes[0].function: no function named \"nope\"; declared functions: hello",
    ];
    assert_eq!(got, want, "\n{}", got.join("\n"));
}

/// Each `(extra, want)`: the manifest `base` + `extra` is refused with a message containing `want`.
fn each_problem(base: &str, cases: &[(&str, &str)]) {
    for (extra, want) in cases {
        let got = errors(&format!("{base}{extra}")).join("\n");
        assert!(got.contains(want), "for {extra:?}: expected {want:?} in:\n{got}");
    }
}

#[test]
fn table_of_single_problems() {
    let base = "name = \"a\"\n[functions.f]\nruntime = \"node\"\nhandler = \"index.handler\"\n";
    let cases: &[(&str, &str)] = &[
        ("memory_mb = 16\n", "functions.f.memory_mb: must be between 64 and 10240"),
        ("timeout = \"20m\"\n", "functions.f.timeout: \"20m\" is out of range"),
        ("env = { AWS_LAMBDA_RUNTIME_API = \"x\" }\n", "AWS_LAMBDA_RUNTIME_API is set by nimbus"),
        ("env = { \"1BAD\" = \"x\" }\n", "not a valid environment variable name"),
        ("env = { AWS_REGION = \"eu-west-1\" }\n", "AWS_REGION is set by nimbus"),
        ("max_instances = 0\n", "functions.f.max_instances: must be between 1 and 1000"),
        ("on_failure = \"sqs:x\"\n", "is not a destination"),
        ("max_retry_attempts = 11\n", "must be between 0 and 10"),
        ("code = \"../elsewhere\"\n", "must be a directory inside the app"),
        ("component = \"x.wasm\"\n", "`component` is only for `runtime = \"wasm\"` functions"),
        ("instance_reuse = true\n", "functions.f.instance_reuse: `instance_reuse` is only for"),
        ("allowed_outbound_hosts = []\n", "`allowed_outbound_hosts` is only for"),
        ("[[routes]]\npath = \"/a/{x}/{x}\"\nfunction = \"f\"\n", "parameter \"x\" appears twice"),
        ("[[routes]]\npath = \"/a/*/b\"\nfunction = \"f\"\n", "'*' is only allowed as the last segment"),
        ("[[routes]]\npath = \"/a\"\nfunction = \"f\"\nasync = 1\n", "routes[0].async: expected true or false"),
        ("[[routes]]\npath = \"/a\"\nfunction = \"f\"\n[[routes]]\nmethod = \"GET\"\npath = \"/a\"\nfunction = \"f\"\n", "is already routed by the route at line 5"),
        ("[[routes]]\npath = \"/a/{x}\"\nfunction = \"f\"\n[[routes]]\npath = \"/a/{y}\"\nfunction = \"f\"\n", "conflicts with another route"),
        ("[[schedules]]\nfunction = \"f\"\ncron = \"61 * * * *\"\n", "schedules[0].cron: \"61 * * * *\" is not a cron expression"),
        ("[[schedules]]\nfunction = \"f\"\ncron = \"* * * *\"\n", "is not a cron expression"),
        ("[[schedules]]\nfunction = \"f\"\nrate = \"5 fortnights\"\n", "schedules[0].rate: \"5 fortnights\" is not a rate"),
        ("[[schedules]]\nfunction = \"f\"\ncron = \"* * * * *\"\nrate = \"1 minute\"\n", "either `cron` or `rate`, not both"),
        ("[[schedules]]\nfunction = \"f\"\ncron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"\n", "is not an IANA time zone"),
        ("[[schedules]]\nfunction = \"nope\"\nrate = \"1 minute\"\n", "schedules[0].function: no function named \"nope\""),
        ("[[schedules]]\nfunction = \"f\"\n", "a schedule needs `cron"),
        ("on_success = \"function:ghost\"\n", "functions.f.on_success: no function named \"ghost\" to send the outcome to"),
        ("[oops\n", "TOML syntax error"),
    ];
    each_problem(base, cases);
    // different methods on the same path are fine
    let ok = format!("{base}[[routes]]\nmethod = \"GET\"\npath = \"/a\"\nfunction = \"f\"\n[[routes]]\nmethod = \"POST\"\npath = \"/a\"\nfunction = \"f\"\n");
    assert!(parse(&ok, "nimbus.toml").is_ok());
}

#[test]
fn missing_essentials_are_named() {
    let got = errors("[functions.f]\nruntime = \"python\"\n").join("\n");
    assert!(got.contains("name: missing; add `name = \"my-app\"`"), "{got}");
    assert!(got.contains("functions.f.handler: missing; add `handler = \"app.handler\"`"), "{got}");
}

#[test]
fn load_checks_the_code_exists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nimbus.toml"),
        "name = \"a\"\n[functions.n]\nruntime = \"node\"\nhandler = \"index.handler\"\n[functions.p]\nruntime = \"provided\"\ncode = \"p\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("functions/n")).unwrap();
    std::fs::create_dir_all(dir.path().join("p")).unwrap();
    std::fs::write(dir.path().join("p/bootstrap"), "#!/bin/sh\n").unwrap();
    let got: Vec<String> = load(dir.path()).unwrap_err().0.iter().map(|d| d.message.clone()).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].contains("needs index.js, index.mjs or index.cjs"), "{got:?}");
    assert!(got[1].contains("executable file named \"bootstrap\""), "{got:?}");
    std::fs::write(dir.path().join("functions/n/index.js"), "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("p/bootstrap"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(load(dir.path()).is_ok());
}

#[test]
fn async_settings_and_schedules_resolve() {
    let src = r#"
name = "jobs"
[functions.work]
runtime = "python"
handler = "app.handler"
max_retry_attempts = 5
retry_backoff = "250ms"
retry_backoff_max = "10s"
max_event_age = "2m"
on_success = "function:audit"
on_failure = "dlq"
[functions.audit]
runtime = "node"
handler = "index.handler"
[[routes]]
method = "POST"
path = "/jobs"
function = "work"
async = true
[[schedules]]
function = "work"
cron = "0 2 * * *"
timezone = "Asia/Shanghai"
[[schedules]]
function = "audit"
rate = "rate(5 minutes)"
catch_up = "none"
"#;
    let m = parse(src, "nimbus.toml").unwrap();
    let p = &m.functions["work"].async_policy;
    assert_eq!(p.max_retry_attempts, 5);
    assert_eq!(p.retry_backoff, Duration::from_millis(250));
    assert_eq!(p.max_event_age, Duration::from_secs(120));
    assert_eq!(p.on_success, Some(nimbus_core::Destination::Function("audit".into())));
    assert_eq!(p.on_failure, Some(nimbus_core::Destination::Dlq));
    assert_eq!(m.functions["audit"].async_policy, nimbus_core::AsyncPolicy::default());
    assert!(m.routes[0].is_async);
    assert_eq!(m.schedules.len(), 2);
    assert_eq!(m.schedules[0].when, schedule::When::Cron("0 2 * * *".into()));
    assert_eq!(m.schedules[0].timezone, "Asia/Shanghai");
    assert_eq!(m.schedules[1].when, schedule::When::Rate(Duration::from_secs(300)));
    assert_eq!(m.schedules[1].catch_up, schedule::CatchUp::None);
}

#[test]
fn wasm_functions_take_their_own_keys() {
    let src = r#"
name = "edge"
[functions.geo]
runtime = "wasm"
component = "geo.wasm"
memory_mb = 16
instance_reuse = true
cpu_ms = 50
allowed_outbound_hosts = ["https://api.example.com", "http://127.0.0.1:*"]
"#;
    let m = parse(src, "nimbus.toml").unwrap();
    let geo = &m.functions["geo"];
    assert_eq!(geo.runtime, nimbus_core::RuntimeKind::Wasm);
    assert_eq!(geo.memory_mb, 16);
    assert_eq!(
        geo.wasm,
        nimbus_core::WasmOptions {
            component: "geo.wasm".into(),
            instance_reuse: true,
            cpu_ms: Some(50),
            allowed_outbound_hosts: vec!["https://api.example.com".into(), "http://127.0.0.1:*".into()],
        }
    );

    let base = "name = \"a\"\n[functions.f]\nruntime = \"wasm\"\ncomponent = \"f.wasm\"\n";
    let cases: &[(&str, &str)] = &[
        ("handler = \"index.handler\"\n", "functions.f.handler: a wasm function has no handler"),
        ("memory_mb = 5000\n", "functions.f.memory_mb: must be between 1 and 4096"),
        ("cpu_ms = 0\n", "functions.f.cpu_ms: must be between 1 and 900000"),
        ("instance_reuse = \"yes\"\n", "functions.f.instance_reuse: expected true or false"),
        ("allowed_outbound_hosts = \"https://x.com\"\n", "expected a list like"),
        ("allowed_outbound_hosts = [\"x.com\"]\n", "functions.f.allowed_outbound_hosts[0]: \"x.com\" has no scheme"),
        ("allowed_outbound_hosts = [\"https://x.com/api\"]\n", "only an origin"),
    ];
    each_problem(base, cases);
    let got = errors("name = \"a\"\n[functions.f]\nruntime = \"wasm\"\ncomponent = \"../x.wasm\"\n").join("\n");
    assert!(got.contains("must be a file inside the code directory"), "{got}");
}

#[test]
fn pricing_defaults_and_overrides() {
    let m = parse(GOOD, "nimbus.toml").unwrap();
    assert_eq!(m.pricing, Pricing::default());
    assert_eq!(m.pricing.per_million_requests, 0.20);
    let src =
        format!("{GOOD}\n[pricing]\ncurrency = \"EUR\"\nper_gb_second = 0.00001\nservers = 3\nserver_per_hour = 1");
    let p = parse(&src, "nimbus.toml").unwrap().pricing;
    assert_eq!((p.currency.as_str(), p.per_gb_second, p.servers, p.server_per_hour), ("EUR", 0.00001, 3, 1.0));
    assert_eq!(p.per_million_requests, 0.20, "keys not given keep their defaults");
}

#[test]
fn pricing_problems_are_named() {
    each_problem(
        &format!("{GOOD}\n[pricing]\n"),
        &[
            ("per_gb_second = -1", "pricing.per_gb_second: must be a price of 0 or more"),
            ("per_million_requests = \"cheap\"", "pricing.per_million_requests: expected a number, found string"),
            ("servers = 0", "pricing.servers: must be between 1 and 100000"),
            ("currency = \"US dollars\"", "is not a currency label"),
            ("server_price = 1", "unknown key"),
        ],
    );
}
