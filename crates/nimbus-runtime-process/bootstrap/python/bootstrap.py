"""nimbus bootstrap for runtime = "python" (Python 3.11+, standard library only).

Run by nimbus as ``python3 -S bootstrap.pyc`` (compiled from this file once per nimbus start;
the source is the fallback) with PYTHONUNBUFFERED=1; with ``--zygote`` (a prepared sandbox) it
imports first and waits for the instance's environment on stdin (see ``_zygote``).

Speaks the AWS Lambda Runtime API (2018-06-01) to nimbus over one keep-alive
HTTP/1.1 connection on loopback: import the handler named by _HANDLER once, then
loop GET /runtime/invocation/next -> call handler -> POST .../response or .../error.
A handler that returns a generator (or an async generator) streams: one chunked POST
.../response with `Lambda-Runtime-Function-Response-Mode: streaming`, a chunk per yield (a dict
yielded first is the HTTP prelude), an exception after the first chunk as Lambda's error
trailers. ``context.wait_until(work)`` (nimbus): the response carries `Nimbus-Wait-Until: 1`
(header, or trailer when streamed), the work runs, then POST .../invocation/{id}/done
(nimbus-only; official clients never send it).

An ``async def`` handler runs on an event loop kept for the instance (made at its first
invocation), so clients and sessions it keeps between invocations stay on one loop.

With AWS_LAMBDA_MAX_CONCURRENCY = N > 1 (the function's `concurrency`), as Lambda Managed
Instances do for Python: once the handler module is imported, the process forks N - 1
workers; each process (the parent too) polls /next on its own connection and runs one
invocation at a time. They share the instance's process group and cgroup (its memory limit);
a worker dies with the parent (PR_SET_PDEATHSIG), and the parent exits when a worker dies, so
nimbus sees one instance that crashed. Their output lines carry the request id.
An ``async def`` handler with N > 1 is not forked: one process runs up to N invocations at
once on its loop (`_serve_concurrently`), each poller on a non-blocking connection of its own.

Cold start matters, so this file deliberately avoids heavy imports:
  * HTTP is spoken over the C ``_socket`` module directly (``http.client`` pulls
    in email, ssl, urllib, re, ... and costs tens of milliseconds);
  * JSON uses the C accelerator ``_json`` directly (``json`` imports ``re``),
    falling back to the ``json`` module if that is unavailable;
  * ``traceback`` is imported only when an error has to be reported.
"""

import os
import sys
import time
import _socket

# ---------------------------------------------------------------------------
# JSON (C accelerator, no `re`)

try:
    import _json

    class _DecodeContext:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {
            "-Infinity": float("-inf"),
            "Infinity": float("inf"),
            "NaN": float("nan"),
        }.__getitem__
        memo = {}

    _scan_once = _json.make_scanner(_DecodeContext())
    _encode_str = _json.encode_basestring_ascii
    _make_encoder = _json.make_encoder

    def _json_default(o):
        if type(o).__name__ == "Decimal":
            return int(o) if o == o.to_integral_value() else float(o)
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    def json_loads(s):
        s = s.strip(" \t\n\r")
        try:
            obj, end = _scan_once(s, 0)
        except StopIteration as e:
            raise ValueError(f"invalid JSON at char {e.value}") from None
        if end != len(s):
            raise ValueError(f"extra data at char {end}")
        return obj

    def json_dumps(o):
        if type(o) is str:
            return _encode_str(o)
        enc = _make_encoder({}, _json_default, _encode_str, None, ":", ",", False, False, True)
        return "".join(enc(o, 0))

    # self-check (the _json signatures are CPython internals)
    if json_loads(' {"a":[1,2.5,"\\u00e9",null,true]} ') != {"a": [1, 2.5, "\u00e9", None, True]}:
        raise ImportError("unexpected _json behaviour")
    if json_dumps({"a": [1, None, "\u00e9"]}) != '{"a":[1,null,"\\u00e9"]}':
        raise ImportError("unexpected _json behaviour")
except Exception:  # pragma: no cover - fallback for other interpreters
    import json as _json_mod

    json_loads = _json_mod.loads

    def json_dumps(o):
        return _json_mod.dumps(o, separators=(",", ":"))


# ---------------------------------------------------------------------------
# HTTP/1.1 client over one keep-alive socket


class RuntimeApiError(Exception):
    pass


