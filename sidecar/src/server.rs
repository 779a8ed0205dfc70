//! Starting up: learn who this host is, build the shared state, and (for `run`)
//! open the listeners, follow the directory and keep replicas current.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::Uri;
use switchboard_proto::api::Client;
use tokio::net::TcpListener;

use crate::directory::answers::DirectoryClient;
use crate::directory::feed;
use crate::directory::heartbeat;
use crate::identity::{self, Identity};
use crate::inbound::cluster;
use crate::inbound::listener::serve;
use crate::inbound::passthrough::Passthrough;
use crate::inbound::user;
use crate::metrics::Metrics;
use crate::outbound::forward::Forwarder;
use crate::outbound::loopback::{self, Loopback};
use crate::repo::git::Repos;
use crate::repo::hook::Hooks;
use crate::repo::replicate;
use crate::route::Router;
use crate::sidecar::{Limits, Sidecar};

/// What every mode (`run`, `ssh-exec`) is told.
#[derive(Debug, Clone)]
pub struct Common {
    pub key: PathBuf,
    pub directory: SocketAddr,
    pub directory_api: Option<String>,
    pub zone: String,
    pub repos: PathBuf,
    pub web_backend: Option<Uri>,
}

impl Common {
    /// The admin API: `--directory-api`, else port 8053 on the directory's address.
    pub fn api(&self) -> String {
        self.directory_api
            .clone()
            .unwrap_or_else(|| format!("http://{}:8053", self.directory.ip()))
    }
}

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub common: Common,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub limits: Limits,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// Loads the key and asks the directory who it belongs to.
pub async fn who_am_i(
    key: &std::path::Path,
    directory: SocketAddr,
    zone: &str,
    metrics: Arc<Metrics>,
) -> Result<(Identity, identity::KeyInfo, Arc<DirectoryClient>), RunError> {
    let id = Identity::load(key).map_err(|e| RunError(e.to_string()))?;
    let dir = Arc::new(
        DirectoryClient::new(directory, zone, metrics).map_err(|e| RunError(e.to_string()))?,
    );
    let me = identity::lookup(&dir, &id.fingerprint)
        .await
        .map_err(|e| RunError(format!("cannot ask the directory who this key is: {e}")))?
        .ok_or_else(|| {
            RunError(format!(
                "key {} (public key {}) is not known to the directory at {directory} for zone {zone}: register it with `switchboard-directory host add HOST --addr IP --pubkey {} --roles ...`; routing nothing",
                id.fingerprint,
                id.public.to_base64(),
                id.public.to_base64()
            ))
        })?;
    Ok((id, me, dir))
}

/// The shared state of a sidecar process.
pub async fn build(c: &Common, limits: Limits) -> Result<Arc<Sidecar>, RunError> {
    let metrics = Arc::new(Metrics::default());
    let (id, me, dir) = who_am_i(&c.key, c.directory, &c.zone, metrics.clone()).await?;
    std::fs::create_dir_all(&c.repos)
        .map_err(|e| RunError(format!("cannot create --repos {}: {e}", c.repos.display())))?;
    let spool_dir = c.repos.join(".switchboard-spool");
    std::fs::create_dir_all(&spool_dir)
        .map_err(|e| RunError(format!("cannot create {}: {e}", spool_dir.display())))?;
    let hooks = Hooks::install(&c.repos, &me.host, &c.key, &c.api(), &c.zone).map_err(|e| {
        RunError(format!(
            "cannot install the write hook in {}: {e}",
            c.repos.display()
        ))
    })?;
    let identity = Arc::new(id);
    Ok(Arc::new(Sidecar {
        identity: identity.clone(),
        router: Router::new(dir.clone(), me.host.clone()),
        forwarder: Forwarder::new(identity),
        repos: Repos::new(c.repos.clone()),
        web_backend: c.web_backend.clone(),
        verifier: crate::verify::BatchVerifier::spawn(metrics.clone()),
        metrics,
        replay: Default::default(),
        spool_dir,
        hooks,
        cluster_addr: Default::default(),
        callers: Default::default(),
        limits,
        tunnels: Default::default(),
        dir,
        me,
    }))
}

/// A signed client of the admin API, as this host.
pub fn api_client(c: &Common) -> Result<Client, RunError> {
    Client::new(&c.api(), Some(&c.key), Some(c.zone.clone())).map_err(|e| RunError(e.to_string()))
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    let sc = build(&cfg.common, cfg.limits).await?;
    let api = Arc::new(api_client(&cfg.common)?);
    let http = TcpListener::bind(cfg.http)
        .await
        .map_err(|e| RunError(format!("cannot bind --http {}: {e}", cfg.http)))?;
    let cluster_l = TcpListener::bind(cfg.cluster)
        .await
        .map_err(|e| RunError(format!("cannot bind --cluster {}: {e}", cfg.cluster)))?;
    let (lb, lb_listener) = Loopback::bind()
        .await
        .map_err(|e| RunError(format!("cannot bind the loopback proxy: {e}")))?;
    let lb = Arc::new(lb);
    let http_addr = http.local_addr().map_err(|e| RunError(e.to_string()))?;
    let cluster_addr = cluster_l
        .local_addr()
        .map_err(|e| RunError(e.to_string()))?;
    let _ = sc.cluster_addr.set(cluster_addr);

    tokio::spawn(feed::follow(
        sc.dir.clone(),
        Arc::new(Forwarder::new(sc.identity.clone())),
        cfg.common.api(),
        cfg.common.zone.clone(),
    ));
    let s = sc.clone();
    tokio::spawn(serve(
        http,
        sc.forwarder.client().clone(),
        Passthrough::new(sc.clone()),
        move |req, peer| user::handle(s.clone(), req, peer),
    ));
    let s = sc.clone();
    tokio::spawn(serve(
        cluster_l,
        sc.forwarder.client().clone(),
        None,
        move |req, peer| cluster::handle(s.clone(), req, peer),
    ));
    let (s, l) = (sc.clone(), lb.clone());
    tokio::spawn(serve(
        lb_listener,
        sc.forwarder.client().clone(),
        None,
        move |req, _peer| loopback::handle(s.clone(), l.clone(), req),
    ));
    tokio::spawn(heartbeat::run(
        api.clone(),
        sc.me.host.clone(),
        sc.metrics.clone(),
    ));
    tokio::spawn(replicate::run(sc.clone(), api, lb));

    tracing::info!(host = %sc.me.host, roles = %sc.me.roles.join(","), fingerprint = %sc.identity.fingerprint, "sidecar started");
    println!(
        "switchboard-sidecar: host={} listening http={http_addr} cluster={cluster_addr}",
        sc.me.host
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    switchboard_proto::process::wait_for_signal().await;
    Ok(())
}
