//! Recording writes: git's `reference-transaction` hook, run by `receive-pack` on
//! a repository's master for every ref update of a push.
//!
//! - `prepared` (refs locked, not yet written): take the repository's write lease
//!   from the directory, waiting while another write holds it. Refused (this host
//!   is no longer the master, or it is out of service): the hook fails and git
//!   aborts the update, so a deposed master never accepts a write. A write
//!   journal waiting (`journal`) is replayed under that lease first, or the
//!   write is refused. The master's version is read now, while the directory
//!   answers, and kept with the lease token.
//! - `committed` (refs written, client not yet told): record that version plus
//!   one with the lease, then give the lease back. Content is visible before
//!   its version is, so a replica that sees version N can always fetch N. If the
//!   record fails, the version goes to the write journal, fsynced before the
//!   hook returns, and is recorded when the directory takes it.
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

use switchboard_proto::api::{ApiError, VersionReport};

use crate::directory::apis::Apis;
use crate::repo::journal::{release_lease, replay, take_lease, Entry, Journal, JournalError};

const ENV_REPO: &str = "SWITCHBOARD_HOOK_REPO";
const ENV_HOST: &str = "SWITCHBOARD_HOOK_HOST";
const ENV_KEY: &str = "SWITCHBOARD_HOOK_KEY";
const ENV_API: &str = "SWITCHBOARD_HOOK_API";
const ENV_ZONE: &str = "SWITCHBOARD_HOOK_ZONE";
const ENV_JOURNAL: &str = "SWITCHBOARD_HOOK_JOURNAL";
/// Test only: see `failpoint_committed`.
const ENV_FAILPOINT_COMMITTED: &str = "SWITCHBOARD_FAILPOINT_HOOK_COMMITTED";
const FAILPOINT_WAIT: Duration = Duration::from_secs(60);
const LEASE_TTL_S: u64 = 30;

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
    /// Where writes whose version could not be recorded wait (`journal`).
    pub journal: PathBuf,
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
            journal: Journal::under(repos).dir().to_path_buf(),
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
            .env(ENV_ZONE, &self.zone)
            .env(ENV_JOURNAL, &self.journal);
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
    #[error("write to {repo} refused: {source}")]
    Refused { repo: String, source: ApiError },
    #[error("cannot keep the lease token: {0}")]
    Token(std::io::Error),
    #[error("the write to {repo} is applied but its version could not be recorded: {source}")]
    NotRecorded { repo: String, source: ApiError },
    #[error(transparent)]
    Journal(#[from] JournalError),
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

/// The write journals: as the sidecar said, or (a receive-pack started by a
/// sidecar from before the journal) beside the repository, under `--repos`.
fn journal_of_this_run() -> Result<Journal, HookError> {
    if let Some(d) = std::env::var_os(ENV_JOURNAL) {
        return Ok(Journal::at(PathBuf::from(d)));
    }
    std::env::var_os("GIT_DIR")
        .and_then(|d| std::fs::canonicalize(d).ok())
        .and_then(|d| d.parent().map(Journal::under))
        .ok_or(HookError::Env(ENV_JOURNAL))
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
    let journal = journal_of_this_run()?;
    match state {
        "prepared" => prepared(&client, &journal, &repo, &host).await,
        "committed" | "aborted" => {
            let file = token_file();
            let Ok(kept) = std::fs::read_to_string(&file) else {
                return Ok(());
            };
            let _ = std::fs::remove_file(&file);
            let mut words = kept.split_whitespace();
            let token = words.next().unwrap_or_default().to_string();
            let version = words.next().and_then(|v| v.parse::<u64>().ok());
            let recorded = match (state, version) {
                ("committed", Some(version)) => {
                    failpoint_committed().await;
                    let updates = Entry::updates_of(&updates);
                    committed(&client, &journal, &repo, &host, &token, version, updates).await
                }
                ("committed", None) => record(&client, &repo, &host, &token).await,
                _ => Ok(()),
            };
            release_lease(&client, &repo, &token).await;
            recorded
        }
        _ => Ok(()),
    }
}

/// Takes the lease; replays a journal waiting (else refuses the write); reads
/// the master's version while the directory answers, and keeps it with the
/// token so that `committed` needs no read.
async fn prepared(
    client: &Apis,
    journal: &Journal,
    repo: &str,
    host: &str,
) -> Result<(), HookError> {
    let waiting = journal.read(repo)?;
    let token = match take_lease(client, repo, host, LEASE_TTL_S, LEASE_WAIT).await {
        Ok(t) => t,
        Err(source) => {
            if let Some(last) = waiting.last() {
                return Err(JournalError::Pending {
                    repo: repo.to_string(),
                    host: host.to_string(),
                    version: last.version,
                    cause: source.msg,
                }
                .into());
            }
            return Err(HookError::Refused {
                repo: repo.to_string(),
                source,
            });
        }
    };
    let ready = async {
        if !waiting.is_empty() {
            replay(journal, client, repo, host, Some(&token)).await?;
        }
        let info = client
            .call(|c| async move { c.repo(repo).await })
            .await
            .map_err(|source| HookError::Refused {
                repo: repo.to_string(),
                source,
            })?;
        let version = info.version_of(host) + 1;
        std::fs::write(token_file(), format!("{token} {version}\n")).map_err(HookError::Token)
    }
    .await;
    if ready.is_err() {
        release_lease(client, repo, &token).await;
    }
    ready
}

/// Records `version` with the lease; if that fails, journals it (durably, before
/// git tells the client) for a replay once the directory takes it.
async fn committed(
    client: &Apis,
    journal: &Journal,
    repo: &str,
    host: &str,
    token: &str,
    version: u64,
    updates: Vec<String>,
) -> Result<(), HookError> {
    let report = VersionReport {
        version,
        lease: Some(token.to_string()),
    };
    let Err(source) = client
        .call(|c| {
            let report = &report;
            async move { c.report_version(repo, host, report).await }
        })
        .await
    else {
        return Ok(());
    };
    let entry = Entry {
        version,
        time: crate::repo::journal::unix_now(),
        updates,
    };
    match journal.append(repo, host, &entry) {
        Ok(()) => {
            // The hook's stderr: the sidecar's log over HTTP, the client's over SSH.
            eprintln!(
                "switchboard: the write to {repo} is applied but version {version} could not be recorded ({source}); it is kept in {} and recorded once the directory takes it; writes to {repo} wait until then",
                journal.file(repo).display()
            );
            Ok(())
        }
        Err(e) => Err(HookError::NotRecorded {
            repo: repo.to_string(),
            source: ApiError::new(format!("{source}; and it could not be journaled: {e}")),
        }),
    }
}

/// Test only: with `SWITCHBOARD_FAILPOINT_HOOK_COMMITTED=PATH`, `committed`
/// creates `PATH.reached` and waits (up to 60 s) until `PATH` exists, so that a
/// test can stop the directory between a write's lease and its record.
async fn failpoint_committed() {
    let Some(path) = std::env::var_os(ENV_FAILPOINT_COMMITTED).map(PathBuf::from) else {
        return;
    };
    let mut reached = path.clone().into_os_string();
    reached.push(".reached");
    let _ = std::fs::write(&reached, b"");
    let deadline = Instant::now() + FAILPOINT_WAIT;
    while !path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The master's version + 1, recorded with the lease (a token kept without
/// its version, by an older sidecar).
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
