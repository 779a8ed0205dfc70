//! Durable state behind one small trait.
//!
//! The directory keeps its model in memory and answers from a view built from it;
//! the store is only read at start and written on change. A change is one atomic
//! batch that is on disk when `commit` returns. Nothing above this trait knows
//! which backend holds the data (sled today; a distributed store later).

use crate::model::{AdminKey, Binding, Host, Repo, Zone};

pub mod sled;

/// A failure of the backend: the change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored record {key:?} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// One entity-level change inside a batch.
#[derive(Debug, Clone)]
pub enum Change {
    PutHost(Host),
    DelHost(String),
    PutBinding(Binding),
    DelBinding { host: String, service: String },
    PutRepo(Repo),
    DelRepo(String),
    PutAdmin(AdminKey),
    DelAdmin(String),
}

/// A durable home for zones.
pub trait Store: Send + Sync {
    /// Every stored zone, whole.
    fn load(&self) -> Result<Vec<Zone>, StoreError>;

    /// Applies `changes` and sets the zone's serial, atomically and durably.
    fn commit(&self, origin: &str, serial: u32, changes: &[Change]) -> Result<(), StoreError>;

    /// Replaces a zone (or creates it) whole, atomically and durably.
    fn replace_zone(&self, zone: &Zone) -> Result<(), StoreError>;

    /// Keeps a compiled view of a zone (`view::cache`) until the zone's next
    /// change: `commit` and `replace_zone` drop it in the same batch.
    fn save_view(&self, _origin: &str, _bytes: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The compiled view kept by `save_view`, if no change came after it.
    fn load_view(&self, _origin: &str) -> Option<Vec<u8>> {
        None
    }
}
