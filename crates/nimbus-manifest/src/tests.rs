//! Resolution tests: valid manifests in, resolved values and defaults out. The tables of
//! "this manifest is refused with these messages" are golden files in `tests/ui/`.

use std::time::Duration;

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
concurrency = 64

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
    assert_eq!((hello.concurrency, py.concurrency), (64, 1), "concurrency defaults to 1");
    assert_eq!(m.routes[0].methods, Methods::List(vec!["GET".into(), "POST".into()]));
    assert_eq!(m.routes[1].host.as_deref(), Some("api.example.com"));
    assert_eq!(m.routes[1].matcher_path(), "/static/{*proxy}");
    assert_eq!(m.routes[1].route_key(), "ANY /static/{proxy+}");
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
    assert_eq!(geo.wasm, nimbus_core::WasmOptions { component: "geo.wasm".into(), instance_reuse: true });
    assert_eq!(geo.cpu_ms, Some(50));
    assert_eq!(geo.allowed_outbound_hosts, Some(vec!["https://api.example.com".into(), "http://127.0.0.1:*".into()]));
}

/// `cpu_ms` is a limit of every runtime; `instance_reuse` stays wasm's own.
#[test]
fn cpu_ms_is_valid_for_every_runtime() {
    for runtime in ["node", "python", "provided"] {
        let handler = if runtime == "provided" { "" } else { "handler = \"app.handler\"\n" };
        let src = format!("name = \"a\"\n[functions.f]\nruntime = \"{runtime}\"\n{handler}cpu_ms = 200\n");
        let m = parse(&src, "nimbus.toml").unwrap_or_else(|e| panic!("{runtime}: {e}"));
        assert_eq!(m.functions["f"].cpu_ms, Some(200), "{runtime}");
    }
    let m = parse("name = \"a\"\n[functions.f]\nruntime = \"node\"\nhandler = \"app.handler\"\n", "nimbus.toml");
    assert_eq!(m.unwrap().functions["f"].cpu_ms, None, "no CPU budget unless one is set");
    let e = parse(
        "name = \"a\"\n[functions.f]\nruntime = \"node\"\nhandler = \"app.handler\"\ninstance_reuse = true\n",
        "nimbus.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`instance_reuse` is only for `runtime = \"wasm\"` functions"), "{e}");
}

#[test]
fn process_functions_take_allowed_outbound_hosts_and_default_to_none() {
    let src = r#"
name = "api"
[functions.a]
runtime = "python"
handler = "h.handler"
allowed_outbound_hosts = ["https://api.example.com"]
[functions.b]
runtime = "node"
handler = "index.handler"
"#;
    let m = parse(src, "nimbus.toml").unwrap();
    assert_eq!(m.functions["a"].allowed_outbound_hosts, Some(vec!["https://api.example.com".into()]));
    assert_eq!(m.functions["b"].allowed_outbound_hosts, None, "unset: the runtime's default applies");
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

/// A link in a code directory may point anywhere inside it; one that leads out of it (or to
/// nothing) is a problem at the function's `code`, naming the link.
#[test]
fn links_out_of_a_code_directory_are_refused() {
    use std::os::unix::fs::symlink;
    let src = "name = \"app\"\n[functions.f]\nruntime = \"node\"\nhandler = \"index.handler\"\n";
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("lib.js", "index.js", None),
        ("sub", "./", Some("\"sub\" to \"./\", a directory that contains it")),
        (".git/hooks", "/etc", None),
        ("secret", "../../outside/token", Some("\"secret\" to \"../../outside/token\", outside it")),
        ("abs", "/etc/hostname", Some("\"abs\" to \"/etc/hostname\", outside it")),
        ("gone", "missing.js", Some("\"gone\" to \"missing.js\", which does not exist")),
    ];
    for (link, target, want) in cases {
        let app = tempfile::tempdir().unwrap();
        std::fs::write(app.path().join(MANIFEST_FILE), src).unwrap();
        let code = app.path().join("functions/f");
        std::fs::create_dir_all(code.join(".git")).unwrap();
        std::fs::create_dir_all(app.path().join("outside")).unwrap();
        std::fs::write(app.path().join("outside/token"), "t").unwrap();
        std::fs::write(code.join("index.js"), "").unwrap();
        symlink(target, code.join(link)).unwrap();
        let got = load_as(app.path(), MANIFEST_FILE).map(|_| ()).map_err(|d| d.to_string());
        match want {
            None => assert_eq!(got, Ok(()), "{link} -> {target}"),
            Some(w) => {
                let e = got.unwrap_err();
                assert!(e.contains("nimbus.toml:2:1: functions.f.code: code directory") && e.contains(w), "{e}");
            }
        }
    }
}

#[test]
fn known_keys_are_every_table_s_keys_once() {
    let keys = crate::known_keys();
    for k in ["name", "ephemeral_storage_mb", "grants", "functions", "async", "catch_up", "servers", "queues"] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    for k in ["dead_letter_queue", "triggers", "batch_window", "report_batch_item_failures", "suffix"] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
}

const QUEUES: &str = r#"
name = "pipeline"

[buckets.uploads]
[buckets.thumbs]

[queues.orders]
delay = "2s"
max_receive_count = 5
dead_letter_queue = "orders-dlq"

[queues.orders-dlq]

[queues."jobs.fifo"]
fifo = true

[functions.thumbs]
runtime = "node"
handler = "index.handler"
grants = { buckets = { thumbs = "write", uploads = "write" }, queues = { orders = "send" } }

[functions.worker]
runtime = "node"
handler = "index.handler"

