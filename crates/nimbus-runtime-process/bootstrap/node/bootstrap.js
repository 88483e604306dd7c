'use strict';
// nimbus bootstrap for runtime = "node" (Node.js 20, no dependencies).
//
// Speaks the AWS Lambda Runtime API (2018-06-01) to nimbus over a keep-alive
// HTTP/1.1 connection on loopback:
//   load the handler named by _HANDLER once (CommonJS or ES module), then loop:
//   GET /runtime/invocation/next -> run the handler -> POST .../response or .../error
//   (with `Nimbus-Next: 1`, a nimbus-only header: the reply is the next event).
// A handler wrapped in `awslambda.streamifyResponse` streams: one chunked POST .../response
// with `Lambda-Runtime-Function-Response-Mode: streaming`, a chunk per write, errors after the
// first write as Lambda's error trailers. `context.waitUntil(promise)` (nimbus): the response
// carries `Nimbus-Wait-Until: 1` (a header, or a trailer when streamed), the work settles, then
// POST .../invocation/{id}/done ends the invocation (nimbus-only; official clients never send it).
// With AWS_LAMBDA_MAX_CONCURRENCY = N > 1 (the function's `concurrency`), N pollers each
// take invocations on their own connection and their handlers run concurrently.
// Handler output (console.log etc.) goes to stdout/stderr unmodified (tagged with the
// request id when N > 1); on Linux
// writes to pipes and files are synchronous, so everything the handler printed
// is in the pipe before the result is posted.
//
// Start-up matters (cold starts): only `net` and `path` are loaded eagerly;
// `url` is loaded only for ES modules.

const net = require('net');
const path = require('path');
const fs = require('fs'); // already loaded by Node's own start-up; used for existsSync

// ---------------------------------------------------------------------------
// Zygote (a prepared sandbox; see nimbus's crates/nimbus-runtime-process/src/zygote.rs)
//
// With `--zygote`, Node starts and loads this file before the instance exists, then blocks
// reading the instance's environment from stdin (NUL-ended KEY=VALUE entries up to
// end-of-file) and applies it as Node would have at start-up: `process.env`, NODE_PATH's module
// paths, the time zone (Node follows an assigned TZ). Only then does it read its settings and
// load the handler: no function code runs before the instance's environment is in place.
// Nothing on stdin: the prepared sandbox was not needed; exit quietly.
{
  const i = process.argv.indexOf('--zygote', 2);
  if (i >= 0) {
    process.argv.splice(i, 1);
    zygote();
  }
}

