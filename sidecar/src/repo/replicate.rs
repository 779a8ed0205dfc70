//! Keeping replicas current. After every directory change (and every few seconds
//! in case one was missed), each sidecar compares its version of every repository
//! it serves with the master's, and a replica that differs fetches every ref from
//! the master (pruned, forced: an old master's diverged history is dropped), then
//! records the master's version as its own. The version is read *before* the
//! fetch, so a replica never claims a version it has not got. A master that lacks
//! a repository creates it empty; a new replica is seeded the same way it catches up.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::api::{ApiError, VersionReport};

use crate::directory::apis::Apis;

use crate::outbound::loopback::Loopback;
use crate::repo::sync::SyncError;
use crate::sidecar::Sidecar;

/// The longest one catch-up may take before it is abandoned (and retried).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(900);

/// How often to compare versions when nothing seems to change.
const PERIOD: Duration = Duration::from_secs(5);

/// Why a replication check or a catch-up did not happen (it is tried again).
#[derive(Debug, thiserror::Error)]
enum ReplicateError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the fetch from {master} took over {CATCH_UP_TIMEOUT:?}")]
    Timeout { master: String },
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// Runs until the drain begins (a catch-up under way is left to finish or
/// fail: its version is recorded only once it is whole, and the next start
/// catches up again).
pub async fn run(sc: Arc<Sidecar>, api: Arc<Apis>, lb: Arc<Loopback>) {
    let mut changed = sc.dir.subscribe();
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = sc.shutdown.watch();
    loop {
        if let Err(e) = once(&sc, &api, &lb, &busy).await {
            tracing::debug!(error = %e, "replication check skipped");
        }
        tokio::select! {
            () = stop.recv() => return,
            _ = changed.changed() => {}
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

async fn once(
    sc: &Arc<Sidecar>,
    api: &Arc<Apis>,
    lb: &Arc<Loopback>,
    busy: &Arc<Mutex<HashSet<String>>>,
) -> Result<(), ReplicateError> {
    let repos = api.call(|c| async move { c.repos().await }).await?;
    let me = sc.me.host.as_str();
    for r in repos {
        let name = r.name.clone();
        if crate::route::repo_name(&name).is_err() {
            continue;
        }
        let master = r.master.clone();
        let is_replica = r.replicas.iter().any(|h| h == me);
        if master == me {
            if !sc.repos.exists(&name) {
                if let Err(e) = sc.repos.create(&name).await {
                    tracing::warn!(repo = %name, error = %e, "cannot create the repository this host is master of");
                }
            }
            continue;
        }
        if !is_replica {
            continue;
        }
        let theirs = r.version_of(&master);
        let mine = r.version_of(me);
        if sc.repos.exists(&name) && mine == theirs {
            continue;
        }
        if !busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone())
        {
            continue;
        }
        let (sc, api, lb, busy) = (sc.clone(), api.clone(), lb.clone(), busy.clone());
        tokio::spawn(async move {
            match catch_up(&sc, &api, &lb, &name, &master, theirs).await {
                Ok(()) => {
                    tracing::info!(repo = %name, from = %master, version = theirs, "replica caught up")
                }
                Err(e) => {
                    tracing::warn!(repo = %name, from = %master, error = %e, "replica could not catch up; will retry")
                }
            }
            busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        });
    }
    Ok(())
}

/// One catch-up, through the same door as sync-before-read (`repo::sync`):
/// a fetch a read already made is not made again. The version is recorded
/// by the fetch; when an earlier fetch brought it, it is recorded here.
async fn catch_up(
    sc: &Sidecar,
    api: &Apis,
    lb: &Loopback,
    repo: &str,
    master: &str,
    version: u64,
) -> Result<(), ReplicateError> {
    let fetch = sc.syncer.sync(sc, lb, repo, master, version);
    let done = tokio::time::timeout(CATCH_UP_TIMEOUT, fetch)
        .await
        .map_err(|_| ReplicateError::Timeout {
            master: master.to_string(),
        })??;
    if done.fetched {
        return Ok(());
    }
    let report = VersionReport {
        version,
        lease: None,
    };
    let host = &sc.me.host;
    api.call(|c| {
        let report = &report;
        async move { c.report_version(repo, host, report).await }
    })
    .await?;
    Ok(())
}
