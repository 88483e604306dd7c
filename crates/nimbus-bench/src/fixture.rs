//! The bench app written to a temp dir: one hello handler in Node and in Python (the same
//! logic), the nimbus manifest that deploys them, and the bare reference servers that call the
//! very same handler files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The two process runtimes the bench compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Node,
    Python,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::Node, Lang::Python];

    /// The `runtime = "…"` value, also used in function names and routes.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Node => "node",
            Lang::Python => "python",
        }
    }
}

/// What `write` laid out on disk.
pub struct Fixture {
    pub root: PathBuf,
    pub app: PathBuf,
    pub data: PathBuf,
    pub node_code: PathBuf,
    pub python_code: PathBuf,
    pub node_server: PathBuf,
    pub python_server: PathBuf,
}

impl Fixture {
    pub fn code(&self, lang: Lang) -> &Path {
        match lang {
            Lang::Node => &self.node_code,
            Lang::Python => &self.python_code,
        }
    }
}

/// The handler's answer; every response is checked against it.
pub const BODY: &str = "hello";

const NODE_HANDLER: &str = r#"// nimbus-bench hello handler (Node); handler.py is the same logic in Python.
exports.handler = async (event, context) => ({ statusCode: 200, body: 'hello' });
"#;

const PYTHON_HANDLER: &str = r#""""nimbus-bench hello handler (Python); index.js is the same logic in Node."""


def handler(event, context):
    return {"statusCode": 200, "body": "hello"}
"#;

/// Bare Node reference: `http.createServer` calling the same handler file per request.
const NODE_SERVER: &str = r#"'use strict';
// nimbus-bench bare reference server: node's own http server calling the same handler file
// per request (usage: node bare_server.js CODE_DIR PORT). One process, one event loop.
const http = require('http');
const path = require('path');
const { handler } = require(path.join(process.argv[2], 'index.js'));
const port = Number(process.argv[3]);
const context = { functionName: 'bare' };
const server = http.createServer((req, res) => {
  const event = { rawPath: req.url, requestContext: { http: { method: req.method } } };
  Promise.resolve()
    .then(() => handler(event, context))
    .then(
      (r) => {
        res.writeHead(r.statusCode || 200, { 'content-type': 'text/plain' });
        res.end(String(r.body));
      },
      (e) => {
        res.writeHead(500);
        res.end(String(e));
      },
    );
});
server.keepAliveTimeout = 120000;
server.listen(port, '127.0.0.1');
"#;

/// Bare Python reference. `http.server` imports email, socketserver, html… (tens of ms of
/// start-up) and serialises on one thread, so the fastest stdlib server is a single-threaded
/// epoll loop over the C `_socket` module — the same import diet as nimbus's own bootstrap.
const PYTHON_SERVER: &str = r#""""nimbus-bench bare reference server (Python, stdlib only).

Usage: python3 -S bare_server.py CODE_DIR PORT

