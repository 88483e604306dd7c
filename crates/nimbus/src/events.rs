//! `nimbus events generate KIND`: sample events in the shapes nimbus delivers (like `sam local
//! generate-event`), printed as pretty JSON for `nimbus invoke F --file -`. Needs no server:
//! the S3, SQS and schedule events come from `nimbus_core::events`, the HTTP event from the
//! gateway's own builder, so a sample cannot drift from what a trigger or route sends.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use nimbus_core::events::{md5_hex, S3Change, S3Event, S3EventName, ScheduledEvent, SqsDelivery, SqsEvent, SqsMessage};
use nimbus_core::ids::{new_request_id, now_ms};
use nimbus_gateway::event::{build_event, HttpRequest};
use nimbus_manifest::{Methods, RouteSpec};

const DEFAULT_BODY: &str = "Hello from nimbus";

#[derive(clap::Subcommand)]
pub enum EventsAction {
    /// Print a sample event as JSON, e.g. `nimbus events generate s3-put --key "a b.jpg" |
    /// nimbus invoke F --file -`.
    Generate(GenerateArgs),
}

/// The kinds of sample event.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// S3 notification of an object created by PUT (`ObjectCreated:Put`).
    S3Put,
    /// S3 notification of an object deleted (`ObjectRemoved:Delete`).
    S3Delete,
    /// SQS batch of one message.
    Sqs,
    /// API Gateway HTTP API v2 request, as nimbus's HTTP routes send it.
    Apigw,
    /// EventBridge scheduled event, as a `[schedules]` entry sends it.
    Schedule,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    kind: Kind,
    /// s3-put, s3-delete: the bucket [default: example-bucket].
    #[arg(long)]
    bucket: Option<String>,
    /// s3-put, s3-delete: the object key, as stored (the event carries it URL-encoded)
    /// [default: "uploads/hello world.txt"].
    #[arg(long)]
    key: Option<String>,
    /// s3-put: the object's content (for size and eTag); sqs: the message body; apigw: the
    /// request body [default: "Hello from nimbus"; none for apigw].
    #[arg(long)]
    body: Option<String>,
    /// sqs: the queue name [default: example-queue].
    #[arg(long)]
    queue: Option<String>,
    /// apigw: the request path, optionally with `?query` [default: /hello].
    #[arg(long)]
    path: Option<String>,
    /// apigw: the HTTP method [default: GET].
    #[arg(long)]
    method: Option<String>,
}

pub fn events(action: EventsAction) -> anyhow::Result<ExitCode> {
    let EventsAction::Generate(args) = action;
    let event = generate(&args)?;
    let mut text = serde_json::to_string_pretty(&event)?;
    text.push('\n');
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        // A reader that stops early (`| head`) is not an error of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The sample event of `args.kind`, after refusing flags that kind does not use.
pub fn generate(a: &GenerateArgs) -> anyhow::Result<Value> {
    let given = [
        ("--bucket", a.bucket.is_some()),
        ("--key", a.key.is_some()),
        ("--body", a.body.is_some()),
        ("--queue", a.queue.is_some()),
        ("--path", a.path.is_some()),
        ("--method", a.method.is_some()),
    ];
    let used: &[&str] = match a.kind {
        Kind::S3Put => &["--bucket", "--key", "--body"],
        Kind::S3Delete => &["--bucket", "--key"],
        Kind::Sqs => &["--body", "--queue"],
        Kind::Apigw => &["--body", "--path", "--method"],
        Kind::Schedule => &[],
    };
    if let Some((flag, _)) = given.iter().find(|(flag, set)| *set && !used.contains(flag)) {
        let kind = clap::ValueEnum::to_possible_value(&a.kind).map(|v| v.get_name().to_owned()).unwrap_or_default();
        let takes = if used.is_empty() { "no options".to_owned() } else { used.join(", ") };
        bail!("{flag} does not apply to {kind} events, which take {takes}");
    }
    let value = match a.kind {
        Kind::S3Put | Kind::S3Delete => serde_json::to_value(s3(a))?,
        Kind::Sqs => serde_json::to_value(sqs(a))?,
        Kind::Apigw => apigw(a)?,
        Kind::Schedule => serde_json::to_value(ScheduledEvent::new(&new_request_id(), "sample-schedule", now_ms()))?,
    };
    Ok(value)
}

fn s3(a: &GenerateArgs) -> S3Event {
    let body = a.body.as_deref().unwrap_or(DEFAULT_BODY);
    let etag = md5_hex(body.as_bytes());
    let put = a.kind == Kind::S3Put;
    let request_id = new_request_id();
    S3Event::single(&S3Change {
        name: if put { S3EventName::Put } else { S3EventName::Delete },
        bucket: a.bucket.as_deref().unwrap_or("example-bucket"),
        key: a.key.as_deref().unwrap_or("uploads/hello world.txt"),
        size: put.then_some(u64::try_from(body.len()).unwrap_or(u64::MAX)),
        etag: put.then_some(etag.as_str()),
        version_id: None,
        sequence: now_ms(),
        time_ms: now_ms(),
        source_ip: "127.0.0.1",
        request_id: &request_id,
        configuration_id: "sample-trigger",
    })
}

fn sqs(a: &GenerateArgs) -> SqsEvent {
    let now = now_ms();
    let message_id = new_request_id();
    let receipt_handle = format!("sample-{}", new_request_id());
    let message = SqsMessage::new(SqsDelivery {
        queue: a.queue.as_deref().unwrap_or("example-queue"),
        message_id: &message_id,
        receipt_handle: &receipt_handle,
        body: a.body.as_deref().unwrap_or(DEFAULT_BODY),
        receive_count: 1,
        sent_ms: now,
        first_receive_ms: now,
        sender_id: nimbus_core::ACCOUNT_ID,
        fifo: None,
        attributes: Default::default(),
    });
    SqsEvent { records: vec![message] }
}

/// The gateway's own event for a request to `--method --path` with `--body`.
fn apigw(a: &GenerateArgs) -> anyhow::Result<Value> {
    let method = a.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    http::Method::from_bytes(method.as_bytes())
        .with_context(|| format!("--method {method:?} is not an HTTP method; use e.g. GET or POST"))?;
    let target = a.path.as_deref().unwrap_or("/hello");
    if !target.starts_with('/') {
        bail!("--path {target:?} must start with '/', e.g. /items/42?color=red");
    }
    let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let body = Bytes::from(a.body.clone().unwrap_or_default());
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("localhost:8080"));
    headers.insert(http::header::USER_AGENT, HeaderValue::from_static("nimbus-events-generate"));
    if !body.is_empty() {
        let json = serde_json::from_slice::<Value>(&body).is_ok();
        let ct = if json { "application/json" } else { "text/plain" };
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    let route = RouteSpec {
        methods: Methods::List(vec![method.clone()]),
        path: path.to_owned(),
        host: None,
        function: String::new(),
        is_async: false,
        auth: None,
        cors: None,
        rate_limit: None,
        cache: false,
        cache_profile: None,
    };
    let now = chrono::Utc::now();
    let request_id = new_request_id();
    let time = now.format("%d/%b/%Y:%H:%M:%S %z").to_string();
    let event = build_event(&HttpRequest {
        method: &method,
        path,
        raw_query,
        version: http::Version::HTTP_11,
        headers: &headers,
        body: &body,
        remote: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        request_id: &request_id,
        route: &route,
        params: &[],
        now_ms: now.timestamp_millis(),
        time: &time,
    });
    serde_json::to_value(event).context("the event did not encode as JSON")
}
