// Cloudflare-Workers-style `addEventListener('fetch', …)` on top of a hand-written
// `wasi:http/incoming-handler` export.
//
// componentize-js can wire `addEventListener('fetch')` to wasi:http by itself
// (StarlingMonkey's "fetch-event" feature), but that FetchEvent is a singleton that
// is never reset: the second request an instance serves fails with "FetchEvent#
// respondWith can't be called twice on the same event" and hangs
// (bytecodealliance/StarlingMonkey#247, still open for componentize-js 0.23.0).
// nimbus reuses instances (`instance_reuse = true`), so this module exports the
// handler itself and gives every request a fresh event. Exporting `incomingHandler`
// turns StarlingMonkey's own fetch-event off; `fetch()` for outbound requests keeps
// working.

import {
  Fields,
  IncomingBody,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.10';
import { getEnvironment } from 'wasi:cli/environment@0.2.10';

const fetchListeners = [];
const nativeAddEventListener = globalThis.addEventListener;

globalThis.addEventListener = function addEventListener(type, listener, options) {
  if (type === 'fetch') {
    fetchListeners.push(listener);
    return;
  }
  if (typeof nativeAddEventListener === 'function') {
    nativeAddEventListener.call(globalThis, type, listener, options);
  }
};

let cachedEnv = null;

/// The function's environment (`env` in nimbus.toml), read through
/// wasi:cli/environment. componentize-js runs the module's top level at build time
/// (Wizer), so call this from a handler, never at module scope: there it would see
/// the build machine's environment, frozen into the component.
export function env() {
  if (cachedEnv === null) {
    cachedEnv = Object.fromEntries(getEnvironment());
  }
  return cachedEnv;
}

class WorkersFetchEvent {
  #response = null;
  #pending = [];

  constructor(request) {
    this.type = 'fetch';
    this.request = request;
  }

  respondWith(response) {
    if (this.#response !== null) {
      throw new TypeError('FetchEvent.respondWith() was already called for this request');
    }
    this.#response = Promise.resolve(response);
  }

  waitUntil(promise) {
    this.#pending.push(Promise.resolve(promise));
  }

  passThroughOnException() {}

  get responded() {
    return this.#response !== null;
  }

  get response() {
    return this.#response;
  }

  get pending() {
    return this.#pending;
  }
}

const METHODS = {
  get: 'GET', head: 'HEAD', post: 'POST', put: 'PUT', delete: 'DELETE',
  connect: 'CONNECT', options: 'OPTIONS', trace: 'TRACE', patch: 'PATCH',
};

// Headers wasi:http refuses from a guest (wasmtime-wasi-http's DEFAULT_FORBIDDEN_HEADERS):
// Fields.fromList throws a header-error on any of them.
const FORBIDDEN = new Set([
  'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection',
  'transfer-encoding', 'upgrade', 'host', 'http2-settings',
]);

const decoder = new TextDecoder();
const encoder = new TextEncoder();

// Resources are disposed of explicitly, child before parent: left to the garbage
// collector they go in any order, and wasmtime traps when a body is dropped while its
// stream is alive ("resource has children").
function readBody(wasiRequest) {
  const body = wasiRequest.consume();
  const stream = body.stream();
  const chunks = [];
  let length = 0;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = stream.blockingRead(65536n);
      } catch (err) {
        if (err?.payload?.tag === 'closed') break;
        throw err;
      }
      chunks.push(chunk);
      length += chunk.length;
    }
  } finally {
    stream[Symbol.dispose]();
  }
  IncomingBody.finish(body)[Symbol.dispose]();
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

function toRequest(wasiRequest) {
  const m = wasiRequest.method();
  const method = m.tag === 'other' ? m.val : METHODS[m.tag];
  const scheme = wasiRequest.scheme();
  const proto = scheme?.tag === 'HTTPS' ? 'https' : 'http';
  const authority = wasiRequest.authority() ?? 'localhost';
  const url = `${proto}://${authority}${wasiRequest.pathWithQuery() ?? '/'}`;
  const headers = new Headers();
  for (const [name, value] of wasiRequest.headers().entries()) {
    headers.append(name, decoder.decode(value));
  }
  const body = method === 'GET' || method === 'HEAD' ? undefined : readBody(wasiRequest);
  return new Request(url, { method, headers, body });
}

function writeResponse(response, body, responseOut) {
  const fields = [];
  for (const [name, value] of response.headers) {
    if (!FORBIDDEN.has(name)) fields.push([name, encoder.encode(value)]);
  }
  const outgoing = new OutgoingResponse(Fields.fromList(fields));
  outgoing.setStatusCode(response.status);
  const outgoingBody = outgoing.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: outgoing });
  const stream = outgoingBody.write();
  // The host closes the body once it has sent `content-length` bytes (so the last write
  // can fail with `closed`), or when the client went away: then there is nothing to do.
  let closed = false;
  try {
    // blocking-write-and-flush takes at most 4096 bytes a call.
    for (let offset = 0; offset < body.length; offset += 4096) {
      stream.blockingWriteAndFlush(body.subarray(offset, offset + 4096));
    }
  } catch (err) {
    if (err?.payload?.tag !== 'closed') throw err;
    closed = true;
  } finally {
    stream[Symbol.dispose]();
  }
  try {
    OutgoingBody.finish(outgoingBody, undefined);
  } catch (err) {
    if (!closed) throw err;
  }
}

function errorResponse(err) {
  console.error(`fetch handler failed: ${err?.stack ?? err}`);
  return new Response('Internal Server Error\n', {
    status: 500,
    headers: { 'content-type': 'text/plain; charset=utf-8' },
  });
}

export const incomingHandler = {
  async handle(wasiRequest, responseOut) {
    let event = null;
    let response;
    try {
      event = new WorkersFetchEvent(toRequest(wasiRequest));
      for (const listener of fetchListeners) {
        listener.call(globalThis, event);
        if (event.responded) break;
      }
      if (!event.responded) throw new Error('no fetch listener called event.respondWith()');
      response = await event.response;
      if (!(response instanceof Response)) {
        throw new TypeError('event.respondWith() needs a Response (or a promise of one)');
      }
    } catch (err) {
      response = errorResponse(err);
    }
    let body;
    try {
      body = new Uint8Array(await response.arrayBuffer());
    } catch (err) {
      response = errorResponse(err);
      body = new Uint8Array(await response.arrayBuffer());
    }
    writeResponse(response, body, responseOut);
    if (event !== null) await Promise.allSettled(event.pending);
  },
};