HTTP/1.1 keep-alive over C ``_socket`` with one epoll loop (like Node's event loop), calling
the same handler file per request. Only what a GET hello needs: request line, headers,
Content-Length bodies, pipelining.
"""

import sys
import _socket
import select

code_dir, port = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, code_dir)
from handler import handler  # noqa: E402


class Context:
    function_name = "bare"


CTX = Context()


def respond(head):
    line_end = head.find(b"\r\n")
    first = head if line_end < 0 else head[:line_end]
    parts = first.split(b" ")
    method = parts[0].decode("latin-1")
    path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
    event = {"rawPath": path, "requestContext": {"http": {"method": method}}}
    try:
        result = handler(event, CTX)
        status = int(result.get("statusCode", 200))
        body = str(result.get("body", "")).encode()
    except Exception as e:  # noqa: BLE001
        status, body = 500, repr(e).encode()
    return b"HTTP/1.1 %d OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)


def body_length(head):
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i < 0:
        return 0
    j = lower.find(b"\r\n", i + 2)
    return int(lower[i + 17 : (j if j >= 0 else len(lower))])


def send(sock, data):
    try:
        sock.sendall(data)
    except BlockingIOError:
        sock.setblocking(True)
        sock.sendall(data)
        sock.setblocking(False)


listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(1024)
listener.setblocking(False)
lfd = listener.fileno()
ep = select.epoll()
ep.register(lfd, select.EPOLLIN)
conns = {}

while True:
    for fd, _ev in ep.poll():
        if fd == lfd:
            while True:
                try:
                    cfd, _addr = listener._accept()
                except (BlockingIOError, InterruptedError):
                    break
                c = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, cfd)
                c.setblocking(False)
                c.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                conns[cfd] = [c, b""]
                ep.register(cfd, select.EPOLLIN)
            continue
        st = conns.get(fd)
        if st is None:
            continue
        c = st[0]
        try:
            chunk = c.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            chunk = b""
        if not chunk:
            ep.unregister(fd)
            c.close()
            del conns[fd]
            continue
        buf = st[1] + chunk
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            n = body_length(head)
            if len(buf) < end + 4 + n:
                break
            buf = buf[end + 4 + n :]
            out.append(respond(head))
        st[1] = buf
        if out:
            try:
                send(c, b"".join(out))
            except OSError:
                ep.unregister(fd)
                c.close()
                del conns[fd]
"#;

/// Functions the manifest declares for one language: `hello-LANG` (latency, one instance),
/// `tput-LANG` (throughput, two instances: one per core) and `cold-LANG-i` (first requests).
pub fn hello_route(lang: Lang) -> String {
    format!("/{}", lang.as_str())
}
pub fn tput_route(lang: Lang) -> String {
    format!("/tput/{}", lang.as_str())
}
pub fn cold_route(lang: Lang, i: usize) -> String {
    format!("/cold/{}/{i}", lang.as_str())
}
pub fn cold_function(lang: Lang, i: usize) -> String {
    format!("cold-{}-{i}", lang.as_str())
}

fn manifest(cold: usize) -> Result<String> {
    let mut m = String::from("# Written by nimbus-bench; deleted when the run ends.\nname = \"bench\"\n");
    let mut routes = String::new();
    for lang in Lang::ALL {
        let l = lang.as_str();
        let handler = match lang {
            Lang::Node => "index.handler",
            Lang::Python => "handler.handler",
        };
        let mut funcs: Vec<(String, u32, String)> =
            vec![(format!("hello-{l}"), 1, hello_route(lang)), (format!("tput-{l}"), 2, tput_route(lang))];
        funcs.extend((0..cold).map(|i| (cold_function(lang, i), 1, cold_route(lang, i))));
        for (name, max, route) in funcs {
            write!(
                m,
                "\n[functions.{name}]\nruntime = \"{l}\"\nhandler = \"{handler}\"\ncode = \"functions/hello-{l}\"\nmax_instances = {max}\nkeep_alive = \"10m\"\n"
            )?;
            write!(routes, "\n[[routes]]\nmethod = \"GET\"\npath = \"{route}\"\nfunction = \"{name}\"\n")?;
        }
    }
    m.push_str(&routes);
    Ok(m)
}

fn put(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Lay out the app under `root` with `cold` never-run functions per language.
pub fn write(root: &Path, cold: usize) -> Result<Fixture> {
    let app = root.join("app");
    let node_code = app.join("functions/hello-node");
    let python_code = app.join("functions/hello-python");
    put(&node_code.join("index.js"), NODE_HANDLER)?;
    put(&python_code.join("handler.py"), PYTHON_HANDLER)?;
    put(&app.join("nimbus.toml"), &manifest(cold)?)?;
    let node_server = root.join("bare/bare_server.js");
    let python_server = root.join("bare/bare_server.py");
    put(&node_server, NODE_SERVER)?;
    put(&python_server, PYTHON_SERVER)?;
    Ok(Fixture {
        root: root.to_owned(),
        data: root.join("data"),
        app,
        node_code,
        python_code,
        node_server,
        python_server,
    })
}
