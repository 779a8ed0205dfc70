//! Writes acknowledged while the directory was away: the master's write journal.
//!
//! The write hook's `committed` step records a write's version in the directory.
//! If that fails (the directory cannot be reached, or refuses: an expired lease,
//! say), the refs are already written and git is about to tell the client, so
//! the hook appends `repo=R version=N time=UNIX_SECONDS host=H` to
//! `--repos/.switchboard-journal/R`, fsynced (the file and the directory) before
//! it returns. Until that journal is replayed, the master takes no further
//! write to R: a replica could never learn of the journaled version otherwise.
//!
//! Replay takes the write lease and reports each journaled version in order,
//! then removes the journal (fsynced). The directory accepts a master's version
//! only if it moves forward: an entry at or below the recorded version (its
//! report did arrive, only the answer was lost, or another write recorded that
//! number meanwhile) is recorded as the next version instead, so that replicas
//! fetch again. An extra version costs a fetch; a missing one loses a write.
//!
//! Replay runs before a write is admitted (`admit_write`, and the hook's
//! `prepared`) and in the background of `run` (`run`), so replicas catch up
//! as soon as the directory answers again, without waiting for another push.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use switchboard_proto::api::{ApiError, VersionReport};

use crate::directory::apis::Apis;

/// The journal directory's name under `--repos`.
pub const DIR: &str = ".switchboard-journal";

/// How often the background replay looks for journals.
const PERIOD: Duration = Duration::from_secs(1);

/// The lease a replay takes (it needs a few calls).
const LEASE_TTL_S: u64 = 30;

/// One acknowledged write whose version is not yet recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: u64,
    /// Unix seconds when it was journaled.
    pub time: u64,
    /// The ref updates it made, `OLD:NEW:REF` (what git gave the hook), so that
    /// an operator can find the write's commits if it is never recorded.
    pub updates: Vec<String>,
}

impl Entry {
    /// The ref updates git writes on a reference-transaction hook's stdin
    /// (`OLD NEW REF` a line), as kept in an entry. `HEAD`, which git lists
    /// too when the branch it names moves, adds nothing and is left out.
    pub fn updates_of(stdin: &str) -> Vec<String> {
        stdin
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (old, new, name) = (w.next()?, w.next()?, w.next()?);
                (name != "HEAD").then(|| format!("{old}:{new}:{name}"))
            })
            .collect()
    }

    fn line(&self, repo: &str, host: &str) -> String {
        let mut line = format!(
            "repo={repo} version={} time={} host={host}",
            self.version, self.time
        );
        for u in &self.updates {
            line.push_str(" update=");
            line.push_str(u);
        }
        line.push('\n');
        line
    }

    fn parse(line: &str) -> Option<Entry> {
        let words = || line.split_whitespace();
        let field = |k: &str| {
            words()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some(Entry {
            version: field("version=")?,
            time: field("time=").unwrap_or(0),
            updates: words()
                .filter_map(|w| w.strip_prefix("update="))
                .map(str::to_string)
                .collect(),
        })
    }
}

/// Why a journal could not be replayed, or a write is refused until it is.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use the write journal {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The one line a refused writer sees.
    #[error("writes to {repo} are refused: version {version} was written on {host} but is not yet recorded in the directory ({cause}); writes resume once the directory is back and it is recorded (reads still work)")]
    Pending {
        repo: String,
        host: String,
        version: u64,
        cause: String,
    },
}

