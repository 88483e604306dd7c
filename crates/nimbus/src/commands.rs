//! Client commands: thin wrappers over the management API (its types are `nimbus-api`'s) and
//! the Invoke API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use nimbus_api as api;
use serde_json::Value;

use crate::client::Client;
use crate::Remote;

fn here() -> PathBuf {
    PathBuf::from(".")
}

pub async fn deploy(app_dir: PathBuf, remote: Remote, canary: crate::traffic::CanaryArgs) -> Result<ExitCode> {
    if !app_dir.join(nimbus_manifest::MANIFEST_FILE).is_file() {
        bail!("{} has no nimbus.toml; pass the app directory", app_dir.display());
    }
    let client = Client::new(&remote, &app_dir)?;
    let progress = crate::progress::spinner(format!("packing {}", app_dir.display()));
    let archive = tokio::task::spawn_blocking({
        let dir = app_dir.clone();
        move || archive(&dir)
    })
    .await??;
    let size = archive.len();
    // The server answers once the deployment is checked, stored and its wasm components are
    // compiled ahead of time; the upload itself is the first part of that wait.
    progress.set_message(format!("uploading {} KiB, then checking, storing and compiling ahead of time", size / 1024));
    let path = format!("/v1/deployments{}", canary.query());
    let r = client.call(Method::POST, &path, archive, &[("content-type", "application/x-tar".into())]).await;
    progress.finish_and_clear();
    let r = r?;
    if r.status.is_success() {
        let d: api::Deployed = r.parse()?;
        println!(
            "deployed {} version {} ({} functions, {} KiB uploaded)",
            d.app,
            d.version,
            d.functions.len(),
            size / 1024
        );
        for note in &d.notes {
            println!("note: {note}");
        }
        if let Some(percent) = canary.canary {
            println!("canary: version {} has {percent}% of the traffic; `nimbus traffic show` follows it", d.version);
        }
        if let Some(domain) = &d.preview_domain {
            println!("preview: {}", client.preview_url(d.version, domain));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Ok(api::ErrorBody { errors: Some(errors), .. }) = r.parse::<api::ErrorBody>() {
        eprintln!(
            "{} problem{} in the app manifest; nothing was deployed:",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
        for e in errors {
            eprintln!("  {e}");
        }
        return Ok(ExitCode::from(2));
    }
    bail!("deploy failed: {} ({})", r.error_text(), r.status)
}

/// The app directory as a tar archive, without nimbus's own state or VCS metadata. Symlinks
/// travel as symlinks, so the server applies the same rules to them as `nimbus up` does (a link
/// out of a function's code directory is refused, naming it) instead of this client quietly
/// uploading whatever file of this machine a link points at.
fn archive(dir: &Path) -> Result<Bytes> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".nimbus" || name == ".git" {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            builder.append_dir_all(&name, &path)?;
        } else {
            builder.append_path_with_name(&path, &name)?;
        }
    }
    Ok(Bytes::from(builder.into_inner()?))
}

pub async fn rollback(to: Option<u64>, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    let d: api::Deployed =
        client.post("/v1/rollback", &api::RollbackRequest { version: to }, "rollback failed").await?;
    println!("live is now version {} of {}", d.version, d.app);
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    let app: api::AppInfo = client.get("/v1/app").await?;
    let functions: Vec<api::FunctionInfo> = client.get("/v1/functions").await?;
    print!("{}", ls_text(&app, &functions));
    // A split or a running canary is part of what is live (an older server has no such endpoint).
    let traffic: Option<api::TrafficInfo> = client.get("/v1/aliases/live/traffic").await.ok();
    if let Some(t) = traffic.filter(|t| t.weights.len() > 1 || t.canary.is_some()) {
        print!("\nTRAFFIC\n  {}", crate::traffic::show_text(&t).replace('\n', "\n  ").trim_end_matches(' '));
    }
    Ok(ExitCode::SUCCESS)
}

fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

fn ls_text(app: &api::AppInfo, functions: &[api::FunctionInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "app {}  live version {}", app.app.as_deref().unwrap_or_default(), or_null(app.live));
    let _ = writeln!(out, "\nDEPLOYMENTS");
    for d in &app.deployments {
        let live = if d.live { "  (live)" } else { "" };
        let _ = writeln!(out, "  {:>4}  {}{live}", d.version, d.functions.join(", "));
    }
    let _ = writeln!(out, "\nFUNCTIONS");
    let _ = writeln!(
        out,
        "  {:<20} {:<9} {:>7} {:>8} {:>5} {:>5}  ROUTES",
        "NAME", "RUNTIME", "MEMORY", "TIMEOUT", "IDLE", "BUSY"
    );
    for f in functions {
        let (idle, busy) = f.pools.iter().fold((0, 0), |(i, b), p| (i + p.idle, b + p.busy));
        let _ = writeln!(
            out,
            "  {:<20} {:<9} {:>5}MB {:>7}ms {idle:>5} {busy:>5}  {}",
            f.name,
            f.runtime,
            f.memory_mb,
            f.timeout_ms,
            f.routes.join(", ")
        );
    }
    out
}

pub async fn invoke(
    name: String,
    data: Option<String>,
    file: Option<PathBuf>,
    qualifier: Option<String>,
    is_async: bool,
    idempotency_key: Option<String>,
    remote: Remote,
) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    let payload = match (data, file) {
        (Some(d), _) => d,
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        (None, Some(f)) => std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?,
        (None, None) => "{}".to_owned(),
    };
    if let Err(e) = serde_json::from_str::<Value>(&payload) {
        bail!("the event must be JSON: {e}");
    }
    let mut path = format!("/2015-03-31/functions/{name}/invocations");
    if let Some(q) = qualifier {
        path.push_str(&format!("?Qualifier={q}"));
    }
    if is_async {
        let mut headers = vec![("x-amz-invocation-type", "Event".to_owned())];
        if let Some(key) = idempotency_key {
            headers.push(("idempotency-key", key));
        }
        let r = client.call(Method::POST, &path, Bytes::from(payload), &headers).await?;
        if r.status != http::StatusCode::ACCEPTED {
            bail!("{} ({})", r.error_text(), r.status);
        }
        let id = r.headers.get("x-amzn-requestid").and_then(|v| v.to_str().ok()).unwrap_or_default();
        println!("{id}");
        eprintln!("queued; `nimbus invocations --status queued` or GET /v1/invocations/{id} shows its progress");
        return Ok(ExitCode::SUCCESS);
    }
    let r = client.call(Method::POST, &path, Bytes::from(payload), &[("x-amz-log-type", "Tail".into())]).await?;
    if let Some(log) = r.headers.get("x-amz-log-result").and_then(|v| v.to_str().ok()) {
        if let Ok(text) = base64::engine::general_purpose::STANDARD.decode(log) {
            let _ = std::io::stderr().write_all(&text);
        }
    }
    if !r.status.is_success() {
        bail!("{} ({})", r.error_text(), r.status);
    }
    let mut out = std::io::stdout();
    out.write_all(&r.body)?;
    out.write_all(b"\n")?;
    if r.headers.contains_key("x-amz-function-error") {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(
    name: String,
    follow: bool,
    request_id: Option<String>,
    json: bool,
    remote: Remote,
) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    let mut after = 0u64;
    // In a cluster: where each node's entries continue (see `LogPage::cursor`).
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/functions/{}/logs?after={after}", enc(&name));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        if let Some(id) = &request_id {
            path.push_str(&format!("&requestId={}", enc(id)));
        }
        let page: api::LogPage = client.get_merged(&path).await?;
        let mut out = std::io::stdout().lock();
        for e in &page.entries {
            if json {
                for line in e.text.lines() {
                    writeln!(out, "{}", log_line_json(&name, e, line))?;
                }
            } else if let Some(node) = &e.node {
                // Several nodes' logs interleave: each line says where it ran.
                for line in e.text.lines() {
                    writeln!(out, "{node} | {line}")?;
                }
            } else {
                out.write_all(e.text.as_bytes())?;
            }
        }
        out.flush()?;
        drop(out);
        after = page.next;
        cursor = page.cursor;
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// One log line as a JSON object: a line the function wrote as a JSON object keeps its fields
/// (and gains `requestId`, `function` and `timestamp` where it has none); any other line becomes
/// `{"message": line, …}`.
fn log_line_json(function: &str, entry: &api::LogEntry, line: &str) -> Value {
    let mut obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            let mut m = serde_json::Map::new();
            m.insert("message".into(), Value::String(line.to_owned()));
            m
        }
    };
    let ts = chrono::DateTime::from_timestamp_millis(i64::try_from(entry.ts_ms).unwrap_or(0)).unwrap_or_default();
    for (k, v) in [
        ("timestamp", Value::String(ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
        ("function", Value::String(function.to_owned())),
        ("requestId", Value::String(entry.request_id.clone())),
    ] {
        obj.entry(k).or_insert(v);
    }
    if let Some(node) = &entry.node {
        obj.entry("node").or_insert(Value::String(node.clone()));
    }
    Value::Object(obj)
}

pub async fn invocations(
    function: Option<String>,
    status: Option<String>,
    limit: u32,
    json: bool,
    remote: Remote,
) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    let mut path = format!("/v1/invocations?limit={limit}");
    if let Some(f) = &function {
        path.push_str(&format!("&function={}", enc(f)));
    }
    if let Some(s) = &status {
        path.push_str(&format!("&status={}", enc(s)));
        print!("{}", events_table(&client.get::<Vec<api::Event>>(&path).await?));
        return Ok(ExitCode::SUCCESS);
    }
    let records: Vec<api::Invocation> = client.get_merged(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", invocations_table(&records));
    Ok(ExitCode::SUCCESS)
}

fn invocations_table(records: &[api::Invocation]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // In a cluster each record says the node that ran it: a last column then.
    let nodes = records.iter().any(|r| r.node.is_some());
    let _ = write!(
        out,
        "{:<36}  {:<16} {:>4} {:<8} {:<15} {:>10} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "REQUEST ID", "FUNCTION", "VER", "TRIGGER", "STATUS", "DURATION", "COLD", "QUEUE", "START", "INIT", "RESPONSE"
    );
    let _ = writeln!(out, "{}", if nodes { "  NODE" } else { "" });
    let ms = |v: Option<f64>| v.map(|i| format!("{i:.1}ms")).unwrap_or_default();
    for r in records {
        let _ = write!(
            out,
            "{:<36}  {:<16} {:>4} {:<8} {:<15} {:>8.2}ms {:>5} {:>9} {:>9} {:>9} {:>9}",
            r.request_id,
            r.function,
            r.version,
            r.trigger,
            r.status,
            r.duration_ms,
            if r.cold { "yes" } else { "" },
            ms(Some(r.queue_ms)),
            ms(r.instance_start_ms),
            ms(r.runtime_init_ms),
            ms(r.response_ms),
        );
        let node = r.node.as_deref().filter(|_| nodes).map(|n| format!("  {n}")).unwrap_or_default();
        let _ = writeln!(out, "{node}");
    }
    out
}

/// `nimbus usage`: requests, GB-seconds and cost per function since `since`, and what
/// always-on servers would have cost over the same period.
pub async fn usage(args: crate::UsageArgs) -> Result<ExitCode> {
    let client = Client::new(&args.remote, &here())?;
    let mut path = format!("/v1/usage?since={}&granularity={}", enc(&args.since), enc(&args.granularity));
    if let Some(n) = args.servers {
        path.push_str(&format!("&servers={n}"));
    }
    if let Some(p) = args.server_price {
        path.push_str(&format!("&serverPerHour={p}"));
    }
    let report: api::UsageReport = client.get_merged(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", usage_table(&report));
    Ok(ExitCode::SUCCESS)
}

/// `s` as a path segment or query value: everything but RFC 3986's unreserved characters
/// percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

fn usage_table(v: &api::UsageReport) -> String {
    use std::fmt::Write as _;
    let cur = &v.prices.currency;
    let money = |x: f64| format!("{x:.6}");
    let time = |ms: u64| chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(0)).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "usage from {} to {} UTC ({:.1} h)\n",
        time(v.since_ms).format("%Y-%m-%d %H:%M"),
        time(v.until_ms).format("%Y-%m-%d %H:%M"),
        v.always_on.hours
    );
    // GB-SECONDS is what is billed; PER-INVOCATION differs only for functions with
    // concurrency > 1, billed per instance-second busy (the Fluid saving).
    let head = ("FUNCTION", "REQUESTS", "GB-SECONDS", "PER-INVOCATION", format!("COST ({cur})"));
    let _ = writeln!(out, "{:<24} {:>12} {:>14} {:>14} {:>14}", head.0, head.1, head.2, head.3, head.4);
    for f in &v.functions {
        let (gbs, per_inv) = (f.gb_seconds, f.invocation_gb_seconds);
        let _ =
            writeln!(out, "{:<24} {:>12} {gbs:>14.3} {per_inv:>14.3} {:>14}", f.function, f.requests, money(f.cost));
    }
    let t = &v.total;
    let (gbs, per_inv) = (t.gb_seconds, t.invocation_gb_seconds);
    let _ = writeln!(out, "{:<24} {:>12} {gbs:>14.3} {per_inv:>14.3} {:>14}\n", "total", t.requests, money(t.cost));
    let p = &v.prices;
    let _ = writeln!(
        out,
        "priced at {cur} {} per million requests and {cur} {} per GB-second ([pricing] in nimbus.toml)",
        json_number(p.per_million_requests),
        json_number(p.per_gb_second)
    );
    let a = &v.always_on;
    let _ = writeln!(
        out,
        "always-on: {} server(s) at {cur} {}/h for the same {:.1} h would cost {cur} {}",
        a.servers,
        json_number(a.server_per_hour),
        a.hours,
        money(a.cost)
    );
    let _ = writeln!(out, "{}", verdict(cur, t.cost, a.cost));
    if !v.storage.is_empty() {
        out.push('\n');
        out.push_str(&storage_table(v));
    }
    out
}

