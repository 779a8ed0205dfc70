//! Durable state behind one small trait.
//!
//! The directory keeps its model in memory and answers from a view built from it;
//! the store is only read at start and written on change. A change is one atomic
//! batch that is on disk when `commit` returns. Nothing above this trait knows
//! which backend holds the data: `sled` on disk, `memory` for tests and the
//! fuzzer, `etcd` shared by several directory servers (docs/high-availability.md).
//! `battery` is the set of tests every backend passes.
//!
//! A shared store adds three things the trait's defaults leave out for a store
//! one process owns: commits conditioned on the serial they were planned
//! against (`commit_on`, `StoreError::Conflict`), the other servers' commits
//! as they happen (`follow`), and duties only one server runs at a time (`lead`).

use crate::events::Event;
use crate::model::{AdminKey, Binding, Database, Host, Op, Repo, Secondary, TsigKey, Zone};

pub mod battery;
pub mod etcd;
pub mod memory;
pub mod migrate;
pub mod sled;

/// A failure of the backend: the change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored record {key:?} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// A change to a zone the store does not hold.
    #[error("the store has no zone {0}: write it whole (a seed or an import) before changing it")]
    NoZone(String),
    /// Another directory server changed the zone since this one planned the
    /// change: nothing was written; catch up and plan again.
    #[error("zone {0} was changed by another directory server meanwhile; try again")]
    Conflict(String),
    /// Audit event ids were taken by another directory server: nothing was
    /// written; number the events from this id and write again.
    #[error("audit event ids were taken by another directory server; the next free one is {0}")]
    EventIdsTaken(u64),
}

/// What [`Store::load`] read: every zone it could, and each record it could not.
#[derive(Debug, Default)]
pub struct Loaded {
    pub zones: Vec<Zone>,
    pub unreadable: Vec<Unreadable>,
}

/// A stored record that could not be read. One bad record never stops the
/// directory: it is left out of the model (an entity whose latest record is
/// unreadable is absent; a zone whose apex, serial or snapshot is unreadable is
/// not served), logged at start and listed by `status` until the next start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unreadable {
    /// The store's key, e.g. `cluster.example./h/web1` or a snapshot's `…/hosts[3]`.
    pub key: String,
    pub reason: String,
}

/// One entity-level change inside a batch. Serialized whole into a shared
/// store's log (`Committed`), so every kind flows to the other servers as it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    PutHost(Host),
    DelHost(String),
    PutBinding(Binding),
    DelBinding { host: String, service: String },
    PutRepo(Repo),
    DelRepo(String),
    PutDb(Database),
    DelDb(String),
    PutAdmin(AdminKey),
    DelAdmin(String),
    PutTsig(TsigKey),
    DelTsig(String),
    PutSecondary(Secondary),
    DelSecondary(std::net::SocketAddr),
}

impl Change {
    /// Makes this change to the model in memory, as the store makes it to
    /// what it holds.
    pub fn apply(self, zone: &mut Zone) {
        match self {
            Change::PutHost(h) => {
                zone.hosts.insert(h.name.clone(), h);
            }
            Change::DelHost(n) => {
                zone.hosts.remove(&n);
            }
            Change::PutBinding(b) => {
                zone.bindings.insert((b.host.clone(), b.service.clone()), b);
            }
            Change::DelBinding { host, service } => {
                zone.bindings.remove(&(host, service));
            }
            Change::PutRepo(r) => {
                zone.repos.insert(r.name.clone(), r);
            }
            Change::DelRepo(n) => {
                zone.repos.remove(&n);
            }
            Change::PutDb(d) => {
                zone.dbs.insert(d.name.clone(), d);
            }
            Change::DelDb(n) => {
                zone.dbs.remove(&n);
            }
            Change::PutAdmin(a) => {
                zone.admins.insert(a.name.clone(), a);
            }
            Change::DelAdmin(n) => {
                zone.admins.remove(&n);
            }
            Change::PutTsig(k) => {
                zone.tsig.insert(k.name.clone(), k);
            }
            Change::DelTsig(n) => {
                zone.tsig.remove(&n);
            }
            Change::PutSecondary(s) => {
                zone.secondaries.insert(s.addr, s);
            }
            Change::DelSecondary(a) => {
                zone.secondaries.remove(&a);
            }
        }
    }
}

/// One commit as a shared store keeps it for the other servers: the change
/// they replay on their model at `prev` to reach `serial`, through the same
/// path as their own (`Directory::follow`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Committed {
    pub origin: String,
    /// The serial the change was planned against.
    pub prev: u32,
    pub serial: u32,
    /// What was asked (it says which names the change touches); `None` for a
    /// bare commit (a store migration, a test).
    pub op: Option<Op>,
    pub changes: Vec<Change>,
}

/// What another directory server did to a shared store.
#[derive(Debug, Clone)]
pub enum Followed {
    /// A commit, to replay.
    Commit(Committed),
    /// A zone written whole (seed, import), or a gap in what was followed:
    /// read the zone again.
    Reload(String),
    /// The store could not say what changed (its history was compacted past
    /// the follower): read every zone again.
    ReloadAll,
}

/// A repository's write lease as a shared store holds it (`state::leases`):
/// any server can grant, check and end it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredLease {
    pub holder: String,
    pub token: String,
    /// Unix milliseconds (the servers' clocks must agree to well under a second).
    pub expires_ms: u64,
}