function zygote() {
  // What handlers commonly load (the AWS SDK: http, https, crypto, stream, url, util), and what
  // this file loads later: off the first invocation's path.
  for (const m of ['url', 'util', 'events', 'stream', 'async_hooks', 'crypto', 'http', 'https']) require(m);
  const data = fs.readFileSync(0);
  if (data.length === 0) process.exit(0);
  const fresh = {};
  for (const entry of data.toString('utf8').split('\0')) {
    if (!entry) continue;
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new Error("an environment entry without '='");
    fresh[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, fresh);
  require('module')._initPaths(); // NODE_PATH, which Node reads once at start-up
}

const env = process.env;
const API = env.AWS_LAMBDA_RUNTIME_API || '127.0.0.1:9001';
const BASE = '/2018-06-01/runtime';

let apiHost;
let apiPort;
{
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(API) || /^([^:]+):(\d+)$/.exec(API);
  if (m) {
    apiHost = m[1];
    apiPort = Number(m[2]);
  } else {
    apiHost = API;
    apiPort = 80;
  }
}

// ---------------------------------------------------------------------------
// HTTP client
//
// A minimal HTTP/1.1 client on one keep-alive socket, written by hand because Node's `http`
// client costs ~5 ms to load and ~200 µs of CPU per request (nimbus-bench), a third of a warm
// invocation. It only has to talk to nimbus's own Runtime API: one request at a time per
// connection, bodies with Content-Length (chunked is accepted too). With
// AWS_LAMBDA_MAX_CONCURRENCY > 1 every poller has a connection of its own.
//
// An invocation's answer also asks for the next event (`Nimbus-Next: 1`, `answerAndPoll`):
// nimbus replies with the event instead of a 202, so each invocation costs one request, one
// reply and one wake-up here, against answer, 202, then `GET /next`.

const EMPTY = Buffer.alloc(0);

// In the sandbox the Runtime API is also the instance's own socket: talking to it directly
// saves the hop through the sandbox's TCP forwarder on every request.
const API_SOCKET = env.NIMBUS_RUNTIME_API_SOCKET;

class Conn {
  constructor() {
    this.sock = null;
    this.used = false; // the socket has carried a complete response: an early close may be stale
    this.inbox = EMPTY;
    this.waiting = []; // { resolve, reject, retry }, one per request sent, answered in order
    this.polled = null; // the answer to a `GET /next` already sent (see `answerAndPoll`)
  }

  connect() {
    const sock = API_SOCKET
      ? net.createConnection({ path: API_SOCKET })
      : net.createConnection({ host: apiHost, port: apiPort });
    if (!API_SOCKET) sock.setNoDelay(true);
    this.sock = sock;
    this.used = false;
    this.inbox = EMPTY;
    sock.on('data', (chunk) => {
      this.inbox = this.inbox.length ? Buffer.concat([this.inbox, chunk]) : chunk;
      this.parse();
    });
    const gone = (err) => {
      if (this.sock !== sock) return;
      const reused = this.used;
      this.sock = null;
      const waiting = this.waiting;
      this.waiting = [];
      for (const w of waiting) {
        if (reused && w.retry) w.retry();
        else w.reject(err || new Error('the Runtime API closed the connection'));
      }
    };
    sock.on('error', gone);
    sock.on('close', () => gone(null));
  }

  parse() {
    while (this.waiting.length && this.parseOne());
  }

  // One whole response in the inbox: answer the oldest request; false when more must arrive.
  parseOne() {
    const inbox = this.inbox;
    const end = inbox.indexOf('\r\n\r\n');
    if (end < 0) return false;
    const head = inbox.toString('latin1', 0, end).split('\r\n');
    const status = Number(head[0].split(' ')[1]);
    const headers = {};
    for (let i = 1; i < head.length; i++) {
      const c = head[i].indexOf(':');
      if (c > 0) headers[head[i].slice(0, c).trim().toLowerCase()] = head[i].slice(c + 1).trim();
    }
    let body;
    let rest;
    const start = end + 4;
    if (/chunked/i.test(headers['transfer-encoding'] || '')) {
      const parts = [];
      let at = start;
      for (;;) {
        const eol = inbox.indexOf('\r\n', at);
        if (eol < 0) return false;
        const size = parseInt(inbox.toString('latin1', at, eol), 16);
        if (inbox.length < eol + 2 + size + 2) return false;
        if (size === 0) {
          rest = eol + 4;
          break;
        }
        parts.push(inbox.subarray(eol + 2, eol + 2 + size));
        at = eol + 2 + size + 2;
      }
      body = Buffer.concat(parts);
    } else {
      const len = Number(headers['content-length'] || 0);
      if (inbox.length < start + len) return false;
      body = inbox.subarray(start, start + len);
      rest = start + len;
    }
    this.inbox = rest < inbox.length ? inbox.subarray(rest) : EMPTY;
    this.used = true;
    this.waiting.shift().resolve({ status, headers, body: body.toString('utf8') });
    return true;
  }

  request(method, urlPath, body, headers) {
    const data = encode(method, urlPath, body, headers);
    return new Promise((resolve, reject) => {
      const send = (retry) => {
        if (!this.sock) this.connect();
        this.waiting.push({ resolve, reject, retry });
        this.sock.write(data);
      };
      // The server may have closed an idle keep-alive socket: retry once on a fresh one.
      send(() => send(null));
    });
  }

  // A POST whose body is sent as the handler writes it (chunked), for Lambda's response
  // streaming: `write` sends one chunk (resolves once it is handed to the socket), `end` sends
  // the last chunk with the trailers and resolves with the server's answer.
  openStream(urlPath, headers) {
    if (!this.sock) this.connect();
    const s = this.sock;
    let head = `POST ${urlPath} HTTP/1.1\r\nHost: ${API}\r\nTransfer-Encoding: chunked\r\n`;
    head += 'Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body, Nimbus-Wait-Until\r\n';
    for (const k in headers) head += `${k}: ${headers[k]}\r\n`;
    const answer = new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject, retry: null });
    });
    answer.catch(() => {}); // read by `end`; a refusal mid-stream is not an unhandled rejection
    s.write(head + '\r\n');
    const put = (data) =>
      new Promise((resolve) => {
        if (s.destroyed) return resolve();
        s.write(data, () => resolve());
      });
    return {
      write(chunk) {
        if (!chunk.length) return Promise.resolve();
        return put(Buffer.concat([Buffer.from(chunk.length.toString(16) + '\r\n', 'latin1'), chunk, CRLF]));
      },
      end(trailers) {
        let t = '0\r\n';
        for (const k in trailers) t += `${k}: ${trailers[k]}\r\n`;
        put(t + '\r\n');
        return answer;
      },
    };
  }
}
const CRLF = Buffer.from('\r\n', 'latin1');

