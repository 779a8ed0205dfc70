//! The admin API as both sides speak it: the typed bodies of its requests and
//! answers, and the client that sends them (the directory's CLI and the
//! sidecar). The directory serves these same types, so a renamed field fails
//! to compile on both sides instead of reading as 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::model::{Database, DbLoss, DbPosition, Loss, Repo};
use crate::sign::Signer;

/// A call that did not succeed: the one line to show, and the HTTP status and
/// stable reason code when the directory answered with a refusal.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct ApiError {
    pub msg: String,
    pub status: Option<u16>,
    pub reason: Option<String>,
}

impl ApiError {
    pub fn new(msg: impl Into<String>) -> Self {
        ApiError {
            msg: msg.into(),
            status: None,
            reason: None,
        }
    }
}

/// Every refusal's body: a message and a stable reason code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Refusal {
    pub error: Option<String>,
    pub reason: Option<String>,
}

/// The answer to every change: the zone and its serial after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed {
    pub zone: String,
    pub serial: u32,
}

/// A repository as `GET /v1/repos[/REPO]` shows it: the model's fields, the
/// master's version and the hosts a read may go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoInfo {
    pub name: String,
    pub master: String,
    pub replicas: Vec<String>,
    /// Writes applied, per host.
    pub versions: BTreeMap<String, u64>,
    pub max_lag: u64,
    /// No writes now: read-only by configuration, frozen, or no master in service.
    pub readonly: bool,
    /// The freeze message, while frozen (`repo freeze`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
    pub lost: Vec<Loss>,
    pub auto_failover: bool,
    /// The master's version.
    pub version: u64,
    /// The hosts a read may go to: within `max_lag` of the master (of the
    /// highest version in service, when the master is not).
    pub readers: Vec<String>,
}

impl RepoInfo {
    /// The answer for `repo`, whose readers are `readers`, read-only or not.
    pub fn new(repo: &Repo, readers: Vec<String>, readonly: bool) -> Self {
        RepoInfo {
            name: repo.name.clone(),
            master: repo.master.clone(),
            replicas: repo.replicas.clone(),
            versions: repo.versions.clone(),
            max_lag: repo.max_lag,
            readonly,
            frozen: repo.frozen.clone(),
            lost: repo.lost.clone(),
            auto_failover: repo.auto_failover,
            version: repo.master_version(),
            readers,
        }
    }

    /// A host's version (0 if it has none).
    pub fn version_of(&self, host: &str) -> u64 {
        self.versions.get(host).copied().unwrap_or(0)
    }
}

/// A database as `GET /v1/dbs[/DB]` shows it: the model's fields and what
/// the directory derives from them (docs/dns-schema.md, "Databases").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbInfo {
    pub name: String,
    pub master: String,
    pub replicas: Vec<String>,
    pub port: u16,
    pub max_lag_s: u64,
    /// The freeze message, while frozen.
    pub frozen: Option<String>,
    /// No writes: frozen, or the master is not in service.
    pub readonly: bool,
    /// Each host's last reported position.
    pub positions: BTreeMap<String, DbPosition>,
    /// Replicas kept out of `read.`, and why.
    pub lagging: BTreeMap<String, String>,
    /// The hosts `read.DB.db` gives.
    pub readers: Vec<String>,
    /// The host `write.DB.db` gives, unless read-only.
    pub writer: Option<String>,
    pub lost: Vec<DbLoss>,
}

impl DbInfo {
    /// The answer for `d`, given what the zone derives: `readonly` and the readers.
    pub fn new(d: &Database, readonly: bool, readers: Vec<String>) -> Self {
        DbInfo {
            name: d.name.clone(),
            master: d.master.clone(),
            replicas: d.replicas.clone(),
            port: d.port,
            max_lag_s: d.max_lag_s,
            frozen: d.frozen.clone(),
            readonly,
            positions: d.positions.clone(),
            lagging: d
                .replicas
                .iter()
                .filter_map(|h| Some((h.clone(), d.lag_of(h)?)))
                .collect(),
            readers,
            writer: (!readonly).then(|| d.master.clone()),
            lost: d.lost.clone(),
        }
    }
}

/// `PUT /v1/repos/REPO/versions/HOST`: a host's version of a repository; the
/// master gives the write lease it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionReport {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// What a sidecar says in its heartbeat.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct HeartbeatReport {
    /// Since when (unix ms) it has been routing on answers past their TTL, if it is now.
    #[serde(default)]
    pub stale_since: Option<u64>,
    /// Its last finished stale episode, (from, to) in unix ms, until acknowledged.
    #[serde(default)]
    pub last_stale: Option<(u64, u64)>,
    /// The replication positions of the databases this host serves, as its
    /// sidecar read them (SPEC "Databases"); empty on other hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<crate::model::DbPositionReport>,
}

/// The directory's answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// When to send the next one.
    pub next_ms: u64,
    /// The finished stale episode (from, to) now in the audit log.
    #[serde(default)]
    pub ack_stale: Option<(u64, u64)>,
}

