//! `store migrate`: a stopped directory's sled store (`--data`) copied into
//! an etcd store, so the installation can go on with `serve --store etcd://…`
//! (docs/high-availability.md#moving-from-sled-to-etcd). Zones are written
//! whole (each at its serial), then the audit log with its ids and the
//! webhooks' places in it. A store that already holds one of the zones is
//! left as it is: the migration refuses rather than merge two histories.

use std::path::Path;

use super::etcd::EtcdStore;
use super::sled::SledStore;
use super::{Store, StoreError};

/// What a migration copied.
#[derive(Debug, Default, serde::Serialize)]
pub struct Migrated {
    pub zones: Vec<(String, u32)>,
    pub events: u64,
    pub cursors: usize,
    /// Records the sled store could not read (left out, as `serve` would).
    pub unreadable: Vec<super::Unreadable>,
}

/// Why a migration stopped; what was written before stays (zones are each
/// one transaction), and a rerun into a fresh prefix starts over.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot open the sled store in {dir}: {e} (stop the directory that uses it first)")]
    From { dir: String, e: StoreError },
    #[error("{0} holds no sled store (no conf file): give the directory's --data")]
    NoStore(String),
    #[error("cannot open the etcd store: {0}")]
    To(StoreError),
    #[error(
        "the etcd store already holds zone {0}: migrate into an empty prefix (etcd://…/NEW-PREFIX)"
    )]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies everything the sled store in `from` holds into the etcd store at `to`.
pub fn migrate(from: &Path, to: &str) -> Result<Migrated, MigrateError> {
    // sled would make an empty store of a wrong path and copy nothing.
    if !from.join("conf").is_file() {
        return Err(MigrateError::NoStore(from.display().to_string()));
    }
    let src = SledStore::open(from).map_err(|e| MigrateError::From {
        dir: from.display().to_string(),
        e,
    })?;
    let dst = EtcdStore::open(to).map_err(MigrateError::To)?;
    let loaded = src.load()?;
    let mut done = Migrated {
        unreadable: loaded.unreadable,
        ..Default::default()
    };
    for zone in &loaded.zones {
        if dst.load_zone(zone.origin())?.is_some() {
            return Err(MigrateError::Exists(zone.origin().to_string()));
        }
    }
    for zone in &loaded.zones {
        dst.replace_zone_on(zone, None, &[]).map_err(|e| match e {
            StoreError::Conflict(z) => MigrateError::Exists(z),
            e => e.into(),
        })?;
        done.zones.push((zone.origin().to_string(), zone.serial));
    }
    let mut after = 0;
    loop {
        let batch = src.events_after(after, 1000)?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        dst.import_events(&batch)?;
        done.events += batch.len() as u64;
    }
    for (name, id) in src.cursors()? {
        dst.set_cursor(&name, id)?;
        done.cursors += 1;
    }
    Ok(done)
}
