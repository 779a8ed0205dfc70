//! Sync-before-read, the fetching half (the state is `repo::sync`): a read
//! brought up to date here in `run`, or asked of `run` by an `ssh-exec`
//! session over the cluster channel, and the fetch itself.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use switchboard_proto::api::VersionReport;
use tokio::sync::watch;

use crate::outbound::loopback::Loopback;
use crate::outbound::spool::Spooled;
use crate::repo::sync::{Copy, Step, SyncError, SyncRequest, Synced, Syncer};
use crate::sidecar::Sidecar;

impl Syncer {
    /// The loopback proxy this process fetches through, if it is `run`.
    fn loopback(&self) -> Option<Loopback> {
        self.loopback.get().map(|(addr, token)| Loopback {
            addr: *addr,
            token: token.clone(),
        })
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
            match self.loopback() {
                Some(lb) => self.sync(sc, &lb, repo, master, want).await,
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
        let Some(lb) = self.loopback() else {
            return Err(SyncError::Run("this process does not fetch".into()));
        };
        let work = self.sync(sc, &lb, repo, &req.master, req.version);
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
