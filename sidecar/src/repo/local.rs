//! Serving a repository from this host's copy, over smart HTTP (`git
//! http-backend`) or SSH (`git upload-pack` and the others). Both ways check the
//! same things first, asking the directory uncached: writes are taken only by
//! the master, and run the write hook; reads only from a copy that is current.
//! The master creates a repository it lacks.

use http::{HeaderMap, Method, Response, StatusCode};

use crate::body::BoxBody;
use crate::directory::answers::DirError;
use crate::reply::{error, plain};
use crate::repo::git::{GitError, GitRequest};
use crate::route::{Access, GitPath, GitVerb, WriteRefusal};
use crate::sidecar::Sidecar;

/// Why this host will not serve a repository request from its copy.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no repository {0} in the directory")]
    UnknownRepo(String),
    #[error("{host} is not the master of {repo} ({master} is): writes go to the master")]
    NotMaster {
        host: String,
        repo: String,
        master: String,
    },
    #[error("{host}'s copy of {repo} is behind the master; read from the master")]
    StaleReplica { host: String, repo: String },
    #[error(transparent)]
    Refused(#[from] WriteRefusal),
    #[error(transparent)]
    Directory(#[from] DirError),
    #[error(transparent)]
    Git(#[from] GitError),
    /// A write whose version the directory missed is not recorded yet.
    #[error(transparent)]
    Journal(#[from] crate::repo::journal::JournalError),
}

impl LocalError {
    /// The HTTP status and reason code a client gets.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            LocalError::UnknownRepo(_) => (StatusCode::NOT_FOUND, "unknown-repository"),
            LocalError::NotMaster { .. } => (StatusCode::FORBIDDEN, "not-master"),
            LocalError::StaleReplica { .. } => (StatusCode::SERVICE_UNAVAILABLE, "stale-replica"),
            LocalError::Refused(w) => (w.status(), w.reason()),
            LocalError::Directory(_) => (StatusCode::BAD_GATEWAY, "directory-unreachable"),
            LocalError::Git(_) => (StatusCode::INTERNAL_SERVER_ERROR, "git-failed"),
            LocalError::Journal(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                crate::repo::journal::REASON,
            ),
        }
    }
}

/// Checks that this host may serve `access` to `repo` now, and creates the
/// repository if this host is its master and lacks it. Says whether this host
/// is the master.
async fn admit(sc: &Sidecar, repo: &str, access: Access) -> Result<bool, LocalError> {
    if access == Access::Write {
        // Before the directory is asked: the refusal says why, even while it is away.
        crate::repo::journal::admit_write(sc.repos.root(), &sc.apis, &sc.me.host, repo).await?;
    }
    let standing = sc
        .standing(repo, access)
        .await?
        .ok_or_else(|| LocalError::UnknownRepo(repo.to_string()))?;
    let is_master = standing.master == sc.me.host;
    if access == Access::Write && !is_master {
        return Err(LocalError::NotMaster {
            host: sc.me.host.clone(),
            repo: repo.to_string(),
            master: standing.master,
        });
    }
    if access == Access::Write {
        if let Some(r) = standing.refusal {
            return Err(LocalError::Refused(r));
        }
    }
    if !is_master && !standing.current {
        // Sync-before-read: a read sent here by a host that found this copy
        // current a moment ago, before a write this copy has not fetched yet.
        let synced = match standing.refusal {
            Some(WriteRefusal::NoMaster { .. }) => false,
            _ if !standing.replica => false,
            _ => sc
                .syncer
                .before_read(sc, repo, &standing.master, standing.version)
                .await
                .map_err(|e| tracing::warn!(repo, error = %e, "could not bring this copy up to date for a read"))
                .is_ok(),
        };
        if !synced {
            return Err(LocalError::StaleReplica {
                host: sc.me.host.clone(),
                repo: repo.to_string(),
            });
        }
    }
    if !sc.repos.exists(repo) {
        sc.repos.create(repo).await?;
    }
    Ok(is_master)
}

/// Serves a smart-HTTP request from this host's copy with `git http-backend`.
pub async fn http(
    sc: &Sidecar,
    gp: &GitPath,
    method: &Method,
    headers: &HeaderMap,
    body: BoxBody,
) -> Response<BoxBody> {
    let repo = gp.repo.as_str();
    let refuse = |e: LocalError| {
        let (status, reason) = e.status();
        match e {
            // In words git shows the user (`remote: …`).
            LocalError::Refused(_) => plain(status, reason, e.to_string()),
            _ => error(status, reason, e.to_string()),
        }
    };
    let is_master = match admit(sc, repo, gp.access).await {
        Ok(m) => m,
        Err(LocalError::Journal(e)) => return crate::repo::journal::refusal(&e),
        Err(e) => return refuse(e),
    };
    if gp.rest == "info/refs" && gp.access == Access::Read {
        sc.metrics.request("upload-pack", "served");
    }
    let hooks = (gp.access == Access::Write && is_master).then_some(&sc.hooks);
    let req = GitRequest {
        repo,
        rest: gp.rest,
        method,
        query: gp.query,
        headers,
    };
    match sc.repos.http_backend(req, body, hooks).await {
        Ok(r) => r,
        Err(e) => refuse(e.into()),
    }
}

/// The command that serves `verb` on this host's copy of `repo` (an SSH
/// session, here or tunnelled from another host), with the write hook on the
/// master.
pub async fn command(
    sc: &Sidecar,
    verb: GitVerb,
    repo: &str,
) -> Result<tokio::process::Command, LocalError> {
    admit(sc, repo, verb.access()).await?;
    if verb == GitVerb::UploadPack {
        sc.metrics.request("upload-pack", "served");
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(["-c", "safe.directory=*"]);
    if verb == GitVerb::ReceivePack {
        sc.hooks.apply(&mut cmd, repo);
    }
    cmd.arg(verb.program()).arg(sc.repos.path(repo));
    Ok(cmd)
}
