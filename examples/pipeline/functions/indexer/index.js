// Drains the `indexed` queue in batches (a queue trigger with report_batch_item_failures): each
// message is an image's metadata from the thumbnail function. Images that could not be read are
// reported as batch item failures, so only they go back to the queue, and after
// max_receive_count receives to the dead-letter queue `indexed-dlq`; the rest of the batch is
// done. The index itself is a KV key per day.
const { kv } = require("nimbus");

const index = kv("images");

exports.handler = async (event) => {
  const batchItemFailures = [];
  const day = new Date().toISOString().slice(0, 10);
  for (const record of event.Records) {
    const meta = JSON.parse(record.body);
    if (meta.error) {
      console.log(`cannot index ${meta.key}: ${meta.error} (receive ${record.attributes.ApproximateReceiveCount})`);
      batchItemFailures.push({ itemIdentifier: record.messageId });
      continue;
    }
    await index.increment(`count:${day}`);
    console.log(`indexed ${meta.key} (${meta.width}x${meta.height})`);
  }
  console.log(`batch of ${event.Records.length}: ${batchItemFailures.length} failed`);
  return { batchItemFailures };
};