[[triggers]]
function = "thumbs"
bucket = "uploads"
events = ["s3:ObjectCreated:*"]
prefix = "images/"

[[triggers]]
function = "worker"
queue = "orders"

[[triggers]]
function = "thumbs"
queue = "orders"
batch_size = 50
batch_window = "2s"
max_concurrency = 3
report_batch_item_failures = true
"#;

#[test]
fn queues_resolve_with_sqs_defaults_and_their_redrive() {
    use nimbus_core::{QueueSpec, Redrive};
    let m = parse(QUEUES, "nimbus.toml").unwrap();
    let orders = &m.queues["orders"];
    assert_eq!(orders.visibility_timeout, Duration::from_secs(30));
    assert_eq!(orders.retention, Duration::from_secs(4 * 24 * 3600));
    assert_eq!(orders.delay, Duration::from_secs(2));
    assert!(!orders.fifo);
    assert_eq!(orders.redrive, Some(Redrive { dead_letter_queue: "orders-dlq".into(), max_receive_count: 5 }));
    assert_eq!(m.queues["orders-dlq"], QueueSpec::default());
    assert!(m.queues["jobs.fifo"].fifo);
}

#[test]
fn triggers_resolve_with_lambda_defaults() {
    use nimbus_core::{TriggerSource, S3_EVENTS};
    let m = parse(QUEUES, "nimbus.toml").unwrap();
    assert_eq!(m.triggers.len(), 3);
    let TriggerSource::Bucket(b) = &m.triggers[0].source else { panic!("{:?}", m.triggers[0]) };
    assert_eq!((b.bucket.as_str(), b.prefix.as_deref(), b.suffix.as_deref()), ("uploads", Some("images/"), None));
    assert_eq!(b.events, vec![S3_EVENTS[0].to_owned()]);
    let TriggerSource::Queue(q) = &m.triggers[1].source else { panic!("{:?}", m.triggers[1]) };
    assert_eq!((m.triggers[1].function.as_str(), q.queue.as_str()), ("worker", "orders"));
    assert_eq!(
        (q.batch_size, q.batch_window, q.max_concurrency, q.report_batch_item_failures),
        (10, Duration::ZERO, None, false)
    );
    let TriggerSource::Queue(q) = &m.triggers[2].source else { panic!("{:?}", m.triggers[2]) };
    assert_eq!(
        (q.batch_size, q.batch_window, q.max_concurrency, q.report_batch_item_failures),
        (50, Duration::from_secs(2), Some(3), true)
    );
}

#[test]
fn a_trigger_adds_the_read_grant_its_function_needs() {
    use nimbus_core::{Access, Op, QueueAccess, QueueOp};
    let m = parse(QUEUES, "nimbus.toml").unwrap();
    let thumbs = &m.functions["thumbs"].grants;
    // Its own write on the bucket it is triggered by becomes read-write; the other stays write.
    assert_eq!(thumbs.buckets["uploads"], Access::ReadWrite);
    assert_eq!(thumbs.buckets["thumbs"], Access::Write);
    assert!(thumbs.may_use_bucket("uploads", Op::Read) && !thumbs.may_use_bucket("thumbs", Op::Read));
    // Its own send on the queue it is triggered by becomes send-receive.
    assert_eq!(thumbs.queues["orders"], QueueAccess::SendReceive);
    // A function with no grants gets only receive on its queue.
    let worker = &m.functions["worker"].grants;
    assert!(worker.may_use_queue("orders", QueueOp::Receive) && !worker.may_use_queue("orders", QueueOp::Send));
    assert!(!worker.may_use_queue("jobs.fifo", QueueOp::Receive));
    assert!(worker.buckets.is_empty());
}

#[test]
fn a_manifest_without_queues_or_triggers_has_none() {
    let m = parse(GOOD, "nimbus.toml").unwrap();
    assert!(m.queues.is_empty() && m.triggers.is_empty());
    assert!(m.functions.values().all(|f| f.grants.queues.is_empty()));
}

/// `[static] dir` may not be a link out of the app, nor hold one; links inside it are fine.
#[test]
fn links_out_of_the_static_directory_are_refused() {
    use std::os::unix::fs::symlink;
    let src =
        "name = \"app\"\n[functions.f]\nruntime = \"node\"\nhandler = \"index.handler\"\n[static]\ndir = \"public\"\n";
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("public/alias.html", "index.html", None),
        ("public", "/etc", Some("static.dir: static directory \"public\" leads outside the app directory")),
        ("public/passwd", "/etc/passwd", Some("the static directory, so copy what it needs in")),
    ];
    for (link, target, want) in cases {
        let app = tempfile::tempdir().unwrap();
        std::fs::write(app.path().join(MANIFEST_FILE), src).unwrap();
        std::fs::create_dir_all(app.path().join("functions/f")).unwrap();
        std::fs::write(app.path().join("functions/f/index.js"), "").unwrap();
        if *link != "public" {
            std::fs::create_dir_all(app.path().join("public")).unwrap();
            std::fs::write(app.path().join("public/index.html"), "").unwrap();
        }
        symlink(target, app.path().join(link)).unwrap();
        let got = load_as(app.path(), MANIFEST_FILE).map(|_| ()).map_err(|d| d.to_string());
        match want {
            None => assert_eq!(got, Ok(()), "{link} -> {target}"),
            Some(w) => {
                let e = got.unwrap_err();
                assert!(e.contains("nimbus.toml:6:7: static.dir:") && e.contains(w), "{e}");
            }
        }
    }
}
