//! The running sidecar: who this host is and everything a request handler needs,
//! plus the steps both listeners share (serve a repository here, send a Conduit
//! call to the web backend, answer with a JSON error).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use switchboard_proto::schema;
use switchboard_proto::sign::ReplayGuard;

use crate::directory::answers::DirectoryClient;
use crate::identity::{Identity, KeyInfo};
use crate::metrics::Metrics;
use crate::outbound::forward::{self, BoxBody, Forwarder};
use crate::outbound::spool::SpoolError;
use crate::repo::git::{GitRequest, Repos};
use crate::repo::hook::Hooks;
use crate::route::{Access, GitPath, RouteError, Router, Target};

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
    /// Verifies cluster-call signatures, batched under load.
    pub verifier: crate::verify::BatchVerifier,
    /// Where large bodies are spooled while they are hashed.
    pub spool_dir: PathBuf,
    /// The write hook for receive-pack runs on repositories this host is master of.
    pub hooks: Hooks,
    /// Where the cluster listener is bound, once it is (`run` only).
    pub cluster_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Callers already looked up and their parsed keys, valid until the directory changes.
    pub callers: std::sync::Mutex<HashMap<String, Caller>>,
    pub limits: Limits,
    /// SSH sessions tunnelled here, open now, per calling host.
    pub tunnels: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// What one request or one peer may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request body on any listener (a git push is one body).
    pub max_body: u64,
    /// SSH sessions one host may tunnel here at once.
    pub max_tunnels_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: MAX_BODY,
            max_tunnels_per_peer: 32,
        }
    }
}

/// One open tunnel of a peer; frees its slot when dropped.
pub struct TunnelSlot {
    tunnels: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    host: String,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut t = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.host);
            }
        }
    }
}

/// Refuses a body declared (`Content-Length`) larger than `limit`, before a
/// byte of it is read: nothing waits for, or spools, a body that will not do.
pub fn check_declared(
    headers: &HeaderMap,
    limit: u64,
) -> Result<(), Box<Response<crate::outbound::forward::BoxBody>>> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Box::new(too_large(limit)));
    }
    Ok(())
}

fn too_large(limit: u64) -> Response<BoxBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("the request body is larger than the {limit}-byte limit"),
    )
}

/// The answer to a body that could not be spooled: too large (413, as a
/// declared one), cut off by the client (400), or no room on disk (500).
pub fn spool_refusal(e: SpoolError) -> Response<BoxBody> {
    match e {
        SpoolError::TooLarge(limit) => too_large(limit),
        SpoolError::Read(_) => error(StatusCode::BAD_REQUEST, "body-unreadable", e.to_string()),
        SpoolError::Disk(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "spool-failed",
            e.to_string(),
        ),
    }
}

/// Refuses a body declared larger than `limit` before reading it, and cuts one
/// that grows past it while it streams (the backend then sees an aborted body).
pub fn limit_body(
    headers: &HeaderMap,
    body: hyper::body::Incoming,
    limit: u64,
) -> Result<crate::outbound::forward::BoxBody, Box<Response<crate::outbound::forward::BoxBody>>> {
    check_declared(headers, limit)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(http_body_util::Limited::new(body, limit)
        .map_err(|e| e as crate::outbound::forward::BoxError)
        .boxed())
}

/// A calling host as the directory knows it, with its key ready to verify.
#[derive(Clone)]
pub struct Caller {
    pub info: KeyInfo,
    pub key: ed25519_dalek::VerifyingKey,
    generation: u64,
    expires: std::time::Instant,
}

/// How long a looked-up caller is trusted without asking the directory again
/// (the change feed drops it sooner when the directory changes).
const CALLER_TTL: std::time::Duration = std::time::Duration::from_secs(5);

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
    if let Ok(v) = HeaderValue::from_str(reason) {
        r.headers_mut().insert(REASON, v);
    }
    r
}

/// The header that carries an error's reason code, for sidecars reading a peer's answer.
pub const REASON: &str = "x-switchboard-reason";

/// What the directory says right now about this host and a repository.
pub struct Standing {
    pub master: String,
    pub current: bool,
}

impl Sidecar {
    /// Takes one of `host`'s tunnel slots, or says why not.
    pub fn take_tunnel(
        &self,
        host: &str,
    ) -> Result<TunnelSlot, Box<Response<crate::outbound::forward::BoxBody>>> {
        let mut t = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        let open = t.get(host).copied().unwrap_or(0);
        if open >= self.limits.max_tunnels_per_peer {
            return Err(Box::new(error(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-tunnels",
                format!(
                    "{host} already has {open} SSH sessions open on {}; the limit is {}",
                    self.me.host, self.limits.max_tunnels_per_peer
                ),
            )));
        }
        t.insert(host.to_string(), open + 1);
        Ok(TunnelSlot {
            tunnels: self.tunnels.clone(),
            host: host.to_string(),
        })
    }

