//! The state of a sidecar process, shared by every connection of every listener
//! (and by an `ssh-exec` session): who this host is, the directory client, the
//! router, the forwarder, the repositories, the limits. `Sidecar::build` makes it
//! (the key looked up, the directories made, the write hook installed), for
//! `run` and `ssh-exec` alike; binding and serving the listeners is `server`'s.
//! With it, the steps several handlers share: who is calling, where a
//! repository request goes, and sending a request to the web backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use switchboard_proto::api::ApiError;
use switchboard_proto::schema;
use switchboard_proto::sign::ReplayGuard;

use crate::body::{self, BoxBody};
use crate::directory::answers::{DirError, DirectoryClient};
use crate::directory::apis::Apis;
use crate::identity::{self, Identity, KeyInfo, WhoAmIError};
use crate::metrics::Metrics;
use crate::outbound::forward::Forwarder;
use crate::reply::error;
use crate::repo::git::Repos;
use crate::repo::hook::Hooks;
use crate::repo::sync::Syncer;
use crate::route::{Access, RouteError, Router, Target, WriteRefusal};
use crate::shutdown::Shutdown;
use crate::verify::BatchVerifier;

/// What every mode (`run`, `ssh-exec`) is told.
#[derive(Debug, Clone)]
pub struct Common {
    pub key: PathBuf,
    /// The directory's DNS servers (`--directory`, one or more).
    pub directory: Vec<SocketAddr>,
    /// Its admin API (`--directory-api`, none or more; none: found through
    /// `directory.service.Z`, see `directory::apis`).
    pub directory_api: Vec<String>,
    pub zone: String,
    pub repos: PathBuf,
    pub web_backend: Option<Uri>,
    /// How long a read waits for a behind copy to be brought up to date
    /// before it goes to the master (`--sync-timeout`).
    pub sync_timeout: std::time::Duration,
    /// The cluster channel in TLS 1.3, pinned to the directory's keys (`--cluster-tls`).
    pub cluster_tls: bool,
    /// How calls to other hosts are signed (`--cluster-auth`).
    pub cluster_auth: crate::session::ClusterAuth,
}

/// Why the sidecar's state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    WhoAmI(#[from] WhoAmIError),
    #[error("--directory-api: {0}")]
    Api(#[from] ApiError),
    #[error("cannot create --repos {path}: {source}")]
    Repos {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("cannot install the write hook in {path}: {source}")]
    Hooks {
        path: PathBuf,
        source: std::io::Error,
    },
}

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
    /// The directory's admin API endpoints.
    pub apis: Arc<Apis>,
    pub router: Router,
    pub forwarder: Forwarder,
    pub repos: Repos,
    pub web_backend: Option<Uri>,
    pub metrics: Arc<Metrics>,
    pub replay: ReplayGuard,
    /// Session keys with other hosts, both directions.
    pub sessions: Arc<crate::session::Sessions>,
    /// Verifies cluster-call signatures, batched under load.
    pub verifier: BatchVerifier,
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
    /// The drain signal (SIGTERM): open connections and sessions listen to it.
    pub shutdown: Shutdown,
    /// Fetches from repositories' masters, one per repository at a time.
    pub syncer: Syncer,
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

/// A calling host as the directory knows it, with its key ready to verify.
#[derive(Clone)]
pub struct Caller {
    pub info: Arc<KeyInfo>,
    pub key: ed25519_dalek::VerifyingKey,
    generation: u64,
    expires: std::time::Instant,
}

/// Why a signed call's key may not call this host.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("key {0} belongs to no host in the directory")]
    UnknownKey(String),
    #[error("cannot look key {keyid} up: {source}")]
    Lookup { keyid: String, source: DirError },
    #[error("host {0} is marked unavailable in the directory")]
    Unavailable(String),
    #[error("cannot check host {host}: {source}")]
    Check { host: String, source: DirError },
    #[error("the key of {0} is not a valid ed25519 key")]
    BadKey(String),
}

impl CallerError {
    /// The refusal's reason code (docs/sidecar.md, "Refusals on the cluster listener").
    pub fn reason(&self) -> &'static str {
        match self {
            CallerError::Unavailable(_) => "host-unavailable",
            _ => "unknown-key",
        }
    }
}

/// How long a looked-up caller is trusted without asking the directory again
/// (the change feed drops it sooner when the directory changes).
const CALLER_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// What the directory says right now about this host and a repository.
pub struct Standing {
    pub master: String,
    /// This host is one of its replicas.
    pub replica: bool,
    /// The master's version.
    pub version: u64,
    /// This host's copy may serve reads now: it is the master, within
    /// `max_lag` of the master's version, or (no master in service) one of
    /// the most recent copies the directory sends reads to.
    pub current: bool,
    /// Why writes are refused now, if they are.
    pub refusal: Option<WriteRefusal>,
}