function encode(method, urlPath, body, headers) {
  const payload = body === undefined ? EMPTY : Buffer.from(body, 'utf8');
  let head = `${method} ${urlPath} HTTP/1.1\r\nHost: ${API}\r\nContent-Length: ${payload.length}\r\n`;
  for (const k in headers || {}) {
    if (k.toLowerCase() !== 'content-length') head += `${k}: ${headers[k]}\r\n`;
  }
  return Buffer.concat([Buffer.from(head + '\r\n', 'latin1'), payload]);
}

// The connection of init and of the first poller.
const mainConn = new Conn();

function post(urlPath, body, errorType, conn, extra) {
  const headers = { 'Content-Type': 'application/json', ...extra };
  if (errorType) headers['Lambda-Runtime-Function-Error-Type'] = headerSafe(errorType);
  return (conn || mainConn).request('POST', urlPath, body, headers);
}

// Answer an invocation and ask for the next in one request: with `Nimbus-Next: 1` nimbus
// takes the answer and replies with the next event (as `GET /next` would), or refuses the
// answer as usual, and then the poller asks. The poller reads the event from `conn.polled`.
function answerAndPoll(conn, urlPath, body, errorType) {
  // With the peak resident set (KB; the `VmHWM` nimbus would otherwise read from /proc).
  const headers = { 'Content-Type': 'application/json', 'Nimbus-Next': '1', 'Nimbus-Peak-Rss-Kb': process.resourceUsage().maxRSS };
  if (errorType) headers['Lambda-Runtime-Function-Error-Type'] = headerSafe(errorType);
  const next = conn
    .request('POST', urlPath, body, headers)
    .then((res) => (isNextReply(res) ? res : conn.request('GET', BASE + '/invocation/next')));
  next.catch(() => {}); // read by `poll`
  conn.polled = next;
}

// The reply to `GET /next`: an event, or the instance stopping (410).
function isNextReply(res) {
  return (res.status === 200 && res.headers['lambda-runtime-aws-request-id'] !== undefined) || res.status === 410;
}

function headerSafe(s) {
  return String(s).replace(/[^\x20-\x7e]/g, '') || 'Unhandled';
}

// ---------------------------------------------------------------------------
// Errors

function errorPayload(e) {
  if (e instanceof Error || (e !== null && typeof e === 'object' && 'message' in e)) {
    let stack = [];
    try {
      if (typeof e.stack === 'string') stack = e.stack.split('\n');
    } catch (_) {
      /* ignore */
    }
    let type;
    try {
      type = e.name || (e.constructor && e.constructor.name) || 'Error';
    } catch (_) {
      type = 'Error';
    }
    return { errorMessage: safeString(e.message), errorType: String(type), stackTrace: stack };
  }
  return { errorMessage: safeString(e), errorType: typeof e, stackTrace: [] };
}

function safeString(v) {
  try {
    return String(v);
  } catch (_) {
    return '[unprintable]';
  }
}

function errorBody(payload) {
  try {
    return JSON.stringify(payload);
  } catch (_) {
    return JSON.stringify({ errorMessage: 'unserializable error', errorType: payload.errorType, stackTrace: [] });
  }
}

function printError(prefix, e) {
  let text;
  try {
    text = e instanceof Error && typeof e.stack === 'string' ? e.stack : safeString(e);
  } catch (_) {
    text = '[unprintable error]';
  }
  process.stderr.write(prefix + text + '\n');
}

function fatal(e) {
  printError('nimbus bootstrap: ', e);
  process.exit(1);
}

// ---------------------------------------------------------------------------
// Init: load the handler

