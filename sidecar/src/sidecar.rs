//! The running sidecar: who this host is and everything a request handler needs,
//! plus the steps both listeners share (serve a repository here, send a Conduit
//! call to the web backend, answer with a JSON error).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use switchboard_directory::schema;
use switchboard_directory::sign::ReplayGuard;

use crate::directory::DirectoryClient;
use crate::forward::{self, BoxBody, Forwarder};
use crate::git::Repos;
use crate::identity::{Identity, KeyInfo};
use crate::metrics::Metrics;
use crate::route::Router;

/// Largest request body routed (a pushed pack included).
pub const MAX_BODY: u64 = 4 << 30;
/// Largest Conduit request body.
pub const MAX_CONDUIT_BODY: u64 = 16 << 20;

/// Shared by every connection of both listeners.
pub struct Sidecar {
    pub identity: Arc<Identity>,
    /// This host, as the directory knows it.
    pub me: KeyInfo,
    pub dir: Arc<DirectoryClient>,
    pub router: Router,
    pub forwarder: Forwarder,
    pub repos: Repos,
    pub web_backend: Option<Uri>,
    pub metrics: Arc<Metrics>,
    pub replay: ReplayGuard,
    /// Where large bodies are spooled while they are hashed.
    pub spool_dir: PathBuf,
}

/// A JSON error answer: `{"error": message, "reason": code}`.
pub fn error(status: StatusCode, reason: &str, message: impl Into<String>) -> Response<BoxBody> {
    let body = serde_json::json!({"error": message.into(), "reason": reason}).to_string();
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl Sidecar {
    /// Serves a git request from this host's copy, creating the repository
    /// when this host is its master and lacks it.
    pub async fn git_local(
        &self,
        repo: &str,
        rest: &str,
        method: &Method,
        query: Option<&str>,
        headers: &HeaderMap,
        body: BoxBody,
    ) -> Response<BoxBody> {
        if !self.repos.exists(repo) {
            let master = match self.dir.txt(&format!("{repo}.{}", schema::REPO)).await {
                Ok(Some(t)) => t.get(schema::txt::MASTER).cloned(),
                Ok(None) => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "unknown-repository",
                        format!("no repository {repo} in the directory"),
                    )
                }
                Err(e) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "directory-unreachable",
                        e.to_string(),
                    )
                }
            };
            if master.as_deref() != Some(self.me.host.as_str()) {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-replicated",
                    format!("{} has no copy of {repo} yet", self.me.host),
                );
            }
            if let Err(e) = self.repos.create(repo).await {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "git-failed",
                    e.to_string(),
                );
            }
        }
        match self
            .repos
            .http_backend(repo, rest, method, query, headers, body)
            .await
        {
            Ok(r) => r,
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git-failed",
                e.to_string(),
            ),
        }
    }

    /// Sends a Conduit call (or any web request) to this host's web backend.
    pub async fn web_local(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: BoxBody,
    ) -> Response<BoxBody> {
        let Some(base) = &self.web_backend else {
            return error(
                StatusCode::BAD_GATEWAY,
                "no-web-backend",
                format!(
                    "{} has no --web-backend to serve this request",
                    self.me.host
                ),
            );
        };
        let mut headers = headers.clone();
        if let Ok(v) = HeaderValue::from_str(&self.me.host) {
            headers.insert("x-switchboard-host", v);
        }
        match self
            .forwarder
            .local(base, method, path_and_query, &headers, body)
            .await
        {
            Ok(r) => forward::stream_back(r),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                "web-backend-unreachable",
                e.to_string(),
            ),
        }
    }
}
