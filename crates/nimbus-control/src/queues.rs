//! The queues a deployment declares (`[queues.NAME]`): a deploy or rollback creates each one or
//! brings its settings up to date before any function of the deployment runs, and never deletes
//! one (messages outlive the deployment that declared their queue).

use std::collections::BTreeMap;

use nimbus_core::messages::{MessageQueues, MqError, QueueSettings, QueueSpec};

/// Create or update every declared queue. A queue that does not exist yet is first created
/// without its redrive policy, so every dead-letter queue exists before a queue names it (in
/// any order, even when two queues name each other); then every queue gets its declared
/// settings. Attributes the manifest does not name (`ReceiveMessageWaitTimeSeconds`,
/// `MaximumMessageSize`, `ContentBasedDeduplication`, set with SetQueueAttributes) are kept.
pub(crate) async fn ensure(
    messages: &dyn MessageQueues,
    declared: &BTreeMap<String, QueueSpec>,
) -> Result<(), (String, MqError)> {
    let mut current = BTreeMap::new();
    for name in declared.keys() {
        let info = messages.queue(name).await.map_err(|e| (name.clone(), e))?;
        current.insert(name.clone(), info);
    }
    for (name, spec) in declared {
        if current.get(name).is_some_and(Option::is_none) {
            let bare = QueueSettings::from(QueueSpec { redrive: None, ..spec.clone() });
            messages.ensure_queue(name, &bare).await.map_err(|e| (name.clone(), e))?;
            tracing::info!(queue = %name, "created the queue the manifest declares");
        }
    }
    for (name, spec) in declared {
        let settings = match current.get(name).and_then(Option::as_ref) {
            Some(info) => QueueSettings { spec: spec.clone(), ..info.settings.clone() },
            None => QueueSettings::from(spec.clone()),
        };
        if current.get(name).and_then(Option::as_ref).is_some_and(|info| info.settings == settings) {
            continue;
        }
        messages.ensure_queue(name, &settings).await.map_err(|e| (name.clone(), e))?;
    }
    Ok(())
}

/// A note for each queue `live` declares and `next` does not: it is kept with its messages.
pub(crate) fn dropped<'a>(
    live: &'a BTreeMap<String, QueueSpec>,
    next: &'a BTreeMap<String, QueueSpec>,
) -> impl Iterator<Item = String> + 'a {
    live.keys().filter(|name| !next.contains_key(*name)).map(|name| {
        format!(
            "queue {name} is no longer declared; it is kept with its messages (delete it with \
             `aws sqs delete-queue` against the AWS port)"
        )
    })
}
