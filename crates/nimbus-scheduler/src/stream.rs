//! Streamed results (`nimbus_core::stream`): the response goes back to the caller at once, the
//! instance stays leased until the invocation really ends, then its one record is written.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use nimbus_core::{
    ColdStart, Completion, DispatchError, InstanceError, InvokeOutcome, InvokeResult, StreamError, StreamSummary,
};

use crate::{pool, report, Attempt, Inner};

/// What a streamed invocation keeps until it ends: the lease above all (the instance is busy).
pub(crate) struct Held {
    pub a: Attempt,
    pub lease: pool::Lease,
    pub queue_wait: Duration,
    pub cold: Option<ColdStart>,
    pub init_log: String,
}

impl Inner {
    /// Hand back the early result of a streamed invocation and finish it in the background.
    pub(crate) fn streamed(self: &Arc<Self>, held: Held, r: &mut InvokeResult) -> InvokeResult {
        r.cold = held.cold;
        let completion = r.stream.as_ref().and_then(|s| s.take_completion());
        let (tx, rx) = oneshot::channel();
        if let Some(s) = &r.stream {
            s.set_summary(rx);
        }
        let me = self.clone();
        let instance_id = r.instance_id.clone();
        tokio::spawn(async move { me.finish_stream(held, instance_id, completion, tx).await });
        r.clone()
    }

    async fn finish_stream(
        self: Arc<Self>,
        held: Held,
        instance_id: String,
        completion: Option<oneshot::Receiver<Completion>>,
        summary: oneshot::Sender<StreamSummary>,
    ) {
        let Held { a, lease, queue_wait, cold, init_log } = held;
        let started = Instant::now();
        let done = match completion {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        drop(lease);
        let done = done.unwrap_or_else(|| lost_completion(started.elapsed()));
        let f = &a.function;
        let response_ms = Some(crate::report::ms(done.response));
        let (error, log) = match done.outcome {
            Ok(outcome) => {
                let error = match &outcome {
                    InvokeOutcome::FunctionError { error_type, error_message, .. } => {
                        Some(StreamError::new(error_type.clone(), error_message.clone()))
                    }
                    InvokeOutcome::Success(_) => None,
                };
                let mut r = InvokeResult {
                    outcome,
                    duration: done.duration,
                    cold,
                    max_memory_mb: done.max_memory_mb,
                    log: done.log,
                    instance_id,
                    http: None,
                    stream: None,
                };
                r.log = report::invocation_log(f, &a.request_id, &init_log, &r);
                let mut rec = report::record_for_result(f, &a.request_id, a.trigger, a.start_ms, queue_wait, &r);
                rec.log = r.log.clone();
                rec.response_ms = response_ms;
                self.recorder.record(rec);
                (error, r.log)
            }
            Err(e) => {
                let err = report::instance_error(f, &a.request_id, &init_log, cold, e);
                let mut rec = report::record_for_error(f, &a.request_id, a.trigger, a.start_ms, queue_wait, &err, cold);
                rec.response_ms = response_ms;
                rec.instance_id = Some(instance_id);
                let log = rec.log.clone();
                self.recorder.record(rec);
                (Some(stream_error(&err)), log)
            }
        };
        let _ = summary.send(StreamSummary { error, log });
    }
}

/// The runtime dropped its completion unsent: it crashed while streaming.
fn lost_completion(waited: Duration) -> Completion {
    Completion {
        outcome: Err(InstanceError::Crashed {
            detail: "the runtime ended without completing the streamed invocation".to_owned(),
            log: String::new(),
        }),
        response: waited,
        duration: waited,
        max_memory_mb: 0,
        log: String::new(),
    }
}

/// How a failed streamed invocation ends its event stream (`InvokeComplete`).
fn stream_error(err: &DispatchError) -> StreamError {
    match err {
        DispatchError::Timeout { timeout, .. } => StreamError::timed_out(*timeout),
        e => StreamError::new(e.lambda_error_type(), e.to_string()),
    }
}
