//! The per-invocation log lines Lambda users know (START / END / REPORT) and the records.

use std::fmt::Write as _;
use std::time::Duration;

use nimbus_core::{
    ColdStart, DispatchError, FunctionVersion, InstanceError, InvocationRecord, InvocationStatus, InvokeOutcome,
    InvokeResult, Trigger,
};

use crate::pool::AcquireError;

/// `d` in ms, to the nanosecond: the record store keeps such a value in 3 to 5 bytes, where
/// `as_secs_f64() * 1000.0` (off from it in the last bit as often as not) takes 9.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// Billed duration: rounded up to the next millisecond, as Lambda bills today.
fn billed(d: Duration) -> u64 {
    (d.as_micros() as u64).div_ceil(1000).max(1)
}

fn report_line(f: &FunctionVersion, id: &str, duration: Duration, max_mem: u32, cold: Option<ColdStart>) -> String {
    let mut line = format!(
        "REPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {max_mem} MB",
        ms(duration),
        billed(duration),
        f.spec.memory_mb
    );
    if let Some(c) = cold {
        let _ = write!(line, "\tInit Duration: {:.2} ms", ms(c.init));
    }
    line.push('\n');
    line
}

fn wrap(f: &FunctionVersion, id: &str, init_log: &str, body: &str, extra: &str, report: &str) -> String {
    let mut log = String::with_capacity(init_log.len() + body.len() + 256);
    log.push_str(init_log);
    let _ = writeln!(log, "START RequestId: {id} Version: {}", f.version);
    log.push_str(body);
    if !body.is_empty() && !body.ends_with('\n') {
        log.push('\n');
    }
    log.push_str(extra);
    let _ = writeln!(log, "END RequestId: {id}");
    log.push_str(report);
    log
}

pub(crate) fn invocation_log(f: &FunctionVersion, id: &str, init_log: &str, r: &InvokeResult) -> String {
    let report = report_line(f, id, r.duration, r.max_memory_mb, r.cold);
    // The platform logs function errors itself, so every runtime's log shows them the same way.
    let extra = match &r.outcome {
        InvokeOutcome::FunctionError { kind, error_type, error_message, .. } => {
            format!("[ERROR] {id} {} {error_type}: {error_message}\n", kind.as_str())
        }
        InvokeOutcome::Success(_) => String::new(),
    };
    wrap(f, id, init_log, &r.log, &extra, &report)
}

pub(crate) fn failed_start_log(f: &FunctionVersion, id: &str, e: &AcquireError) -> String {
    match e {
        AcquireError::Init { error_type, message, .. } => {
            let extra = format!("INIT_REPORT Status: error\tError Type: {error_type}\t{message}\n");
            wrap(f, id, "", "", &extra, &report_line(f, id, Duration::ZERO, 0, None))
        }
        AcquireError::Dispatch(_) => String::new(),
    }
}

pub(crate) fn instance_error(
    f: &FunctionVersion,
    id: &str,
    init_log: &str,
    cold: Option<ColdStart>,
    e: InstanceError,
) -> DispatchError {
    let name = f.spec.name.clone();
    match e {
        InstanceError::Timeout { timeout, log } => {
            let extra = format!("{id} Task timed out after {:.2} seconds\n", timeout.as_secs_f64());
            let log = wrap(f, id, init_log, &log, &extra, &report_line(f, id, timeout, 0, cold));
            DispatchError::Timeout { name, timeout, log }
        }
        InstanceError::Crashed { detail, log } => {
            let extra = format!("RequestId: {id} Error: {detail}\n");
            let log = wrap(f, id, init_log, &log, &extra, &report_line(f, id, Duration::ZERO, 0, cold));
            DispatchError::Crashed { name, detail, log }
        }
        InstanceError::ResponseTooLarge { size, limit, .. } => DispatchError::ResponseTooLarge { name, size, limit },
        InstanceError::Platform(msg) => DispatchError::Platform(msg),
        InstanceError::Lost { detail } => {
            DispatchError::Platform(format!("no instance could run the invocation: {detail}"))
        }
    }
}

pub(crate) fn status_for_error(e: &DispatchError) -> InvocationStatus {
    match e {
        DispatchError::Timeout { .. } => InvocationStatus::Timeout,
        DispatchError::Crashed { .. } => InvocationStatus::Crashed,
        DispatchError::InitFailed { .. } => InvocationStatus::InitError,
        DispatchError::Throttled { .. } => InvocationStatus::Throttled,
        DispatchError::ResponseTooLarge { .. } => InvocationStatus::FunctionError,
        _ => InvocationStatus::PlatformError,
    }
}

fn base(f: &FunctionVersion, id: &str, trigger: Trigger, start_ms: u64, queue: Duration) -> InvocationRecord {
    InvocationRecord {
        request_id: id.to_owned(),
        function: f.spec.name.clone(),
        version: f.version.clone(),
        trigger,
        start_ms,
        duration_ms: 0.0,
        billed_ms: 0,
        memory_mb: f.spec.memory_mb,
        max_memory_mb: 0,
        cold: false,
        init_ms: None,
        instance_start_ms: None,
        runtime_init_ms: None,
        queue_ms: ms(queue),
        status: InvocationStatus::Success,
        error_type: None,
        error_message: None,
        instance_id: None,
        log: String::new(),
        response_ms: None,
        log_frame: None,
    }
}

/// The cold-start breakdown; the wait for an instance no longer counts the start of the
/// instance this invocation got, so queue wait + instance start + runtime init + handler add up.
fn set_cold(rec: &mut InvocationRecord, cold: Option<ColdStart>, queue: Duration) {
    let Some(c) = cold else { return };
    rec.cold = true;
    rec.init_ms = Some(ms(c.init));
    rec.instance_start_ms = Some(ms(c.instance_start));
    rec.runtime_init_ms = Some(ms(c.runtime_init()));
    rec.queue_ms = ms(queue.saturating_sub(c.init));
}

pub(crate) fn record_for_result(
    f: &FunctionVersion,
    id: &str,
    trigger: Trigger,
    start_ms: u64,
    queue: Duration,
    r: &InvokeResult,
) -> InvocationRecord {
    let mut rec = base(f, id, trigger, start_ms, queue);
    rec.duration_ms = ms(r.duration);
    rec.billed_ms = billed(r.duration);
    rec.max_memory_mb = r.max_memory_mb;
    set_cold(&mut rec, r.cold, queue);
    rec.instance_id = Some(r.instance_id.clone());
    if let InvokeOutcome::FunctionError { error_type, error_message, .. } = &r.outcome {
        rec.status = InvocationStatus::FunctionError;
        rec.error_type = Some(error_type.clone());
        rec.error_message = Some(error_message.clone());
    }
    rec
}

pub(crate) fn record_for_error(
    f: &FunctionVersion,
    id: &str,
    trigger: Trigger,
    start_ms: u64,
    queue: Duration,
    e: &DispatchError,
    cold: Option<ColdStart>,
) -> InvocationRecord {
    let mut rec = base(f, id, trigger, start_ms, queue);
    rec.status = status_for_error(e);
    set_cold(&mut rec, cold, queue);
    rec.cold |= matches!(e, DispatchError::InitFailed { .. });
    if let DispatchError::Timeout { timeout, .. } = e {
        rec.duration_ms = ms(*timeout);
        rec.billed_ms = billed(*timeout);
    }
    rec.error_type = Some(e.lambda_error_type().to_owned());
    rec.error_message = Some(e.to_string());
    rec.log = e.log().to_owned();
    rec
}