def _import_resource():
    try:
        import resource  # noqa: F401 (read through sys.modules by `answer_and_poll`)
    except ImportError:
        pass


class Connection:
    def __init__(self, address, unix_path=None):
        # In the sandbox the Runtime API is also the instance's own socket: talking to it
        # directly saves the hop through the sandbox's TCP forwarder on every request.
        self.unix_path = unix_path
        if address.startswith("["):
            host, _, port = address[1:].partition("]:")
        else:
            host, _, port = address.rpartition(":")
            if not host:
                host, port = port, "80"
        self.host = host
        self.port = int(port)
        self.sock = None
        self.buf = b""
        self.used = False
        # The next event, when the last answer's reply was it (`answer_and_poll`).
        self.polled = None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""
        self.used = False
        self.polled = None

    def _connect(self):
        self.sock = _open(self.host, self.port, self.unix_path)
        self.buf = b""
        self.used = False

    def answer_and_poll(self, path, body, headers):
        """POST an invocation's answer that also asks for the next event (`_answer_headers`):
        nimbus replies with the event, as `GET /next` would, instead of a 202, so each
        invocation costs one request, one reply and one wake-up here. A refused answer is
        refused as usual; `next_event` then polls."""
        headers, while_waiting = _answer_headers(headers)
        self.polled = _polled(self.request("POST", path, body, headers, while_waiting))

    def next_event(self):
        """The next event: the last answer's reply, or `GET /next` now."""
        reply, self.polled = self.polled, None
        return reply if reply is not None else self.request("GET", NEXT)

    def request(self, method, path, body=b"", headers=None, while_waiting=None):
        """Send a request and read its reply; `while_waiting` runs in between."""
        data = _encode(self.host, method, path, body, headers)
        for attempt in (0, 1):
            if self.sock is None:
                self._connect()
            reused = self.used
            try:
                self.sock.sendall(data)
                if while_waiting is not None:
                    while_waiting()
                    while_waiting = None
                return self._read_response()
            except (OSError, RuntimeApiError) as e:
                got_nothing = getattr(e, "got_nothing", isinstance(e, OSError))
                self.close()
                # a reused keep-alive socket the server had closed: retry once
                if attempt == 0 and reused and got_nothing:
                    continue
                raise

    def open_stream(self, path, headers):
        """Start a POST whose body follows in chunks (`send_chunk`, then `finish`)."""
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nTransfer-Encoding: chunked\r\n"
        head += "Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body, Nimbus-Wait-Until\r\n"
        for k, v in headers.items():
            head += f"{k}: {v}\r\n"
        if self.sock is None:
            self._connect()
        self.sock.sendall(head.encode("latin-1") + b"\r\n")

    def send_chunk(self, data):
        if data:
            self.sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")

    def finish(self, trailers):
        """Send the last chunk with `trailers`; the server's answer."""
        t = "0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers.items()) + "\r\n"
        try:
            self.sock.sendall(t.encode("latin-1"))
            return self._read_response()
        except (OSError, RuntimeApiError):
            self.close()
            raise

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise _closed(self.buf)
        self.buf += chunk

    def _read_response(self):
        while True:
            reply = _parse_reply(self.buf, False)
            if reply is not None:
                break
            try:
                self._fill()
            except RuntimeApiError:
                # a reply without a length ends where the connection does
                reply = _parse_reply(self.buf, True)
                if reply is None:
                    raise
                break
        status, headers, body, keep_alive, self.buf = reply
        if keep_alive:
            self.used = True
        else:
            self.close()
        return status, headers, body


