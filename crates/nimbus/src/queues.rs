//! `nimbus queues …`: the message queues from the command line, a thin client of `/v1/queues`
//! reading `nimbus-api` types. SQS clients (`aws sqs`, boto3) speak to the same queues on the
//! AWS port; this is the operator's view: counts, messages read without receiving them, purge,
//! and dead-letter redrive.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use nimbus_api as api;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::client::Client;
use crate::Remote;

#[derive(clap::Subcommand)]
pub enum QueuesAction {
    /// Every queue with its depth (visible, in flight, delayed) and the age of its oldest message.
    Ls {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show messages, oldest first, without receiving them (nothing about them changes).
    Peek {
        name: String,
        /// Show at most this many (1–1000).
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Delete every message of a queue (needs an admin token).
    Purge { name: String },
    /// Move the messages of a dead-letter queue back to the queues they came from (needs an admin
    /// token).
    Redrive {
        /// The dead-letter queue.
        name: String,
        /// Move them all to this queue instead.
        #[arg(long)]
        to: Option<String>,
    },
}

fn segment(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

pub async fn queues(action: QueuesAction, remote: Remote) -> Result<ExitCode> {
    let client = Client::new(&remote, &PathBuf::from("."))?;
    match action {
        QueuesAction::Ls { json } => ls(&client, json).await,
        QueuesAction::Peek { name, limit, json } => peek(&client, &name, limit, json).await,
        QueuesAction::Purge { name } => {
            let path = format!("/v1/queues/{}/purge", segment(&name));
            let p: api::QueuePurged = client.post(&path, &serde_json::json!({}), "cannot purge the queue").await?;
            println!("purged {} message{} from {}", p.purged, plural(p.purged), p.queue);
            Ok(ExitCode::SUCCESS)
        }
        QueuesAction::Redrive { name, to } => {
            let mut path = format!("/v1/queues/{}/redrive", segment(&name));
            if let Some(to) = &to {
                path.push_str(&format!("?to={}", segment(to)));
            }
            let r: api::QueueRedriven = client.post(&path, &serde_json::json!({}), "cannot redrive the queue").await?;
            let dest = to.map_or_else(|| "the queues they came from".to_owned(), |t| t.to_string());
            println!("moved {} message{} from {} to {dest}", r.moved, plural(r.moved), r.queue);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Milliseconds as the table shows an age: `850ms`, `12s`, `3m`, `5h`, `2d`.
fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}s", ms / 1_000),
        60_000..=3_599_999 => format!("{}m", ms / 60_000),
        3_600_000..=86_399_999 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

async fn ls(client: &Client, json: bool) -> Result<ExitCode> {
    let list: Vec<api::MessageQueueInfo> = client.get("/v1/queues").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!(
            "no queues; declare one as [queues.NAME] in nimbus.toml and deploy, or create one with SQS CreateQueue"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<32} {:>9} {:>9} {:>8} {:>7}  DEAD-LETTER QUEUE", "QUEUE", "VISIBLE", "IN FLIGHT", "DELAYED", "OLDEST");
    for q in list {
        let oldest = q.oldest_age_ms.map_or_else(|| "-".to_owned(), age);
        let dlq = match (&q.dead_letter_queue, q.max_receive_count) {
            (Some(d), Some(n)) => format!("{d} (after {n} receive{})", plural(u64::from(n))),
            _ => "-".to_owned(),
        };
        println!("{:<32} {:>9} {:>9} {:>8} {:>7}  {dlq}", q.name, q.visible, q.in_flight, q.delayed, oldest);
    }
    Ok(ExitCode::SUCCESS)
}

async fn peek(client: &Client, name: &str, limit: usize, json: bool) -> Result<ExitCode> {
    let path = format!("/v1/queues/{}/messages?limit={limit}", segment(name));
    let list: Vec<api::QueuedMessage> = client.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("{name} is empty");
    }
    for m in list {
        let state = if m.in_flight { "in flight" } else { "visible" };
        let from = m.source_queue.map(|s| format!(", from {s}")).unwrap_or_default();
        let group = m.group_id.map(|g| format!(", group {g}")).unwrap_or_default();
        println!(
            "{}  sent {}  received {}×, {state}{group}{from}\n  {}",
            m.message_id,
            crate::access::time(m.sent_ms),
            m.receive_count,
            m.body
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_400), "12s");
        assert_eq!(age(180_000), "3m");
        assert_eq!(age(5 * 3_600_000 + 1), "5h");
        assert_eq!(age(2 * 86_400_000), "2d");
    }
}
