//! The admin CLI: commands that talk to a running directory's admin API.
//!
//! Each family lives in its own file (`host`, `bind`, `repo`, `zone`, `admin`,
//! `status`). Changes are signed with `--key`. Output is a human table by
//! default and the API's JSON with `--json`. Every failure is one line on stderr
//! and a non-zero exit.

pub mod admin;
pub mod bind;
pub mod console;
pub mod events;
pub mod host;
pub mod repo;
pub mod status;
pub mod zone;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::keys;
use crate::sign::Signer;

/// A CLI failure: the one line to print, and the HTTP status when the
/// directory answered with a refusal.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct CliError {
    pub msg: String,
    pub status: Option<u16>,
}

impl CliError {
    pub fn new(msg: impl Into<String>) -> Self {
        CliError {
            msg: msg.into(),
            status: None,
        }
    }
}

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub server: String,
    pub key: Option<PathBuf>,
    pub json: bool,
    pub zone: Option<String>,
}

/// A connection to the admin API.
pub struct Client {
    base: Uri,
    signer: Option<(SigningKey, String)>,
    key_path: Option<PathBuf>,
    zone: Option<String>,
    pub json: bool,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

/// How long a connection to the directory may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long one call (request and whole answer) may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Client {
    pub fn new(g: &Global) -> Result<Self, CliError> {
        let base: Uri = g
            .server
            .parse()
            .map_err(|e| CliError::new(format!("--server {:?} is not a URL: {e}", g.server)))?;
        if base.scheme_str() != Some("http") || base.authority().is_none() {
            return Err(CliError::new(format!(
                "--server {:?} must be http://HOST:PORT",
                g.server
            )));
        }
        let signer = match &g.key {
            Some(p) => {
                let k = keys::read(p).map_err(|e| CliError::new(e.to_string()))?;
                let fpr = keys::public(&k).fingerprint();
                Some((k, fpr))
            }
            None => None,
        };
        Ok(Client {
            base,
            signer,
            key_path: g.key.clone(),
            zone: g.zone.clone(),
            json: g.json,
            http: {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
                HyperClient::builder(TokioExecutor::new()).build(connector)
            },
        })
    }

    /// `http://HOST:PORT` of the directory this client talks to.
    pub fn base(&self) -> String {
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or("");
        format!("http://{authority}")
    }

    fn uri(&self, path: &str) -> Result<Uri, CliError> {
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or("");
        let mut pq = path.to_string();
        if let Some(z) = &self.zone {
            pq.push(if pq.contains('?') { '&' } else { '?' });
            pq.push_str("zone=");
            pq.push_str(z);
        }
        format!("http://{authority}{pq}")
            .parse()
            .map_err(|e| CliError::new(format!("bad request path {pq:?}: {e}")))
    }

    /// Sends a request; signs it when `sign` is set. Returns the body of a 2xx.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        sign: bool,
    ) -> Result<Bytes, CliError> {
        let uri = self.uri(path)?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| CliError::new(e.to_string()))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let headers = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&host) {
            headers.insert(http::header::HOST, v);
        }
        if !body.is_empty() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if sign {
            let Some((key, keyid)) = &self.signer else {
                return Err(CliError::new(
                    "this command changes the directory: pass --key FILE (or set SWITCHBOARD_KEY) with an admin key",
                ));
            };
            Signer { key, keyid }
                .sign(&method, &uri, headers, &body, crate::admin::unix_now())
                .map_err(|e| CliError::new(format!("cannot sign the request: {e}")))?;
        }
        // A partitioned directory drops packets rather than refusing them: bound
        // the whole call, so a write hook or a script fails instead of hanging.
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                CliError::new(format!("cannot reach the directory at {}: {e}", self.base))
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CliError::new(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok::<_, CliError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                CliError::new(format!(
                    "the directory at {} did not answer within {} s",
                    self.base,
                    CALL_TIMEOUT.as_secs()
                ))
            })??;
        if status.is_success() {
            return Ok(bytes);
        }
        let msg = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        let hint = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match &self.key_path {
                Some(p) => format!(" (signed with {})", p.display()),
                None => String::new(),
            },
            _ => String::new(),
        };
        Err(CliError {
            msg: format!("{msg}{hint} [HTTP {}]", status.as_u16()),
            status: Some(status.as_u16()),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let b = self.call(Method::GET, path, vec![], false).await?;
        serde_json::from_slice(&b)
            .map_err(|e| CliError::new(format!("the directory sent bad JSON: {e}")))
    }

    /// A signed change with a JSON body; prints the outcome.
    pub async fn change(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        done: &str,
    ) -> Result<(), CliError> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let b = self.call(method, path, body, true).await?;
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        if self.json {
            println!("{v}");
        } else {
            let serial = v.get("serial").and_then(Value::as_u64).unwrap_or(0);
            println!("{done} (zone serial {serial})");
        }
        Ok(())
    }

    /// Prints `v` as JSON when `--json`, else runs `human`.
    pub fn show(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v)
        }
    }
}

/// Formats rows as aligned columns under a header.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON field as display text.
pub fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        Some(Value::Null) | None => "-".to_string(),
        Some(x) => x.to_string(),
    }
}

/// `keygen --out FILE`: writes a new admin or host key and prints its public half.
pub fn keygen(out: &Path, json: bool) -> Result<(), CliError> {
    let key = keys::generate();
    keys::write(out, &key).map_err(|e| CliError::new(e.to_string()))?;
    let public = keys::public(&key);
    if json {
        println!(
            "{}",
            serde_json::json!({"file": out.display().to_string(), "public_key": public.to_base64(), "fingerprint": public.fingerprint()})
        );
    } else {
        println!("wrote {} (mode 0600)", out.display());
        println!("public key:  {}", public.to_base64());
        println!("fingerprint: {}", public.fingerprint());
    }
    Ok(())
}