class AsyncConnection:
    """`Connection` on the instance's event loop (an asyncio buffered protocol: see
    `_serve_concurrently`): each poller has one, so N invocations in flight are N sockets on
    one loop, which reads every reply that is ready in one wake-up, and no threads."""

    def __init__(self, conn):
        self.host, self.port, self.unix_path = conn.host, conn.port, conn.unix_path
        self.transport = None
        self.rbuf = memoryview(bytearray(65536))  # what the loop reads into (`get_buffer`)
        self.buf = b""
        self.used = False
        self.polled = None
        self.waiter = None  # the future of the reply being awaited

    # -- the protocol's side: asyncio calls these
    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.rbuf

    def buffer_updated(self, nbytes):
        self.buf += self.rbuf[:nbytes]
        self._deliver(False)

    def eof_received(self):
        self._deliver(True)

    def connection_lost(self, exc):
        self.transport = None
        self._deliver(True)
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(_closed(self.buf))
        self.buf = b""

    def pause_writing(self):  # answers are bounded (nimbus caps them): let the buffer take them
        pass

    def resume_writing(self):
        pass

    def _deliver(self, eof):
        w = self.waiter
        if w is None or w.done():
            return
        reply = _parse_reply(self.buf, eof)
        if reply is not None:
            self.waiter = None
            self.buf = reply[4]
            w.set_result(reply)

    # -- the poller's side
    async def answer_and_poll(self, path, body, headers):
        """`Connection.answer_and_poll`."""
        headers, while_waiting = _answer_headers(headers)
        self.polled = _polled(await self.request("POST", path, body, headers, while_waiting))

    async def next_event(self):
        """`Connection.next_event`."""
        reply, self.polled = self.polled, None
        return reply if reply is not None else await self.request("GET", NEXT)

    async def request(self, method, path, body=b"", headers=None, while_waiting=None):
        """`Connection.request`, awaiting the reply on the loop."""
        data = _encode(self.host, method, path, body, headers)
        loop = _loop[0]
        for attempt in (0, 1):
            if self.transport is None:
                sock = _open(self.host, self.port, self.unix_path)
                sock.setblocking(False)
                if self.unix_path:
                    await loop.create_unix_connection(lambda: self, sock=sock)
                else:
                    await loop.create_connection(lambda: self, sock=sock)
                self.buf, self.used = b"", False
            reused = self.used
            self.waiter = loop.create_future()
            self.transport.write(data)
            if while_waiting is not None:
                while_waiting()
                while_waiting = None
            try:
                status, h, body_in, keep_alive, _ = await self.waiter
            except (OSError, RuntimeApiError) as e:
                self.close()
                # a reused keep-alive socket the server had closed: retry once
                if attempt == 0 and reused and getattr(e, "got_nothing", True):
                    continue
                raise
            if keep_alive:
                self.used = True
            else:
                self.close()
            return status, h, body_in

    def close(self):
        t, self.transport = self.transport, None
        if t is not None:
            t.abort()
        self.buf, self.used, self.polled, self.waiter = b"", False, None, None


def _open(host, port, unix_path):
    """A connected blocking socket to the Runtime API: its Unix socket when there is one."""
    if unix_path:
        s, addr = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM), unix_path
    else:
        # bytes host: a str host would make getaddrinfo import the idna codec (and `re`)
        family, socktype, proto, _, addr = _socket.getaddrinfo(
            host.encode("ascii", "ignore"), port, 0, _socket.SOCK_STREAM
        )[0]
        s = _socket.socket(family, socktype, proto)
    try:
        if not unix_path:
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        s.connect(addr)
    except BaseException:
        s.close()
        raise
    return s


def _closed(buf):
    """The error for a connection the Runtime API closed; `got_nothing` when no byte of the
    reply had come (a reused keep-alive connection the server had closed: worth one retry)."""
    err = RuntimeApiError("connection closed by the Runtime API")
    err.got_nothing = not buf
    return err


def _encode(host, method, path, body, headers):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if headers:
        for k, v in headers.items():
            head += f"{k}: {v}\r\n"
    if method != "GET" or body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def _answer_headers(headers):
    """The headers of an answer that asks for the next event (`Nimbus-Next: 1`, nimbus-only),
    and what to run while its reply is awaited. The peak resident set goes with it (the `VmHWM`
    nimbus would otherwise read from /proc). Importing `resource` costs ~0.6 ms: the zygote has
    it already; otherwise it is imported while the first answer waits (nimbus reads /proc for
    that one)."""
    headers = {**headers, "Nimbus-Next": "1"}
    res = sys.modules.get("resource")
    if res is None:
        return headers, _import_resource
    headers["Nimbus-Peak-Rss-Kb"] = str(res.getrusage(res.RUSAGE_SELF).ru_maxrss)
    return headers, None


def _polled(reply):
    """The reply to an answer when it is the next event (or the 410 of a stopping instance)."""
    status, h, _ = reply
    return reply if (status == 200 and "lambda-runtime-aws-request-id" in h) or status == 410 else None


