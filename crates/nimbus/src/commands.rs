//! Client commands: thin wrappers over the management API and the Invoke API.

// These commands format JSON answers; `serde_json::Value["key"]` yields Null for a missing key
// and never panics, which is the behaviour wanted for printing.
#![allow(clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::client::Client;
use crate::Remote;

fn here() -> PathBuf {
    PathBuf::from(".")
}

pub async fn deploy(app_dir: PathBuf, remote: Remote) -> Result<ExitCode> {
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
    let r =
        client.call(Method::POST, "/v1/deployments", archive, &[("content-type", "application/x-tar".into())]).await;
    progress.finish_and_clear();
    let r = r?;
    let v = r.json().unwrap_or_default();
    if r.status.is_success() {
        println!(
            "deployed {} version {} ({} functions, {} KiB uploaded)",
            str_of(&v, "app"),
            v["version"],
            v["functions"].as_array().map_or(0, Vec::len),
            size / 1024
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        eprintln!(
            "{} problem{} in the app manifest; nothing was deployed:",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
        for e in errors {
            eprintln!("  {}", e.as_str().unwrap_or_default());
        }
        return Ok(ExitCode::from(2));
    }
    bail!("deploy failed: {} ({})", r.error_text(), r.status)
}

/// The app directory as a tar archive, without nimbus's own state or VCS metadata.
fn archive(dir: &Path) -> Result<Bytes> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(true);
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".nimbus" || name == ".git" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            builder.append_dir_all(&name, &path)?;
        } else {
            builder.append_path_with_name(&path, &name)?;
        }
    }
    Ok(Bytes::from(builder.into_inner()?))
}

pub async fn rollback(to: Option<u64>, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    let body = serde_json::json!({ "version": to }).to_string();
    let r = client
        .call(Method::POST, "/v1/rollback", Bytes::from(body), &[("content-type", "application/json".into())])
        .await?;
    if !r.status.is_success() {
        bail!("rollback failed: {}", r.error_text());
    }
    let v = r.json()?;
    println!("live is now version {} of {}", v["version"], str_of(&v, "app"));
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &here())?;
    let app = client.get_json("/v1/app").await?;
    let functions = client.get_json("/v1/functions").await?;
    println!("app {}  live version {}", str_of(&app, "app"), app["live"]);
    println!("\nDEPLOYMENTS");
    for d in app["deployments"].as_array().into_iter().flatten() {
        let live = if d["live"].as_bool() == Some(true) { "  (live)" } else { "" };
        println!(
            "  {:>4}  {}{live}",
            d["version"],
            d["functions"]
                .as_array()
                .map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
    }
    println!("\nFUNCTIONS");
    println!("  {:<20} {:<9} {:>7} {:>8} {:>5} {:>5}  ROUTES", "NAME", "RUNTIME", "MEMORY", "TIMEOUT", "IDLE", "BUSY");
    for f in functions.as_array().into_iter().flatten() {
        let (idle, busy) = f["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .fold((0, 0), |(i, b), p| (i + p["idle"].as_u64().unwrap_or(0), b + p["busy"].as_u64().unwrap_or(0)));
        let routes = f["routes"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        println!(
            "  {:<20} {:<9} {:>5}MB {:>7}ms {idle:>5} {busy:>5}  {routes}",
            str_of(f, "name"),
            str_of(f, "runtime"),
            f["memoryMb"],
            f["timeoutMs"]
        );
    }
    Ok(ExitCode::SUCCESS)
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
    loop {
        let mut path = format!("/v1/functions/{name}/logs?after={after}");
        if let Some(id) = &request_id {
            path.push_str(&format!("&requestId={id}"));
        }
        let v = client.get_json(&path).await?;
        let mut out = std::io::stdout().lock();
        for e in v["entries"].as_array().into_iter().flatten() {
            let text = e["text"].as_str().unwrap_or_default();
            if json {
                for line in text.lines() {
                    writeln!(out, "{}", log_line_json(&name, e, line))?;
                }
            } else {
                out.write_all(text.as_bytes())?;
            }
        }
        out.flush()?;
        drop(out);
        after = v["next"].as_u64().unwrap_or(after);
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
fn log_line_json(function: &str, entry: &Value, line: &str) -> Value {
    let mut obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            let mut m = serde_json::Map::new();
            m.insert("message".into(), Value::String(line.to_owned()));
            m
        }
    };
    let ts = chrono::DateTime::from_timestamp_millis(entry["tsMs"].as_i64().unwrap_or(0)).unwrap_or_default();
    for (k, v) in [
        ("timestamp", Value::String(ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
        ("function", Value::String(function.to_owned())),
        ("requestId", entry["requestId"].clone()),
    ] {
        obj.entry(k).or_insert(v);
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
        path.push_str(&format!("&function={f}"));
    }
    if let Some(s) = &status {
        path.push_str(&format!("&status={s}"));
        print_events(&client.get_json(&path).await?);
        return Ok(ExitCode::SUCCESS);
    }
    let v = client.get_json(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<16} {:>4} {:<8} {:<15} {:>10} {:>5} {:>9} {:>9} {:>9}",
        "REQUEST ID", "FUNCTION", "VER", "TRIGGER", "STATUS", "DURATION", "COLD", "QUEUE", "START", "INIT"
    );
    let ms = |r: &Value, key: &str| r[key].as_f64().map(|i| format!("{i:.1}ms")).unwrap_or_default();
    for r in v.as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<16} {:>4} {:<8} {:<15} {:>8.2}ms {:>5} {:>9} {:>9} {:>9}",
            str_of(r, "requestId"),
            str_of(r, "function"),
            str_of(r, "version"),
            str_of(r, "trigger"),
            str_of(r, "status"),
            r["durationMs"].as_f64().unwrap_or(0.0),
            if r["cold"].as_bool() == Some(true) { "yes" } else { "" },
            ms(r, "queueMs"),
            ms(r, "instanceStartMs"),
            ms(r, "runtimeInitMs"),
        );
    }
    Ok(ExitCode::SUCCESS)
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
    let v = client.get_json(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", usage_table(&v));
    Ok(ExitCode::SUCCESS)
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn usage_table(v: &Value) -> String {
    use std::fmt::Write as _;
    let cur = v["prices"]["currency"].as_str().unwrap_or("USD");
    let money = |x: &Value| format!("{:.6}", x.as_f64().unwrap_or(0.0));
    let since = chrono::DateTime::from_timestamp_millis(v["sinceMs"].as_i64().unwrap_or(0)).unwrap_or_default();
    let until = chrono::DateTime::from_timestamp_millis(v["untilMs"].as_i64().unwrap_or(0)).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "usage from {} to {} UTC ({:.1} h)\n",
        since.format("%Y-%m-%d %H:%M"),
        until.format("%Y-%m-%d %H:%M"),
        v["alwaysOn"]["hours"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(out, "{:<24} {:>12} {:>14} {:>14}", "FUNCTION", "REQUESTS", "GB-SECONDS", format!("COST ({cur})"));
    for f in v["functions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:>12} {:>14.3} {:>14}",
            str_of(f, "function"),
            f["requests"].as_u64().unwrap_or(0),
            f["gbSeconds"].as_f64().unwrap_or(0.0),
            money(&f["cost"])
        );
    }
    let t = &v["total"];
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>14.3} {:>14}\n",
        "total",
        t["requests"].as_u64().unwrap_or(0),
        t["gbSeconds"].as_f64().unwrap_or(0.0),
        money(&t["cost"])
    );
    let p = &v["prices"];
    let _ = writeln!(
        out,
        "priced at {cur} {} per million requests and {cur} {} per GB-second ([pricing] in nimbus.toml)",
        p["perMillionRequests"], p["perGbSecond"]
    );
    let a = &v["alwaysOn"];
    let serverless = t["cost"].as_f64().unwrap_or(0.0);
    let always = a["cost"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "always-on: {} server(s) at {cur} {}/h for the same {:.1} h would cost {cur} {}",
        a["servers"],
        a["serverPerHour"],
        a["hours"].as_f64().unwrap_or(0.0),
        money(&a["cost"])
    );
    let verdict = if always > 0.0 && serverless <= always {
        let pct = serverless / always * 100.0;
        let pct = if pct >= 0.1 { format!("{pct:.1}%") } else { format!("{pct:.2e}%") };
        format!("pay-per-use costs {pct} of always-on ({cur} {:.4} less)", always - serverless)
    } else if always > 0.0 {
        format!("pay-per-use costs {:.1}x always-on: at this load, servers are cheaper", serverless / always)
    } else {
        "no always-on cost to compare with".to_owned()
    };
    let _ = writeln!(out, "{verdict}");
    out
}

