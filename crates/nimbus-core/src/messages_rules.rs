//! The checks every [`MessageQueues`](crate::messages::MessageQueues) backend makes before it
//! stores anything (SQS's limits): a queue name, its settings, a message and a receive, each
//! refusal naming the value and its allowed range. Pure functions, so the embedded store and
//! the cluster store refuse exactly the same things with exactly the same words.

use std::time::Duration;

use crate::messages::{
    MqError, NewMessage, QueueSettings, ReceiveRequest, MAX_MESSAGE_BYTES, MAX_RECEIVE_BATCH, MAX_RECEIVE_WAIT,
};

/// Longest visibility timeout (SQS: 12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// Longest delay of a queue or a message (SQS: 15 minutes).
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Longest retention (SQS: 14 days).
pub const MAX_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// Most message attributes (SQS: 10).
pub const MAX_ATTRIBUTES: usize = 10;
/// Longest queue name, `.fifo` included (SQS: 80).
pub const MAX_NAME_CHARS: usize = 80;

/// `d` in whole milliseconds (saturating).
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn invalid(msg: String) -> MqError {
    MqError::InvalidParameter(msg)
}

/// A queue name: 1–80 letters, digits, `-` and `_`, with `.fifo` at the end exactly when the
/// queue is FIFO.
pub fn check_name(name: &str, fifo: bool) -> Result<(), MqError> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    let good_chars = base.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if base.is_empty() || name.chars().count() > MAX_NAME_CHARS || !good_chars {
        return Err(invalid(format!(
            "the queue name {name:?} is not valid: use 1 to {MAX_NAME_CHARS} letters, digits, '-' and '_' \
             (a FIFO queue's name ends in .fifo)"
        )));
    }
    match (fifo, name.ends_with(".fifo")) {
        (true, false) => Err(invalid(format!("the FIFO queue {name:?} needs a name that ends in .fifo"))),
        (false, true) => Err(invalid(format!(
            "the queue {name:?} ends in .fifo but is not FIFO; set FifoQueue (fifo = true) or rename it"
        ))),
        _ => Ok(()),
    }
}

fn within(what: &str, value: Duration, max: Duration, min: Duration) -> Result<(), MqError> {
    if value < min || value > max {
        return Err(invalid(format!(
            "{what} is {} s; it must be between {} s and {} s",
            value.as_secs_f64(),
            min.as_secs(),
            max.as_secs()
        )));
    }
    Ok(())
}

/// Settings a queue may have (SQS's ranges).
pub fn check_settings(name: &str, s: &QueueSettings) -> Result<(), MqError> {
    check_name(name, s.spec.fifo)?;
    within("the visibility timeout", s.spec.visibility_timeout, MAX_VISIBILITY, Duration::ZERO)?;
    within("the retention", s.spec.retention, MAX_RETENTION, Duration::from_secs(60))?;
    within("the delay", s.spec.delay, MAX_DELAY, Duration::ZERO)?;
    within("the receive wait time", s.receive_wait, MAX_RECEIVE_WAIT, Duration::ZERO)?;
    if !(1024..=MAX_MESSAGE_BYTES).contains(&s.max_message_bytes) {
        return Err(invalid(format!(
            "MaximumMessageSize is {}; it must be between 1024 and {MAX_MESSAGE_BYTES} bytes",
            s.max_message_bytes
        )));
    }
    if s.content_based_dedup && !s.spec.fifo {
        return Err(invalid(format!("content-based deduplication is for FIFO queues only; {name} is standard")));
    }
    if let Some(r) = &s.spec.redrive {
        if !(1..=1000).contains(&r.max_receive_count) {
            return Err(invalid(format!("maxReceiveCount is {}; it must be between 1 and 1000", r.max_receive_count)));
        }
        if r.dead_letter_queue == name {
            return Err(invalid(format!("the queue {name} cannot be its own dead-letter queue")));
        }
    }
    Ok(())
}

/// SQS's allowed body characters: #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000
/// to #x10FFFF.
fn allowed_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Bytes SQS counts against `MaximumMessageSize`: the body and each attribute's name, type and
/// value.
fn message_bytes(m: &NewMessage) -> usize {
    let attrs: usize = m
        .attributes
        .iter()
        .map(|(name, a)| {
            let value = a.string_value.as_deref().or(a.binary_value.as_deref()).map_or(0, str::len);
            name.len() + a.data_type.len() + value
        })
        .sum();
    m.body.len() + attrs
}

