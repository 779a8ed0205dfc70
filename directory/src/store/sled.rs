//! The embedded store: one sled tree, JSON values.
//!
//! A zone is kept as a snapshot plus an overlay:
//! - `ORIGIN/meta/` and `ORIGIN/serial/`: the zone's apex and serial;
//! - `ORIGIN/snapshot/`: which file under `snapshots/` holds every host,
//!   binding, repository and admin key of the zone as it was seeded or
//!   imported, with its SHA-256;
//! - `ORIGIN/KIND/NAME` (`h`, `b`, `r`, `a`): what changed since, one key per
//!   entity, `null` for one removed;
//! - `ORIGIN/view/`: which file under `views/` holds the compiled view saved at
//!   shutdown, with its SHA-256; removed by the batch of the next change.
//!
//! A seed or import is one small batch (sled's memory grows with the number of
//! keys in one batch: 130k keys cost it most of a gigabyte), and loading reads one
//! file instead of walking a key per host. Large values live in files, written
//! and synced before the batch that points at them, because sled rewrites a
//! large value whenever the tree node holding its key is rewritten (a 17 MB
//! snapshot inside the tree was copied every few commits, 40 ms each). A file
//! no key points at (an older snapshot, or one written just before a crash) is
//! removed when the store opens. Every commit is one
//! `sled::Batch` followed by `flush()`, so an acknowledged change survives a
//! crash of the process or the machine. Stores written before the snapshot
//! existed (one key per entity, no snapshot) load the same way.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Change, Loaded, Store, StoreError, Unreadable};
use crate::events::Event;
use crate::model::{AdminKey, Binding, Database, Host, Repo, Secondary, TsigKey, Zone, ZoneMeta};

const META: &str = "meta";
const SERIAL: &str = "serial";
const SNAPSHOT: &str = "snapshot";
const VIEW: &str = "view";
const HOST: &str = "h";
const BINDING: &str = "b";
const REPO: &str = "r";
const DB: &str = "d";
const ADMIN: &str = "a";
const TSIG: &str = "t";
const SECONDARY: &str = "s";
const REMOVED: &[u8] = b"null";

/// The sled-backed store under `--data`.
pub struct SledStore {
    db: ::sled::Db,
    /// The audit log: big-endian id -> event JSON.
    events: ::sled::Tree,
    /// The order of the audit log by origin: `a` (admins and the directory)
    /// or `h` (hosts) + big-endian sequence number -> big-endian event id;
    /// and `legacy`: the last id written before this order was kept.
    order: ::sled::Tree,
    /// Readers' places in the audit log: name -> big-endian id.
    cursors: ::sled::Tree,
    /// Each zone's IXFR journal: ORIGIN, 0, big-endian sequence -> encoded diff.
    journal: ::sled::Tree,
    dir: std::path::PathBuf,
    /// Events kept of each origin: [admins and the directory, hosts].
    kept: [u64; 2],
    /// Events up to this id were written before `order` was kept: each leaves
    /// as it always did, `EVENTS_KEPT` ids after it (`kept[0]`).
    legacy: u64,
}

/// How many events made by admins and the directory itself (checks, lag
/// alerts, seeds) the audit log keeps; older ones are dropped as new ones of
/// theirs come.
pub const EVENTS_KEPT: u64 = 100_000;
/// How many events hosts made (a sidecar's stale episodes, a change signed
/// with a host's own key) the audit log keeps, apart: however much hosts
/// write, they only ever push out their own older events.
pub const HOST_EVENTS_KEPT: u64 = 10_000;
const LEGACY: &[u8] = b"legacy";

/// Where a large value is: a file under the data directory, and its SHA-256.
#[derive(Serialize, Deserialize)]
struct FileRef {
    file: String,
    sha256: String,
}

const SNAPSHOTS: &str = "snapshots";
const VIEWS: &str = "views";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes))
}

/// A zone's entities, whole, as seeded or imported.
#[derive(Serialize, Default)]
struct Snapshot {
    hosts: Vec<Host>,
    bindings: Vec<Binding>,
    repos: Vec<Repo>,
    admins: Vec<AdminKey>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dbs: Vec<Database>,
}