async function initError(type, e) {
  const orig = errorPayload(e);
  const payload = {
    errorMessage: orig.errorType + ': ' + orig.errorMessage,
    errorType: type,
    stackTrace: orig.stackTrace,
  };
  process.stderr.write(type + ': ' + payload.errorMessage + '\n');
  if (orig.stackTrace.length) process.stderr.write(orig.stackTrace.join('\n') + '\n');
  try {
    await post(BASE + '/init/error', errorBody(payload), type);
  } catch (pe) {
    printError('nimbus bootstrap: could not report init error: ', pe);
  }
  process.exit(1);
}

function importFile(file) {
  const { pathToFileURL } = require('url');
  return import(pathToFileURL(file).href);
}

async function loadModule(base) {
  if (fs.existsSync(base + '.js')) {
    try {
      return require(base + '.js');
    } catch (e) {
      if (e && e.code === 'ERR_REQUIRE_ESM') return importFile(base + '.js');
      throw e;
    }
  }
  if (fs.existsSync(base + '.mjs')) return importFile(base + '.mjs');
  if (fs.existsSync(base + '.cjs')) return require(base + '.cjs');
  // Let Node resolve it (directory with index.js / package.json main, .json, ...)
  // or produce the usual "Cannot find module" error.
  try {
    return require(base);
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') return importFile(require.resolve(base));
    throw e;
  }
}

async function loadHandler() {
  const spec = env._HANDLER || '';
  const root = env.LAMBDA_TASK_ROOT || process.cwd();
  const slash = spec.lastIndexOf('/');
  const dir = spec.slice(0, slash + 1);
  const rest = spec.slice(slash + 1);
  const dot = rest.indexOf('.');
  if (dot <= 0 || dot === rest.length - 1) {
    await initError('Runtime.MalformedHandlerName', new Error(`Bad handler '${spec}': expected 'file.export'`));
  }
  const modName = rest.slice(0, dot);
  const exportPath = rest.slice(dot + 1);
  let mod;
  try {
    mod = await loadModule(path.resolve(root, dir, modName));
  } catch (e) {
    await initError('Runtime.ImportModuleError', e);
  }
  let fn = mod;
  for (const part of exportPath.split('.')) fn = fn == null ? undefined : fn[part];
  if (fn === undefined || fn === null) {
    await initError('Runtime.HandlerNotFound', new Error(`${spec} is undefined or not exported`));
  }
  if (typeof fn !== 'function') {
    await initError('Runtime.HandlerNotFound', new Error(`${spec} is not a function`));
  }
  return fn;
}

// ---------------------------------------------------------------------------
// Response streaming (Lambda's `awslambda` global) and waitUntil

const STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const HTTP_INTEGRATION = 'application/vnd.awslambda.http-integration-response';

global.awslambda = {
  // Mark a handler `(event, responseStream, context)` as streaming, as on Lambda.
  streamifyResponse(handler) {
    handler[STREAMING] = 'response';
    return handler;
  },
  HttpResponseStream: class HttpResponseStream {
    // The HTTP status and headers go first, as a JSON prelude and 8 NUL bytes.
    static from(stream, prelude) {
      stream.setContentType(HTTP_INTEGRATION);
      stream._prelude = JSON.stringify(prelude || {});
      return stream;
    }
  },
};

// The writable a streaming handler gets: the POST opens at the first write (or at the end),
// so `setContentType` and `HttpResponseStream.from` can still change the head before it.
function responseStream(urlPath, http) {
  const { Writable } = require('stream');
  let contentType = 'application/octet-stream';
  let conn = null;
  const open = () => {
    if (conn) return;
    conn = http.openStream(urlPath, { 'Lambda-Runtime-Function-Response-Mode': 'streaming', 'Content-Type': contentType });
    if (w._prelude !== undefined) {
      conn.write(Buffer.from(w._prelude, 'utf8'));
      conn.write(Buffer.alloc(8));
    }
  };
  const w = new Writable({
    write(chunk, enc, cb) {
      open();
      conn.write(typeof chunk === 'string' ? Buffer.from(chunk, enc) : chunk).then(() => cb(), cb);
    },
  });
  w.setContentType = (ct) => {
    contentType = headerSafe(ct);
  };
  w.opened = () => conn !== null;
  w.finish = (trailers) => {
    open();
    return conn.end(trailers);
  };
  return w;
}