def _parse_reply(buf, eof):
    """The HTTP/1.1 reply at the start of `buf` as (status, headers, body, keep_alive, rest),
    or None while it is incomplete; `eof`: the peer has closed (a reply without a length ends
    there)."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    lines = buf[:i].decode("latin-1").split("\r\n")
    version, status, _ = (lines[0] + "  ").split(" ", 2)
    status = int(status)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    start = i + 4  # the body: sliced only once it is whole (a 6 MB event comes in many reads)
    conn_hdr = headers.get("connection", "").lower()
    keep_alive = conn_hdr != "close" and (version != "HTTP/1.0" or conn_hdr == "keep-alive")
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep_alive, buf[start:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        done = _dechunk(buf, start)
        return None if done is None else (status, headers, done[0], keep_alive, done[1])
    if "content-length" in headers:
        end = start + int(headers["content-length"])
        return None if len(buf) < end else (status, headers, buf[start:end], keep_alive, buf[end:])
    return (status, headers, buf[start:], False, b"") if eof else None


def _dechunk(buf, pos):
    """A whole chunked body in `buf` from `pos` (trailers skipped) and what follows it, or
    None while it is incomplete."""
    out = []
    while True:
        j = buf.find(b"\r\n", pos)
        if j < 0:
            return None
        size = int(buf[pos:j].split(b";", 1)[0].strip(), 16)
        pos = j + 2
        if size == 0:
            while True:  # trailers, up to an empty line
                j = buf.find(b"\r\n", pos)
                if j < 0:
                    return None
                line, pos = buf[pos:j], j + 2
                if not line:
                    return b"".join(out), buf[pos:]
        if len(buf) < pos + size + 2:
            return None
        out.append(buf[pos : pos + size])
        pos += size + 2


# ---------------------------------------------------------------------------
# Context objects


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __init__(self, d):
        self.installation_id = d.get("installation_id")
        self.app_title = d.get("app_title")
        self.app_version_name = d.get("app_version_name")
        self.app_version_code = d.get("app_version_code")
        self.app_package_name = d.get("app_package_name")


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, d):
        c = d.get("client")
        self.client = Client(c) if isinstance(c, dict) else None
        self.custom = d.get("custom")
        self.env = d.get("env")


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, d):
        self.cognito_identity_id = d.get("cognitoIdentityId")
        self.cognito_identity_pool_id = d.get("cognitoIdentityPoolId")


def _parse_json_header(v):
    if not v:
        return None
    try:
        d = json_loads(v)
    except Exception:
        return None
    return d if isinstance(d, dict) else None


class LambdaContext:
    def __init__(self, request_id, deadline_ms, arn, client_context, identity):
        env = os.environ
        self.aws_request_id = request_id
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        try:
            self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0"))
        except ValueError:
            self.memory_limit_in_mb = 0
        self.invoked_function_arn = arn
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self._deadline_ms = deadline_ms
        self._waits = []
        self._trace_id = None  # set by `_next`
        cc = _parse_json_header(client_context)
        self.client_context = ClientContext(cc) if cc is not None else None
        ident = _parse_json_header(identity)
        self.identity = CognitoIdentity(ident) if ident is not None else CognitoIdentity({})

    def wait_until(self, work):
        """nimbus: run `work` (a callable, or an awaitable such as a coroutine) after the
        response; the invocation ends once it returns (or the function's timeout ends it)."""
        if not (callable(work) or hasattr(work, "__await__")):
            raise TypeError(f"wait_until takes a callable or an awaitable, not {type(work).__name__}")
        self._waits.append(work)

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - time.time_ns() // 1_000_000)

    def log(self, msg):
        sys.stdout.write(str(msg))
        sys.stdout.flush()

    def __repr__(self):
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},"
            f"function_name={self.function_name},function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn}])"
        )


# ---------------------------------------------------------------------------
# Errors


def _stack_lines(tb):
    import traceback

    # same shape as AWS's Python runtime: one traceback.format_list() entry per frame
    return traceback.format_list(traceback.extract_tb(tb))


def _error_body(error_type, message, stack):
    try:
        return json_dumps({"errorMessage": message, "errorType": error_type, "stackTrace": stack}).encode()
    except Exception:
        return json_dumps({"errorMessage": repr(message), "errorType": str(error_type), "stackTrace": []}).encode()


def _safe_str(e):
    try:
        return str(e)
    except Exception:
        return "<unprintable %s>" % type(e).__name__


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


