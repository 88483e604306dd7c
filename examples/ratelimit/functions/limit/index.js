// The edge rate-limit pattern: count each client's requests in KV and answer 429 past a limit.
//
// The client is the `x-client-id` header when there is one (an API key, a user id), else the
// caller's IP. Its counter is one KV key, incremented atomically: `increment(key, 1, {ttl})`
// creates it at 1 with a TTL and adds to it after that without moving the expiry, so each
// client gets LIMIT requests per fixed window of WINDOW_SECONDS, however many instances serve
// it and however many of its requests arrive at once (no lost updates, unlike get-then-put).
const { kv } = require('nimbus');

const counters = kv('ratelimit');
const LIMIT = Number(process.env.LIMIT || 100);
const WINDOW_SECONDS = Number(process.env.WINDOW_SECONDS || 60);

exports.handler = async (event) => {
  const headers = event.headers || {};
  const client = headers['x-client-id'] || event.requestContext.http.sourceIp;
  const count = await counters.increment(`client:${client}`, 1, { ttl: WINDOW_SECONDS });
  const limits = {
    'x-ratelimit-limit': String(LIMIT),
    'x-ratelimit-remaining': String(Math.max(0, LIMIT - count)),
  };
  if (count > LIMIT) {
    return {
      statusCode: 429,
      headers: { ...limits, 'retry-after': String(WINDOW_SECONDS), 'content-type': 'application/json' },
      body: JSON.stringify({ error: `rate limit of ${LIMIT} requests per ${WINDOW_SECONDS} s exceeded` }),
    };
  }
  return {
    statusCode: 200,
    headers: { ...limits, 'content-type': 'application/json' },
    body: JSON.stringify({ ok: true, client, count, path: event.rawPath }),
  };
};