impl Sidecar {
    /// Learns who this host is and builds the state every handler shares;
    /// `shutdown` is the drain signal its connections and sessions listen to.
    pub async fn build(
        c: &Common,
        limits: Limits,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::default());
        let (id, me, dir) =
            identity::who_am_i(&c.key, &c.directory, &c.zone, metrics.clone()).await?;
        let apis = Arc::new(Apis::new(&c.directory_api, dir.clone(), &c.key, &c.zone)?);
        apis.refresh().await;
        std::fs::create_dir_all(&c.repos).map_err(|source| StartError::Repos {
            path: c.repos.clone(),
            source,
        })?;
        let spool_dir = c.repos.join(".switchboard-spool");
        std::fs::create_dir_all(&spool_dir).map_err(|source| StartError::Spool {
            path: spool_dir.clone(),
            source,
        })?;
        let hooks = Hooks::install(&c.repos, &me.host, &c.key, apis.clone(), &c.zone).map_err(
            |source| StartError::Hooks {
                path: c.repos.clone(),
                source,
            },
        )?;
        let tls = if c.cluster_tls {
            Some(crate::tls::ClusterTls::new(&id, &me, dir.clone())?)
        } else {
            None
        };
        let identity = Arc::new(id);
        let sessions = Arc::new(crate::session::Sessions::new(
            c.cluster_auth,
            identity.clone(),
            dir.clone(),
            metrics.clone(),
        ));
        Ok(Arc::new(Sidecar {
            identity: identity.clone(),
            router: Router::new(dir.clone(), me.host.clone()),
            forwarder: Forwarder::with_sessions(
                identity,
                crate::outbound::client::Client::new(tls),
                sessions.clone(),
            ),
            sessions,
            repos: Repos::new(c.repos.clone()),
            web_backend: c.web_backend.clone(),
            verifier: BatchVerifier::spawn(metrics.clone()),
            metrics,
            replay: Default::default(),
            spool_dir,
            hooks,
            cluster_addr: Default::default(),
            callers: Default::default(),
            limits,
            tunnels: Default::default(),
            shutdown,
            syncer: Syncer::new(c.sync_timeout),
            dir,
            apis,
            me,
        }))
    }

    /// Takes one of `host`'s tunnel slots, or says why not.
    pub fn take_tunnel(&self, host: &str) -> Result<TunnelSlot, Box<Response<BoxBody>>> {
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
    ) -> Result<(Arc<KeyInfo>, ed25519_dalek::VerifyingKey), CallerError> {
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
        let info = identity::lookup(&self.dir, keyid)
            .await
            .map_err(|source| CallerError::Lookup {
                keyid: keyid.to_string(),
                source,
            })?
            .ok_or_else(|| CallerError::UnknownKey(keyid.to_string()))?;
        match self.dir.host_available(&info.host).await {
            Ok(Some(true)) => {}
            Ok(_) => return Err(CallerError::Unavailable(info.host)),
            Err(source) => {
                return Err(CallerError::Check {
                    host: info.host,
                    source,
                })
            }
        }
        let Ok(key) = info.key.verifying_key() else {
            return Err(CallerError::BadKey(info.host));
        };
        let info = Arc::new(info);
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
        // `IP:port`, as peers sign it, is read without copying it first.
        let (port, host): (_, Result<std::net::IpAddr, String>) =
            match authority.parse::<std::net::SocketAddr>() {
                // A zone (`[fe80::1%3]`) names a link, not this host.
                Ok(std::net::SocketAddr::V6(a)) if a.scope_id() != 0 => return false,
                Ok(a) => (Some(a.port()), Ok(a.ip())),
                Err(_) => match authority.parse::<http::uri::Authority>() {
                    Ok(a) => {
                        let host = a.host().trim_start_matches('[').trim_end_matches(']');
                        (a.port_u16(), host.parse().map_err(|_| host.to_string()))
                    }
                    Err(_) => return false,
                },
            };
        if port != Some(bound.port()) {
            return false;
        }
        match host {
            Ok(ip) if !bound.ip().is_unspecified() && ip == bound.ip() => true,
            Ok(ip) => self
                .dir
                .addresses(&self.me.host)
                .await
                .is_ok_and(|a| a.contains(&ip)),
            Err(name) => {
                let node = format!(
                    "{}.{}.{}",
                    self.me.host,
                    schema::NODE,
                    self.dir.zone().to_ascii().trim_end_matches('.')
                );
                name.trim_end_matches('.').eq_ignore_ascii_case(&node)
            }
        }
    }

    /// Asks the directory, uncached, who is master of `repo`, whether this
    /// host's copy may serve reads, and whether writes are refused. For a read,
    /// the last answer does when the directory cannot be reached (serve-stale);
    /// a write needs the directory's answer now.
    pub async fn standing(&self, repo: &str, access: Access) -> Result<Option<Standing>, DirError> {
        let Some(t) = self
            .dir
            .txt_fresh(&format!("{repo}.{}", schema::REPO), access == Access::Read)
            .await?
        else {
            return Ok(None);
        };
        let num = |k: &str| t.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let me = self.me.host.as_str();
        let master = t.get(schema::txt::MASTER).cloned().unwrap_or_default();
        let replica = t
            .get(schema::txt::REPLICAS)
            .is_some_and(|l| l.split(',').any(|h| h == me));
        let mine = num(&format!("{}{me}", schema::txt::VERSION_OF));
        let theirs = num(schema::txt::VERSION);
        let exists = self.repos.exists(repo);
        let mut current = master == me
            || (exists
                && mine <= theirs
                && mine.saturating_add(num(schema::txt::MAX_LAG)) >= theirs)
            || (exists && self.syncer.has(repo, &master, theirs));
        let writes_refused = [schema::txt::FROZEN, schema::txt::READONLY]
            .iter()
            .any(|k| t.get(*k).is_some_and(|v| v == "1"));
        let refusal = if writes_refused {
            let in_service = self.in_service(&master).await;
            WriteRefusal::from_txt(repo, &t, in_service)
        } else {
            None
        };
        if !current && exists && matches!(refusal, Some(WriteRefusal::NoMaster { .. })) {
            // No master: reads go on from the most recent copies, which the
            // directory's read answer lists.
            current = matches!(
                self.router.repo(repo, Access::Read).await,
                Ok(Target::Local)
            );
        }
        Ok(Some(Standing {
            replica,
            version: theirs,
            current,
            refusal,
            master,
        }))
    }

    /// Whether `host` is in service by its node record (available, not critical).
    async fn in_service(&self, host: &str) -> bool {
        match self.dir.txt(&format!("{host}.{}", schema::NODE)).await {
            Ok(Some(t)) => {
                t.get(schema::txt::AVAILABLE).map(String::as_str) != Some("0")
                    && t.get(schema::txt::HEALTH).map(String::as_str) != Some("critical")
            }
            _ => false,
        }
    }

    /// Why writes to `repo` are refused, when the directory gives it no master
    /// to write to (frozen, read-only, or its master out of service).
    async fn write_refusal(&self, repo: &str) -> RouteError {
        if let Ok(Some(s)) = self.standing(repo, Access::Read).await {
            if let Some(r) = s.refusal {
                return RouteError::Refused(r);
            }
        }
        RouteError::NoMaster(repo.to_string())
    }

    /// Whether this host is a host (master or replica) of `repo`, by the cached answer.
    async fn holds(&self, repo: &str) -> bool {
        let me = self.me.host.as_str();
        self.dir
            .txt(&format!("{repo}.{}", schema::REPO))
            .await
            .ok()
            .flatten()
            .is_some_and(|t| {
                t.get(schema::txt::MASTER).is_some_and(|m| m == me)
                    || t.get(schema::txt::REPLICAS)
                        .is_some_and(|l| l.split(',').any(|h| h == me))
            })
    }

    /// Where a repository request goes. A write goes to the master, or is
    /// refused with the reason. A read that reaches a host of the repository is
    /// served here: by a replica that is behind once it has brought its copy
    /// up to date from the master (sync-before-read), and only if that fails
    /// within `--sync-timeout` by the master.
    pub async fn target(&self, repo: &str, access: Access) -> Result<Target, RouteError> {
        let routed = self.router.repo(repo, access).await;
        if access == Access::Write {
            return match routed {
                Err(RouteError::NoMaster(_)) => Err(self.write_refusal(repo).await),
                other => other,
            };
        }
        if !matches!(routed, Ok(Target::Local)) && !self.holds(repo).await {
            return routed;
        }
        let Ok(Some(s)) = self.standing(repo, Access::Read).await else {
            return routed;
        };
        if s.current {
            return Ok(Target::Local);
        }
        if !s.replica || matches!(s.refusal, Some(WriteRefusal::NoMaster { .. })) {
            return routed;
        }
        match self
            .syncer
            .before_read(self, repo, &s.master, s.version)
            .await
        {
            Ok(done) => {
                tracing::debug!(
                    repo,
                    version = done.version,
                    fetched = done.fetched,
                    "copy brought up to date before the read"
                );
                Ok(Target::Local)
            }
            Err(e) => {
                tracing::warn!(repo, error = %e, "this copy is behind and could not be brought up to date; reading from the master");
                self.router.repo(repo, Access::Write).await
            }
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
            Ok(r) => body::stream_back(r),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                "web-backend-unreachable",
                e.to_string(),
            ),
        }
    }
}