def _print_exception(prefix, e):
    try:
        import traceback

        sys.stderr.write(prefix + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    except Exception:
        sys.stderr.write(prefix + _safe_str(e) + "\n")
    _flush()


def _header_safe(s):
    s = "".join(ch for ch in str(s) if " " <= ch <= "~")
    return s or "Unhandled"


# ---------------------------------------------------------------------------
# Init


BASE = "/2018-06-01/runtime"


def _init_error(conn, error_type, message, tb):
    stack = _stack_lines(tb) if tb is not None else []
    sys.stderr.write(f"[ERROR] {error_type}: {message}\n")
    if stack:
        sys.stderr.write("Traceback (most recent call last):\n" + "".join(stack))
    _flush()
    try:
        conn.request(
            "POST",
            BASE + "/init/error",
            _error_body(error_type, message, stack),
            {"Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": error_type},
        )
    except Exception as e:
        sys.stderr.write(f"nimbus bootstrap: could not report init error: {e}\n")
        _flush()
    os._exit(1)


def load_handler(conn, spec):
    modname, dot, fname = spec.rpartition(".")
    if not dot or not modname or not fname:
        _init_error(conn, "Runtime.MalformedHandlerName", f"Bad handler '{spec}': expected 'module.function'", None)
    modname = modname.replace("/", ".")
    try:
        __import__(modname)
        mod = sys.modules[modname]
    except (Exception, SystemExit) as e:
        _init_error(
            conn,
            "Runtime.ImportModuleError",
            f"Unable to import module '{modname}': {type(e).__name__}: {_safe_str(e)}",
            e.__traceback__,
        )
    fn = getattr(mod, fname, None)
    if fn is None:
        _init_error(conn, "Runtime.HandlerNotFound", f"Handler '{fname}' missing on module '{modname}'", None)
    if not callable(fn):
        _init_error(conn, "Runtime.HandlerNotFound", f"Handler '{fname}' on module '{modname}' is not callable", None)
    return fn


# ---------------------------------------------------------------------------
# waitUntil and response streaming

HTTP_INTEGRATION = "application/vnd.awslambda.http-integration-response"


def _settle(ctx):
    """Run the invocation's background work in order (what it adds runs too), in this thread
    after the response went out; a failure is logged, never fatal."""
    for _ in range(1000):
        if not ctx._waits:
            break
        work = ctx._waits.pop(0)
        try:
            if hasattr(work, "__await__"):
                _run(work)
            else:
                result = work()
                if hasattr(result, "__await__"):
                    _run(result)
        except Exception as e:
            _print_exception("wait_until: a background task failed: ", e)
    _flush()


async def _awaited(aw):
    return await aw


# The instance's event loop (see `_instance_loop`).
_loop = [None]


def _instance_loop():
    """The event loop of this process, made at the first async handler, wait_until awaitable
    or async generator and kept: what a handler keeps between invocations (an aiohttp session,
    an async database pool) is bound to the loop it was made on."""
    if _loop[0] is None:
        import asyncio

        _loop[0] = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop[0])
    return _loop[0]


def _run(aw):
    """Run the awaitable `aw` to its end on the instance's loop."""
    return _instance_loop().run_until_complete(_awaited(aw))


def _is_stream(result):
    return hasattr(result, "__anext__") or (hasattr(result, "__next__") and hasattr(result, "send"))


def _chunk(item):
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    raise TypeError(f"a streaming handler yields str or bytes, not {type(item).__name__}")


def _items(result):
    """The chunks of a generator or an async generator (driven by one asyncio loop)."""
    if not hasattr(result, "__anext__"):
        yield from result
        return
    loop = _instance_loop()
    while True:
        try:
            yield loop.run_until_complete(result.__anext__())
        except StopAsyncIteration:
            return


def _stream(conn, base, result, ctx):
    """Stream a generator handler's chunks as one chunked POST. A dict first yielded is the
    HTTP prelude (statusCode, headers, cookies), as Lambda's HttpResponseStream.from."""
    opened = False
    failure = None
    try:
        for item in _items(result):
            if not opened:
                opened = True
                prelude = isinstance(item, dict)
                ctype = HTTP_INTEGRATION if prelude else "application/octet-stream"
                mode = {"Lambda-Runtime-Function-Response-Mode": "streaming", "Content-Type": ctype}
                conn.open_stream(base + "/response", mode)
                if prelude:
                    conn.send_chunk(json_dumps(item).encode("utf-8") + b"\0" * 8)
                    continue
            _flush()
            conn.send_chunk(_chunk(item))
    except Exception as e:
        failure = e
    _flush()
    if failure is not None and not opened:
        return _error(conn, base, ctx, failure)
    if not opened:
        conn.open_stream(base + "/response", {"Lambda-Runtime-Function-Response-Mode": "streaming"})
    trailers = {}
    if failure is not None:
        _print_exception("", failure)
        import base64

        doc = _error_body(type(failure).__name__, _safe_str(failure), _stack_lines(failure.__traceback__))
        trailers["Lambda-Runtime-Function-Error-Type"] = _header_safe(type(failure).__name__)
        trailers["Lambda-Runtime-Function-Error-Body"] = base64.b64encode(doc).decode("ascii")
    if ctx._waits:
        trailers["Nimbus-Wait-Until"] = "1"
    conn.finish(trailers)
    if ctx._waits:
        _settle(ctx)
        conn.request("POST", base + "/done")


