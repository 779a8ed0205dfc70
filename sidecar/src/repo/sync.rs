//! Sync-before-read (SPEC "Repositories", Phabricator's design): a replica that
//! is behind when a read reaches it brings its copy up to date from the master
//! first, and then serves the read itself. One fetch per repository at a time:
//! every read that arrives while a fetch is under way waits for it, and is
//! served by it if it brings the version that read needs; the change feed's
//! catch-up (`replicate`) goes through the same door, so a push is fetched once.
//!
//! The fetches run in the `run` process, which has the loopback signing proxy
//! git fetches through. An `ssh-exec` session (a process of its own per SSH
//! connection) asks its host's `run` over the cluster channel
//! (`POST /switchboard/sync/REPO`, signed with the host's own key), so the
//! one-at-a-time holds across every session of the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use switchboard_proto::api::VersionReport;
use tokio::sync::watch;

use crate::outbound::loopback::Loopback;
use crate::outbound::spool::Spooled;
use crate::sidecar::Sidecar;

/// How long a read waits for its sync by default (`--sync-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a copy could not be brought up to date (the read then goes to the master).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error("the fetch from {master} did not finish within {timeout:?} (--sync-timeout)")]
    Timeout { master: String, timeout: Duration },
    #[error("the fetch from {master} failed: {reason}")]
    Fetch { master: String, reason: String },
    #[error("this host's sidecar (run) could not sync it: {0}")]
    Run(String),
    #[error("sync-before-read is off (--sync-timeout 0)")]
    Off,
}

/// What a sync did: the version the copy has now, and whether this call
/// fetched it (else a fetch already made brought it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub version: u64,
    pub fetched: bool,
}

/// The body of `POST /switchboard/sync/REPO`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    pub master: String,
    pub version: u64,
}

type Outcome = Option<Result<u64, String>>;

/// What this process knows of one repository's copy.
#[derive(Default)]
struct Copy {
    /// The master the copy was last fetched from, and the version that fetch
    /// brought (a new master starts over: its history may differ).
    master: String,
    have: u64,
    /// The fetch under way: the version it brings, and its outcome once known.
    flight: Option<(u64, watch::Receiver<Outcome>)>,
}

/// One door per repository for fetches from its master.
pub struct Syncer {
    /// Set by `run`: this process fetches itself. Unset (`ssh-exec`): it asks `run`.
    loopback: OnceLock<Arc<Loopback>>,
    copies: Mutex<HashMap<String, Copy>>,
    /// How long a read waits for its sync (`--sync-timeout`).
    pub timeout: Duration,
}

enum Step {
    Done(u64),
    Wait(watch::Receiver<Outcome>),
    Lead(watch::Sender<Outcome>),
}

impl Syncer {
    pub fn new(timeout: Duration) -> Self {
        Syncer {
            loopback: OnceLock::new(),
            copies: Mutex::default(),
            timeout,
        }
    }

    /// Whether a fetch by this process brought `repo` to `want` from `master`
    /// (its version record may not have reached the directory yet).
    pub fn has(&self, repo: &str, master: &str, want: u64) -> bool {
        self.copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(repo)
            .is_some_and(|c| c.master == master && c.have >= want)
    }

    /// Makes this process the one that fetches (`run`).
    pub fn fetch_through(&self, lb: Arc<Loopback>) {
        let _ = self.loopback.set(lb);
    }

    /// Brings `repo` to at least `want` from `master` before a read, within
    /// `--sync-timeout`.
    pub async fn before_read(
        &self,
        sc: &Sidecar,
        repo: &str,
        master: &str,
        want: u64,
    ) -> Result<Synced, SyncError> {
        if self.timeout.is_zero() {
            return Err(SyncError::Off);
        }
        let work = async {
            match self.loopback.get() {
                Some(lb) => self.sync(sc, lb, repo, master, want).await,
                None => self.ask_run(sc, repo, master, want).await,
            }
        };
        self.bounded(master, work).await
    }

    /// `POST /switchboard/sync/REPO` from this host's own `ssh-exec`: a sync
    /// in this process, which must be the one that fetches (never asks on).
    pub async fn for_session(
        &self,
        sc: &Sidecar,
        repo: &str,
        req: &SyncRequest,
    ) -> Result<Synced, SyncError> {
        let Some(lb) = self.loopback.get() else {
            return Err(SyncError::Run("this process does not fetch".into()));
        };
        let work = self.sync(sc, lb, repo, &req.master, req.version);
        self.bounded(&req.master, work).await
    }