/// Buckets and KV namespaces: what each holds now, its requests (S3 class A / B; KV reads /
/// writes, deletes and lists), bytes in and out, GB-months and cost over the window.
fn storage_table(v: &api::UsageReport) -> String {
    use std::fmt::Write as _;
    let cur = &v.prices.currency;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<24} {:>9} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12} {:>14}",
        "KIND",
        "NAME",
        "OBJECTS",
        "STORED",
        "WRITES",
        "READS",
        "BYTES IN",
        "BYTES OUT",
        "GB-MONTHS",
        format!("COST ({cur})")
    );
    for s in &v.storage {
        // Buckets: class A / class B. KV: writes, deletes and lists (priced as writes) / reads.
        let (writes, reads) =
            if s.kind == "bucket" { (s.class_a, s.class_b) } else { (s.writes + s.deletes + s.lists, s.reads) };
        let _ = writeln!(
            out,
            "{:<6} {:<24} {:>9} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12.6} {:>14.6}",
            s.kind, s.name, s.objects, s.bytes, writes, reads, s.bytes_in, s.bytes_out, s.gb_months, s.cost
        );
    }
    let t = &v.storage_total;
    let _ = writeln!(out, "storage total: {:.6} GB-months, {} requests, {cur} {:.6}", t.gb_months, t.requests, t.cost);
    let p = &v.prices;
    let _ = writeln!(
        out,
        "priced at {cur} {}/GB-month stored, {} per million class A (writes, lists) and {} per million class B (reads), \
         {}/GB out; KV {} per million reads, {} per million writes, {}/GB-month ([pricing] in nimbus.toml)",
        json_number(p.per_gb_month_stored),
        json_number(p.per_million_class_a),
        json_number(p.per_million_class_b),
        json_number(p.per_gb_transfer_out),
        json_number(p.per_million_kv_reads),
        json_number(p.per_million_kv_writes),
        json_number(p.per_gb_month_kv)
    );
    out
}

