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
//!
//! This file holds the state (the sidecar's own state holds a `Syncer`); the
//! fetching itself, which needs the sidecar, is in `repo::syncing`.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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

pub(super) type Outcome = Option<Result<u64, String>>;

/// What this process knows of one repository's copy.
#[derive(Default)]
pub(super) struct Copy {
    /// The master the copy was last fetched from, and the version that fetch
    /// brought (a new master starts over: its history may differ).
    pub(super) master: String,
    pub(super) have: u64,
    /// The fetch under way: the version it brings, and its outcome once known.
    pub(super) flight: Option<(u64, watch::Receiver<Outcome>)>,
}

/// One door per repository for fetches from its master.
pub struct Syncer {
    /// Set by `run`: this process fetches itself. Unset (`ssh-exec`): it asks `run`.
    /// (its loopback proxy's address and token).
    pub(super) loopback: OnceLock<(SocketAddr, String)>,
    pub(super) copies: Mutex<HashMap<String, Copy>>,
    /// How long a read waits for its sync (`--sync-timeout`).
    pub timeout: Duration,
}

pub(super) enum Step {
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

    /// Makes this process the one that fetches (`run`), through its loopback
    /// signing proxy at `addr` with `token`.
    pub fn fetch_through(&self, addr: SocketAddr, token: String) {
        let _ = self.loopback.set((addr, token));
    }

    /// Ends the flight `rx` belongs to (if it is still the one under way),
    /// noting the version it brought.
    pub(super) fn land(
        &self,
        repo: &str,
        master: &str,
        rx: &watch::Receiver<Outcome>,
        got: Option<u64>,
    ) {
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
}
