//! Recording writes: git's `reference-transaction` hook, run by `receive-pack` on
//! a repository's master for every ref update of a push.
//!
//! - `prepared` (refs locked, not yet written): take the repository's write lease
//!   from the directory, waiting while another write holds it. Refused (this host
//!   is no longer the master, or it is out of service): the hook fails and git
//!   aborts the update, so a deposed master never accepts a write.
//! - `committed` (refs written, client not yet told): record the master's version
//!   plus one with the lease, then give the lease back. Content is visible before
//!   its version is, so a replica that sees version N can always fetch N.
//! - `aborted`: give the lease back.
//!
//! The sidecar installs the hook in `--repos/.switchboard-hooks` and points only
//! the `receive-pack` runs it starts for writes at it (`core.hooksPath`), with the
//! repository, host, key and directory in the environment: every admin API
//! endpoint the sidecar knows at that moment, tried in turn (`apis`), so a
//! write goes on when one directory server is down.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use switchboard_proto::api::{ApiError, VersionReport};

use crate::directory::apis::Apis;

const ENV_REPO: &str = "SWITCHBOARD_HOOK_REPO";
const ENV_HOST: &str = "SWITCHBOARD_HOOK_HOST";
const ENV_KEY: &str = "SWITCHBOARD_HOOK_KEY";
const ENV_API: &str = "SWITCHBOARD_HOOK_API";
const ENV_ZONE: &str = "SWITCHBOARD_HOOK_ZONE";

/// How long a write waits for the lease.
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// What a write hook needs to know, set up once per sidecar.
#[derive(Clone)]
pub struct Hooks {
    pub dir: PathBuf,
    pub host: String,
    pub key: PathBuf,
    /// The admin API endpoints, as they are when a write starts.
    pub apis: Arc<Apis>,
    pub zone: String,
}

impl Hooks {
    /// Writes the hook script (pointing at this binary) under `repos`.
    pub fn install(
        repos: &Path,
        host: &str,
        key: &Path,
        apis: Arc<Apis>,
        zone: &str,
    ) -> std::io::Result<Self> {
        let dir = repos.join(".switchboard-hooks");
        std::fs::create_dir_all(&dir)?;
        let exe = std::env::current_exe()?;
        let script = format!(
            "#!/bin/sh\n# Installed by switchboard-sidecar: records each write's version in the directory.\nexec '{}' hook reference-transaction \"$@\"\n",
            exe.display().to_string().replace('\'', "'\\''")
        );
        let path = dir.join("reference-transaction");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(script.as_str()) {
            // Several processes (run, ssh-exec sessions) may install it at once.
            let tmp = dir.join(format!(".reference-transaction.{}", std::process::id()));
            std::fs::write(&tmp, &script)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
            }
            std::fs::rename(&tmp, &path)?;
        }
        let key = std::fs::canonicalize(key).unwrap_or_else(|_| key.to_path_buf());
        Ok(Hooks {
            dir,
            host: host.to_string(),
            key,
            apis,
            zone: zone.to_string(),
        })
    }

    /// Makes a `git` command run this hook for writes to `repo`.
    pub fn apply(&self, cmd: &mut tokio::process::Command, repo: &str) {
        cmd.arg("-c")
            .arg(format!("core.hooksPath={}", self.dir.display()))
            .env(ENV_REPO, repo)
            .env(ENV_HOST, &self.host)
            .env(ENV_KEY, &self.key)
            .env(ENV_API, self.apis.urls().join(" "))
            .env(ENV_ZONE, &self.zone);
    }
}

/// Why a write could not be recorded: git then aborts it (`prepared`) or the
/// client is told (`committed`).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0} is not set")]
    Env(&'static str),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the directory's lease answer is not JSON: {0}")]
    Lease(serde_json::Error),
    #[error("write to {repo} refused: {source}")]
    Refused { repo: String, source: ApiError },
    #[error("cannot keep the lease token: {0}")]
    Token(std::io::Error),
    #[error("the write to {repo} is applied but its version could not be recorded: {source}")]
    NotRecorded { repo: String, source: ApiError },
}

fn client() -> Result<(Apis, String, String), HookError> {
    let var = |k: &'static str| std::env::var(k).map_err(|_| HookError::Env(k));
    let key = PathBuf::from(var(ENV_KEY)?);
    let urls: Vec<String> = var(ENV_API)?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let client = Apis::fixed(&urls, &key, &var(ENV_ZONE)?)?;
    Ok((client, var(ENV_REPO)?, var(ENV_HOST)?))
}

/// Where a lease token waits between `prepared` and `committed`: one file per
/// receive-pack process (the hook's parent), in the repository.
fn token_file() -> PathBuf {
    let git_dir = std::env::var_os("GIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    git_dir.join(format!(
        "switchboard-lease.{}",
        std::os::unix::process::parent_id()
    ))
}

/// `switchboard-sidecar hook reference-transaction STATE`.
pub async fn reference_transaction(state: &str) -> Result<(), HookError> {
    // Git writes the ref updates on stdin; read them so it never sees a broken pipe.
    let mut updates = String::new();
    let _ = std::io::stdin().read_to_string(&mut updates);
    if std::env::var_os(ENV_REPO).is_none() {
        return Ok(());
    }
    let (client, repo, host) = client()?;
    match state {
        "prepared" => {
            let deadline = Instant::now() + LEASE_WAIT;
            let body = serde_json::json!({"host": host, "ttl": 30});
            let token = loop {
                let path = format!("/v1/repos/{repo}/lease");
                let body = body.to_string().into_bytes();
                match client
                    .call(|c| {
                        let (path, body) = (&path, body.clone());
                        async move { c.call(Method::POST, path, body, true).await }
                    })
                    .await
                {
                    Ok(b) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&b).map_err(HookError::Lease)?;
                        break v["token"].as_str().unwrap_or_default().to_string();
                    }
                    Err(e) if e.msg.contains("is held by") && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    Err(source) => return Err(HookError::Refused { repo, source }),
                }
            };
            std::fs::write(token_file(), token).map_err(HookError::Token)?;
            Ok(())
        }
        "committed" | "aborted" => {
            let file = token_file();
            let Ok(token) = std::fs::read_to_string(&file) else {
                return Ok(());
            };
            let _ = std::fs::remove_file(&file);
            let recorded = if state == "committed" {
                record(&client, &repo, &host, &token).await
            } else {
                Ok(())
            };
            let path = format!("/v1/repos/{repo}/lease/{token}");
            let _ = client
                .call(|c| {
                    let path = &path;
                    async move { c.call(Method::DELETE, path, vec![], true).await }
                })
                .await;
            recorded
        }
        _ => Ok(()),
    }
}

/// The master's version + 1, recorded with the lease.
async fn record(client: &Apis, repo: &str, host: &str, token: &str) -> Result<(), HookError> {
    let info = client.call(|c| async move { c.repo(repo).await }).await?;
    let report = VersionReport {
        version: info.version_of(host) + 1,
        lease: Some(token.to_string()),
    };
    client
        .call(|c| {
            let report = &report;
            async move { c.report_version(repo, host, report).await }
        })
        .await
        .map_err(|source| HookError::NotRecorded {
            repo: repo.to_string(),
            source,
        })?;
    Ok(())
}