fn print_events(list: &Value) {
    println!(
        "{:<36}  {:<16} {:<13} {:>8}  {:<11} LAST ERROR",
        "REQUEST ID", "FUNCTION", "STATUS", "ATTEMPTS", "SOURCE"
    );
    for e in list.as_array().into_iter().flatten() {
        let error = match (e["lastErrorType"].as_str(), e["lastError"].as_str()) {
            (Some(t), Some(m)) => format!("{t}: {m}"),
            (Some(t), None) => t.to_owned(),
            _ => String::new(),
        };
        println!(
            "{:<36}  {:<16} {:<13} {:>8}  {:<11} {error}",
            str_of(e, "requestId"),
            str_of(e, "function"),
            str_of(e, "status"),
            e["attempts"],
            str_of(e, "source")
        );
    }
}

pub async fn dlq(action: crate::DlqAction, remote: Remote) -> Result<ExitCode> {
    use crate::DlqAction;
    let client = Client::new(&remote, &here())?;
    match action {
        DlqAction::Ls { function } => {
            let path = function.map_or("/v1/dlq".to_owned(), |f| format!("/v1/dlq?function={f}"));
            print_events(&client.get_json(&path).await?);
        }
        DlqAction::Show { id } => {
            let v = client.get_json(&format!("/v1/dlq/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        DlqAction::Redrive { ids, all, function } => {
            if ids.is_empty() && !all {
                bail!("name the events to redrive (IDs from `nimbus dlq ls`), or pass --all");
            }
            let body = serde_json::json!({"ids": ids, "all": all, "function": function});
            let r = client.call(Method::POST, "/v1/dlq/redrive", Bytes::from(body.to_string()), &[]).await?;
            if !r.status.is_success() {
                bail!("redrive failed: {}", r.error_text());
            }
            println!("{} event(s) back in the queue", r.json()?["redriven"]);
        }
        DlqAction::Purge { function } => {
            let body = serde_json::json!({ "function": function });
            let r = client.call(Method::POST, "/v1/dlq/purge", Bytes::from(body.to_string()), &[]).await?;
            if !r.status.is_success() {
                bail!("purge failed: {}", r.error_text());
            }
            println!("{} dead-lettered event(s) deleted", r.json()?["purged"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}