// Background work of the invocation whose response went out (`waitUntil`): a rejection is
// logged, never fatal; the invocation ends once all of it (and what it adds) settled.
function addWait(inv, p) {
  inv.waits.push(
    Promise.resolve(p).then(
      () => undefined,
      (e) => printError('waitUntil: a background task failed: ', e),
    ),
  );
}

let background = null; // with one invocation at a time: the one still settling its waitUntil work
global[Symbol.for('nimbus.waitUntil')] = (p) => {
  // With several invocations at once, the one whose code calls it (AsyncLocalStorage).
  const mine = logContext ? logContext.getStore() : undefined;
  const inv = mine !== undefined ? inFlight.get(mine.id) : current || background;
  if (!inv) throw new Error('waitUntil() works only while a nimbus invocation is running');
  addWait(inv, p);
};

async function settle(inv) {
  if (MAX_CONCURRENCY === 1) background = inv;
  for (let round = 0; round < 1000 && inv.waits.length; round++) {
    await Promise.all(inv.waits.splice(0));
  }
  background = null;
}

function streamErrorBody(e) {
  const p = errorPayload(e);
  return Buffer.from(JSON.stringify({ errorType: p.errorType, errorMessage: p.errorMessage, trace: p.stackTrace }), 'utf8').toString('base64');
}

// A streaming handler: chunks go out as it writes; an error after the first write ends the
// stream with Lambda's error trailers, before it a plain /error.
async function invokeStreaming(fn, event, ctx, inv, base, conn) {
  const stream = responseStream(base + '/response', conn);
  let failed = null;
  try {
    await (logContext ? logContext.run(inv, () => fn(event, stream, ctx)) : fn(event, stream, ctx));
    if (!stream.writableEnded) stream.end();
    await new Promise((resolve, reject) => {
      if (stream.writableFinished) return resolve();
      stream.once('finish', resolve);
      stream.once('error', reject);
    });
  } catch (e) {
    failed = e;
  }
  if (inv.done) return;
  inv.done = true;
  current = null;
  if (failed !== null && !stream.opened()) {
    printError('', failed);
    await settleAndDone(inv, base, () => post(base + '/error', errorBody(errorPayload(failed)), 'Unhandled', conn));
    return;
  }
  const trailers = {};
  if (failed !== null) {
    printError('', failed);
    trailers['Lambda-Runtime-Function-Error-Type'] = headerSafe(errorPayload(failed).errorType);
    trailers['Lambda-Runtime-Function-Error-Body'] = streamErrorBody(failed);
  }
  if (inv.waits.length) trailers['Nimbus-Wait-Until'] = '1';
  await stream.finish(trailers);
  if (trailers['Nimbus-Wait-Until']) {
    await settle(inv);
    await post(base + '/done', '', undefined, conn);
  }
}

// Errors wait for background work first (the error answer has no background mode).
async function settleAndDone(inv, base, answer) {
  await settle(inv);
  await answer();
}

// ---------------------------------------------------------------------------
// Invocations

const MAX_CONCURRENCY = Math.max(1, Math.floor(Number(env.AWS_LAMBDA_MAX_CONCURRENCY) || 1));
const inFlight = new Map(); // request id -> { id, done, waits }: until its waitUntil work settled
let current = null; // with one invocation at a time: the one whose handler runs
let dying = false;

// An uncaught exception ends the process: every invocation in flight gets it as its error
// (with concurrency > 1 it cannot be told which one threw).
function onFatal(e) {
  if (dying) return;
  dying = true;
  printError('Uncaught exception: ', e);
  const open = [...inFlight.values()].filter((inv) => !inv.done);
  if (open.length === 0) process.exit(1);
  const posts = open.map((inv) => {
    inv.done = true;
    return post(BASE + '/invocation/' + inv.id + '/error', errorBody(errorPayload(e)), 'Unhandled', new Conn());
  });
  Promise.allSettled(posts).then(() => process.exit(1));
}
process.on('uncaughtException', onFatal);
process.on('unhandledRejection', onFatal);

function parseJsonHeader(v) {
  if (v === undefined || v === '') return undefined;
  try {
    return JSON.parse(v);
  } catch (_) {
    return undefined;
  }
}