fn check_attributes(m: &NewMessage) -> Result<(), MqError> {
    if m.attributes.len() > MAX_ATTRIBUTES {
        return Err(invalid(format!(
            "the message has {} attributes; SQS allows at most {MAX_ATTRIBUTES}",
            m.attributes.len()
        )));
    }
    for (name, a) in &m.attributes {
        let base = a.data_type.split('.').next().unwrap_or_default();
        if !matches!(base, "String" | "Number" | "Binary") {
            return Err(invalid(format!(
                "the message attribute {name} has the data type {:?}; use String, Number or Binary",
                a.data_type
            )));
        }
        let value = if base == "Binary" { &a.binary_value } else { &a.string_value };
        if value.is_none() {
            return Err(invalid(format!("the message attribute {name} ({base}) has no value")));
        }
    }
    Ok(())
}

/// A message the queue with `s` takes (before deduplication).
pub fn check_message(queue: &str, s: &QueueSettings, m: &NewMessage) -> Result<(), MqError> {
    if m.body.is_empty() {
        return Err(invalid("the message body is empty; send at least one character".into()));
    }
    if let Some(c) = m.body.chars().find(|c| !allowed_char(*c)) {
        return Err(invalid(format!(
            "the message body contains the character U+{:04X}, which SQS does not allow; encode the body \
             (base64, for example)",
            u32::from(c)
        )));
    }
    check_attributes(m)?;
    let size = message_bytes(m);
    if size > s.max_message_bytes as usize {
        return Err(MqError::MessageTooLong(size, s.max_message_bytes));
    }
    if let Some(d) = m.delay {
        if s.spec.fifo {
            return Err(invalid(format!(
                "{queue} is a FIFO queue: its messages cannot have their own DelaySeconds (set the queue's delay)"
            )));
        }
        within("DelaySeconds", d, MAX_DELAY, Duration::ZERO)?;
    }
    check_fifo_fields(queue, s, m)
}

fn check_fifo_fields(queue: &str, s: &QueueSettings, m: &NewMessage) -> Result<(), MqError> {
    if !s.spec.fifo {
        if m.group_id.is_some() || m.dedup_id.is_some() {
            return Err(invalid(format!(
                "{queue} is a standard queue: MessageGroupId and MessageDeduplicationId are for FIFO queues only"
            )));
        }
        return Ok(());
    }
    match &m.group_id {
        None => return Err(invalid(format!("{queue} is a FIFO queue: every message needs a MessageGroupId"))),
        Some(g) if g.is_empty() || g.len() > 128 => {
            return Err(invalid(format!("the MessageGroupId {g:?} must be 1 to 128 characters")))
        }
        Some(_) => {}
    }
    match &m.dedup_id {
        None if !s.content_based_dedup => Err(invalid(format!(
            "{queue} is a FIFO queue without content-based deduplication: every message needs a \
             MessageDeduplicationId (or enable ContentBasedDeduplication)"
        ))),
        Some(d) if d.is_empty() || d.len() > 128 => {
            Err(invalid(format!("the MessageDeduplicationId {d:?} must be 1 to 128 characters")))
        }
        _ => Ok(()),
    }
}

/// A receive's parameters.
pub fn check_receive(req: &ReceiveRequest) -> Result<(), MqError> {
    if !(1..=MAX_RECEIVE_BATCH).contains(&req.max) {
        return Err(invalid(format!(
            "MaxNumberOfMessages is {}; it must be between 1 and {MAX_RECEIVE_BATCH}",
            req.max
        )));
    }
    if let Some(w) = req.wait {
        within("WaitTimeSeconds", w, MAX_RECEIVE_WAIT, Duration::ZERO)?;
    }
    if let Some(v) = req.visibility {
        within("VisibilityTimeout", v, MAX_VISIBILITY, Duration::ZERO)?;
    }
    Ok(())
}

/// A `ChangeMessageVisibility` timeout (0 to 12 hours).
pub fn check_visibility_change(d: Duration) -> Result<(), MqError> {
    if d > MAX_VISIBILITY {
        return Err(invalid(format!(
            "VisibilityTimeout is {} s; it must be between 0 and {} s",
            d.as_secs(),
            MAX_VISIBILITY.as_secs()
        )));
    }
    Ok(())
}
