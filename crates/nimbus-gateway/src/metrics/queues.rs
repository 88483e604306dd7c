//! The message queues' and queue triggers' part of `/metrics`, read at scrape time: each queue's
//! messages by state, the age of its oldest message and its message counters
//! (`MessageQueues::stats`), and each trigger's messages, batches, batch sizes, errors and
//! pollers (`nimbus_queue::triggers::Triggers::stats`).

use std::sync::Mutex;

use nimbus_core::messages::QueueStats;
use nimbus_queue::triggers::TriggerStats;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueEventLabels {
    queue: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    function: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerKindLabels {
    function: String,
    queue: String,
    kind: &'static str,
}

/// Sum, count, and (upper bound, count) per bucket, not cumulative, the last bound +Inf.
type Buckets = (f64, u64, Vec<(f64, u64)>);

/// A histogram whose buckets were counted elsewhere (the triggers count batch sizes).
#[derive(Debug, Default)]
struct Counted(Mutex<Buckets>);

impl TypedMetric for Counted {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        encoder.encode_histogram::<NoLabelSet>(h.0, h.1, &h.2, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Register the queues' metrics: `queues` is (name, counts) of every queue.
pub(super) fn register_queues(reg: &mut Registry, queues: &[(String, QueueStats)], now_ms: u64) {
    let depth = Family::<QueueStateLabels, Gauge>::default();
    let oldest = Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let events = Family::<QueueEventLabels, Counter>::default();
    for (queue, s) in queues {
        for (state, n) in [("visible", s.visible), ("in_flight", s.in_flight), ("delayed", s.delayed)] {
            depth.get_or_create(&QueueStateLabels { queue: queue.clone(), state }).set(n as i64);
        }
        let age = s.oldest_sent_ms.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0);
        oldest.get_or_create(&QueueLabels { queue: queue.clone() }).set(age);
        let counted = [
            ("sent", s.sent_total),
            ("received", s.received_total),
            ("deleted", s.deleted_total),
            ("dead_lettered", s.dead_lettered_total),
        ];
        for (event, n) in counted {
            events.get_or_create(&QueueEventLabels { queue: queue.clone(), event }).inc_by(n);
        }
    }
    reg.register("queue_depth", "Messages per queue: visible, in flight (received, not deleted), delayed", depth);
    reg.register_with_unit("queue_oldest_age", "Age of the oldest message in the queue", Unit::Seconds, oldest);
    reg.register(
        "queue_messages",
        "Messages sent, received (each delivery), deleted and moved to the dead-letter queue, since start",
        events,
    );
}

/// Register the queue triggers' metrics.
pub(super) fn register_triggers(reg: &mut Registry, triggers: &[TriggerStats]) {
    let messages = Family::<TriggerKindLabels, Counter>::default();
    let errors = Family::<TriggerKindLabels, Counter>::default();
    let batches = Family::<TriggerLabels, Counter>::default();
    let pollers = Family::<TriggerLabels, Gauge>::default();
    let sizes = Family::<TriggerLabels, Counted>::default();
    for t in triggers {
        let l = TriggerLabels { function: t.function.clone(), queue: t.queue.clone() };
        let kind = |kind| TriggerKindLabels { function: t.function.clone(), queue: t.queue.clone(), kind };
        for (k, n) in [("received", t.received), ("deleted", t.deleted), ("returned", t.returned)] {
            messages.get_or_create(&kind(k)).inc_by(n);
        }
        let failed = [("function_error", t.function_errors), ("throttled", t.throttled), ("receive", t.receive_errors)];
        for (k, n) in failed {
            errors.get_or_create(&kind(k)).inc_by(n);
        }
        batches.get_or_create(&l).inc_by(t.batches);
        pollers.get_or_create(&l).set(i64::from(t.pollers));
        *sizes.get_or_create(&l).0.lock().unwrap_or_else(|e| e.into_inner()) =
            (t.batch_size_sum as f64, t.batches, t.batch_sizes.clone());
    }
    reg.register(
        "trigger_messages",
        "Messages a queue trigger delivered (received), deleted after success, and left in the queue (returned)",
        messages,
    );
    reg.register("trigger_batches", "Invocations of a queue trigger (one batch each)", batches);
    reg.register("trigger_batch_size", "Messages per batch of a queue trigger", sizes);
    reg.register(
        "trigger_errors",
        "Failed batches of a queue trigger (function_error, throttled) and failed receives",
        errors,
    );
    reg.register("trigger_pollers", "Pollers of a queue trigger now (each runs at most one batch)", pollers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(f: impl FnOnce(&mut Registry)) -> String {
        let mut reg = Registry::with_prefix("nimbus");
        f(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn trigger_batch_sizes_render_as_a_cumulative_histogram() {
        let t = TriggerStats {
            function: "worker".into(),
            queue: "jobs".into(),
            pollers: 2,
            received: 13,
            deleted: 12,
            returned: 1,
            batches: 3,
            batch_size_sum: 13,
            batch_sizes: vec![(1.0, 1), (5.0, 0), (10.0, 2), (f64::INFINITY, 0)],
            ..TriggerStats::default()
        };
        let out = render(|reg| register_triggers(reg, &[t]));
        for line in [
            r#"nimbus_trigger_batch_size_sum{function="worker",queue="jobs"} 13.0"#,
            r#"nimbus_trigger_batch_size_count{function="worker",queue="jobs"} 3"#,
            r#"nimbus_trigger_batch_size_bucket{le="5.0",function="worker",queue="jobs"} 1"#,
            r#"nimbus_trigger_batch_size_bucket{le="10.0",function="worker",queue="jobs"} 3"#,
            r#"nimbus_trigger_batch_size_bucket{le="+Inf",function="worker",queue="jobs"} 3"#,
            r#"nimbus_trigger_messages_total{function="worker",queue="jobs",kind="returned"} 1"#,
            r#"nimbus_trigger_pollers{function="worker",queue="jobs"} 2"#,
        ] {
            assert!(out.contains(line), "no {line} in\n{out}");
        }
    }

    #[test]
    fn queues_show_depth_age_and_counters() {
        let s = QueueStats {
            visible: 4,
            in_flight: 1,
            oldest_sent_ms: Some(1_000),
            dead_lettered_total: 2,
            ..QueueStats::default()
        };
        let out = render(|reg| register_queues(reg, &[("jobs".into(), s)], 3_500));
        for line in [
            r#"nimbus_queue_depth{queue="jobs",state="visible"} 4"#,
            r#"nimbus_queue_depth{queue="jobs",state="in_flight"} 1"#,
            r#"nimbus_queue_oldest_age_seconds{queue="jobs"} 2.5"#,
            r#"nimbus_queue_messages_total{queue="jobs",event="dead_lettered"} 2"#,
        ] {
            assert!(out.contains(line), "no {line} in\n{out}");
        }
    }
}