def _error(conn, base, ctx, e, error_type=None, message=None):
    _settle(ctx)  # the error answer has no background mode: the work runs first
    _answer_error(conn, base, e, error_type, message)


def _answer_error(conn, base, e, error_type=None, message=None):
    conn.answer_and_poll(base + "/error", _error_of(e, error_type, message), ERR_HEADERS)


def _error_of(e, error_type=None, message=None):
    """The body of an error answer for the exception `e`."""
    return _error_body(error_type or type(e).__name__, message or _safe_str(e), _stack_lines(e.__traceback__))


NEXT = BASE + "/invocation/next"
ERR_HEADERS = {"Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": "Unhandled"}
JSON_HEADERS = {"Content-Type": "application/json"}
WAIT_HEADERS = {"Content-Type": "application/json", "Nimbus-Wait-Until": "1"}


def invoke(conn, handler, base, body, ctx):
    try:
        event = json_loads(body.decode("utf-8")) if body else None
        result = handler(event, ctx)
        if hasattr(result, "__await__"):
            result = _run(result)
    except Exception as e:
        _flush()
        return _error(conn, base, ctx, e)
    if _is_stream(result):
        return _stream(conn, base, result, ctx)
    try:
        payload = json_dumps(result).encode("utf-8")
    except Exception as e:
        _flush()
        return _error(conn, base, ctx, e, "Runtime.ResponseSerializationError", f"Unable to marshal response: {_safe_str(e)}")
    _flush()
    if not ctx._waits:
        conn.answer_and_poll(base + "/response", payload, JSON_HEADERS)
        return
    # The response goes out now; nimbus keeps the invocation open until /done.
    conn.request("POST", base + "/response", payload, WAIT_HEADERS)
    _settle(ctx)
    conn.request("POST", base + "/done")
# Concurrency (AWS_LAMBDA_MAX_CONCURRENCY > 1)

# The request id of the invocation whose code runs (tagged output), or None: a context
# variable, so each of the invocations running at once on the loop has its own.
import contextvars  # noqa: E402 (a C module, no start-up cost)

_current = contextvars.ContextVar("nimbus_request_id", default=None)
# The trace id of the invocation whose code runs, when several run at once (`_TraceEnviron`).
_trace = contextvars.ContextVar("nimbus_trace_id", default=None)


def _stamp():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


class _Tagged:
    """A stdout/stderr whose lines, during an invocation, are written in Lambda's shape
    (timestamp, request id, level, message) so nimbus gives them to their invocation."""

    def __init__(self, stream, level):
        self._stream = stream
        self._level = level
        self._partial = ""

    def write(self, text):
        rid = _current.get()
        if rid is None:
            return self._stream.write(text)
        self._partial += text
        if "\n" in self._partial:
            *lines, self._partial = self._partial.split("\n")
            stamp = _stamp()
            self._stream.write("".join(f"{stamp}\t{rid}\t{self._level}\t{line}\n" for line in lines))
        return len(text)

    def flush(self):
        rid = _current.get()
        if self._partial and rid is not None:
            self._stream.write(f"{_stamp()}\t{rid}\t{self._level}\t{self._partial}\n")
            self._partial = ""
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _tag_output():
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tagged(out, "INFO"), _Tagged(err, "ERROR")
    logging = sys.modules.get("logging")
    if logging is not None:
        # Handlers the module set up at import hold the untagged streams.
        for h in logging.getLogger().handlers:
            stream = getattr(h, "stream", None)
            if stream is out or stream is err:
                h.setStream(sys.stdout if stream is out else sys.stderr)