function runHandler(fn, event, ctx) {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (kind, value) => {
      if (settled) return;
      settled = true;
      resolve([kind, value]);
    };
    const callback = (err, result) => {
      if (err !== undefined && err !== null) finish('Handled', err);
      else finish('ok', result);
    };
    ctx.done = callback;
    ctx.succeed = (result) => finish('ok', result);
    ctx.fail = (err) => finish('Handled', err);
    let ret;
    try {
      ret = fn(event, ctx, callback);
    } catch (e) {
      finish('Unhandled', e);
      return;
    }
    if (ret !== null && (typeof ret === 'object' || typeof ret === 'function') && typeof ret.then === 'function') {
      ret.then(
        (r) => finish('ok', r),
        (e) => finish('Unhandled', e),
      );
    } else if (fn.length < 3) {
      // A plain synchronous handler: its return value is the result.
      finish('ok', ret);
    }
    // otherwise: callback style, wait for callback()/context.done()
  });
}

async function invoke(fn, next, conn) {
  const id = next.headers['lambda-runtime-aws-request-id'];
  const inv = { id, trace: next.headers['lambda-runtime-trace-id'], done: false, waits: [] };
  inFlight.set(id, inv);
  if (MAX_CONCURRENCY === 1) current = inv;
  try {
    await run(fn, next, conn, inv);
  } finally {
    inFlight.delete(id);
  }
}

async function run(fn, next, conn, inv) {
  const h = next.headers;
  const id = inv.id;
  const trace = inv.trace;
  if (MAX_CONCURRENCY > 1) {
    // Several invocations share the process: `_X_AMZN_TRACE_ID` reads the invocation's own
    // (see `perInvocationEnv`).
  } else if (trace) env._X_AMZN_TRACE_ID = trace;
  else delete env._X_AMZN_TRACE_ID;
  const deadline = Number(h['lambda-runtime-deadline-ms']) || 0;
  const ctx = {
    awsRequestId: id,
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    invokedFunctionArn: h['lambda-runtime-invoked-function-arn'],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    clientContext: parseJsonHeader(h['lambda-runtime-client-context']),
    identity: parseJsonHeader(h['lambda-runtime-cognito-identity']),
    callbackWaitsForEmptyEventLoop: true, // accepted but not honoured: nimbus responds on callback
    xRayTraceId: trace,
    // nimbus: run `promise` after the response; the invocation ends when it settles.
    waitUntil: (promise) => addWait(inv, promise),
  };
  const base = BASE + '/invocation/' + id;

  let kind;
  let value;
  let event;
  try {
    event = next.body === '' ? null : JSON.parse(next.body);
  } catch (e) {
    kind = 'Unhandled';
    value = e;
  }
  if (kind === undefined && fn[STREAMING]) return invokeStreaming(fn, event, ctx, inv, base, conn);
  if (kind === undefined) {
    [kind, value] = logContext ? await logContext.run(inv, () => runHandler(fn, event, ctx)) : await runHandler(fn, event, ctx);
  }
  if (inv.done) return; // an uncaught exception already answered this request
  let body;
  if (kind === 'ok') {
    try {
      body = JSON.stringify(value);
      if (body === undefined) body = 'null';
    } catch (e) {
      kind = 'Unhandled';
      value = e;
      const p = errorPayload(e);
      p.errorType = 'Runtime.ResponseSerializationError';
      p.errorMessage = 'Unable to serialize the response: ' + p.errorMessage;
      body = errorBody(p);
    }
  } else {
    body = errorBody(errorPayload(value));
  }
  inv.done = true;
  current = null;
  if (kind !== 'ok') return settleAndDone(inv, base, () => answerAndPoll(conn, base + '/error', body, kind));
  if (!inv.waits.length) return answerAndPoll(conn, base + '/response', body);
  // The response goes out now; nimbus keeps the invocation open until /done.
  await post(base + '/response', body, undefined, conn, { 'Nimbus-Wait-Until': '1' });
  await settle(inv);
  await post(base + '/done', '', undefined, conn);
}

// ---------------------------------------------------------------------------
// Log lines of concurrent invocations
//
// With AWS_LAMBDA_MAX_CONCURRENCY > 1 several invocations write to the same stdout and stderr:
// console.* write each line in Lambda's shape, `timestamp\trequestId\tLEVEL\tmessage`, with
// the id of the invocation that logged it (AsyncLocalStorage follows it through awaits), so
// nimbus can give every line to its invocation. With one invocation at a time output is left
// as the handler wrote it.