/// A number as JSON writes it (`0.2`, `1.0`), as the table always showed prices.
fn json_number(x: f64) -> String {
    Value::from(x).to_string()
}

fn verdict(cur: &str, serverless: f64, always: f64) -> String {
    if always > 0.0 && serverless <= always {
        let pct = serverless / always * 100.0;
        let pct = if pct >= 0.1 { format!("{pct:.1}%") } else { format!("{pct:.2e}%") };
        format!("pay-per-use costs {pct} of always-on ({cur} {:.4} less)", always - serverless)
    } else if always > 0.0 {
        format!("pay-per-use costs {:.1}x always-on: at this load, servers are cheaper", serverless / always)
    } else {
        "no always-on cost to compare with".to_owned()
    }
}

fn events_table(list: &[api::Event]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36}  {:<16} {:<13} {:>8}  {:<11} LAST ERROR",
        "REQUEST ID", "FUNCTION", "STATUS", "ATTEMPTS", "SOURCE"
    );
    for e in list {
        let error = match (&e.last_error_type, &e.last_error) {
            (Some(t), Some(m)) => format!("{t}: {m}"),
            (Some(t), None) => t.clone(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<36}  {:<16} {:<13} {:>8}  {:<11} {error}",
            e.request_id, e.function, e.status, e.attempts, e.source
        );
    }
    out
}