def _fork_workers(n):
    """Fork `n` workers from this initialised process. Returns True in the parent."""
    parent = os.getpid()
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        prctl = None
    children = []
    for _ in range(n):
        _flush()
        pid = os.fork()
        if pid == 0:
            if prctl is not None:
                prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: die with the parent
            if os.getppid() != parent:
                os._exit(1)
            return False
        children.append(pid)
    _watch_workers(children)
    return True


def _watch_workers(children):
    """Exit the parent (and so the instance) when a worker dies: nimbus then fails every
    invocation in flight and starts a fresh instance, as for any crash."""
    try:
        fds = {os.pidfd_open(pid): pid for pid in children}
    except (AttributeError, OSError):
        return  # no pidfd (old kernel): a dead worker is noticed at its invocation's timeout
    import select
    import threading

    def watch():
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        fd = poller.poll()[0][0]
        sys.__stderr__.write(f"nimbus bootstrap: worker process {fds[fd]} exited; stopping the instance\n")
        sys.__stderr__.flush()
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# ---------------------------------------------------------------------------
# Main loop


def main():
    env = os.environ
    task_root = env.get("LAMBDA_TASK_ROOT") or os.getcwd()
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == here:
        del sys.path[0]  # don't let user modules be shadowed by (or shadow) the bootstrap dir
    sys.path.insert(0, task_root)
    sys.path.append(os.path.join(here, "lib"))  # `import nimbus`, after the function's own modules

    conn = Connection(env.get("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"), env.get("NIMBUS_RUNTIME_API_SOCKET"))
    handler = load_handler(conn, env.get("_HANDLER", ""))
    try:
        workers = int(env.get("AWS_LAMBDA_MAX_CONCURRENCY") or 1)
    except ValueError:
        workers = 1
    if workers > 1 and _is_async(handler):
        _tag_output()
        conn.close()
        return _serve_concurrently(handler, workers, conn)
    if workers > 1:
        _fork_workers(workers - 1)
        # Every process polls on a connection of its own.
        conn = Connection(env.get("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"), env.get("NIMBUS_RUNTIME_API_SOCKET"))
        _tag_output()

    while True:
        rid, body, ctx = _next(conn)
        if workers > 1:
            _current.set(rid)
        trace = ctx._trace_id
        if trace:
            env["_X_AMZN_TRACE_ID"] = trace
        else:
            env.pop("_X_AMZN_TRACE_ID", None)
        invoke(conn, handler, BASE + "/invocation/" + rid, body, ctx)


def _next(conn):
    """The next event on `conn`: its request id, body and context."""
    return _event(conn.next_event())


def _event(reply):
    """The request id, body and context of the reply to `GET /next`."""
    status, h, body = reply
    if status != 200:
        raise RuntimeApiError(f"GET /runtime/invocation/next answered {status}: {body[:200]!r}")
    rid = h.get("lambda-runtime-aws-request-id", "")
    try:
        deadline = int(h.get("lambda-runtime-deadline-ms") or 0)
    except ValueError:
        deadline = 0
    ctx = LambdaContext(
        rid,
        deadline,
        h.get("lambda-runtime-invoked-function-arn"),
        h.get("lambda-runtime-client-context"),
        h.get("lambda-runtime-cognito-identity"),
    )
    ctx._trace_id = h.get("lambda-runtime-trace-id")
    return rid, body, ctx


def _is_async(handler):
    """Whether `handler` is an `async def` function (CO_COROUTINE; not an async generator,
    which streams)."""
    return bool(getattr(getattr(handler, "__code__", None), "co_flags", 0) & 0x80)


# ---------------------------------------------------------------------------
# Async handlers with concurrency > 1: one process, several invocations at once on its loop


def _serve_concurrently(handler, n, conn):
    """Run `n` pollers as tasks on the instance's loop, each on a connection of its own (an
    `AsyncConnection` to where `conn` goes). Each task has its own context, so output tagging
    and `_X_AMZN_TRACE_ID` follow its invocation across awaits."""
    import asyncio

    loop = _instance_loop()
    os.environ = _TraceEnviron(os.environ)
    # A buffered protocol: the loop reads into the connection's own buffer. A plain protocol
    # gets a fresh 256 KB bytes object per read, which glibc may serve with mmap, mremap and
    # munmap every time (measured: a third less throughput when it did).
    protocol = type("AsyncConnection", (AsyncConnection, asyncio.BufferedProtocol), {})

    async def poller():
        aconn = protocol(conn)
        while True:
            rid, body, ctx = _event(await aconn.next_event())
            _current.set(rid)
            _trace.set(ctx._trace_id or "")
            await _invoke_async(aconn, handler, BASE + "/invocation/" + rid, body, ctx)

    async def pollers():
        await asyncio.gather(*(poller() for _ in range(n)))

    loop.run_until_complete(pollers())