/// The journals of one host: `--repos/.switchboard-journal/REPO`.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes a rename, creation or removal in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(true);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Journal {
    /// The journals under `repos` (the sidecar's `--repos`).
    pub fn under(repos: &Path) -> Self {
        Journal {
            dir: repos.join(DIR),
        }
    }

    /// A journal directory given as is (the hook's, from its environment).
    pub fn at(dir: PathBuf) -> Self {
        Journal { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self, repo: &str) -> PathBuf {
        self.dir.join(repo)
    }

    /// Appends one entry, durable before it returns: the line written and the
    /// file fsynced, and the directory fsynced when the file is new.
    pub fn append(&self, repo: &str, host: &str, entry: &Entry) -> Result<(), JournalError> {
        let path = self.file(repo);
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
            if let Some(parent) = self.dir.parent() {
                sync_dir(parent).map_err(io(parent))?;
            }
        }
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut line = entry.line(repo, host);
        if !new && !ends_with_newline(&path).map_err(io(&path))? {
            // A line torn by a crash stays on its own, unparsed, and this one whole.
            line.insert(0, '\n');
        }
        f.write_all(line.as_bytes()).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        if new {
            sync_dir(&self.dir).map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// The entries of `repo`'s journal, oldest first (none if it has none). A
    /// line that does not parse (torn by a crash before its fsync: its hook
    /// never returned) is skipped.
    pub fn read(&self, repo: &str) -> Result<Vec<Entry>, JournalError> {
        let path = self.file(repo);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().filter_map(Entry::parse).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The repositories with a journal waiting, by name.
    pub fn pending(&self) -> Result<Vec<String>, JournalError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut repos: Vec<String> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && crate::route::repo_name(n).is_ok())
            .collect();
        repos.sort();
        Ok(repos)
    }

    /// Removes the first `done` entries (all of them: the file), durably. An
    /// entry appended after they were read stays.
    pub fn remove_through(&self, repo: &str, host: &str, done: usize) -> Result<(), JournalError> {
        let path = self.file(repo);
        let rest: Vec<Entry> = self.read(repo)?.into_iter().skip(done).collect();
        if rest.is_empty() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io(&path)(e)),
            }
        } else {
            let tmp = self.dir.join(format!(".{repo}.{}", std::process::id()));
            let text: String = rest.iter().map(|e| e.line(repo, host)).collect();
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        sync_dir(&self.dir).map_err(io(&self.dir))
    }
}