/// A connection to the admin API.
pub struct Client {
    base: Uri,
    signer: Option<(SigningKey, String)>,
    key_path: Option<PathBuf>,
    zone: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

/// How long a connection to the directory may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long one call (request and whole answer) may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Client {
    /// A client of the directory at `server` (`http://HOST:PORT`), signing
    /// changes with the key file `key` and naming `zone` in every call.
    pub fn new(server: &str, key: Option<&Path>, zone: Option<String>) -> Result<Self, ApiError> {
        let base: Uri = server
            .parse()
            .map_err(|e| ApiError::new(format!("--server {server:?} is not a URL: {e}")))?;
        if base.scheme_str() != Some("http") || base.authority().is_none() {
            return Err(ApiError::new(format!(
                "--server {server:?} must be http://HOST:PORT"
            )));
        }
        let signer = match key {
            Some(p) => {
                let k = keys::read(p).map_err(|e| ApiError::new(e.to_string()))?;
                let fpr = keys::public(&k).fingerprint();
                Some((k, fpr))
            }
            None => None,
        };
        Ok(Client {
            base,
            signer,
            key_path: key.map(Path::to_path_buf),
            zone,
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

    fn uri(&self, path: &str) -> Result<Uri, ApiError> {
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or("");
        let mut pq = path.to_string();
        if let Some(z) = &self.zone {
            pq.push(if pq.contains('?') { '&' } else { '?' });
            pq.push_str("zone=");
            pq.push_str(z);
        }
        format!("http://{authority}{pq}")
            .parse()
            .map_err(|e| ApiError::new(format!("bad request path {pq:?}: {e}")))
    }

    /// Sends a request; signs it when `sign` is set. Returns the body of a 2xx.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        sign: bool,
    ) -> Result<Bytes, ApiError> {
        let uri = self.uri(path)?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| ApiError::new(e.to_string()))?;
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
                return Err(ApiError::new(
                    "this command changes the directory: pass --key FILE (or set SWITCHBOARD_KEY) with an admin key",
                ));
            };
            Signer { key, keyid }
                .sign(&method, &uri, headers, &body, crate::time::unix_secs())
                .map_err(|e| ApiError::new(format!("cannot sign the request: {e}")))?;
        }
        // A partitioned directory drops packets rather than refusing them: bound
        // the whole call, so a write hook or a script fails instead of hanging.
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                ApiError::new(format!("cannot reach the directory at {}: {e}", self.base))
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::new(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok::<_, ApiError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                ApiError::new(format!(
                    "the directory at {} did not answer within {} s",
                    self.base,
                    CALL_TIMEOUT.as_secs()
                ))
            })??;
        if status.is_success() {
            return Ok(bytes);
        }
        let refusal = serde_json::from_slice::<Refusal>(&bytes).ok();
        let reason = refusal.as_ref().and_then(|r| r.reason.clone());
        let msg = refusal
            .and_then(|r| r.error)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        let hint = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match &self.key_path {
                Some(p) => format!(" (signed with {})", p.display()),
                None => String::new(),
            },
            _ => String::new(),
        };
        Err(ApiError {
            msg: format!("{msg}{hint} [HTTP {}]", status.as_u16()),
            status: Some(status.as_u16()),
            reason,
        })
    }

    /// A read, as the type the directory serves.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let b = self.call(Method::GET, path, vec![], false).await?;
        serde_json::from_slice(&b).map_err(|e| {
            ApiError::new(format!(
                "the directory sent an answer this build cannot read: {e}"
            ))
        })
    }

    /// A signed change with a typed body, and its typed answer.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ApiError::new(format!("cannot encode the request: {e}")))?;
        let b = self.call(method, path, body, true).await?;
        serde_json::from_slice(&b).map_err(|e| {
            ApiError::new(format!(
                "the directory sent an answer this build cannot read: {e}"
            ))
        })
    }

    /// `GET /v1/repos`.
    pub async fn repos(&self) -> Result<Vec<RepoInfo>, ApiError> {
        self.get("/v1/repos").await
    }

    /// `GET /v1/dbs`.
    pub async fn dbs(&self) -> Result<Vec<DbInfo>, ApiError> {
        self.get("/v1/dbs").await
    }

    /// `GET /v1/dbs/DB`.
    pub async fn db(&self, db: &str) -> Result<DbInfo, ApiError> {
        self.get(&format!("/v1/dbs/{db}")).await
    }

    /// `GET /v1/repos/REPO`.
    pub async fn repo(&self, repo: &str) -> Result<RepoInfo, ApiError> {
        self.get(&format!("/v1/repos/{repo}")).await
    }

    /// `PUT /v1/repos/REPO/versions/HOST`, signed by the host's key.
    pub async fn report_version(
        &self,
        repo: &str,
        host: &str,
        report: &VersionReport,
    ) -> Result<Changed, ApiError> {
        self.send(
            Method::PUT,
            &format!("/v1/repos/{repo}/versions/{host}"),
            report,
        )
        .await
    }

    /// `POST /v1/hosts/HOST/heartbeat`, signed by the host's key.
    pub async fn heartbeat(
        &self,
        host: &str,
        report: &HeartbeatReport,
    ) -> Result<HeartbeatReply, ApiError> {
        self.send(Method::POST, &format!("/v1/hosts/{host}/heartbeat"), report)
            .await
    }
}