    /// `work` within `--sync-timeout`.
    async fn bounded(
        &self,
        master: &str,
        work: impl std::future::Future<Output = Result<Synced, SyncError>>,
    ) -> Result<Synced, SyncError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| SyncError::Timeout {
                master: master.to_string(),
                timeout: self.timeout,
            })?
    }

    /// Brings `repo` to at least `want` from `master`: at once if a fetch
    /// already did, else with the fetch under way (if it brings enough), else
    /// with a new one, which then reports the version to the directory.
    pub async fn sync(
        &self,
        sc: &Sidecar,
        lb: &Loopback,
        repo: &str,
        master: &str,
        want: u64,
    ) -> Result<Synced, SyncError> {
        loop {
            let step = {
                let mut copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
                let c = copies.entry(repo.to_string()).or_default();
                if c.master != master {
                    *c = Copy {
                        master: master.to_string(),
                        ..Copy::default()
                    };
                }
                match &c.flight {
                    _ if c.have >= want && sc.repos.exists(repo) => Step::Done(c.have),
                    Some((_, rx)) => Step::Wait(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        c.flight = Some((want, rx));
                        Step::Lead(tx)
                    }
                }
            };
            match step {
                Step::Done(v) => {
                    return Ok(Synced {
                        version: v,
                        fetched: false,
                    })
                }
                Step::Wait(mut rx) => {
                    let waited = rx
                        .wait_for(Option::is_some)
                        .await
                        .map(|o| o.as_ref().and_then(|r| r.as_ref().err().cloned()));
                    let failed = match waited {
                        Ok(failed) => failed,
                        // The fetching call was dropped half way: forget its
                        // flight, and the next turn starts another.
                        Err(_) => {
                            self.land(repo, master, &rx, None);
                            None
                        }
                    };
                    if let Some(reason) = failed {
                        return Err(SyncError::Fetch {
                            master: master.to_string(),
                            reason,
                        });
                    }
                }
                Step::Lead(tx) => {
                    let out = fetch(sc, lb, repo, master, want).await;
                    self.land(repo, master, &tx.subscribe(), out.as_ref().ok().copied());
                    let _ = tx.send(Some(out.clone()));
                    return out
                        .map(|version| Synced {
                            version,
                            fetched: true,
                        })
                        .map_err(|reason| SyncError::Fetch {
                            master: master.to_string(),
                            reason,
                        });
                }
            }
        }
    }

    /// Ends the flight `rx` belongs to (if it is still the one under way),
    /// noting the version it brought.
    fn land(&self, repo: &str, master: &str, rx: &watch::Receiver<Outcome>, got: Option<u64>) {
        let mut copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = copies.get_mut(repo).filter(|c| c.master == master) else {
            return;
        };
        if c.flight.as_ref().is_some_and(|(_, f)| f.same_channel(rx)) {
            c.flight = None;
        }
        if let Some(v) = got {
            c.have = c.have.max(v);
        }
    }

    /// From `ssh-exec`: asks this host's `run` to sync, over the cluster channel.
    async fn ask_run(
        &self,
        sc: &Sidecar,
        repo: &str,
        master: &str,
        want: u64,
    ) -> Result<Synced, SyncError> {
        let me = sc
            .dir
            .cluster_endpoint(&sc.me.host)
            .await
            .map_err(|e| SyncError::Run(e.to_string()))?
            .ok_or_else(|| SyncError::Run(format!("{} has no switchboard binding", sc.me.host)))?;
        let body = serde_json::to_vec(&SyncRequest {
            master: master.to_string(),
            version: want,
        })
        .map_err(|e| SyncError::Run(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let resp = sc
            .forwarder
            .send(
                &me,
                Method::POST,
                &format!("/switchboard/sync/{repo}"),
                &headers,
                Spooled::from_bytes(Bytes::from(body)),
            )
            .await
            .map_err(|e| SyncError::Run(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status != StatusCode::OK {
            return Err(SyncError::Run(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            )));
        }
        serde_json::from_slice(&body).map_err(|e| SyncError::Run(e.to_string()))
    }
}

/// One fetch of every ref from the master, then the version (read before the
/// fetch, so never one the copy lacks) recorded in the directory. A record
/// that fails is logged: the copy is good, the next catch-up records it.
async fn fetch(
    sc: &Sidecar,
    lb: &Loopback,
    repo: &str,
    master: &str,
    version: u64,
) -> Result<u64, String> {
    // A write this host took as master and could not record yet: fetching
    // (pruned, forced) from the new master would drop it. It waits for the
    // journal's replay, or an operator (docs/repositories.md).
    let journal = crate::repo::journal::Journal::under(sc.repos.root());
    if journal.read(repo).is_ok_and(|e| !e.is_empty()) {
        return Err(format!(
            "{} holds a write of {repo} not yet recorded in the directory ({}); it does not fetch over it",
            sc.me.host,
            journal.file(repo).display()
        ));
    }
    sc.repos
        .sync_from(repo, &lb.url(master, repo), &lb.header())
        .await
        .map_err(|e| e.to_string())?;
    let report = VersionReport {
        version,
        lease: None,
    };
    let host = &sc.me.host;
    let recorded = sc
        .apis
        .call(|c| {
            let report = &report;
            async move { c.report_version(repo, host, report).await }
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(repo, version, error = %e, "fetched, but the version could not be recorded; the next catch-up records it");
    }
    Ok(version)
}