    /// The host whose key has fingerprint `keyid`, if it may call: known, available,
    /// with a valid key. Cached (keys are parsed once) until the directory changes.
    pub async fn caller(
        &self,
        keyid: &str,
    ) -> Result<(KeyInfo, ed25519_dalek::VerifyingKey), (&'static str, String)> {
        let generation = self.dir.generation();
        let now = std::time::Instant::now();
        if let Some(c) = self
            .callers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(keyid)
        {
            if c.generation == generation && c.expires > now {
                return Ok((c.info.clone(), c.key));
            }
        }
        let info = match crate::identity::lookup(&self.dir, keyid).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                return Err((
                    "unknown-key",
                    format!("key {keyid} belongs to no host in the directory"),
                ))
            }
            Err(e) => return Err(("unknown-key", format!("cannot look key {keyid} up: {e}"))),
        };
        match self.dir.host_available(&info.host).await {
            Ok(Some(true)) => {}
            Ok(_) => {
                return Err((
                    "host-unavailable",
                    format!("host {} is marked unavailable in the directory", info.host),
                ))
            }
            Err(e) => {
                return Err((
                    "unknown-key",
                    format!("cannot check host {}: {e}", info.host),
                ))
            }
        }
        let Ok(key) = info.key.verifying_key() else {
            return Err((
                "unknown-key",
                format!("the key of {} is not a valid ed25519 key", info.host),
            ));
        };
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if callers.len() > 4096 {
            callers.clear();
        }
        callers.insert(
            keyid.to_string(),
            Caller {
                info: info.clone(),
                key,
                generation,
                expires: now + CALLER_TTL,
            },
        );
        Ok((info, key))
    }

    /// Whether a signed call's `Host` names this host's cluster listener: its port,
    /// and the bound address, one of this host's addresses in the directory, or
    /// `HOST.node.ZONE`. A call signed for another host is refused here.
    pub async fn is_my_authority(&self, authority: &str) -> bool {
        let Some(bound) = self.cluster_addr.get() else {
            return false;
        };
        let Ok(uri_auth) = authority.parse::<http::uri::Authority>() else {
            return false;
        };
        if uri_auth.port_u16() != Some(bound.port()) {
            return false;
        }
        let host = uri_auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            if !bound.ip().is_unspecified() && ip == bound.ip() {
                return true;
            }
            return self
                .dir
                .addresses(&self.me.host)
                .await
                .is_ok_and(|a| a.contains(&ip));
        }
        let node = format!(
            "{}.{}.{}",
            self.me.host,
            schema::NODE,
            self.dir.zone().to_ascii().trim_end_matches('.')
        );
        host.trim_end_matches('.').eq_ignore_ascii_case(&node)
    }

    /// Asks the directory, uncached, who is master of `repo` and whether this
    /// host's copy is within `max_lag` of the master's version. For a read, the
    /// last answer does when the directory cannot be reached (serve-stale); a
    /// write needs the directory's answer now.
    pub async fn standing(
        &self,
        repo: &str,
        access: Access,
    ) -> Result<Option<Standing>, crate::directory::answers::DirError> {
        let Some(t) = self
            .dir
            .txt_fresh(&format!("{repo}.{}", schema::REPO), access == Access::Read)
            .await?
        else {
            return Ok(None);
        };
        let num = |k: &str| t.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let master = t.get(schema::txt::MASTER).cloned().unwrap_or_default();
        let mine = num(&format!("{}{}", schema::txt::VERSION_OF, self.me.host));
        let theirs = num(schema::txt::VERSION);
        let current = self.repos.exists(repo)
            && mine <= theirs
            && mine.saturating_add(num(schema::txt::MAX_LAG)) >= theirs;
        Ok(Some(Standing {
            current: current || master == self.me.host,
            master,
        }))
    }

    /// Where a repository request goes; a read that would be served by this host's
    /// copy goes to the master instead if the copy turns out to be behind.
    pub async fn target(&self, repo: &str, access: Access) -> Result<Target, RouteError> {
        let t = self.router.repo(repo, access).await?;
        if t == Target::Local && access == Access::Read {
            if let Ok(Some(s)) = self.standing(repo, Access::Read).await {
                if !s.current {
                    tracing::info!(
                        repo,
                        "this copy is behind the master; reading from the master"
                    );
                    return self.router.repo(repo, Access::Write).await;
                }
            }
        }
        Ok(t)
    }

    /// Serves a git request from this host's copy. Writes are taken only by the
    /// master (checked uncached) and run the write hook; reads only from a copy
    /// that is current. The master creates a repository it lacks.
    pub async fn git_local(
        &self,
        gp: &GitPath,
        method: &Method,
        headers: &HeaderMap,
        body: BoxBody,
    ) -> Response<BoxBody> {
        let repo = gp.repo.as_str();
        let write = gp.access == Access::Write;
        let standing = match self.standing(repo, gp.access).await {
            Ok(Some(s)) => s,
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
        let is_master = standing.master == self.me.host;
        if write && !is_master {
            return error(
                StatusCode::FORBIDDEN,
                "not-master",
                format!(
                    "{} is not the master of {repo} ({} is): writes go to the master",
                    self.me.host, standing.master
                ),
            );
        }
        if !is_master && !standing.current {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "stale-replica",
                format!(
                    "{}'s copy of {repo} is behind the master; read from the master",
                    self.me.host
                ),
            );
        }
        if !self.repos.exists(repo) {
            if let Err(e) = self.repos.create(repo).await {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "git-failed",
                    e.to_string(),
                );
            }
        }
        let hooks = (write && is_master).then_some(&self.hooks);
        match self
            .repos
            .http_backend(
                GitRequest {
                    repo,
                    rest: gp.rest,
                    method,
                    query: gp.query,
                    headers,
                },
                body,
                hooks,
            )
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
        headers: HeaderMap,
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
        let tag = HeaderValue::from_str(&self.me.host).ok();
        match self
            .forwarder
            .local(base, method, path_and_query, headers, tag, body)
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
