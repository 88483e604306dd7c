"use strict";
// nimbus's own client for Node functions, shipped with the runtime: `require("nimbus")` resolves
// here through NODE_PATH, with nothing to install. Today it speaks to the KV store:
//
//   const { kv } = require("nimbus");
//   const s = kv("sessions");
//   await s.put("k", "v", { ttl: 60 });   await s.get("k")   // "v"
//
// Calls go to the instance's own endpoint (the Unix socket in NIMBUS_RUNTIME_API_SOCKET when
// sandboxed, else AWS_LAMBDA_RUNTIME_API over TCP), which knows which function is calling: the
// function's grants decide, and a refusal is a KvError with code "AccessDenied". The wire
// format is nimbus's `/nimbus/v1/kv` API (docs/kv.md). `waitUntil(promise)` runs work after the
// response (docs/manifest.md, "Streaming responses").

const http = require("http");

const PREFIX = "/nimbus/v1/kv";
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

class KvError extends Error {
  constructor(code, message, status) {
    super(message);
    this.name = "KvError";
    this.code = code;
    this.status = status;
  }
}

function endpoint() {
  const socketPath = process.env.NIMBUS_RUNTIME_API_SOCKET;
  if (socketPath) return { socketPath };
  const api = process.env.AWS_LAMBDA_RUNTIME_API || "127.0.0.1:9001";
  const colon = api.lastIndexOf(":");
  return { host: api.slice(0, colon).replace(/^\[|\]$/g, ""), port: Number(api.slice(colon + 1)) };
}

function send(method, path, body) {
  return new Promise((resolve, reject) => {
    const headers = { "content-length": body ? body.length : 0 };
    const req = http.request({ ...endpoint(), agent, method, path, headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function failure(res) {
  let code = "Error";
  let message = res.body.toString("utf8");
  try {
    const parsed = JSON.parse(message);
    code = parsed.code || code;
    message = parsed.error || message;
  } catch (_) {
    // not JSON: the text is the message
  }
  return new KvError(code, `${message} (${res.status})`, res.status);
}

async function call(method, path, body) {
  const res = await send(method, path, body);
  if (res.status >= 200 && res.status < 300) return res;
  throw failure(res);
}

function bytesOf(value) {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  if (typeof value === "string") return Buffer.from(value, "utf8");
  return Buffer.from(JSON.stringify(value), "utf8");
}

function ttlOf(opts) {
  const ttl = opts && (opts.ttl !== undefined ? opts.ttl : opts.expirationTtl);
  if (ttl === undefined || ttl === null) return undefined;
  if (!Number.isInteger(ttl) || ttl < 1) throw new KvError("BadRequest", `ttl must be whole seconds, at least 1 (got ${ttl})`, 400);
  return ttl;
}

function decode(body, type) {
  if (type === "bytes" || type === "arrayBuffer") return new Uint8Array(body);
  if (type === "json") return JSON.parse(body.toString("utf8"));
  return body.toString("utf8");
}

class Namespace {
  constructor(name) {
    if (typeof name !== "string" || !name) throw new TypeError("kv(NAME): NAME is the [kv.NAME] of nimbus.toml");
    this.name = name;
  }

  _path(key, query) {
    let p = `${PREFIX}/${encodeURIComponent(this.name)}`;
    if (key !== undefined) p += `/${encodeURIComponent(String(key))}`;
    const q = Object.entries(query || {}).filter(([, v]) => v !== undefined && v !== null);
    if (q.length) p += "?" + q.map(([k, v]) => `${k}=${encodeURIComponent(String(v))}`).join("&");
    return p;
  }

  /** The value (a string; `{type: "json"}` parses it, `{type: "bytes"}` gives a Uint8Array), or null. */
  async get(key, opts = {}) {
    const found = await this.getWithVersion(key, opts);
    return found === null ? null : found.value;
  }

  /** `{value, version, expiration}` (expiration: Unix seconds, or null), or null when absent. */
  async getWithVersion(key, opts = {}) {
    const res = await send("GET", this._path(key));
    if (res.status === 404 && failure(res).code === "NoSuchKey") return null;
    if (res.status !== 200) throw failure(res);
    const expires = res.headers["x-nimbus-kv-expires"];
    return {
      value: decode(res.body, typeof opts === "string" ? opts : opts.type),
      version: Number(res.headers["x-nimbus-kv-version"]),
      expiration: expires ? Number(expires) / 1000 : null,
    };
  }

  /** Write a value (string, bytes, or anything else as JSON); `{ttl: seconds}`. Returns its version. */
  async put(key, value, opts = {}) {
    const res = await call("PUT", this._path(key, { ttl: ttlOf(opts) }), bytesOf(value));
    return JSON.parse(res.body).version;
  }

  /** Delete a key; true when it was there. */
  async delete(key) {
    const res = await call("DELETE", this._path(key));
    return JSON.parse(res.body).deleted;
  }

  /** `{keys: [{name, expiration}], cursor}` in key byte order; cursor is null on the last page. */
  async list(opts = {}) {
    const { prefix, cursor, limit } = opts;
    const res = await call("GET", this._path(undefined, { prefix, cursor, limit }));
    const page = JSON.parse(res.body);
    return {
      keys: page.keys.map((k) => ({ name: k.name, expiration: k.expiresMs == null ? null : k.expiresMs / 1000 })),
      cursor: page.cursor,
    };
  }

  /** Add `by` atomically (an absent key counts as 0); `{ttl}` applies when this call creates the key. */
  async increment(key, by = 1, opts = {}) {
    const res = await call("POST", this._path(key, { increment: by, ttl: ttlOf(opts) }));
    return JSON.parse(res.body).value;
  }

  /** Write only if the key is at `expectedVersion` (null: only if absent): the new version, or null on a conflict. */
  async compareAndSwap(key, expectedVersion, value, opts = {}) {
    const query = { ifVersion: expectedVersion === null || expectedVersion === undefined ? 0 : expectedVersion, ttl: ttlOf(opts) };
    const res = await send("PUT", this._path(key, query), bytesOf(value));
    if (res.status === 409 && failure(res).code === "VersionConflict") return null;
    if (res.status !== 200) throw failure(res);
    return JSON.parse(res.body).version;
  }
}

function kv(name) {
  return new Namespace(name);
}

/**
 * Run `promise` after the response (the shape of `@vercel/functions`' waitUntil): the caller
 * gets the response at once, the invocation (and its instance) stays busy until the promise
 * settles or the function's timeout ends it. Same as `context.waitUntil(promise)`.
 */
function waitUntil(promise) {
  const hook = globalThis[Symbol.for("nimbus.waitUntil")];
  if (typeof hook !== "function") throw new Error("waitUntil() works only inside a nimbus function (runtime = \"node\")");
  hook(promise);
}

module.exports = { kv, KvError, waitUntil };
