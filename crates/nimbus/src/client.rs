//! The HTTP client the CLI commands use, and how they find the server and the token.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::up::{TOKEN_FILE, URL_FILE};
use crate::Remote;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

pub struct Client {
    base: String,
    token: String,
    http: HyperClient<Connector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as the API type `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the server answered {} with a body this nimbus does not understand (is the server a different version?)",
                self.status
            )
        })
    }

    /// The server's error message, for a failed call: the management API's `error`, the Invoke
    /// API's `message`, or the body as text.
    pub fn error_text(&self) -> String {
        #[derive(serde::Deserialize)]
        struct AnyError {
            error: Option<String>,
            message: Option<String>,
        }
        match serde_json::from_slice::<AnyError>(&self.body) {
            Ok(AnyError { error: Some(m), .. } | AnyError { message: Some(m), .. }) => m,
            _ => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// HTTP, and HTTPS trusting what `crate::tls::client_config` says. `--ca-cert` is only read
/// for an https server.
fn connector(base: &str, remote: &Remote, dev_cert: Option<&Path>) -> Result<Connector> {
    let tls = if base.starts_with("https://") {
        crate::tls::client_config(remote.ca_cert.as_deref(), dev_cert)?
    } else {
        crate::tls::client_config(None, None)?
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build())
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl Client {
    /// Flags and env first, then the `.nimbus` directory of `app_dir` (a running `nimbus up`
    /// writes its URL and token there, and its development certificate when it made one).
    pub fn new(remote: &Remote, app_dir: &Path) -> Result<Client> {
        let data_dir: PathBuf = app_dir.join(".nimbus");
        let found = remote.server.is_none();
        let base = remote.server.clone().or_else(|| read_trimmed(&data_dir.join(URL_FILE))).ok_or_else(|| {
            anyhow!("no server to talk to: pass --server URL (or set NIMBUS_SERVER), or run this inside an app directory with a running `nimbus up`")
        })?;
        let token = remote.token.clone().or_else(|| read_trimmed(&data_dir.join(TOKEN_FILE))).ok_or_else(|| {
            anyhow!(
                "no token: pass --token (or set NIMBUS_TOKEN); `nimbus up` writes the admin token to DATA_DIR/{TOKEN_FILE}"
            )
        })?;
        let dev_cert = Some(data_dir.join(crate::tls::CERT_FILE)).filter(|p| found && p.is_file());
        let http = HyperClient::builder(TokioExecutor::new()).build(connector(&base, remote, dev_cert.as_deref())?);
        Ok(Client { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    pub async fn call(&self, method: Method, path: &str, body: Bytes, headers: &[(&str, String)]) -> Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(body)).context("cannot build the request")?;
        let resp = self.http.request(req).await.map_err(|e| {
            let hint = if crate::tls::is_tls_error(&e) {
                "no TLS connection could be made; if it has a self-signed certificate, pass --ca-cert PATH \
                 (or set NIMBUS_CA_CERT; `nimbus up --tls-self-signed` writes DATA_DIR/tls/cert.pem)"
            } else {
                "is `nimbus up` running?"
            };
            anyhow::Error::new(e).context(format!("cannot reach nimbus at {}; {hint}", self.base))
        })?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("the server closed the connection mid-response")?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// Where deployment `version` is previewed: `vN.DOMAIN`, on this server's scheme and port.
    pub fn preview_url(&self, version: u64, domain: &str) -> String {
        let (scheme, rest) = self.base.split_once("://").unwrap_or(("http", &self.base));
        let port = rest.rsplit_once(':').map(|(_, p)| p).filter(|p| p.bytes().all(|b| b.is_ascii_digit()));
        match port {
            Some(port) => format!("{scheme}://v{version}.{domain}:{port}/"),
            None => format!("{scheme}://v{version}.{domain}/"),
        }
    }

    /// `GET path`, answered as the API type `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.call(Method::GET, path, Bytes::new(), &[]).await?;
        if !r.status.is_success() {
            bail!("{} ({})", r.error_text(), r.status);
        }
        r.parse()
    }

    /// `GET path` of a read a cluster merges (records, logs, usage), answered as `T`, and the
    /// nodes the answer lacks (`x-nimbus-missing-nodes`), each said on stderr: a partial
    /// answer is still an answer.
    pub async fn get_merged<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.call(Method::GET, path, Bytes::new(), &[]).await?;
        if !r.status.is_success() {
            bail!("{} ({})", r.error_text(), r.status);
        }
        let missing = r.headers.get(nimbus_core::peers::MISSING_NODES_HEADER).and_then(|v| v.to_str().ok());
        if let Some(nodes) = missing.filter(|m| !m.is_empty()) {
            eprintln!(
                "partial answer: node(s) {} did not answer in time; what they hold is missing (`nimbus nodes` lists the live nodes)",
                nodes.replace(',', ", ")
            );
        }
        r.parse()
    }

    /// `DELETE path`, answered as the API type `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.call(Method::DELETE, path, Bytes::new(), &[]).await?;
        if !r.status.is_success() {
            bail!("{} ({})", r.error_text(), r.status);
        }
        r.parse()
    }

    /// `POST path` with a JSON body, answered as `T`; a failure is `what failed: <server's error>`.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize, what: &str) -> Result<T> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        let r = self.call(Method::POST, path, body, &[("content-type", "application/json".into())]).await?;
        if !r.status.is_success() {
            bail!("{what}: {}", r.error_text());
        }
        r.parse()
    }
}
