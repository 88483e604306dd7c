// POST /chat {"prompt": "..."} → text/event-stream: one `data:` event per token, then
// `event: done`. The model is slow; each token is written as soon as it exists.
const { complete } = require("./model");

exports.handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  let prompt = "";
  try {
    const raw = event.isBase64Encoded ? Buffer.from(event.body || "", "base64").toString() : event.body || "{}";
    prompt = String(JSON.parse(raw).prompt || "");
  } catch {
    const bad = awslambda.HttpResponseStream.from(responseStream, {
      statusCode: 400,
      headers: { "content-type": "application/json" },
    });
    bad.end(JSON.stringify({ error: 'send JSON like {"prompt": "hello"}' }));
    return;
  }
  const sse = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 200,
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
  });
  const delay = Number(process.env.TOKEN_DELAY_MS || 40);
  let tokens = 0;
  for await (const token of complete(prompt, delay)) {
    sse.write(`data: ${JSON.stringify({ token })}\n\n`);
    tokens += 1;
  }
  sse.write("event: done\ndata: {}\n\n");
  sse.end();
  // After the response: log usage without keeping the client waiting.
  context.waitUntil(Promise.resolve().then(() => console.log(`answered ${prompt.length}-char prompt with ${tokens} tokens`)));
});
