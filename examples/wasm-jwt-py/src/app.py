"""JWT check at the edge: reject with 401 before the request reaches the origin.

A `wasi:http/proxy` component built with componentize-py. For every request it
verifies the HS256 JWT in `Authorization: Bearer …` with the standard library only
(signature, `exp`, `nbf`, and `aud` when JWT_AUDIENCE is set), then either

- forwards the request to UPSTREAM_URL through `wasi:http/outgoing-handler`, with
  the token's subject in `x-jwt-sub`, and streams the origin's answer back; or
- without UPSTREAM_URL, answers 200 with the verified claims as JSON.

A bad or missing token gets 401, a JSON body `{"error": "…"}` and a
`WWW-Authenticate: Bearer …` challenge (RFC 6750).

Environment (`env` in nimbus.toml): JWT_SECRET (required), UPSTREAM_URL,
JWT_AUDIENCE. componentize-py snapshots the module at build time and refills
`os.environ` from the host on the first request, so read it in the handler, never
at import time.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from typing import Any, Optional, cast
from urllib import parse

import poll_loop
from componentize_py_types import Err, Ok
from poll_loop import PollLoop, Sink, Stream
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.types import (
    Fields,
    FutureIncomingResponse,
    IncomingRequest,
    IncomingResponse,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme,
    Scheme_Http,
    Scheme_Https,
    Scheme_Other,
)

# Clock skew tolerated on `exp` and `nbf`, in seconds.
LEEWAY = 30

# Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; wasi:http refuses most
# of them anyway. `x-jwt-sub` from the client is dropped so it cannot be forged.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
    "x-jwt-sub",
}


class Rejected(Exception):
    """The request is not let through: `status`, a reason for the client, and
    whether the token was invalid (as opposed to absent)."""

    def __init__(self, status: int, reason: str, invalid_token: bool = True):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.invalid_token = invalid_token


def b64url_decode(segment: str) -> bytes:
    if not segment or any(c in segment for c in "+/="):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def verify(token: str, secret: bytes, audience: Optional[str], now: float) -> dict[str, Any]:
    """The claims of an HS256 `token`, or `Rejected` saying what is wrong with it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise Rejected(401, "malformed token: expected three dot-separated parts")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = json.loads(b64url_decode(header_b64))
        payload = json.loads(b64url_decode(payload_b64))
        signature = b64url_decode(signature_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Rejected(401, "malformed token: a part is not base64url-encoded JSON")
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise Rejected(401, "malformed token: header and payload must be JSON objects")
    # Only HS256: never trust the token to choose its own algorithm ("none", RS256 with
    # the secret as a public key, …).
    if header.get("alg") != "HS256":
        raise Rejected(401, f"unsupported algorithm {header.get('alg')!r}: only HS256 is accepted")
    expected = hmac.new(secret, f"{header_b64}.{payload_b64}".encode("ascii"), hashlib.sha256)
    if not hmac.compare_digest(expected.digest(), signature):
        raise Rejected(401, "bad signature")

    exp = payload.get("exp")
    if exp is None:
        raise Rejected(401, "token has no exp claim")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise Rejected(401, "exp claim is not a number")
    if now > exp + LEEWAY:
        raise Rejected(401, "token expired")
    nbf = payload.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
            raise Rejected(401, "nbf claim is not a number")
        if now + LEEWAY < nbf:
            raise Rejected(401, "token not valid yet")
    if audience:
        aud = payload.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if audience not in audiences:
            raise Rejected(401, f"token is not for audience {audience!r}")
    return payload


def bearer_token(headers: list[tuple[str, bytes]]) -> str:
    values = [value for name, value in headers if name == "authorization"]
    if not values:
        raise Rejected(401, "missing bearer token", invalid_token=False)
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Rejected(401, "authorization header is not 'Bearer <token>'", invalid_token=False)
    return token.strip()


def to_scheme(name: str) -> Scheme:
    if name == "http":
        return Scheme_Http()
    if name == "https":
        return Scheme_Https()
    return Scheme_Other(name)


def release(pipe: Any) -> None:
    """Drop what a poll_loop `Sink` or `Stream` still holds, the stream before the body.

    A pipe left open by an early exit would otherwise go to the garbage collector, which
    drops objects in any order, and wasmtime traps when a body is dropped while its
    stream is alive ("resource has children"), killing the instance.
    """
    if pipe is None:
        return
    for name in ("stream", "body"):
        resource = getattr(pipe, name, None)
        setattr(pipe, name, None)
        # `finalizer` is dead once the handle was dropped or moved (e.g. into a
        # failed OutgoingBody.finish); `__exit__` would raise then.
        if resource is not None and resource.finalizer.alive:
            resource.__exit__(None, None, None)


async def respond(
    response_out: ResponseOutparam,
    status: int,
    headers: list[tuple[str, bytes]],
    body: bytes,
) -> None:
    response = OutgoingResponse(Fields.from_list(headers))
    response.set_status_code(status)
    response_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    sink = Sink(response_body)
    try:
        if body:
            await sink.send(body)
        sink.close()
    except Err:
        pass  # the client went away
    finally:
        release(sink)


async def respond_json(
    response_out: ResponseOutparam,
    status: int,
    value: Any,
    extra: Optional[list[tuple[str, bytes]]] = None,
) -> None:
    body = (json.dumps(value, separators=(",", ":")) + "\n").encode()
    headers = [("content-type", b"application/json")] + (extra or [])
    await respond(response_out, status, headers, body)


async def reject(response_out: ResponseOutparam, rejected: Rejected) -> None:
    # RFC 6750 §3.1: no error code when the request carried no token at all.
    challenge = 'Bearer realm="nimbus"'
    if rejected.invalid_token:
        description = rejected.reason.replace("\\", "\\\\").replace('"', '\\"')
        challenge += f', error="invalid_token", error_description="{description}"'
    await respond_json(
        response_out,
        rejected.status,
        {"error": rejected.reason},
        [("www-authenticate", challenge.encode())],
    )


def describe(error: Any) -> str:
    """`ErrorCode_ConnectionRefused()` → `ConnectionRefused`, with its payload if any."""
    name = type(error).__name__.removeprefix("ErrorCode_")
    value = getattr(error, "value", None)
    return name if value is None else f"{name} ({value})"


async def response_of(future: FutureIncomingResponse) -> IncomingResponse:
    """Wait for the response to an outgoing request (`poll_loop.send` without the send)."""
    while True:
        result = future.get()
        if result is None:
            await poll_loop.register(cast(PollLoop, asyncio.get_event_loop()), future.subscribe())
        elif isinstance(result, Ok):
            if isinstance(result.value, Ok):
                return result.value.value
            raise result.value  # Err(ErrorCode)
        else:
            raise result


async def forward(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    upstream: str,
    subject: str,
) -> None:
    """Send `request` to `upstream` with `x-jwt-sub: subject`; stream the answer back."""
    target = parse.urlsplit(upstream)
    path_with_query = request.path_with_query() or "/"
    headers = [
        (name, value) for name, value in request.headers().entries() if name not in HOP_BY_HOP
    ]
    headers.append(("x-jwt-sub", subject.encode()))
    # The origin sees the host it was asked for, as behind any reverse proxy.
    authority = request.authority()
    if authority:
        headers.append(("x-forwarded-host", authority.encode()))

    outgoing = OutgoingRequest(Fields.from_list(headers))
    outgoing.set_method(request.method())
    outgoing.set_scheme(to_scheme(target.scheme))
    outgoing.set_authority(target.netloc)
    outgoing.set_path_with_query(target.path.rstrip("/") + path_with_query)
    outgoing_body = outgoing.body()

    try:
        # Hand the request to the host first, then stream its body: the host buffers
        # one chunk, so a larger body waits for the host to read it. (Not via
        # `asyncio.ensure_future(poll_loop.send(…))`: PollLoop blocks in `poll` before it
        # runs a task scheduled meanwhile, so the send would never start.)
        future = outgoing_handler.handle(outgoing, None)
        sink = Sink(outgoing_body)
        incoming = Stream(request.consume())
        try:
            while (chunk := await incoming.next()) is not None:
                await sink.send(chunk)
            sink.close()
        except Err:
            pass  # the host stopped taking the body: the origin failed or answered early, see below
        finally:
            release(incoming)
            release(sink)
        upstream_response = await response_of(future)
    except Err as err:  # a wasi:http ErrorCode: connection refused, DNS error, timeout, …
        await respond_json(response_out, 502, {"error": f"upstream request failed: {describe(err.value)}"})
        return

    response_headers = [
        (name, value)
        for name, value in upstream_response.headers().entries()
        if name not in HOP_BY_HOP
    ]
    response = OutgoingResponse(Fields.from_list(response_headers))
    response.set_status_code(upstream_response.status())
    response_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    sink = Sink(response_body)
    stream = Stream(upstream_response.consume())
    try:
        while (chunk := await stream.next()) is not None:
            await sink.send(chunk)
        sink.close()
    except Err:
        # The host closes the body once it has sent `content-length` bytes (so the
        # last write can see StreamError_Closed), or when the client went away.
        pass
    finally:
        release(stream)
        release(sink)


async def handle_async(request: IncomingRequest, response_out: ResponseOutparam) -> None:
    secret = os.environ.get("JWT_SECRET", "")
    if not secret:
        await respond_json(response_out, 500, {"error": "JWT_SECRET is not set for this function"})
        return
    try:
        token = bearer_token(request.headers().entries())
        claims = verify(token, secret.encode(), os.environ.get("JWT_AUDIENCE") or None, time.time())
    except Rejected as rejected:
        await reject(response_out, rejected)
        return

    subject = claims.get("sub")
    upstream = os.environ.get("UPSTREAM_URL", "")
    if not upstream:
        await respond_json(response_out, 200, {"verified": True, "claims": claims})
        return
    if not isinstance(subject, str) or not subject:
        await reject(response_out, Rejected(401, "token has no sub claim"))
        return
    await forward(request, response_out, upstream, subject)


class IncomingHandler(exports.IncomingHandler):
    """The `wasi:http/incoming-handler` export."""

    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        # One event loop per request, on `wasi:io/poll`.
        loop = PollLoop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(handle_async(request, response_out))
        loop.close()