/// A snapshot as read back: each entity is parsed on its own, so one that
/// cannot be read is skipped and reported rather than failing the load.
#[derive(Deserialize)]
struct SnapshotIn<'a> {
    #[serde(borrow)]
    hosts: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    bindings: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    repos: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    admins: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    dbs: Vec<&'a serde_json::value::RawValue>,
}

/// Parses each of a snapshot's records of one kind, reporting those that fail
/// (by name when the record has a readable `name`).
fn parse_each<T: DeserializeOwned>(
    key: &str,
    what: &str,
    raw: &[&serde_json::value::RawValue],
    unreadable: &mut Vec<Unreadable>,
) -> Vec<T> {
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
        host: Option<String>,
        service: Option<String>,
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        match serde_json::from_str::<T>(r.get()) {
            Ok(v) => out.push(v),
            Err(e) => {
                let label = match serde_json::from_str::<Named>(r.get()) {
                    Ok(Named { name: Some(n), .. }) => n,
                    Ok(Named {
                        host: Some(h),
                        service: Some(s),
                        ..
                    }) => format!("{h}/{s}"),
                    _ => format!("#{i}"),
                };
                unreadable.push(Unreadable {
                    key: format!("{key} {what} {label}"),
                    reason: e.to_string(),
                });
            }
        }
    }
    out
}

/// A zone's entities as one snapshot (JSON), as seeded or imported.
pub(super) fn snapshot_json(zone: &Zone) -> Result<Vec<u8>, StoreError> {
    json(&Snapshot {
        hosts: zone.hosts.values().cloned().collect(),
        bindings: zone.bindings.values().cloned().collect(),
        repos: zone.repos.values().cloned().collect(),
        admins: zone.admins.values().cloned().collect(),
        dbs: zone.dbs.values().cloned().collect(),
    })
}

