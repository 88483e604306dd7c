//! OpenTelemetry traces (off by default): one span per invocation, `invoke NAME`, with child
//! spans for its phases: `queue wait`, and on a cold start `instance start` and `runtime init`,
//! then `handler`. Exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK's batch
//! processor on its own thread; the request path only builds the spans from the finished
//! invocation's record.
//!
//! On with `nimbus up --otlp-endpoint URL` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables; `OTEL_SERVICE_NAME` names the service
//! (default "nimbus") and the `OTEL_BSP_*` variables tune the batching.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use nimbus_core::{InvocationRecord, InvocationStatus, Observer, Trigger};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The span exporter, and the observer that turns records into spans.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Where traces go: the `--otlp-endpoint` base URL, else the standard variables; `None` = off.
fn endpoint(flag: Option<&str>) -> Result<Option<String>> {
    if let Ok(p) =
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        if p != "http/protobuf" {
            bail!("OTEL_EXPORTER_OTLP_PROTOCOL={p:?}: nimbus exports traces over OTLP/HTTP only; set it to \"http/protobuf\" or unset it");
        }
    }
    if let Some(base) = flag {
        return Ok(Some(format!("{}/v1/traces", base.trim_end_matches('/'))));
    }
    if std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none") {
        return Ok(None);
    }
    if let Ok(full) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(Some(full));
    }
    Ok(std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .map(|base| format!("{}/v1/traces", base.trim_end_matches('/'))))
}

impl Traces {
    /// Start the exporter if traces are configured.
    pub fn start(flag: Option<&str>) -> Result<Option<Traces>> {
        let Some(url) = endpoint(flag)? else { return Ok(None) };
        let parsed: http::Uri = url.parse().with_context(|| format!("the OTLP endpoint {url:?} is not a URL"))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            bail!("the OTLP endpoint {url:?} is not an http:// or https:// URL like http://127.0.0.1:4318");
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .context("cannot create the OTLP trace exporter")?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "nimbus".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("nimbus");
        tracing::info!(endpoint = %url, "exporting a trace per invocation over OTLP/HTTP");
        Ok(Some(Traces { provider, tracer }))
    }

    /// Send what is batched and stop the exporter.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("traces: the last batch may be lost: {e}");
        }
    }
}

fn at(start: SystemTime, ms: f64) -> SystemTime {
    start + Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

impl Observer for Traces {
    fn observe(&self, r: &InvocationRecord) {
        let start = UNIX_EPOCH + Duration::from_millis(r.start_ms);
        let (kind, trigger) = match r.trigger {
            Trigger::Http => (SpanKind::Server, "http"),
            Trigger::Invoke => (SpanKind::Server, "other"),
            Trigger::Event => (SpanKind::Consumer, "pubsub"),
            Trigger::Schedule => (SpanKind::Consumer, "timer"),
            // OpenTelemetry's names: an object write is a data-source operation.
            Trigger::Bucket => (SpanKind::Consumer, "datasource"),
            Trigger::Queue => (SpanKind::Consumer, "pubsub"),
        };
        let mut attrs = vec![
            KeyValue::new("faas.invocation_id", r.request_id.clone()),
            KeyValue::new("faas.name", r.function.clone()),
            KeyValue::new("faas.version", r.version.clone()),
            KeyValue::new("faas.trigger", trigger),
            KeyValue::new("faas.coldstart", r.cold),
            KeyValue::new("faas.max_memory", i64::from(r.memory_mb) * 1024 * 1024),
            KeyValue::new("nimbus.trigger", r.trigger.as_str()),
            KeyValue::new("nimbus.status", r.status.as_str()),
            KeyValue::new("nimbus.billed_ms", r.billed_ms as i64),
        ];
        if let Some(id) = &r.instance_id {
            attrs.push(KeyValue::new("faas.instance", id.clone()));
        }
        if let Some(t) = &r.error_type {
            attrs.push(KeyValue::new("error.type", t.clone()));
        }
        let mut root = self
            .tracer
            .span_builder(format!("invoke {}", r.function))
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attrs)
            .start(&self.tracer);
        if r.status != InvocationStatus::Success {
            root.set_status(Status::error(r.error_message.clone().unwrap_or_else(|| r.status.as_str().to_owned())));
        }
        let cx = Context::current_with_span(root);
        let mut t = 0.0;
        let mut phase = |name: &'static str, ms: f64| {
            let mut span =
                self.tracer.span_builder(name).with_start_time(at(start, t)).start_with_context(&self.tracer, &cx);
            t += ms;
            span.end_with_timestamp(at(start, t));
        };
        phase("queue wait", r.queue_ms);
        if let (Some(s), Some(i)) = (r.instance_start_ms, r.runtime_init_ms) {
            phase("instance start", s);
            phase("runtime init", i);
        }
        phase("handler", r.duration_ms);
        cx.span().end_with_timestamp(at(start, t));
    }
}