async def _invoke_async(conn, handler, base, body, ctx):
    """`invoke` for an async handler running beside others on the loop."""

    async def fail(e, error_type=None, message=None):
        _flush()
        await _settle_async(ctx)  # the error answer has no background mode: the work runs first
        await conn.answer_and_poll(base + "/error", _error_of(e, error_type, message), ERR_HEADERS)

    try:
        event = json_loads(body.decode("utf-8")) if body else None
        result = await handler(event, ctx)
    except Exception as e:
        return await fail(e)
    try:
        payload = json_dumps(result).encode("utf-8")
    except Exception as e:
        return await fail(e, "Runtime.ResponseSerializationError", f"Unable to marshal response: {_safe_str(e)}")
    _flush()
    if not ctx._waits:
        return await conn.answer_and_poll(base + "/response", payload, JSON_HEADERS)
    await conn.request("POST", base + "/response", payload, WAIT_HEADERS)
    await _settle_async(ctx)
    await conn.request("POST", base + "/done")


async def _settle_async(ctx):
    """`_settle` on the running loop."""
    for _ in range(1000):
        if not ctx._waits:
            break
        work = ctx._waits.pop(0)
        try:
            result = work if hasattr(work, "__await__") else work()
            if hasattr(result, "__await__"):
                await result
        except Exception as e:
            _print_exception("wait_until: a background task failed: ", e)
    _flush()


class _TraceEnviron(type(os.environ)):
    """`os.environ` while several invocations run at once in this process:
    `_X_AMZN_TRACE_ID` reads the trace id of the invocation whose code runs (the X-Ray SDK reads
    the variable); everything else is the process's environment. Child processes get the
    process's environment: pass the id on explicitly."""

    def __init__(self, environ):
        super().__init__(environ._data, environ.encodekey, environ.decodekey, environ.encodevalue, environ.decodevalue)

    def __getitem__(self, key):
        if key == "_X_AMZN_TRACE_ID":
            trace = _trace.get()
            if trace:
                return trace
        return super().__getitem__(key)


# ---------------------------------------------------------------------------
# Zygote (a prepared sandbox; see nimbus's crates/nimbus-runtime-process/src/zygote.rs)

# Standard modules handlers commonly import, loaded while the zygote waits (off the request
# path). Nothing of a function runs before the instance's environment is applied.
_ZYGOTE_MODULES = ("json", "base64", "datetime", "collections", "functools", "typing", "traceback", "resource")


def _zygote():
    """Wait, imported, for the instance's environment on stdin (NUL-ended KEY=VALUE entries up
    to end-of-file); apply it as the interpreter would have at start-up, then start normally.
    Nothing on stdin: the prepared sandbox was not needed, exit quietly."""
    # asyncio (~75 ms: it pulls in ssl) only for functions with concurrency > 1, where async
    # handlers run many at once on an event loop (nimbus passes the flag).
    preload = ("asyncio",) if "--preload-asyncio" in sys.argv else ()
    for name in _ZYGOTE_MODULES + preload:
        try:
            __import__(name)
        except Exception:
            pass
    chunks = []
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        os._exit(0)
    env = {}
    for entry in data.split(b"\0"):
        if entry:
            key, eq, value = entry.partition(b"=")
            if not eq:
                raise RuntimeError("an environment entry without '='")
            env[os.fsdecode(key)] = os.fsdecode(value)
    os.environ.clear()
    os.environ.update(env)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # stdin as a normal start has it
    os.close(null)
    time.tzset()
    sys.pycache_prefix = env.get("PYTHONPYCACHEPREFIX") or None
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    # After the script's directory, before the standard library: where Python puts PYTHONPATH.
    sys.path[1:1] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


if __name__ == "__main__":
    try:
        if "--zygote" in sys.argv[1:]:
            _zygote()
        main()
    except KeyboardInterrupt:
        _flush()
        os._exit(130)
    except Exception as e:
        _print_exception("nimbus bootstrap: ", e)
        os._exit(1)