/// The write lease of `repo` for `host`, waiting up to `wait` while another
/// write holds it.
pub(crate) async fn take_lease(
    apis: &Apis,
    repo: &str,
    host: &str,
    ttl_s: u64,
    wait: Duration,
) -> Result<String, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let body = serde_json::json!({"host": host, "ttl": ttl_s}).to_string();
    let path = format!("/v1/repos/{repo}/lease");
    loop {
        let answer = apis
            .call(|c| {
                let (path, body) = (&path, body.clone().into_bytes());
                async move { c.call(Method::POST, path, body, true).await }
            })
            .await;
        match answer {
            Ok(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| {
                    ApiError::new(format!("the directory's lease answer is not JSON: {e}"))
                })?;
                return Ok(v["token"].as_str().unwrap_or_default().to_string());
            }
            Err(e) if e.msg.contains("is held by") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Gives a lease back; a failure only means it lasts until it expires.
pub(crate) async fn release_lease(apis: &Apis, repo: &str, token: &str) {
    let path = format!("/v1/repos/{repo}/lease/{token}");
    let _ = apis
        .call(|c| {
            let path = &path;
            async move { c.call(Method::DELETE, path, vec![], true).await }
        })
        .await;
}

/// Replays `repo`'s journal on `host` (its master): each entry's version
/// reported in order with the lease `held` (or one taken here, and given back),
/// then the entries removed. Says how many were replayed (none: no journal).
pub async fn replay(
    journal: &Journal,
    apis: &Apis,
    repo: &str,
    host: &str,
    held: Option<&str>,
) -> Result<usize, JournalError> {
    let entries = journal.read(repo)?;
    let Some(last) = entries.last().map(|e| e.version) else {
        return Ok(0);
    };
    let pending = |cause: String| JournalError::Pending {
        repo: repo.to_string(),
        host: host.to_string(),
        version: last,
        cause,
    };
    let taken;
    let token = match held {
        Some(t) => t,
        None => {
            taken = take_lease(apis, repo, host, LEASE_TTL_S, Duration::from_secs(5))
                .await
                .map_err(|e| pending(e.msg))?;
            taken.as_str()
        }
    };
    let result = report_all(journal, apis, repo, host, token).await;
    if held.is_none() {
        release_lease(apis, repo, token).await;
    }
    result.map_err(|e| match e {
        ReportError::Api(e) => pending(e.msg),
        ReportError::Journal(e) => e,
    })
}

enum ReportError {
    Api(ApiError),
    Journal(JournalError),
}

/// Under the lease: the journal read again (another process may have replayed
/// it meanwhile), each entry reported, the reported ones removed.
async fn report_all(
    journal: &Journal,
    apis: &Apis,
    repo: &str,
    host: &str,
    token: &str,
) -> Result<usize, ReportError> {
    let entries = journal.read(repo).map_err(ReportError::Journal)?;
    if entries.is_empty() {
        return Ok(0);
    }
    let info = apis
        .call(|c| async move { c.repo(repo).await })
        .await
        .map_err(ReportError::Api)?;
    if info.master != host {
        return Err(ReportError::Api(ApiError::new(format!(
            "{host} is no longer the master of {repo} ({} is); an operator decides what becomes of this write (docs/repositories.md)",
            info.master
        ))));
    }
    let recorded = versions_to_report(&entries, info.version_of(host));
    for &version in &recorded {
        let report = VersionReport {
            version,
            lease: Some(token.to_string()),
        };
        apis.call(|c| {
            let report = &report;
            async move { c.report_version(repo, host, report).await }
        })
        .await
        .map_err(ReportError::Api)?;
    }
    journal
        .remove_through(repo, host, entries.len())
        .map_err(ReportError::Journal)?;
    tracing::info!(repo, versions = ?recorded, journaled = ?entries.iter().map(|e| e.version).collect::<Vec<_>>(), "write journal replayed: the versions are recorded in the directory");
    Ok(entries.len())
}

/// The versions to report for `entries`, in order, when the master is
/// recorded at `have`: each entry's own, unless it does not move the master
/// forward, then the next one.
fn versions_to_report(entries: &[Entry], mut have: u64) -> Vec<u64> {
    entries
        .iter()
        .map(|e| {
            have = if e.version > have {
                e.version
            } else {
                have + 1
            };
            have
        })
        .collect()
}

/// Before this host admits a write to `repo`: a journal waiting is replayed
/// first; if it cannot be, the write is refused with the one line.
/// (`repos`: the sidecar's `--repos`; `host`: this host.)
pub async fn admit_write(
    repos: &Path,
    apis: &Apis,
    host: &str,
    repo: &str,
) -> Result<(), JournalError> {
    let journal = Journal::under(repos);
    if journal.read(repo)?.is_empty() {
        return Ok(());
    }
    match replay(&journal, apis, repo, host, None).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(repo, error = %e, "write refused: its write journal is not replayed");
            Err(e)
        }
    }
}

/// The refusal a git client over HTTP sees: plain text, so that git shows it
/// (`remote: ...`), with the reason code in its header like every refusal.
pub fn refusal(e: &JournalError) -> http::Response<crate::body::BoxBody> {
    crate::reply::plain(http::StatusCode::SERVICE_UNAVAILABLE, REASON, e.to_string())
}

/// The reason code of a write refused until its journal is replayed.
pub const REASON: &str = "write-journal-pending";