pub async fn dlq(action: crate::DlqAction, remote: Remote) -> Result<ExitCode> {
    use crate::DlqAction;
    let client = Client::new(&remote, &here())?;
    match action {
        DlqAction::Ls { function } => {
            let path = function.map_or("/v1/dlq".to_owned(), |f| format!("/v1/dlq?function={}", enc(&f)));
            print!("{}", events_table(&client.get::<Vec<api::Event>>(&path).await?));
        }
        DlqAction::Show { id } => {
            let event: api::Event = client.get(&format!("/v1/dlq/{}", enc(&id))).await?;
            println!("{}", serde_json::to_string_pretty(&event)?);
        }
        DlqAction::Redrive { ids, all, function } => {
            if ids.is_empty() && !all {
                bail!("name the events to redrive (IDs from `nimbus dlq ls`), or pass --all");
            }
            let body = api::RedriveRequest { ids, all, function };
            let r: api::Redriven = client.post("/v1/dlq/redrive", &body, "redrive failed").await?;
            println!("{} event(s) back in the queue", r.redriven);
        }
        DlqAction::Purge { function } => {
            let r: api::Purged = client.post("/v1/dlq/purge", &api::PurgeRequest { function }, "purge failed").await?;
            println!("{} dead-lettered event(s) deleted", r.purged);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `nimbus buckets ls|rm`.
pub async fn buckets(action: crate::BucketsAction, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    match action {
        crate::BucketsAction::Ls { json } => {
            let list: Vec<api::BucketInfo> = client.get("/v1/buckets").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no buckets; declare one as [buckets.NAME] in nimbus.toml and deploy");
            } else {
                println!("{:<40} {:>10} {:>14}", "BUCKET", "OBJECTS", "BYTES");
                for b in &list {
                    println!("{:<40} {:>10} {:>14}", b.name, b.objects, b.bytes);
                }
            }
        }
        crate::BucketsAction::Rm { name, force } => {
            let path = format!("/v1/buckets/{}{}", enc(&name), if force { "?force=true" } else { "" });
            let b: api::BucketInfo = client.delete(&path).await?;
            println!("deleted bucket {} ({} objects, {} bytes)", b.name, b.objects, b.bytes);
        }
    }
    Ok(ExitCode::SUCCESS)
}