/// A durable home for zones.
pub trait Store: Send + Sync {
    /// Every stored zone, whole, and the records that could not be read. An
    /// error means the store itself could not be read (I/O), not one record.
    fn load(&self) -> Result<Loaded, StoreError>;

    /// Applies `changes`, sets the zone's serial and appends `events` to the
    /// audit log, atomically and durably.
    fn commit(
        &self,
        origin: &str,
        serial: u32,
        changes: &[Change],
        events: &[Event],
    ) -> Result<(), StoreError>;

    /// Replaces a zone (or creates it) whole and appends `events` to the audit
    /// log, atomically and durably.
    fn replace_zone(&self, zone: &Zone, events: &[Event]) -> Result<(), StoreError>;

    /// Keeps a compiled view of a zone (`view::cache`) until the zone's next
    /// change: `commit` and `replace_zone` drop it in the same batch.
    fn save_view(&self, _origin: &str, _bytes: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The compiled view kept by `save_view`, if no change came after it.
    fn load_view(&self, _origin: &str) -> Option<Vec<u8>> {
        None
    }

    /// Appends events to the audit log, durably. Their ids come after every stored one.
    fn append_events(&self, _events: &[Event]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Keeps a zone's change (`transfer::Diff`, encoded) in its IXFR journal,
    /// the oldest past `transfer::JOURNAL_DIFFS` dropped. Need not be flushed:
    /// a diff lost in a crash costs a secondary a full transfer, not an answer.
    fn append_diff(&self, _origin: &str, _serial: u32, _diff: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// A zone's journal, oldest first; `commit` and `replace_zone` keep it
    /// unless the zone is replaced.
    fn load_diffs(&self, _origin: &str) -> Vec<Vec<u8>> {
        vec![]
    }

    /// Up to `limit` events with ids after `after`, oldest first.
    fn events_after(&self, _after: u64, _limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(vec![])
    }

    /// The id of the last stored event (0 if none).
    fn last_event_id(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// A named reader's place in the audit log (a webhook's last delivered id).
    fn cursor(&self, _name: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Records a reader's place, durably.
    fn set_cursor(&self, _name: &str, _id: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`Store::commit`] of `op`, planned against the zone at serial `prev`:
    /// a shared store writes it only if the zone is still at `prev`, and
    /// refuses it with [`StoreError::Conflict`] otherwise. A store one
    /// process owns cannot be changed behind its back.
    fn commit_on(
        &self,
        origin: &str,
        prev: u32,
        serial: u32,
        changes: &[Change],
        events: &[Event],
        op: &Op,
    ) -> Result<(), StoreError> {
        let _ = (prev, op);
        self.commit(origin, serial, changes, events)
    }

    /// [`Store::replace_zone`] planned on the zone at serial `prev` (`None`:
    /// no such zone yet): a shared store writes it only if that still holds,
    /// and refuses it with [`StoreError::Conflict`] otherwise.
    fn replace_zone_on(
        &self,
        zone: &Zone,
        prev: Option<u32>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let _ = prev;
        self.replace_zone(zone, events)
    }

    /// One zone as the store holds it now (`None`: it has none by that name).
    fn load_zone(&self, origin: &str) -> Result<Option<Zone>, StoreError> {
        Ok(self
            .load()?
            .zones
            .into_iter()
            .find(|z| z.origin() == origin))
    }

    /// The other servers' writes to a shared store, from the state `load`
    /// read on; `None` for a store one process owns.
    fn follow(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Followed>> {
        None
    }

    /// Whether repositories' write leases live in the store (shared by every
    /// server) rather than in this server's memory.
    fn shares_leases(&self) -> bool {
        false
    }

    /// The write lease of `repo` in `zone` as stored, expired or not.
    fn lease(&self, _zone: &str, _repo: &str) -> Result<Option<StoredLease>, StoreError> {
        Ok(None)
    }

    /// Stores `lease` unless an unexpired one is held (`Ok(Err(held))` then).
    fn take_lease(
        &self,
        _zone: &str,
        _repo: &str,
        _lease: &StoredLease,
    ) -> Result<Result<(), StoredLease>, StoreError> {
        Err(StoreError::Io("this store keeps no write leases".into()))
    }

    /// Ends the lease with `token`, if it is still the one held.
    fn release_lease(&self, _zone: &str, _repo: &str, _token: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether console logins and sessions (`sessions`) live in the store
    /// (valid on every server) rather than in this server's memory.
    fn shares_sessions(&self) -> bool {
        false
    }

    /// Stores a console login record under `key` (the SHA-256 of its secret)
    /// until `expires_ms` (unix milliseconds).
    fn put_session(&self, _key: &str, _value: &[u8], _expires_ms: u64) -> Result<(), StoreError> {
        Err(StoreError::Io(
            "this store keeps no console sessions".into(),
        ))
    }

    /// The record under `key`, while it lasts.
    fn session(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    /// Removes the record under `key`: `true` for the one caller that did
    /// (a login code is spent once, whichever server takes it).
    fn end_session(&self, _key: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Whether this server runs `duty` (`checks`, `webhooks`) now: one server
    /// of those sharing a store does, the others keep asking. A store one
    /// process owns always says yes.
    fn lead(&self, _duty: &str) -> bool {
        true
    }
}