// The invocation (`{ id, trace, ... }`) whose code runs, through awaits and callbacks; only
// with AWS_LAMBDA_MAX_CONCURRENCY > 1.
let logContext = null;

function tagConsole() {
  const { AsyncLocalStorage } = require('async_hooks');
  const util = require('util');
  logContext = new AsyncLocalStorage();
  perInvocationEnv();
  const write = (stream, level) =>
    function (...args) {
      const id = logContext.getStore()?.id;
      const text = util.format(...args);
      if (id === undefined) {
        stream.write(text + '\n');
        return;
      }
      const stamp = new Date().toISOString();
      let out = '';
      for (const line of text.split('\n')) out += `${stamp}\t${id}\t${level}\t${line}\n`;
      stream.write(out);
    };
  console.log = write(process.stdout, 'INFO');
  console.info = write(process.stdout, 'INFO');
  console.debug = write(process.stdout, 'DEBUG');
  console.trace = write(process.stdout, 'TRACE');
  console.warn = write(process.stderr, 'WARN');
  console.error = write(process.stderr, 'ERROR');
}

// With several invocations in flight, `process.env._X_AMZN_TRACE_ID` is the trace id of the
// invocation whose code reads it (the X-Ray SDK and the AWS SDK's recursion detection read the
// variable); outside any invocation it is the process's own value. Child processes inherit
// the process's environment, not the invocation's: pass the id on explicitly.
function perInvocationEnv() {
  const TRACE = '_X_AMZN_TRACE_ID';
  const own = (k) => (k === TRACE ? logContext.getStore()?.trace : undefined);
  process.env = new Proxy(process.env, {
    get: (target, k) => own(k) ?? Reflect.get(target, k),
    has: (target, k) => own(k) !== undefined || Reflect.has(target, k),
  });
}

// `awslambda.InvokeStore`, as the AWS runtime exposes it (the `@aws/lambda-invoke-store`
// package finds it there): the request id and trace id of the invocation whose code runs.
function invokeStore() {
  const KEYS = {
    REQUEST_ID: Symbol.for('_AWS_LAMBDA_REQUEST_ID'),
    X_RAY_TRACE_ID: Symbol.for('_AWS_LAMBDA_X_RAY_TRACE_ID'),
    TENANT_ID: Symbol.for('_AWS_LAMBDA_TENANT_ID'),
  };
  const contexts = new WeakMap(); // invocation -> its store
  const running = () => (logContext ? logContext.getStore() : current || background);
  const context = () => {
    const inv = running();
    if (!inv) return undefined;
    let c = contexts.get(inv);
    if (!c) {
      c = { [KEYS.REQUEST_ID]: inv.id, [KEYS.X_RAY_TRACE_ID]: inv.trace };
      contexts.set(inv, c);
    }
    return c;
  };
  const isProtected = (k) => Object.values(KEYS).includes(k);
  return {
    PROTECTED_KEYS: KEYS,
    getContext: context,
    hasContext: () => context() !== undefined,
    get: (k) => context()?.[k],
    set(k, v) {
      if (isProtected(k)) throw new Error(`Cannot modify protected Lambda context field: ${String(k)}`);
      const c = context();
      if (c) c[k] = v;
    },
    getRequestId: () => context()?.[KEYS.REQUEST_ID] ?? '-',
    getXRayTraceId: () => context()?.[KEYS.X_RAY_TRACE_ID],
    getTenantId: () => context()?.[KEYS.TENANT_ID],
  };
}
global.awslambda.InvokeStore = invokeStore();

async function poll(fn, conn) {
  for (;;) {
    const next = await (conn.polled || conn.request('GET', BASE + '/invocation/next'));
    conn.polled = null;
    if (next.status !== 200) {
      throw new Error(`GET /runtime/invocation/next answered ${next.status}: ${next.body}`);
    }
    await invoke(fn, next, conn);
  }
}

async function main() {
  if (MAX_CONCURRENCY > 1) tagConsole();
  const fn = await loadHandler();
  // One poller per invocation the instance may run at once, each on its own connection; the
  // handlers of their invocations run concurrently on the event loop, sharing module state.
  const pollers = [poll(fn, mainConn)];
  for (let i = 1; i < MAX_CONCURRENCY; i++) pollers.push(poll(fn, new Conn()));
  await Promise.all(pollers);
}

main().catch(fatal);