/// `run`'s background replay: every journal waiting is replayed as soon as the
/// directory takes it, so replicas catch up without another push. Each
/// failure is logged once until it changes.
pub async fn run(
    repos: PathBuf,
    apis: Arc<Apis>,
    host: String,
    metrics: Arc<crate::metrics::Metrics>,
    stop: crate::shutdown::Watch,
) {
    let journal = Journal::under(&repos);
    let mut said: HashMap<String, String> = HashMap::new();
    loop {
        match journal.pending() {
            Ok(repos) => {
                said.retain(|r, _| r.is_empty() || repos.contains(r));
                let mut left = repos.len() as u64;
                metrics.journals_pending.store(left, Ordering::Relaxed);
                for repo in repos {
                    match replay(&journal, &apis, &repo, &host, None).await {
                        Ok(_) => {
                            said.remove(&repo);
                            left = left.saturating_sub(1);
                            metrics.journals_pending.store(left, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let text = e.to_string();
                            if said.get(&repo) != Some(&text) {
                                tracing::warn!(repo = %repo, error = %text, "write journal not replayed yet; trying again");
                                said.insert(repo, text);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                if said.get("") != Some(&text) {
                    tracing::warn!(error = %text, "cannot list the write journals");
                    said.insert(String::new(), text);
                }
            }
        }
        tokio::select! {
            () = stop.recv() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64) -> Entry {
        Entry {
            version,
            time: 1_700_000_000 + version,
            updates: Entry::updates_of(&format!(
                "{z} {v:040x} refs/heads/main\n{v:040x} {z} refs/heads/old\n",
                z = "0".repeat(40),
                v = version
            )),
        }
    }

    #[test]
    fn entries_come_back_in_the_order_they_were_appended() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::under(tmp.path());
        assert!(
            j.read("r1").unwrap().is_empty(),
            "no journal: nothing pending"
        );
        assert!(j.pending().unwrap().is_empty());
        for v in [4, 5, 7] {
            j.append("r1", "repo1", &entry(v)).unwrap();
        }
        j.append("r2", "repo1", &entry(1)).unwrap();
        assert_eq!(j.read("r1").unwrap(), vec![entry(4), entry(5), entry(7)]);
        assert_eq!(j.pending().unwrap(), ["r1", "r2"]);
        let text = std::fs::read_to_string(tmp.path().join(DIR).join("r1")).unwrap();
        let z = "0".repeat(40);
        let v = format!("{:040x}", 4);
        assert_eq!(
            text.lines().next(),
            Some(
                format!("repo=r1 version=4 time=1700000004 host=repo1 update={z}:{v}:refs/heads/main update={v}:{z}:refs/heads/old")
                    .as_str()
            )
        );
    }

    #[test]
    fn a_torn_line_without_a_version_is_skipped_and_the_next_entry_starts_its_own_line() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::under(tmp.path());
        j.append("r1", "repo1", &entry(2)).unwrap();
        // A crash mid-append (before its fsync: that hook never returned).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(j.file("r1"))
            .unwrap();
        f.write_all(b"repo=r1 version=").unwrap();
        assert_eq!(j.read("r1").unwrap(), vec![entry(2)]);
        j.append("r1", "repo1", &entry(3)).unwrap();
        assert_eq!(j.read("r1").unwrap(), vec![entry(2), entry(3)]);
    }

    #[test]
    fn replayed_entries_go_and_those_appended_since_stay_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::under(tmp.path());
        j.append("r1", "repo1", &entry(2)).unwrap();
        j.append("r1", "repo1", &entry(3)).unwrap();
        // The first two were read and replayed; one was appended meanwhile.
        j.append("r1", "repo1", &entry(4)).unwrap();
        j.remove_through("r1", "repo1", 2).unwrap();
        assert_eq!(j.read("r1").unwrap(), vec![entry(4)]);
        assert_eq!(j.pending().unwrap(), ["r1"]);
        j.remove_through("r1", "repo1", 1).unwrap();
        assert!(!j.file("r1").exists(), "all replayed: the file is gone");
        assert!(j.pending().unwrap().is_empty());
        // Replayed by another process meanwhile: nothing to remove.
        j.remove_through("r1", "repo1", 1).unwrap();
    }

    #[test]
    fn replay_reports_in_order_and_always_moves_the_master_forward() {
        let e: Vec<Entry> = [2, 3].into_iter().map(entry).collect();
        // The directory missed both: each is recorded as journaled.
        assert_eq!(versions_to_report(&e, 1), [2, 3]);
        // The first report arrived (its answer did not): a new version for it.
        assert_eq!(versions_to_report(&e, 2), [3, 4]);
        assert_eq!(versions_to_report(&e, 9), [10, 11]);
        assert!(versions_to_report(&[], 5).is_empty());
    }

    #[test]
    fn the_refusal_names_the_repository_the_version_and_when_writes_resume() {
        let e = JournalError::Pending {
            repo: "r1".into(),
            host: "repo1".into(),
            version: 2,
            cause: "connection refused".into(),
        };
        let line = e.to_string();
        assert!(!line.contains('\n'));
        for part in [
            "r1",
            "version 2",
            "writes resume once the directory is back",
            "reads still work",
        ] {
            assert!(line.contains(part), "{line}");
        }
    }
}