/// Fills `zone` from a snapshot stored under `key`: each entity that cannot
/// be read is left out and reported in `unreadable`; an error means the
/// snapshot as a whole cannot be read.
pub(super) fn parse_snapshot(
    key: &str,
    bytes: &[u8],
    zone: &mut Zone,
    unreadable: &mut Vec<Unreadable>,
) -> Result<(), StoreError> {
    let s = serde_json::from_slice::<SnapshotIn>(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    zone.hosts = parse_each::<Host>(key, "host", &s.hosts, unreadable)
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect();
    zone.bindings = parse_each::<Binding>(key, "binding", &s.bindings, unreadable)
        .into_iter()
        .map(|b| ((b.host.clone(), b.service.clone()), b))
        .collect();
    zone.repos = parse_each::<Repo>(key, "repo", &s.repos, unreadable)
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    zone.dbs = parse_each::<Database>(key, "db", &s.dbs, unreadable)
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
    zone.admins = parse_each::<AdminKey>(key, "admin", &s.admins, unreadable)
        .into_iter()
        .map(|a| (a.name.clone(), a))
        .collect();
    Ok(())
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

/// An overlay value: the entity, or `None` for one removed.
fn parse_overlay<T: DeserializeOwned>(k: &str, v: &[u8]) -> Result<Option<T>, StoreError> {
    if v == REMOVED {
        return Ok(None);
    }
    parse(k, v).map(Some)
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
        let events = db.open_tree("events").map_err(io)?;
        let cursors = db.open_tree("cursors").map_err(io)?;
        let order = db.open_tree("event_order").map_err(io)?;
        let journal = db.open_tree("journal").map_err(io)?;
        let legacy = match order.get(LEGACY).map_err(io)? {
            Some(v) => id_of(&v)?,
            None => {
                let last = match events.last().map_err(io)? {
                    Some((k, _)) => id_of(&k)?,
                    None => 0,
                };
                order.insert(LEGACY, &last.to_be_bytes()).map_err(io)?;
                order.flush().map_err(io)?;
                last
            }
        };
        let store = SledStore {
            db,
            events,
            order,
            cursors,
            journal,
            dir: dir.to_path_buf(),
            kept: [EVENTS_KEPT, HOST_EVENTS_KEPT],
            legacy,
        };
        store.remove_unreferenced_files()?;
        Ok(store)
    }

    /// Writes `bytes` to a new file under `sub/` and syncs it (and the folder),
    /// so that a batch pointing at it never points at nothing.
    fn write_file(&self, sub: &str, stem: &str, bytes: &[u8]) -> Result<FileRef, StoreError> {
        use std::io::Write;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let folder = self.dir.join(sub);
        if !folder.exists() {
            std::fs::create_dir_all(&folder).map_err(io)?;
            // The new folder's entry must be on disk before anything points into it.
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Never the name of a file a key may still point at: time, process and a
        // counter, and `create_new` refuses an existing name outright.
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{stem}-{nanos}-{}-{n}", std::process::id());
        let tmp = folder.join(format!("{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        if folder.join(&name).exists() {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Io(format!("{sub}/{name} already exists")));
        }
        std::fs::rename(&tmp, folder.join(&name)).map_err(io)?;
        std::fs::File::open(&folder)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(FileRef {
            file: format!("{sub}/{name}"),
            sha256: sha256_hex(bytes),
        })
    }

    /// The bytes of a file a key points at, checked against its SHA-256.
    fn read_file(&self, key: &str, r: &FileRef) -> Result<Vec<u8>, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.to_string(),
            reason,
        };
        if r.file.contains("..") || r.file.starts_with('/') {
            return Err(corrupt(format!("{:?} is not a file of the store", r.file)));
        }
        let bytes = std::fs::read(self.dir.join(&r.file))
            .map_err(|e| corrupt(format!("cannot read {}: {e}", r.file)))?;
        if sha256_hex(&bytes) != r.sha256 {
            return Err(corrupt(format!("{} does not match its SHA-256", r.file)));
        }
        Ok(bytes)
    }

    /// Removes the files under `snapshots/` and `views/` that no key points at.
    fn remove_unreferenced_files(&self) -> Result<(), StoreError> {
        let mut wanted = std::collections::HashSet::new();
        for item in self.db.iter() {
            let (k, v) = item.map_err(io)?;
            let k = String::from_utf8_lossy(&k);
            let kind = k.split('/').nth(1);
            if matches!(kind, Some(SNAPSHOT) | Some(VIEW)) {
                if let Ok(r) = serde_json::from_slice::<FileRef>(&v) {
                    wanted.insert(r.file);
                }
            }
        }
        for sub in [SNAPSHOTS, VIEWS] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let rel = format!("{sub}/{}", e.file_name().to_string_lossy());
                if !wanted.contains(&rel) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Removes unreferenced files after a write that succeeded; a failure here
    /// loses nothing (the next open tries again), so it is only logged.
    fn tidy(&self) {
        if let Err(e) = self.remove_unreferenced_files() {
            tracing::warn!(error = %e, "could not remove old snapshot or view files");
        }
    }

    /// A file-name stem for a zone: its origin, hashed (origins may hold any byte).
    fn stem(origin: &str) -> String {
        sha256_hex(origin.as_bytes())[..16].to_string()
    }

    fn apply(batch: &mut ::sled::Batch, origin: &str, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::PutHost(h) => batch.insert(key(origin, HOST, &h.name), json(h)?),
            Change::DelHost(n) => batch.insert(key(origin, HOST, n), REMOVED),
            Change::PutBinding(b) => batch.insert(
                key(origin, BINDING, &format!("{}/{}", b.host, b.service)),
                json(b)?,
            ),
            Change::DelBinding { host, service } => {
                batch.insert(key(origin, BINDING, &format!("{host}/{service}")), REMOVED)
            }
            Change::PutRepo(r) => batch.insert(key(origin, REPO, &r.name), json(r)?),
            Change::DelRepo(n) => batch.insert(key(origin, REPO, n), REMOVED),
            Change::PutDb(d) => batch.insert(key(origin, DB, &d.name), json(d)?),
            Change::DelDb(n) => batch.insert(key(origin, DB, n), REMOVED),
            Change::PutAdmin(a) => batch.insert(key(origin, ADMIN, &a.name), json(a)?),
            Change::DelAdmin(n) => batch.insert(key(origin, ADMIN, n), REMOVED),
            Change::PutTsig(k) => batch.insert(key(origin, TSIG, &k.name), json(k)?),
            Change::DelTsig(n) => batch.insert(key(origin, TSIG, n), REMOVED),
            Change::PutSecondary(s) => {
                batch.insert(key(origin, SECONDARY, &s.addr.to_string()), json(s)?)
            }
            Change::DelSecondary(a) => {
                batch.insert(key(origin, SECONDARY, &a.to_string()), REMOVED)
            }
        }
        Ok(())
    }

    fn write(&self, batch: ::sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Writes `batch` to the zone tree and `events` to the audit log in one
    /// transaction, then flushes: both are on disk, or neither. Each event
    /// makes room for itself among its own origin's (see `HOST_EVENTS_KEPT`).
    /// Events are written one batch at a time (`Directory` holds its event
    /// id lock across the write), so the order read here is the latest.
    fn write_with_events(&self, batch: ::sled::Batch, events: &[Event]) -> Result<(), StoreError> {
        use ::sled::Transactional;
        if events.is_empty() {
            return self.write(batch);
        }
        let mut log = ::sled::Batch::default();
        let mut order = ::sled::Batch::default();
        // Each origin's next sequence number, and the ids this batch orders.
        let mut next: [Option<u64>; 2] = [None, None];
        let mut ordered = std::collections::HashMap::new();
        for e in events {
            log.insert(&e.id.to_be_bytes(), json(e)?);
            if let Some(old) = e.id.checked_sub(self.kept[0]).filter(|&o| o <= self.legacy) {
                log.remove(&old.to_be_bytes());
            }
            let origin = usize::from(e.by_host());
            let seq = match next[origin] {
                Some(s) => s,
                None => self.last_seq(origin)? + 1,
            };
            next[origin] = Some(seq + 1);
            order.insert(order_key(origin, seq), &e.id.to_be_bytes());
            ordered.insert((origin, seq), e.id);
            let Some(gone) = seq.checked_sub(self.kept[origin]).filter(|&s| s > 0) else {
                continue;
            };
            let id = match ordered.get(&(origin, gone)) {
                Some(&id) => Some(id),
                None => match self.order.get(order_key(origin, gone)).map_err(io)? {
                    Some(v) => Some(id_of(&v)?),
                    None => None,
                },
            };
            if let Some(id) = id {
                log.remove(&id.to_be_bytes());
            }
            order.remove(order_key(origin, gone));
        }
        (&*self.db, &self.events, &self.order)
            .transaction(|(db, ev, ord)| {
                db.apply_batch(&batch)?;
                ev.apply_batch(&log)?;
                ord.apply_batch(&order)?;
                Ok::<(), ::sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| io(format!("{e:?}")))?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    /// Every reader's place in the audit log (`store migrate` copies them).
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.cursors.iter() {
            let (k, v) = item.map_err(io)?;
            out.push((String::from_utf8_lossy(&k).into_owned(), id_of(&v)?));
        }
        Ok(out)
    }

    /// The last sequence number of an origin's events (0: none yet).
    fn last_seq(&self, origin: usize) -> Result<u64, StoreError> {
        match self.order.scan_prefix([ORIGINS[origin]]).next_back() {
            Some(item) => {
                let (k, _) = item.map_err(io)?;
                id_of(&k[1..])
            }
            None => Ok(0),
        }
    }
}

/// Applies one overlay entry (`KIND/NAME` = value) to `zone`. An entry that
/// cannot be read leaves its entity out (its latest state is unknown, so an
/// older one is not served in its place) and is returned as the error.
fn overlay(zone: &mut Zone, k: &str, kind: &str, name: &str, v: &[u8]) -> Result<(), StoreError> {
    let result = overlay_entry(zone, k, kind, name, v);
    if result.is_err() {
        match kind {
            HOST => {
                zone.hosts.remove(name);
            }
            BINDING => {
                if let Some((host, service)) = name.split_once('/') {
                    zone.bindings
                        .remove(&(host.to_string(), service.to_string()));
                }
            }
            REPO => {
                zone.repos.remove(name);
            }
            DB => {
                zone.dbs.remove(name);
            }
            ADMIN => {
                zone.admins.remove(name);
            }
            TSIG => {
                zone.tsig.remove(name);
            }
            SECONDARY => {
                if let Ok(a) = name.parse() {
                    zone.secondaries.remove(&a);
                }
            }
            _ => {}
        }
    }
    result
}

fn overlay_entry(
    zone: &mut Zone,
    k: &str,
    kind: &str,
    name: &str,
    v: &[u8],
) -> Result<(), StoreError> {
    match kind {
        HOST => match parse_overlay::<Host>(k, v)? {
            Some(h) => {
                zone.hosts.insert(h.name.clone(), h);
            }
            None => {
                zone.hosts.remove(name);
            }
        },
        BINDING => match parse_overlay::<Binding>(k, v)? {
            Some(b) => {
                zone.bindings.insert((b.host.clone(), b.service.clone()), b);
            }
            None => {
                let (host, service) = name.split_once('/').ok_or_else(|| StoreError::Corrupt {
                    key: k.to_string(),
                    reason: "binding key is not HOST/SERVICE".into(),
                })?;
                zone.bindings
                    .remove(&(host.to_string(), service.to_string()));
            }
        },
        REPO => match parse_overlay::<Repo>(k, v)? {
            Some(r) => {
                zone.repos.insert(r.name.clone(), r);
            }
            None => {
                zone.repos.remove(name);
            }
        },
        DB => match parse_overlay::<Database>(k, v)? {
            Some(d) => {
                zone.dbs.insert(d.name.clone(), d);
            }
            None => {
                zone.dbs.remove(name);
            }
        },
        ADMIN => match parse_overlay::<AdminKey>(k, v)? {
            Some(a) => {
                zone.admins.insert(a.name.clone(), a);
            }
            None => {
                zone.admins.remove(name);
            }
        },
        TSIG => match parse_overlay::<TsigKey>(k, v)? {
            Some(t) => {
                zone.tsig.insert(t.name.clone(), t);
            }
            None => {
                zone.tsig.remove(name);
            }
        },
        SECONDARY => match parse_overlay::<Secondary>(k, v)? {
            Some(s) => {
                zone.secondaries.insert(s.addr, s);
            }
            None => {
                if let Ok(a) = name.parse() {
                    zone.secondaries.remove(&a);
                }
            }
        },
        other => {
            return Err(StoreError::Corrupt {
                key: k.to_string(),
                reason: format!("unknown record kind {other:?}"),
            })
        }
    }
    Ok(())
}

/// The first byte of `order` keys, by origin: admins and the directory, hosts.
const ORIGINS: [u8; 2] = [b'a', b'h'];

fn order_key(origin: usize, seq: u64) -> Vec<u8> {
    let mut k = vec![ORIGINS[origin]];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The journal's keys of one zone start with this.
fn journal_prefix(origin: &str) -> Vec<u8> {
    let mut k = origin.as_bytes().to_vec();
    k.push(0);
    k
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

/// A big-endian u64 key or value.
fn id_of(b: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = b.try_into().map_err(|_| StoreError::Corrupt {
        key: format!("events/{}", hex(b)),
        reason: "an event id is 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl Store for SledStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut unreadable = Vec::new();
        let mut skip = |e: StoreError| match e {
            StoreError::Corrupt { key, reason } => {
                unreadable.push(Unreadable { key, reason });
                Ok(())
            }
            e => Err(e),
        };
        let mut zones: std::collections::BTreeMap<String, Zone> = Default::default();
        let mut serials: std::collections::BTreeMap<String, u32> = Default::default();
        let mut snapshots: Vec<(String, String, ::sled::IVec)> = Vec::new();
        let mut pending: Vec<(String, ::sled::IVec)> = Vec::new();
        // Zones that cannot be served: their apex, serial or snapshot is unreadable.
        let mut broken: std::collections::BTreeSet<String> = Default::default();
        for item in self.db.iter() {
            let (k, v) = item.map_err(io)?;
            let Ok(k) = String::from_utf8(k.to_vec()) else {
                skip(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "key is not UTF-8".into(),
                })?;
                continue;
            };
            let mut parts = k.splitn(3, '/');
            let (Some(origin), Some(kind)) = (parts.next(), parts.next()) else {
                skip(StoreError::Corrupt {
                    key: k.clone(),
                    reason: "key is not ORIGIN/KIND/NAME".into(),
                })?;
                continue;
            };
            match kind {
                META => match parse::<ZoneMeta>(&k, &v) {
                    Ok(meta) => {
                        zones.insert(origin.to_string(), Zone::new(meta, 0));
                    }
                    Err(e) => {
                        broken.insert(origin.to_string());
                        skip(e)?;
                    }
                },
                SERIAL => match parse(&k, &v) {
                    Ok(serial) => {
                        serials.insert(origin.to_string(), serial);
                    }
                    Err(e) => {
                        broken.insert(origin.to_string());
                        skip(e)?;
                    }
                },
                SNAPSHOT => snapshots.push((k.clone(), origin.to_string(), v)),
                VIEW => {}
                _ => pending.push((k, v)),
            }
        }
        let orphan = |k: &str| StoreError::Corrupt {
            key: k.to_string(),
            reason: "record of a zone that has no readable apex (meta)".into(),
        };
        for (k, origin, v) in snapshots {
            let Some(zone) = zones.get_mut(&origin) else {
                skip(orphan(&k))?;
                continue;
            };
            let bytes = match parse::<FileRef>(&k, &v).and_then(|f| self.read_file(&k, &f)) {
                Ok(bytes) => bytes,
                Err(e) => {
                    broken.insert(origin);
                    skip(e)?;
                    continue;
                }
            };
            let mut bad = Vec::new();
            if let Err(e) = parse_snapshot(&k, &bytes, zone, &mut bad) {
                broken.insert(origin);
                skip(e)?;
                continue;
            }
            for b in bad {
                skip(StoreError::Corrupt {
                    key: b.key,
                    reason: b.reason,
                })?;
            }
        }
        for (k, v) in pending {
            let mut parts = k.splitn(3, '/');
            let (Some(origin), Some(kind), name) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(zone) = zones.get_mut(origin) else {
                if !broken.contains(origin) {
                    skip(orphan(&k))?;
                }
                continue;
            };
            if let Err(e) = overlay(zone, &k, kind, name.unwrap_or_default(), &v) {
                skip(e)?;
            }
        }
        for origin in &broken {
            zones.remove(origin);
        }
        for (origin, zone) in zones.iter_mut() {
            zone.shrink();
            zone.serial = serials.get(origin).copied().unwrap_or(1);
        }
        for origin in broken {
            unreadable.push(Unreadable {
                key: format!("{origin}/"),
                reason: "the zone is not served: its apex, serial or snapshot is unreadable".into(),
            });
        }
        Ok(Loaded {
            zones: zones.into_values().collect(),
            unreadable,
        })
    }

    fn commit(
        &self,
        origin: &str,
        serial: u32,
        changes: &[Change],
        events: &[Event],
    ) -> Result<(), StoreError> {
        let mut batch = ::sled::Batch::default();
        for c in changes {
            Self::apply(&mut batch, origin, c)?;
        }
        batch.insert(key(origin, SERIAL, ""), json(&serial)?);
        batch.remove(key(origin, VIEW, ""));
        self.write_with_events(batch, events)
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.write_with_events(::sled::Batch::default(), events)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for item in self.events.range(start.to_be_bytes()..).take(limit) {
            let (k, v) = item.map_err(io)?;
            out.push(parse(&format!("events/{}", hex(&k)), &v)?);
        }
        Ok(out)
    }

    fn last_event_id(&self) -> Result<u64, StoreError> {
        match self.events.last().map_err(io)? {
            Some((k, _)) => id_of(&k),
            None => Ok(0),
        }
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.cursors.get(name.as_bytes()).map_err(io)? {
            Some(v) => id_of(&v).map(Some),
            None => Ok(None),
        }
    }

    fn set_cursor(&self, name: &str, id: u64) -> Result<(), StoreError> {
        self.cursors
            .insert(name.as_bytes(), &id.to_be_bytes())
            .map_err(io)?;
        self.cursors.flush().map_err(io)?;
        Ok(())
    }

    fn append_diff(&self, origin: &str, _serial: u32, diff: &[u8]) -> Result<(), StoreError> {
        let prefix = journal_prefix(origin);
        let kept: Vec<::sled::IVec> = self
            .journal
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io)?;
        let next = match kept.last() {
            Some(k) => id_of(&k[prefix.len()..])? + 1,
            None => 1,
        };
        let mut batch = ::sled::Batch::default();
        let mut key = prefix;
        key.extend_from_slice(&next.to_be_bytes());
        batch.insert(key, diff);
        let over = (kept.len() + 1).saturating_sub(crate::transfer::JOURNAL_DIFFS);
        for k in kept.into_iter().take(over) {
            batch.remove(k);
        }
        // Not flushed: the next commit's flush carries it (see the trait).
        self.journal.apply_batch(batch).map_err(io)
    }

    fn load_diffs(&self, origin: &str) -> Vec<Vec<u8>> {
        self.journal
            .scan_prefix(journal_prefix(origin))
            .values()
            .filter_map(Result::ok)
            .map(|v| v.to_vec())
            .collect()
    }

    fn replace_zone(&self, zone: &Zone, events: &[Event]) -> Result<(), StoreError> {
        let origin = zone.origin();
        // A zone replaced whole starts a new journal.
        for k in self.journal.scan_prefix(journal_prefix(origin)).keys() {
            self.journal.remove(k.map_err(io)?).map_err(io)?;
        }
        let mut batch = ::sled::Batch::default();
        for item in self.db.scan_prefix(format!("{origin}/").as_bytes()) {
            let (k, _) = item.map_err(io)?;
            batch.remove(k);
        }
        batch.insert(key(origin, META, ""), json(&zone.meta)?);
        batch.insert(key(origin, SERIAL, ""), json(&zone.serial)?);
        let file = self.write_file(SNAPSHOTS, &Self::stem(origin), &snapshot_json(zone)?)?;
        batch.insert(key(origin, SNAPSHOT, ""), json(&file)?);
        // Transfer settings are not zone data: a few keys beside the snapshot.
        for k in zone.tsig.values() {
            Self::apply(&mut batch, origin, &Change::PutTsig(k.clone()))?;
        }
        for s in zone.secondaries.values() {
            Self::apply(&mut batch, origin, &Change::PutSecondary(s.clone()))?;
        }
        self.write_with_events(batch, events)?;
        self.tidy();
        Ok(())
    }

    fn save_view(&self, origin: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let file = self.write_file(VIEWS, &Self::stem(origin), bytes)?;
        self.db
            .insert(key(origin, VIEW, ""), json(&file)?)
            .map_err(io)?;
        self.db.flush().map_err(io)?;
        self.tidy();
        Ok(())
    }

    fn load_view(&self, origin: &str) -> Option<Vec<u8>> {
        let k = key(origin, VIEW, "");
        let v = self.db.get(&k).ok().flatten()?;
        let name = String::from_utf8_lossy(&k).into_owned();
        let file: FileRef = parse(&name, &v).ok()?;
        self.read_file(&name, &file).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::battery::Backend;

    /// Opens a store just closed: sled's flusher thread lets go of the
    /// directory's lock a moment after the last handle is dropped.
    fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledStore::open(dir) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    /// Stores in folders of their own, removed when the backend goes.
    #[derive(Default)]
    struct Sled {
        dirs: Vec<std::path::PathBuf>,
    }

    impl Backend for Sled {
        type Store = SledStore;

        fn fresh(&mut self) -> SledStore {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("sb-sled-battery-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            self.dirs.push(dir.clone());
            SledStore::open(&dir).expect("open")
        }

        fn reopen(&mut self, store: SledStore) -> Option<SledStore> {
            let dir = store.dir.clone();
            drop(store);
            Some(reopen(&dir))
        }

        fn damage_host(&mut self, store: &SledStore, origin: &str, host: &str) -> bool {
            store
                .db
                .insert(key(origin, HOST, host), &b"{not json"[..])
                .expect("insert");
            store.db.flush().expect("flush");
            true
        }
    }

    impl Drop for Sled {
        fn drop(&mut self) {
            for dir in &self.dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    crate::battery_tests!(Sled::default());

    #[test]
    fn host_chatter_never_pushes_admin_events_out_of_the_log() {
        let dir = std::env::temp_dir().join(format!("sb-sled-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let event = |id, by: &str| {
            crate::events::Draft::new("sidecar", "h", "stale").finish(id, 1, "z.", by)
        };
        let ids = |store: &SledStore| -> Vec<u64> {
            let all = store.events_after(0, 1000).expect("events");
            all.iter().map(|e| e.id).collect()
        };
        {
            let mut store = SledStore::open(&dir).expect("open");
            store.kept = [5, 3];
            store.append_events(&[event(1, "admin a")]).expect("admin");
            store
                .append_events(&[event(2, "directory")])
                .expect("system");
            // Host chatter, alone and in batches: only its own oldest go.
            for id in 3..=20 {
                store.append_events(&[event(id, "host h")]).expect("host");
            }
            store
                .append_events(&[
                    event(21, "host h"),
                    event(22, "host h"),
                    event(23, "host h"),
                    event(24, "host h"),
                ])
                .expect("host batch");
            assert_eq!(ids(&store), [1, 2, 22, 23, 24]);
            // Admin events make room among their own kind.
            for id in 25..=29 {
                store.append_events(&[event(id, "admin a")]).expect("admin");
            }
            assert_eq!(ids(&store), [22, 23, 24, 25, 26, 27, 28, 29]);
            assert_eq!(store.last_event_id().expect("last"), 29);
        }
        // The order survives a reopen.
        let mut store = reopen(&dir);
        store.kept = [5, 3];
        store.append_events(&[event(30, "host h")]).expect("host");
        assert_eq!(ids(&store), [23, 24, 25, 26, 27, 28, 29, 30]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_written_before_the_order_leave_as_they_always_did() {
        let dir = std::env::temp_dir().join(format!("sb-sled-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let event =
            |id, by: &str| crate::events::Draft::new("host", "h", "add").finish(id, 1, "z.", by);
        {
            // A log as an older directory wrote it, keeping 2: events 2 and
            // 3 (1 is gone), no order.
            let db = ::sled::open(&dir).expect("sled");
            let events = db.open_tree("events").expect("tree");
            for id in 2..=3u64 {
                events
                    .insert(id.to_be_bytes(), json(&event(id, "admin a")).expect("json"))
                    .expect("insert");
            }
            db.flush().expect("flush");
        }
        let mut store = reopen(&dir);
        store.kept = [2, 2];
        let ids = |store: &SledStore| -> Vec<u64> {
            let all = store.events_after(0, 10).expect("events");
            all.iter().map(|e| e.id).collect()
        };
        // The old events age out by id as they did; the new ones by kind.
        store.append_events(&[event(4, "admin a")]).expect("admin");
        assert_eq!(ids(&store), [3, 4]);
        store.append_events(&[event(5, "host h")]).expect("host");
        assert_eq!(ids(&store), [4, 5]);
        store
            .append_events(&[event(6, "admin a"), event(7, "admin a")])
            .expect("admin");
        assert_eq!(ids(&store), [5, 6, 7]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
