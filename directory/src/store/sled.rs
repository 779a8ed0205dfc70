//! The embedded store: one sled tree, keys `ORIGIN/KIND/NAME`, JSON values.
//!
//! Every commit is one `sled::Batch` followed by `flush()`, so an acknowledged
//! change survives a crash of the process or the machine.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Change, Store, StoreError};
use crate::model::{AdminKey, Binding, Host, Repo, Zone, ZoneMeta};

const META: &str = "meta";
const SERIAL: &str = "serial";
const HOST: &str = "h";
const BINDING: &str = "b";
const REPO: &str = "r";
const ADMIN: &str = "a";

/// The sled-backed store under `--data`.
pub struct SledStore {
    db: ::sled::Db,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn key(origin: &str, kind: &str, name: &str) -> Vec<u8> {
    format!("{origin}/{kind}/{name}").into_bytes()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(io)
}

fn parse<T: DeserializeOwned>(k: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: k.to_string(),
        reason: e.to_string(),
    })
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = ::sled::Config::new()
            .path(dir)
            // The model lives in memory; sled's page cache need not hold it twice.
            .cache_capacity(16 << 20)
            .open()
            .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", dir.display())))?;
        Ok(SledStore { db })
    }

    fn apply(batch: &mut ::sled::Batch, origin: &str, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::PutHost(h) => batch.insert(key(origin, HOST, &h.name), json(h)?),
            Change::DelHost(n) => batch.remove(key(origin, HOST, n)),
            Change::PutBinding(b) => batch.insert(
                key(origin, BINDING, &format!("{}/{}", b.host, b.service)),
                json(b)?,
            ),
            Change::DelBinding { host, service } => {
                batch.remove(key(origin, BINDING, &format!("{host}/{service}")))
            }
            Change::PutRepo(r) => batch.insert(key(origin, REPO, &r.name), json(r)?),
            Change::DelRepo(n) => batch.remove(key(origin, REPO, n)),
            Change::PutAdmin(a) => batch.insert(key(origin, ADMIN, &a.name), json(a)?),
            Change::DelAdmin(n) => batch.remove(key(origin, ADMIN, n)),
        }
        Ok(())
    }

    fn write(&self, batch: ::sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn load(&self) -> Result<Vec<Zone>, StoreError> {
        let mut zones: std::collections::BTreeMap<String, Zone> = Default::default();
        let mut serials: std::collections::BTreeMap<String, u32> = Default::default();
        let mut pending: Vec<(String, String, String, ::sled::IVec)> = Vec::new();
        for item in self.db.iter() {
            let (k, v) = item.map_err(io)?;
            let k = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "key is not UTF-8".into(),
            })?;
            let mut parts = k.splitn(3, '/');
            let (Some(origin), Some(kind)) = (parts.next(), parts.next()) else {
                return Err(StoreError::Corrupt {
                    key: k.clone(),
                    reason: "key is not ORIGIN/KIND/NAME".into(),
                });
            };
            match kind {
                META => {
                    let meta: ZoneMeta = parse(&k, &v)?;
                    zones.insert(origin.to_string(), Zone::new(meta, 0));
                }
                SERIAL => {
                    serials.insert(origin.to_string(), parse(&k, &v)?);
                }
                _ => pending.push((k.clone(), origin.to_string(), kind.to_string(), v)),
            }
        }
        for (k, origin, kind, v) in pending {
            let Some(zone) = zones.get_mut(&origin) else {
                return Err(StoreError::Corrupt {
                    key: k,
                    reason: "record of a zone that has no meta".into(),
                });
            };
            match kind.as_str() {
                HOST => {
                    let h: Host = parse(&k, &v)?;
                    zone.hosts.insert(h.name.clone(), h);
                }
                BINDING => {
                    let b: Binding = parse(&k, &v)?;
                    zone.bindings.insert((b.host.clone(), b.service.clone()), b);
                }
                REPO => {
                    let r: Repo = parse(&k, &v)?;
                    zone.repos.insert(r.name.clone(), r);
                }
                ADMIN => {
                    let a: AdminKey = parse(&k, &v)?;
                    zone.admins.insert(a.name.clone(), a);
                }
                other => {
                    return Err(StoreError::Corrupt {
                        key: k.clone(),
                        reason: format!("unknown record kind {other:?}"),
                    })
                }
            }
        }
        for (origin, zone) in zones.iter_mut() {
            zone.serial = serials.get(origin).copied().unwrap_or(1);
        }
        Ok(zones.into_values().collect())
    }

    fn commit(&self, origin: &str, serial: u32, changes: &[Change]) -> Result<(), StoreError> {
        let mut batch = ::sled::Batch::default();
        for c in changes {
            Self::apply(&mut batch, origin, c)?;
        }
        batch.insert(key(origin, SERIAL, ""), json(&serial)?);
        self.write(batch)
    }

    fn replace_zone(&self, zone: &Zone) -> Result<(), StoreError> {
        let origin = zone.origin();
        let mut batch = ::sled::Batch::default();
        for item in self.db.scan_prefix(format!("{origin}/").as_bytes()) {
            let (k, _) = item.map_err(io)?;
            batch.remove(k);
        }
        batch.insert(key(origin, META, ""), json(&zone.meta)?);
        batch.insert(key(origin, SERIAL, ""), json(&zone.serial)?);
        for h in zone.hosts.values() {
            Self::apply(&mut batch, origin, &Change::PutHost(h.clone()))?;
        }
        for b in zone.bindings.values() {
            Self::apply(&mut batch, origin, &Change::PutBinding(b.clone()))?;
        }
        for r in zone.repos.values() {
            Self::apply(&mut batch, origin, &Change::PutRepo(r.clone()))?;
        }
        for a in zone.admins.values() {
            Self::apply(&mut batch, origin, &Change::PutAdmin(a.clone()))?;
        }
        self.write(batch)
    }
}
