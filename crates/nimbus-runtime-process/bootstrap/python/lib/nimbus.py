"""nimbus's own client for Python functions, shipped with the runtime: ``import nimbus`` works
with nothing to install. Today it speaks to the KV store::

    import nimbus
    s = nimbus.kv("sessions")
    s.put("k", "v", ttl=60)
    s.get("k")  # b"v"

Calls go to the instance's own endpoint (the Unix socket in NIMBUS_RUNTIME_API_SOCKET when
sandboxed, else AWS_LAMBDA_RUNTIME_API over TCP), which knows which function is calling: the
function's grants decide, and a refusal is a KvError with code "AccessDenied". The wire format
is nimbus's ``/nimbus/v1/kv`` API (docs/kv.md).
"""

import http.client
import json
import os
import socket
import threading
from urllib.parse import quote

__all__ = ["kv", "KvError", "Namespace"]

_PREFIX = "/nimbus/v1/kv"
_local = threading.local()


class KvError(Exception):
    """A refused or failed KV call; ``code`` names it (AccessDenied, NoSuchNamespace, ...)."""

    def __init__(self, code, message, status):
        super().__init__(f"{message} ({status})")
        self.code = code
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def _connection():
    conn = getattr(_local, "conn", None)
    if conn is None:
        path = os.environ.get("NIMBUS_RUNTIME_API_SOCKET")
        if path:
            conn = _UnixConnection(path)
        else:
            host, _, port = os.environ.get("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001").rpartition(":")
            conn = http.client.HTTPConnection(host.strip("[]"), int(port))
        _local.conn = conn
    return conn


def _send(method, path, body=None):
    """(status, headers, body) of one call; a reused connection the server closed is retried once."""
    for attempt in (0, 1):
        conn = _connection()
        try:
            conn.request(method, path, body=body if body is not None else b"")
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            _local.conn = None
            if attempt == 1:
                raise


def _failure(status, body):
    code, message = "Error", body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
        code = parsed.get("code") or code
        message = parsed.get("error") or message
    except ValueError:
        pass
    return KvError(code, message, status)


def _call(method, path, body=None):
    status, headers, data = _send(method, path, body)
    if 200 <= status < 300:
        return json.loads(data)
    raise _failure(status, data)


def _bytes(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def _ttl(ttl):
    if ttl is None:
        return None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
        raise KvError("BadRequest", f"ttl must be whole seconds, at least 1 (got {ttl!r})", 400)
    return ttl


class Namespace:
    """The keys of one KV namespace (``[kv.NAME]`` in nimbus.toml)."""

    def __init__(self, name):
        if not isinstance(name, str) or not name:
            raise TypeError("kv(NAME): NAME is the [kv.NAME] of nimbus.toml")
        self.name = name

    def _path(self, key=None, **query):
        p = f"{_PREFIX}/{quote(self.name, safe='')}"
        if key is not None:
            p += "/" + quote(str(key), safe="")
        q = [f"{k}={quote(str(v), safe='')}" for k, v in query.items() if v is not None]
        return p + ("?" + "&".join(q) if q else "")

    def get(self, key):
        """The value as bytes, or None when absent (or expired)."""
        found = self.get_with_version(key)
        return None if found is None else found[0]

    def get_with_version(self, key):
        """(value, version), or None when absent: the version is what compare_and_swap expects."""
        status, headers, body = _send("GET", self._path(key))
        if status == 404 and _failure(status, body).code == "NoSuchKey":
            return None
        if status != 200:
            raise _failure(status, body)
        return body, int(headers.get("x-nimbus-kv-version", "0"))

    def put(self, key, value, ttl=None):
        """Write a value (bytes, str, or anything else as JSON), expiring after ttl seconds; returns its version."""
        return _call("PUT", self._path(key, ttl=_ttl(ttl)), _bytes(value))["version"]

    def delete(self, key):
        """Delete a key; True when it was there."""
        return _call("DELETE", self._path(key))["deleted"]

    def list(self, prefix="", cursor=None, limit=1000):
        """{"keys": [{"name", "expiration"}], "cursor"} in key byte order; cursor is None on the last page.
        expiration is Unix seconds (or None)."""
        page = _call("GET", self._path(prefix=prefix or None, cursor=cursor, limit=limit))
        keys = [
            {"name": k["name"], "expiration": None if k.get("expiresMs") is None else k["expiresMs"] / 1000}
            for k in page["keys"]
        ]
        return {"keys": keys, "cursor": page.get("cursor")}

    def increment(self, key, by=1, ttl=None):
        """Add ``by`` atomically (an absent key counts as 0) and return the sum; ttl applies when this
        call creates the key."""
        return _call("POST", self._path(key, increment=int(by), ttl=_ttl(ttl)))["value"]

    def compare_and_swap(self, key, expected_version, value, ttl=None):
        """Write only if the key is at expected_version (None: only if absent): the new version, or None
        on a conflict."""
        path = self._path(key, ifVersion=expected_version or 0, ttl=_ttl(ttl))
        status, _, body = _send("PUT", path, _bytes(value))
        if status == 409 and _failure(status, body).code == "VersionConflict":
            return None
        if status != 200:
            raise _failure(status, body)
        return json.loads(body)["version"]


def kv(name):
    """The KV namespace ``name``; the function needs a grant on it."""
    return Namespace(name)
