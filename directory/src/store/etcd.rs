//! A store shared by several directory servers: etcd v3, through its
//! gRPC-JSON gateway (`gateway`). SPEC "Directory high availability";
//! docs/high-availability.md#a-shared-store-on-etcd.
//!
//! Keys, under a prefix (`switchboard/` unless the URL names one):
//! - `zone/ORIGIN/meta`, `zone/ORIGIN/serial`: the apex and the serial (JSON,
//!   as in the sled store). Every write to a zone is one transaction that
//!   compares the serial key first, so two servers never both change a zone
//!   from the same serial: the second is refused (`StoreError::Conflict`) and
//!   plans again on the state the first left.
//! - `zone/ORIGIN/snap`: which snapshot holds the zone as last written whole
//!   (seed, import, or a compaction of its log), at which serial;
//!   `part/snap/ORIGIN/ID/N`: the snapshot itself (the sled store's snapshot
//!   JSON) in parts well under etcd's 1.5 MiB request limit, written before
//!   the small transaction that points at them, so a 100k-host zone is a few
//!   dozen puts and one transaction of a handful of operations (etcd allows
//!   128 per transaction).
//! - `zone/ORIGIN/log/SERIAL` (zero-padded): each commit since the snapshot,
//!   a [`Committed`]: the changes as `store::Change`s and the operation that
//!   made them. The zone is the snapshot with its log replayed; other servers
//!   follow the log with an etcd watch and replay each commit on their model
//!   through the path of their own changes. After `LOG_KEPT` commits the
//!   committing server writes a new snapshot and drops the log before it.
//! - `view/ORIGIN` and `part/view/ORIGIN/ID/N`: a saved compiled view; every
//!   commit drops both.
//! - `event/ID` (zero-padded) and `eventseq`: the audit log and its last id;
//!   a write that carries events compares `eventseq` in its own transaction,
//!   so ids are unique across servers (`StoreError::EventIdsTaken`).
//! - `cursor/NAME`: readers' places in the audit log.
//! - `lease/ZONE/REPO`: repositories' write leases; `session/code/DIGEST`,
//!   `session/live/DIGEST`: console logins (each under an etcd lease that
//!   ends with it).
//! - `lead/DUTY`: which server runs a duty, held by an etcd lease that the
//!   server keeps alive; when it dies the lease ends and another takes over.

mod gateway;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use self::gateway::{b64, delete, get, int, kvs, prefix_end, put, Gateway, GatewayHandle, Kv};
use super::sled::{parse_snapshot, snapshot_json};
use super::{Change, Committed, Followed, Loaded, Store, StoreError, StoredLease, Unreadable};
use crate::events::Event;
use crate::model::{Op, Zone, ZoneMeta};

/// Commits a zone's log keeps before the committing server folds them into a
/// new snapshot (a load replays at most this many).
const LOG_KEPT: u32 = 1000;
/// Bytes of a snapshot or view per etcd value (base64 makes it 4/3 larger;
/// etcd takes requests up to 1.5 MiB by default).
const PART: usize = 512 << 10;
/// Keys per page when reading a range.
const PAGE: i64 = 256;
/// Events of the audit log kept; older ones are dropped as new ones come.
const EVENTS_KEPT: u64 = super::sled::EVENTS_KEPT;
/// Seconds a duty's holder may stay silent before another server takes it.
const LEAD_TTL: i64 = 5;

/// Where the store is: `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    pub endpoints: Vec<String>,
    /// Ends in `/`.
    pub prefix: String,
}

impl EtcdUrl {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| {
            StoreError::Io(format!(
                "{url:?} is not an etcd store: {why} (etcd://HOST:PORT[,HOST:PORT...][/PREFIX])"
            ))
        };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("it does not start with etcd://"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_matches('/')),
            None => (rest, ""),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(bad("it names no member"));
        }
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(_, p)| p);
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(bad(&format!("{e:?} is not HOST:PORT")));
            }
        }
        let prefix = if prefix.is_empty() {
            "switchboard/".to_string()
        } else {
            format!("{prefix}/")
        };
        Ok(EtcdUrl { endpoints, prefix })
    }
}

/// Where a snapshot or view is: parts `0..parts` under `part/KIND/ORIGIN/ID/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlobRef {
    id: String,
    parts: usize,
    sha256: String,
    /// The serial the snapshot holds (views: the zone's serial then).
    serial: u32,
    /// The server that wrote it; `compaction` when it only folds the log.
    by: String,
}

/// A commit as the log keeps it: what other servers replay, and who wrote it
/// (to tell a commit this server sent twice from another's).
#[derive(Debug, Serialize, Deserialize)]
struct LogRecord {
    #[serde(flatten)]
    committed: Committed,
    by: String,
    token: u64,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(io)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes))
}

fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| corrupt(key, e))
}

/// The store on an etcd cluster. A handle: a log compaction in the
/// background holds the same `Core`.
pub struct EtcdStore(Arc<Core>);

impl std::ops::Deref for EtcdStore {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0
    }
}

impl EtcdStore {
    /// Connects to the cluster at `url` (`etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`)
    /// and checks that it answers.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(EtcdStore(Arc::new(Core::open(url)?)))
    }
}

/// What an [`EtcdStore`] holds.
pub struct Core {
    /// As `open` was given it.
    url: String,
    gw: Gateway,
    prefix: String,
    /// This process among the servers sharing the store.
    me: String,
    /// The etcd revision `load` read at: following starts after it.
    loaded: AtomicI64,
    /// The lease that holds this server's duties, once it asked for one.
    lease: Arc<Mutex<Option<i64>>>,
    /// A log compaction is running.
    compacting: Arc<AtomicBool>,
    /// Commits a zone's log keeps before it is folded (`LOG_KEPT`; tests set fewer).
    log_kept: u32,
    /// Each zone's snapshot serial, as last seen: when its log is long enough to fold.
    snapshot_serials: Mutex<BTreeMap<String, u32>>,
    tokens: std::sync::atomic::AtomicU64,
}

impl Core {
    /// Connects to the cluster at `url` and checks that it answers.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let given = url.to_string();
        let url = EtcdUrl::parse(url)?;
        let gw = Gateway::new(url.endpoints)?;
        let me = format!(
            "{}-{}-{:08x}",
            std::process::id(),
            crate::time::unix_ms(),
            rand::random::<u32>()
        );
        let store = Core {
            url: given,
            gw,
            prefix: url.prefix,
            me,
            loaded: AtomicI64::new(0),
            lease: Arc::new(Mutex::new(None)),
            compacting: Arc::new(AtomicBool::new(false)),
            log_kept: LOG_KEPT,
            snapshot_serials: Mutex::new(BTreeMap::new()),
            tokens: Default::default(),
        };
        store.init_event_seq()?;
        Ok(store)
    }

    /// Makes the next event id written come after `id`
    /// (`store migrate`, after copying a log).
    pub fn events_continue_after(&self, id: u64) -> Result<(), StoreError> {
        let key = self.key("eventseq");
        loop {
            let current = self.get_one(&key, 0)?;
            let (at, rev) = match &current {
                Some(kv) => (parse::<u64>(&kv.key, &kv.value)?, kv.mod_revision),
                None => (0, 0),
            };
            if at >= id {
                return Ok(());
            }
            let (ok, _) = self.txn(
                vec![json!({"key": b64(&key), "target": "MOD", "result": "EQUAL", "mod_revision": rev})],
                vec![put(&key, &to_json(&id)?)],
                vec![],
            )?;
            if ok {
                return Ok(());
            }
        }
    }

    /// The URL the store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn zone_key(&self, origin: &str, what: &str) -> Vec<u8> {
        self.key(&format!("zone/{origin}/{what}"))
    }

    fn log_key(&self, origin: &str, serial: u32) -> Vec<u8> {
        self.zone_key(origin, &format!("log/{serial:010}"))
    }

    fn part_prefix(&self, kind: &str, origin: &str, id: &str) -> Vec<u8> {
        self.key(&format!("part/{kind}/{origin}/{id}/"))
    }

    /// One page of `[from, to)` (or `from` alone) at `revision` (0: now),
    /// and the revision it was read at.
    fn range(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        revision: i64,
        limit: i64,
    ) -> Result<(Vec<Kv>, i64, bool), StoreError> {
        let mut body = json!({"key": b64(from), "limit": limit, "revision": revision});
        if let Some(to) = to {
            body["range_end"] = json!(b64(to));
        }
        let resp = self.gw.call("/v3/kv/range", body)?;
        let rev = resp.get("header").map_or(0, |h| int(h, "revision"));
        let more = resp.get("more").and_then(Value::as_bool).unwrap_or(false);
        Ok((kvs(&resp)?, rev, more))
    }

    /// Every pair in `[from, to)` at `revision` (0: now), page by page, and the
    /// revision read at.
    fn range_all(
        &self,
        from: &[u8],
        to: &[u8],
        revision: i64,
    ) -> Result<(Vec<Kv>, i64), StoreError> {
        let mut out = Vec::new();
        let mut start = from.to_vec();
        let mut rev = revision;
        loop {
            let (page, at, more) = self.range(&start, Some(to), rev, PAGE)?;
            rev = at;
            let Some(last) = page.last() else { break };
            start = last.key.clone();
            start.push(0);
            out.extend(page);
            if !more {
                break;
            }
        }
        Ok((out, rev))
    }

    fn get_one(&self, key: &[u8], revision: i64) -> Result<Option<Kv>, StoreError> {
        Ok(self.range(key, None, revision, 1)?.0.into_iter().next())
    }

    /// Runs a transaction: whether its compares held, and its responses.
    fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, Vec<Value>), StoreError> {
        let resp = self.gw.call(
            "/v3/kv/txn",
            json!({"compare": compare, "success": success, "failure": failure}),
        )?;
        let ok = resp
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let responses = resp
            .get("responses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok((ok, responses))
    }

    /// Writes `bytes` in parts under `part/KIND/ORIGIN/ID/`, before anything points at them.
    fn write_blob(
        &self,
        kind: &str,
        origin: &str,
        serial: u32,
        by: &str,
        bytes: &[u8],
    ) -> Result<BlobRef, StoreError> {
        let id = format!(
            "{:016x}-{}",
            crate::time::unix_ms(),
            self.tokens.fetch_add(1, Ordering::Relaxed)
        );
        let id = format!("{id}-{}", self.me);
        let base = self.part_prefix(kind, origin, &id);
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(PART).collect()
        };
        for (n, chunk) in chunks.iter().enumerate() {
            let mut k = base.clone();
            k.extend_from_slice(format!("{n:06}").as_bytes());
            self.gw
                .call("/v3/kv/put", json!({"key": b64(&k), "value": b64(chunk)}))?;
        }
        Ok(BlobRef {
            id,
            parts: chunks.len(),
            sha256: sha256_hex(bytes),
            serial,
            by: by.to_string(),
        })
    }

    /// The bytes of a snapshot or view, read at `revision`, checked against their SHA-256.
    fn read_blob(
        &self,
        kind: &str,
        origin: &str,
        r: &BlobRef,
        revision: i64,
        key: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let base = self.part_prefix(kind, origin, &r.id);
        let mut bytes = Vec::new();
        let mut start = base.clone();
        let end = prefix_end(&base);
        let mut seen = 0;
        loop {
            // A few parts per page: each is up to `PART` bytes.
            let (page, _, more) = self.range(&start, Some(&end), revision, 2)?;
            let Some(last) = page.last() else { break };
            start = last.key.clone();
            start.push(0);
            for kv in page {
                bytes.extend_from_slice(&kv.value);
                seen += 1;
            }
            if !more {
                break;
            }
        }
        if seen != r.parts {
            return Err(corrupt(
                key,
                format!("{} of its {} parts are stored", seen, r.parts),
            ));
        }
        if sha256_hex(&bytes) != r.sha256 {
            return Err(corrupt(key, "the parts do not match their SHA-256"));
        }
        Ok(bytes)
    }

    fn delete_blob(&self, kind: &str, origin: &str, id: &str) {
        let base = self.part_prefix(kind, origin, id);
        let end = prefix_end(&base);
        if let Err(e) = self.gw.call(
            "/v3/kv/deleterange",
            json!({"key": b64(&base), "range_end": b64(&end)}),
        ) {
            tracing::warn!(error = %e, zone = origin, "could not remove an old snapshot from etcd; it stays until the next one");
        }
    }

    /// Every zone under `zone/` at one revision (0: now).
    fn load_at(&self, only: Option<&str>, revision: i64) -> Result<(Loaded, i64), StoreError> {
        let from = match only {
            Some(o) => self.key(&format!("zone/{o}/")),
            None => self.key("zone/"),
        };
        let (pairs, rev) = self.range_all(&from, &prefix_end(&from), revision)?;
        let zone_prefix = self.key("zone/");
        struct Parts {
            meta: Option<Kv>,
            serial: Option<Kv>,
            snap: Option<Kv>,
            log: Vec<Kv>,
        }
        let mut by_zone: BTreeMap<String, Parts> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for kv in pairs {
            let rest = String::from_utf8_lossy(&kv.key[zone_prefix.len()..]).into_owned();
            // Origins end in a dot: `ORIGIN/what`.
            let Some((origin, what)) = rest
                .split_once("./")
                .map(|(o, w)| (format!("{o}."), w.to_string()))
            else {
                unreadable.push(Unreadable {
                    key: rest,
                    reason: "key is not zone/ORIGIN/KIND".into(),
                });
                continue;
            };
            let p = by_zone.entry(origin).or_insert(Parts {
                meta: None,
                serial: None,
                snap: None,
                log: vec![],
            });
            match what.as_str() {
                "meta" => p.meta = Some(kv),
                "serial" => p.serial = Some(kv),
                "snap" => p.snap = Some(kv),
                w if w.starts_with("log/") => p.log.push(kv),
                _ => unreadable.push(Unreadable {
                    key: rest,
                    reason: "unknown record kind".into(),
                }),
            }
        }
        let mut zones = Vec::new();
        let mut snapshot_serials = BTreeMap::new();
        for (origin, p) in by_zone {
            let broken = |unreadable: &mut Vec<Unreadable>, e: StoreError| {
                if let StoreError::Corrupt { key, reason } = e {
                    unreadable.push(Unreadable { key, reason });
                }
                unreadable.push(Unreadable {
                    key: format!("{origin}/"),
                    reason: "the zone is not served: its apex, serial or snapshot is unreadable"
                        .into(),
                });
            };
            let (Some(meta), Some(serial), Some(snap)) = (p.meta, p.serial, p.snap) else {
                // A zone half-written by a server that died before its
                // transaction cannot be: the transaction writes all three.
                continue;
            };
            let read = (|| {
                let meta: ZoneMeta = parse(&meta.key, &meta.value)?;
                let serial: u32 = parse(&serial.key, &serial.value)?;
                let r: BlobRef = parse(&snap.key, &snap.value)?;
                let bytes = self.read_blob("snap", &origin, &r, rev, &snap.key)?;
                Ok::<_, StoreError>((meta, serial, r, bytes))
            })();
            let (meta, serial, r, bytes) = match read {
                Ok(x) => x,
                Err(e @ StoreError::Corrupt { .. }) => {
                    broken(&mut unreadable, e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut zone = Zone::new(meta, serial);
            let key = String::from_utf8_lossy(&snap.key).into_owned();
            if let Err(e) = parse_snapshot(&key, &bytes, &mut zone, &mut unreadable) {
                broken(&mut unreadable, e);
                continue;
            }
            for kv in p.log {
                let rec: LogRecord = match parse(&kv.key, &kv.value) {
                    Ok(r) => r,
                    Err(StoreError::Corrupt { key, reason }) => {
                        unreadable.push(Unreadable { key, reason });
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if rec.committed.serial <= r.serial {
                    continue;
                }
                for c in rec.committed.changes {
                    c.apply(&mut zone);
                }
            }
            zone.serial = serial;
            zone.shrink();
            snapshot_serials.insert(origin, r.serial);
            zones.push(zone);
        }
        let mut known = self
            .snapshot_serials
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.extend(snapshot_serials);
        Ok((Loaded { zones, unreadable }, rev))
    }

    /// Writes a zone whole: parts first, then one transaction that points at
    /// them, if the zone's serial key is still at `expect` (its mod revision;
    /// 0: no zone).
    fn write_zone(
        &self,
        zone: &Zone,
        events: &[Event],
        expect: i64,
        by: &str,
    ) -> Result<bool, StoreError> {
        let origin = zone.origin();
        let old = self.get_one(&self.zone_key(origin, "snap"), 0)?;
        let bytes = snapshot_json(zone)?;
        let blob = self.write_blob("snap", origin, zone.serial, by, &bytes)?;
        let serial_key = self.zone_key(origin, "serial");
        let log = self.zone_key(origin, "log/");
        let mut success = vec![
            delete(&log, Some(&prefix_end(&log))),
            put(&self.zone_key(origin, "meta"), &to_json(&zone.meta)?),
            put(&serial_key, &to_json(&zone.serial)?),
            put(&self.zone_key(origin, "snap"), &to_json(&blob)?),
        ];
        success.extend(self.drop_view_ops(origin));
        let (seq_compare, event_ops) = self.event_ops(events)?;
        success.extend(event_ops);
        let mut compare = vec![
            json!({"key": b64(&serial_key), "target": "MOD", "result": "EQUAL", "mod_revision": expect}),
        ];
        compare.extend(seq_compare);
        let (ok, responses) = self.txn(
            compare,
            success,
            vec![get(&serial_key), get(&self.key("eventseq"))],
        )?;
        if !ok {
            self.delete_blob("snap", origin, &blob.id);
            let serial_now = match responses.first().and_then(|r| r.get("response_range")) {
                Some(r) => kvs(r)?.into_iter().next().map_or(0, |kv| kv.mod_revision),
                None => 0,
            };
            if serial_now == expect && !events.is_empty() {
                return Err(self.event_ids_taken(&responses, 1)?);
            }
            return Ok(false);
        }
        if let Some(old) = old.and_then(|kv| serde_json::from_slice::<BlobRef>(&kv.value).ok()) {
            self.delete_blob("snap", origin, &old.id);
        }
        self.snapshot_serials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(origin.to_string(), zone.serial);
        Ok(true)
    }

    fn drop_view_ops(&self, origin: &str) -> Vec<Value> {
        let parts = self.key(&format!("part/view/{origin}/"));
        vec![
            delete(&self.key(&format!("view/{origin}")), None),
            delete(&parts, Some(&prefix_end(&parts))),
        ]
    }

    fn event_key(&self, id: u64) -> Vec<u8> {
        self.key(&format!("event/{id:020}"))
    }

    /// Puts of `events`, the removal of those now older than the kept ones,
    /// and the move of `eventseq` past them; with the compare that `eventseq`
    /// is just before them (no other server took their ids).
    fn event_ops(&self, events: &[Event]) -> Result<(Option<Value>, Vec<Value>), StoreError> {
        let mut ops = Vec::with_capacity(events.len() + 2);
        for e in events {
            ops.push(put(&self.event_key(e.id), &to_json(e)?));
        }
        let (Some(first), Some(last)) = (
            events.iter().map(|e| e.id).min(),
            events.iter().map(|e| e.id).max(),
        ) else {
            return Ok((None, ops));
        };
        if last > EVENTS_KEPT {
            ops.push(delete(
                &self.key("event/"),
                Some(&self.event_key(last - EVENTS_KEPT + 1)),
            ));
        }
        let seq = self.key("eventseq");
        ops.push(put(&seq, &to_json(&last)?));
        let compare = json!({"key": b64(&seq), "target": "VALUE", "result": "EQUAL", "value": b64(&to_json(&(first - 1))?)});
        Ok((Some(compare), ops))
    }

    /// The next free event id, after a transaction found `eventseq` moved.
    fn event_ids_taken(&self, responses: &[Value], at: usize) -> Result<StoreError, StoreError> {
        let seq = match responses.get(at).and_then(|r| r.get("response_range")) {
            Some(r) => kvs(r)?.into_iter().next(),
            None => None,
        };
        let last: u64 = match seq {
            Some(kv) => parse(&kv.key, &kv.value)?,
            None => 0,
        };
        Ok(StoreError::EventIdsTaken(last + 1))
    }

    /// Makes sure `eventseq` exists (at the last stored event's id), so that
    /// writes can compare it.
    fn init_event_seq(&self) -> Result<(), StoreError> {
        let key = self.key("eventseq");
        if self.get_one(&key, 0)?.is_some() {
            return Ok(());
        }
        let last = self.last_event_id()?;
        self.txn(
            vec![json!({"key": b64(&key), "target": "CREATE", "result": "EQUAL", "create_revision": 0})],
            vec![put(&key, &to_json(&last)?)],
            vec![],
        )?;
        Ok(())
    }

    /// Writes events with the ids they have, whatever `eventseq` says, then
    /// moves it past them (`store migrate`).
    pub fn import_events(&self, events: &[Event]) -> Result<(), StoreError> {
        for chunk in events.chunks(100) {
            let mut ops = Vec::with_capacity(chunk.len());
            for e in chunk {
                ops.push(put(&self.event_key(e.id), &to_json(e)?));
            }
            self.txn(vec![], ops, vec![])?;
        }
        if let Some(last) = events.iter().map(|e| e.id).max() {
            self.events_continue_after(last)?;
        }
        Ok(())
    }

    /// Folds a zone's log into a new snapshot, in the background; a conflict
    /// (another server did it, or wrote the zone whole) just ends it.
    fn compact(self: &Arc<Self>, origin: &str) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        let origin = origin.to_string();
        std::thread::spawn(move || {
            if let Err(e) = store.compact_now(&origin) {
                tracing::warn!(zone = %origin, error = %e, "could not fold the zone's log into a snapshot; the next commit tries again");
            }
            store.compacting.store(false, Ordering::Release);
        });
    }

    fn compact_now(&self, origin: &str) -> Result<(), StoreError> {
        let snap_key = self.zone_key(origin, "snap");
        let (loaded, rev) = self.load_at(Some(origin), 0)?;
        let Some(zone) = loaded.zones.into_iter().find(|z| z.origin() == origin) else {
            return Ok(());
        };
        let Some(snap) = self.get_one(&snap_key, rev)? else {
            return Ok(());
        };
        let old: BlobRef = parse(&snap.key, &snap.value)?;
        let blob = self.write_blob(
            "snap",
            origin,
            zone.serial,
            "compaction",
            &snapshot_json(&zone)?,
        )?;
        let log = self.zone_key(origin, "log/");
        let (ok, _) = self.txn(
            vec![json!({"key": b64(&snap_key), "target": "MOD", "result": "EQUAL", "mod_revision": snap.mod_revision})],
            vec![
                put(&snap_key, &to_json(&blob)?),
                delete(&log, Some(&self.log_key(origin, zone.serial.saturating_add(1)))),
            ],
            vec![],
        )?;
        if ok {
            self.delete_blob("snap", origin, &old.id);
            self.snapshot_serials
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(origin.to_string(), zone.serial);
            tracing::info!(
                zone = origin,
                serial = zone.serial,
                "folded the zone's log into a snapshot"
            );
        } else {
            self.delete_blob("snap", origin, &blob.id);
        }
        Ok(())
    }

    /// The lease this server holds its duties with, asked for (and kept
    /// alive) on first use.
    fn lease_id(&self) -> Result<i64, StoreError> {
        let mut held = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = *held {
            return Ok(id);
        }
        let resp = self.gw.call("/v3/lease/grant", json!({"TTL": LEAD_TTL}))?;
        let id = int(&resp, "ID");
        if id == 0 {
            return Err(StoreError::Io(format!("etcd granted no lease: {resp}")));
        }
        *held = Some(id);
        let lease = self.lease.clone();
        let gw = self.gw.handle();
        self.gw.spawn(keep_alive(gw, lease, id));
        Ok(id)
    }
}

/// Keeps lease `id` alive until etcd says it is gone (then forgets it, so the
/// next `lead` asks for another).
async fn keep_alive(gw: GatewayHandle, lease: Arc<Mutex<Option<i64>>>, id: i64) {
    use http_body_util::BodyExt;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 * LEAD_TTL as u64 / 3));
    loop {
        tick.tick().await;
        if *lease.lock().unwrap_or_else(|p| p.into_inner()) != Some(id) {
            return;
        }
        let alive = async {
            let mut body = gw.stream("/v3/lease/keepalive", json!({"ID": id})).await?;
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(io)?;
                if let Some(d) = frame.data_ref() {
                    buf.extend_from_slice(d);
                }
                if let Some(Ok(v)) = serde_json::Deserializer::from_slice(&buf)
                    .into_iter::<Value>()
                    .next()
                {
                    let ttl = v.get("result").map_or(0, |r| int(r, "TTL"));
                    return Ok::<bool, StoreError>(ttl > 0);
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(Duration::from_secs(LEAD_TTL as u64), alive).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(
                    lease = id,
                    "this server's etcd lease ended; its duties pass to another server"
                );
                let mut held = lease.lock().unwrap_or_else(|p| p.into_inner());
                if *held == Some(id) {
                    *held = None;
                }
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew this server's etcd lease"),
            Err(_) => tracing::warn!("no etcd member renewed this server's lease in time"),
        }
    }
}

/// Follows `zone/` from `revision` on, telling `tx` what other servers did.
async fn watch(
    gw: GatewayHandle,
    prefix: String,
    me: String,
    mut next: i64,
    tx: tokio::sync::mpsc::UnboundedSender<Followed>,
) {
    use http_body_util::BodyExt;
    let from = format!("{prefix}zone/").into_bytes();
    let end = prefix_end(&from);
    loop {
        if tx.is_closed() {
            return;
        }
        let body = json!({"create_request": {"key": b64(&from), "range_end": b64(&end), "start_revision": next}});
        let mut stream = match gw.stream("/v3/watch", body).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the store; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = match stream.frame().await {
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "lost the store's watch; following again from another member");
                    break;
                }
                None => break,
            };
            let Some(d) = frame.data_ref() else { continue };
            buf.extend_from_slice(d);
            let mut consumed = 0;
            let mut objects = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let mut parsed = Vec::new();
            while let Some(Ok(v)) = objects.next() {
                consumed = objects.byte_offset();
                parsed.push(v);
            }
            buf.drain(..consumed);
            for v in parsed {
                let Some(result) = v.get("result") else {
                    tracing::warn!(answer = %v, "the store's watch failed; following again");
                    continue;
                };
                let compacted = int(result, "compact_revision");
                if compacted > 0 || result.get("canceled").and_then(Value::as_bool) == Some(true) {
                    tracing::warn!(compacted, "the store's history was compacted past this server; reading every zone again");
                    let _ = tx.send(Followed::ReloadAll);
                    next = compacted.max(next);
                    break;
                }
                let Some(events) = result.get("events").and_then(Value::as_array) else {
                    continue;
                };
                for ev in events {
                    let Some(kv) = ev.get("kv") else { continue };
                    next = next.max(int(kv, "mod_revision") + 1);
                    if ev.get("type").and_then(Value::as_str) == Some("DELETE") {
                        continue;
                    }
                    let Ok(key) =
                        gateway::unb64(kv.get("key").and_then(Value::as_str).unwrap_or(""))
                    else {
                        continue;
                    };
                    let Ok(value) =
                        gateway::unb64(kv.get("value").and_then(Value::as_str).unwrap_or(""))
                    else {
                        continue;
                    };
                    let rest = String::from_utf8_lossy(&key[from.len()..]).into_owned();
                    let Some((origin, what)) = rest
                        .split_once("./")
                        .map(|(o, w)| (format!("{o}."), w.to_string()))
                    else {
                        continue;
                    };
                    let followed = if what.starts_with("log/") {
                        match serde_json::from_slice::<LogRecord>(&value) {
                            Ok(rec) => Followed::Commit(rec.committed),
                            Err(_) => Followed::Reload(origin),
                        }
                    } else if what == "snap" {
                        match serde_json::from_slice::<BlobRef>(&value) {
                            Ok(r) if r.by == me || r.by == "compaction" => continue,
                            _ => Followed::Reload(origin),
                        }
                    } else {
                        continue;
                    };
                    if tx.send(followed).is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let (loaded, rev) = self.load_at(None, 0)?;
        self.loaded.store(rev, Ordering::Release);
        Ok(loaded)
    }

    fn load_zone(&self, origin: &str) -> Result<Option<Zone>, StoreError> {
        let (loaded, _) = self.load_at(Some(origin), 0)?;
        Ok(loaded.zones.into_iter().find(|z| z.origin() == origin))
    }

    fn commit(
        &self,
        origin: &str,
        serial: u32,
        changes: &[Change],
        events: &[Event],
    ) -> Result<(), StoreError> {
        let kv = self
            .get_one(&self.zone_key(origin, "serial"), 0)?
            .ok_or_else(|| StoreError::NoZone(origin.to_string()))?;
        let prev: u32 = parse(&kv.key, &kv.value)?;
        if self.commit_planned(origin, prev, serial, changes, events, None)? {
            self.0.compact(origin);
        }
        Ok(())
    }

    fn commit_on(
        &self,
        origin: &str,
        prev: u32,
        serial: u32,
        changes: &[Change],
        events: &[Event],
        op: &Op,
    ) -> Result<(), StoreError> {
        if self.commit_planned(origin, prev, serial, changes, events, Some(op))? {
            self.0.compact(origin);
        }
        Ok(())
    }

    fn replace_zone(&self, zone: &Zone, events: &[Event]) -> Result<(), StoreError> {
        let current = self.get_one(&self.zone_key(zone.origin(), "serial"), 0)?;
        let expect = current.map_or(0, |kv| kv.mod_revision);
        if self.write_zone(zone, events, expect, &self.me)? {
            Ok(())
        } else {
            Err(StoreError::Conflict(zone.origin().to_string()))
        }
    }

    fn replace_zone_on(
        &self,
        zone: &Zone,
        prev: Option<u32>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let origin = zone.origin();
        let current = self.get_one(&self.zone_key(origin, "serial"), 0)?;
        let expect = match (&current, prev) {
            (None, None) => 0,
            (Some(kv), Some(prev)) if parse::<u32>(&kv.key, &kv.value)? == prev => kv.mod_revision,
            _ => return Err(StoreError::Conflict(origin.to_string())),
        };
        if self.write_zone(zone, events, expect, &self.me)? {
            Ok(())
        } else {
            Err(StoreError::Conflict(origin.to_string()))
        }
    }

    fn save_view(&self, origin: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let serial_key = self.zone_key(origin, "serial");
        let Some(serial) = self.get_one(&serial_key, 0)? else {
            return Ok(());
        };
        let old = self.get_one(&self.key(&format!("view/{origin}")), 0)?;
        let blob = self.write_blob("view", origin, 0, &self.me, bytes)?;
        // Only if no change came since: a view of an older zone is no use.
        let (ok, _) = self.txn(
            vec![json!({"key": b64(&serial_key), "target": "MOD", "result": "EQUAL", "mod_revision": serial.mod_revision})],
            vec![put(&self.key(&format!("view/{origin}")), &to_json(&blob)?)],
            vec![],
        )?;
        if !ok {
            self.delete_blob("view", origin, &blob.id);
        }
        if let Some(old) = old.and_then(|kv| serde_json::from_slice::<BlobRef>(&kv.value).ok()) {
            self.delete_blob("view", origin, &old.id);
        }
        Ok(())
    }

    fn load_view(&self, origin: &str) -> Option<Vec<u8>> {
        let key = self.key(&format!("view/{origin}"));
        let kv = self.get_one(&key, 0).ok()??;
        let r: BlobRef = serde_json::from_slice(&kv.value).ok()?;
        self.read_blob("view", origin, &r, 0, &key).ok()
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        for chunk in events.chunks(100) {
            let (compare, ops) = self.event_ops(chunk)?;
            let (ok, responses) = self.txn(
                compare.into_iter().collect(),
                ops,
                vec![get(&self.key("eventseq"))],
            )?;
            if !ok {
                return Err(self.event_ids_taken(&responses, 0)?);
            }
        }
        Ok(())
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(vec![]);
        };
        let mut from = self.event_key(start);
        let end = prefix_end(&self.key("event/"));
        let mut out = Vec::new();
        let mut rev = 0;
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE as usize) as i64;
            let (page, at, more) = self.range(&from, Some(&end), rev, want)?;
            rev = at;
            let Some(last) = page.last() else { break };
            from = last.key.clone();
            from.push(0);
            for kv in &page {
                out.push(parse(&kv.key, &kv.value)?);
            }
            if !more {
                break;
            }
        }
        Ok(out)
    }

    fn last_event_id(&self) -> Result<u64, StoreError> {
        self.0.last_event_id()
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.get_one(&self.key(&format!("cursor/{name}")), 0)? {
            Some(kv) => parse(&kv.key, &kv.value).map(Some),
            None => Ok(None),
        }
    }

    fn set_cursor(&self, name: &str, id: u64) -> Result<(), StoreError> {
        self.gw.call(
            "/v3/kv/put",
            json!({"key": b64(&self.key(&format!("cursor/{name}"))), "value": b64(&to_json(&id)?)}),
        )?;
        Ok(())
    }

    fn follow(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Followed>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let next = self.loaded.load(Ordering::Acquire) + 1;
        self.gw.spawn(watch(
            self.gw.handle(),
            self.prefix.clone(),
            self.me.clone(),
            next,
            tx,
        ));
        Some(rx)
    }

    fn shares_leases(&self) -> bool {
        true
    }

    fn shares_sessions(&self) -> bool {
        true
    }

    fn put_session(&self, key: &str, value: &[u8], expires_ms: u64) -> Result<(), StoreError> {
        // An etcd lease of its own removes the record when it expires.
        let ttl = expires_ms
            .saturating_sub(crate::time::unix_ms())
            .div_ceil(1000)
            + 1;
        let resp = self.gw.call("/v3/lease/grant", json!({"TTL": ttl}))?;
        let lease = int(&resp, "ID");
        self.gw.call(
            "/v3/kv/put",
            json!({"key": b64(&self.key(&format!("session/{key}"))), "value": b64(value), "lease": lease}),
        )?;
        Ok(())
    }

    fn session(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_one(&self.key(&format!("session/{key}")), 0)?
            .map(|kv| kv.value))
    }

    fn end_session(&self, key: &str) -> Result<bool, StoreError> {
        let resp = self.gw.call(
            "/v3/kv/deleterange",
            json!({"key": b64(&self.key(&format!("session/{key}")))}),
        )?;
        Ok(int(&resp, "deleted") > 0)
    }

    fn lease(&self, zone: &str, repo: &str) -> Result<Option<StoredLease>, StoreError> {
        match self.get_one(&self.key(&format!("lease/{zone}/{repo}")), 0)? {
            Some(kv) => parse(&kv.key, &kv.value).map(Some),
            None => Ok(None),
        }
    }

    fn take_lease(
        &self,
        zone: &str,
        repo: &str,
        lease: &StoredLease,
    ) -> Result<Result<(), StoredLease>, StoreError> {
        let key = self.key(&format!("lease/{zone}/{repo}"));
        loop {
            let compare = match self.get_one(&key, 0)? {
                Some(kv) => {
                    let held: StoredLease = parse(&kv.key, &kv.value)?;
                    if held.expires_ms > crate::time::unix_ms() {
                        return Ok(Err(held));
                    }
                    json!({"key": b64(&key), "target": "MOD", "result": "EQUAL", "mod_revision": kv.mod_revision})
                }
                None => {
                    json!({"key": b64(&key), "target": "CREATE", "result": "EQUAL", "create_revision": 0})
                }
            };
            let (ok, _) = self.txn(vec![compare], vec![put(&key, &to_json(lease)?)], vec![])?;
            if ok {
                return Ok(Ok(()));
            }
        }
    }

    fn release_lease(&self, zone: &str, repo: &str, token: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("lease/{zone}/{repo}"));
        let Some(kv) = self.get_one(&key, 0)? else {
            return Ok(());
        };
        let held: StoredLease = parse(&kv.key, &kv.value)?;
        if held.token == token {
            self.txn(
                vec![json!({"key": b64(&key), "target": "MOD", "result": "EQUAL", "mod_revision": kv.mod_revision})],
                vec![delete(&key, None)],
                vec![],
            )?;
        }
        Ok(())
    }

    fn lead(&self, duty: &str) -> bool {
        let lead = || -> Result<bool, StoreError> {
            let lease = self.lease_id()?;
            let key = self.key(&format!("lead/{duty}"));
            let (ok, responses) = self.txn(
                vec![json!({"key": b64(&key), "target": "CREATE", "result": "EQUAL", "create_revision": 0})],
                vec![json!({"request_put": {"key": b64(&key), "value": b64(self.me.as_bytes()), "lease": lease}})],
                vec![get(&key)],
            )?;
            if ok {
                tracing::info!(duty, "this server runs the duty now");
                return Ok(true);
            }
            let holder = responses
                .first()
                .and_then(|r| r.get("response_range"))
                .map(kvs)
                .transpose()?
                .and_then(|k| k.into_iter().next());
            Ok(holder.is_some_and(|kv| kv.value == self.me.as_bytes()))
        };
        match lead() {
            Ok(yes) => yes,
            Err(e) => {
                tracing::warn!(duty, error = %e, "cannot tell whether this server runs the duty; it does not for now");
                false
            }
        }
    }
}

impl Core {
    /// Commits unless another server changed the zone since `prev`; `true`
    /// when the zone's log is long enough to fold into a snapshot.
    fn commit_planned(
        &self,
        origin: &str,
        prev: u32,
        serial: u32,
        changes: &[Change],
        events: &[Event],
        op: Option<&Op>,
    ) -> Result<bool, StoreError> {
        let serial_key = self.zone_key(origin, "serial");
        let log_key = self.log_key(origin, serial);
        let token = rand::random::<u64>();
        let record = LogRecord {
            committed: Committed {
                origin: origin.to_string(),
                prev,
                serial,
                op: op.cloned(),
                changes: changes.to_vec(),
            },
            by: self.me.clone(),
            token,
        };
        let mut success = vec![
            put(&serial_key, &to_json(&serial)?),
            put(&log_key, &to_json(&record)?),
        ];
        success.extend(self.drop_view_ops(origin));
        let (seq_compare, event_ops) = self.event_ops(events)?;
        success.extend(event_ops);
        let prev_json = to_json(&prev)?;
        let mut compare = vec![
            json!({"key": b64(&serial_key), "target": "VALUE", "result": "EQUAL", "value": b64(&prev_json)}),
        ];
        compare.extend(seq_compare);
        let (ok, responses) = self.txn(
            compare,
            success,
            vec![get(&serial_key), get(&log_key), get(&self.key("eventseq"))],
        )?;
        if !ok {
            let read = |i: usize| -> Result<Option<Kv>, StoreError> {
                match responses.get(i).and_then(|r| r.get("response_range")) {
                    Some(r) => Ok(kvs(r)?.into_iter().next()),
                    None => Ok(None),
                }
            };
            let Some(now) = read(0)? else {
                return Err(StoreError::NoZone(origin.to_string()));
            };
            // Sent twice (a member failed after taking the first): the log
            // holds this very commit.
            if let Some(kv) = read(1)? {
                if let Ok(rec) = serde_json::from_slice::<LogRecord>(&kv.value) {
                    if rec.by == self.me && rec.token == token {
                        return Ok(false);
                    }
                }
            }
            if now.value == prev_json && !events.is_empty() {
                return Err(self.event_ids_taken(&responses, 2)?);
            }
            return Err(StoreError::Conflict(origin.to_string()));
        }
        let since = self
            .snapshot_serials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(origin)
            .copied();
        Ok(since.is_some_and(|s| serial.wrapping_sub(s) >= self.log_kept))
    }
}

impl Core {
    /// The id of the last stored event (0 if none).
    fn last_event_id(&self) -> Result<u64, StoreError> {
        let from = self.key("event/");
        let resp = self.gw.call(
            "/v3/kv/range",
            json!({"key": b64(&from), "range_end": b64(&prefix_end(&from)), "limit": 1, "sort_order": "DESCEND", "sort_target": "KEY", "keys_only": true}),
        )?;
        let last = kvs(&resp)?.into_iter().next().map(|kv| {
            String::from_utf8_lossy(&kv.key[from.len()..])
                .parse::<u64>()
                .unwrap_or(0)
        });
        Ok(last.unwrap_or(0))
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // A clean stop hands this server's duties over at once.
        let held = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(id) = held {
            let _ = self.gw.call("/v3/lease/revoke", json!({"ID": id}));
        }
    }
}

/// A single etcd member of its own, for tests: a temp data dir, free ports,
/// stopped when the test process ends (even killed). Panics with what to
/// install when `etcd` is missing.
#[cfg(test)]
mod testing {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct Member {
        pub child: Child,
        pub dir: std::path::PathBuf,
        /// `HOST:PORT` of its client port (the gateway).
        pub client: String,
    }

    impl Drop for Member {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Starts a one-member cluster and waits until it answers.
    pub fn start(name: &str) -> Member {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("sb-etcd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd temp dir");
        let (client, peer) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("m1")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-cluster")
            .arg(format!("m1=http://127.0.0.1:{peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL when
        // the thread that started etcd ends: one that lives as long as the process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        });
        let child = rx
            .recv()
            .expect("the thread that starts etcd")
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): install Debian's etcd-server (scripts/test.sh does)"
                )
            });
        let member = Member {
            child,
            dir,
            client: format!("127.0.0.1:{client}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(&member.client).is_ok()
                && super::EtcdStore::open(&format!("etcd://{}/probe", member.client)).is_ok()
            {
                return member;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start in 30 s: see {}",
                member.dir.join("etcd.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::battery::Backend;

    /// One etcd for every case of this process; each store under a prefix of its own.
    fn member() -> &'static str {
        static MEMBER: std::sync::OnceLock<testing::Member> = std::sync::OnceLock::new();
        &MEMBER.get_or_init(|| testing::start("battery")).client
    }

    struct Etcd;

    impl Backend for Etcd {
        type Store = EtcdStore;

        fn fresh(&mut self) -> EtcdStore {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let url = format!("etcd://{}/battery-{}-{n}", member(), std::process::id());
            EtcdStore::open(&url).expect("open")
        }

        fn reopen(&mut self, store: EtcdStore) -> Option<EtcdStore> {
            let url = store.url.clone();
            drop(store);
            Some(EtcdStore::open(&url).expect("reopen"))
        }

        fn damage_host(&mut self, s: &EtcdStore, origin: &str, host: &str) -> bool {
            let key = s.zone_key(origin, "snap");
            let kv = s.get_one(&key, 0).expect("get").expect("a snapshot");
            let r: BlobRef = parse(&kv.key, &kv.value).expect("pointer");
            let bytes = s.read_blob("snap", origin, &r, 0, &key).expect("blob");
            let mut snap: Value = serde_json::from_slice(&bytes).expect("json");
            for h in snap["hosts"].as_array_mut().expect("hosts") {
                if h["name"] == host {
                    h["addrs"] = json!("not a list");
                }
            }
            let blob = s
                .write_blob(
                    "snap",
                    origin,
                    r.serial,
                    "test",
                    &serde_json::to_vec(&snap).expect("json"),
                )
                .expect("write");
            s.gw.call(
                "/v3/kv/put",
                json!({"key": b64(&key), "value": b64(&to_json(&blob).expect("json"))}),
            )
            .expect("put");
            true
        }
    }

    crate::battery_tests!(Etcd);

    #[test]
    fn urls_name_members_and_a_prefix() {
        let u = EtcdUrl::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/dir/a").expect("url");
        assert_eq!(u.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(u.prefix, "dir/a/");
        assert_eq!(
            EtcdUrl::parse("etcd://h:1").expect("url").prefix,
            "switchboard/"
        );
        for bad in ["http://h:1", "etcd://", "etcd://h", "etcd://h:x/p"] {
            assert!(EtcdUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_commit_planned_on_an_old_serial_is_refused_and_one_sent_twice_is_not() {
        let store = Etcd.fresh();
        let zone = crate::store::battery::zone("conflict.example.");
        store.replace_zone(&zone, &[]).expect("seed");
        let host = zone.hosts["web1"].clone();
        let op = Op::AddHost(host.clone());
        let changes = [Change::PutHost(host)];
        store
            .commit_on(
                zone.origin(),
                zone.serial,
                zone.serial + 1,
                &changes,
                &[],
                &op,
            )
            .expect("first");
        // Another server planned on the same serial: refused, nothing written.
        let err = store
            .commit_on(
                zone.origin(),
                zone.serial,
                zone.serial + 1,
                &changes,
                &[],
                &op,
            )
            .expect_err("second");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let loaded = store.load_zone(zone.origin()).expect("load").expect("zone");
        assert_eq!(loaded.serial, zone.serial + 1);
        // A zone written whole on a stale model is refused too.
        let err = store
            .replace_zone_on(&zone, Some(zone.serial), &[])
            .expect_err("stale import");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let err = store
            .replace_zone_on(&zone, None, &[])
            .expect_err("second seed");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    }

    #[test]
    fn event_ids_taken_by_another_server_are_refused() {
        let a = Etcd.fresh();
        let b = EtcdStore::open(a.url()).expect("second server");
        a.append_events(&[crate::store::battery::event(1, "admin a")])
            .expect("a");
        // b numbered its event 1 too: refused, with the next free id.
        let err = b
            .append_events(&[crate::store::battery::event(1, "admin b")])
            .expect_err("taken");
        assert!(matches!(err, StoreError::EventIdsTaken(2)), "{err}");
        b.append_events(&[crate::store::battery::event(2, "admin b")])
            .expect("b, renumbered");
        assert_eq!(b.events_after(0, 10).expect("events").len(), 2);
    }

    /// Two directories on one store: one plans a change on a zone the other
    /// has changed since (it has not followed yet): the store refuses the
    /// commit, the directory catches up and plans again, and ends with both
    /// changes; following the other's commit afterwards changes nothing.
    #[test]
    fn a_directory_behind_the_store_catches_up_and_plans_again() {
        use crate::model::Health;
        use crate::state::Directory;
        use crate::view::ViewConfig;
        let origin = "replan.example.";
        let a = Etcd.fresh();
        let url = a.url().to_string();
        let a = Directory::open(Box::new(a), ViewConfig::default()).expect("a");
        a.seed(crate::store::battery::zone(origin)).expect("seed");
        let b = Directory::open(
            Box::new(EtcdStore::open(&url).expect("b")),
            ViewConfig::default(),
        )
        .expect("b");
        let mut followed = b.follow_store().expect("a shared store is followed");
        let host = |name: &str| crate::model::Host {
            name: name.into(),
            addrs: vec!["10.9.9.9".parse().expect("ip")],
            key: None,
            roles: vec!["web".into()],
            available: true,
            health: Health::Unknown,
            props: Default::default(),
        };
        let sa = a
            .apply(origin, Op::AddHost(host("from-a")))
            .expect("a's change");
        // b has not seen a's change: its commit is refused, then planned again.
        let sb = b
            .apply(origin, Op::AddHost(host("from-b")))
            .expect("b's change, re-planned");
        assert_eq!(sb, sa + 1);
        let hosts = |d: &Directory| {
            d.read(origin, |z| z.hosts.keys().cloned().collect::<Vec<_>>())
                .expect("zone")
        };
        assert!(
            hosts(&b).contains(&"from-a".to_string()) && hosts(&b).contains(&"from-b".to_string())
        );
        // The same host with other addresses on a, planned on its old model: refused.
        let mut other = host("from-b");
        other.addrs = vec!["10.1.1.1".parse().expect("ip")];
        let err = a
            .apply(origin, Op::AddHost(other))
            .expect_err("already there");
        assert!(
            matches!(err, crate::state::ApplyError::Conflict(_)),
            "{err}"
        );
        // b's watch brings a's commit, which b already holds: nothing moves.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let first = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), followed.recv()).await })
            .expect("b follows")
            .expect("a commit");
        b.follow(first);
        assert_eq!(b.read(origin, |z| z.serial), Some(sb));
    }

    /// A repository's write lease taken through one server holds on the
    /// other: one write at a time across the servers sharing the store.
    #[test]
    fn a_write_lease_holds_across_servers() {
        use crate::state::Directory;
        use crate::view::ViewConfig;
        let origin = "leases.example.";
        let a = Etcd.fresh();
        let url = a.url().to_string();
        let a = Directory::open(Box::new(a), ViewConfig::default()).expect("a");
        a.seed(crate::store::battery::zone(origin)).expect("seed");
        let b = Directory::open(
            Box::new(EtcdStore::open(&url).expect("b")),
            ViewConfig::default(),
        )
        .expect("b");
        let ttl = Duration::from_secs(30);
        let token = a
            .acquire_lease(origin, "arcanist", "repo1", ttl)
            .expect("a grants");
        let err = b
            .acquire_lease(origin, "arcanist", "repo1", ttl)
            .expect_err("b refuses");
        assert!(err.to_string().contains("held by repo1"), "{err}");
        assert_eq!(b.lease_holder(origin, "arcanist").as_deref(), Some("repo1"));
        b.release_lease(origin, "arcanist", &token);
        assert_eq!(a.lease_holder(origin, "arcanist"), None);
        b.acquire_lease(origin, "arcanist", "repo1", ttl)
            .expect("free again");
    }

    /// A zone's log is folded into a new snapshot after `log_kept` commits:
    /// the log stays short and the zone loads the same.
    #[test]
    fn the_log_is_folded_into_a_snapshot() {
        let url = Etcd.fresh().url().to_string();
        let mut core = Core::open(&url).expect("open");
        core.log_kept = 3;
        let store = EtcdStore(Arc::new(core));
        let mut zone = crate::store::battery::zone("fold.example.");
        store.replace_zone(&zone, &[]).expect("seed");
        let logs = |s: &EtcdStore| {
            let from = s.zone_key("fold.example.", "log/");
            s.range_all(&from, &prefix_end(&from), 0)
                .expect("range")
                .0
                .len()
        };
        for i in 0..10u8 {
            let mut h = zone.hosts["web1"].clone();
            h.addrs = vec![std::net::IpAddr::from([10, 0, 0, i])];
            let c = Change::PutHost(h);
            store
                .commit(
                    "fold.example.",
                    zone.serial + 1,
                    std::slice::from_ref(&c),
                    &[],
                )
                .expect("commit");
            c.apply(&mut zone);
            zone.serial += 1;
            // The fold runs in the background: wait for it before the next check.
            let t = std::time::Instant::now();
            while store.compacting.load(Ordering::Acquire) {
                assert!(t.elapsed() < Duration::from_secs(10), "the fold hangs");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                logs(&store) <= 3,
                "after commit {i}: {} log records",
                logs(&store)
            );
        }
        assert_eq!(
            store.load_zone("fold.example.").expect("load"),
            Some(zone.clone())
        );
        let reopened = EtcdStore::open(&url).expect("reopen");
        assert_eq!(reopened.load().expect("load").zones, vec![zone]);
    }

    /// A console login minted on one server is redeemed on another, once;
    /// the session holds on both until it ends on either.
    #[test]
    fn console_sessions_hold_across_servers() {
        use crate::sessions::{RedeemError, Sessions};
        use crate::state::Directory;
        use crate::view::ViewConfig;
        let a = Etcd.fresh();
        let url = a.url().to_string();
        let open = |s: EtcdStore| {
            std::sync::Arc::new(Directory::open(Box::new(s), ViewConfig::default()).expect("open"))
        };
        let (a, b) = (open(a), open(EtcdStore::open(&url).expect("b")));
        let (on_a, on_b) = (Sessions::in_store(a), Sessions::in_store(b));
        let code = on_a
            .mint("ops", "fpr", "z.example.", Duration::from_secs(600))
            .expect("a code");
        let (token, s) = on_b.redeem(&code).expect("redeemed on b");
        assert_eq!((s.admin.as_str(), s.zone.as_str()), ("ops", "z.example."));
        assert_eq!(
            on_a.redeem(&code).map(|_| ()),
            Err(RedeemError::Unknown),
            "a code is spent once"
        );
        let seen = on_a.get(&token).expect("the session holds on a");
        assert_eq!(seen.csrf, s.csrf);
        on_b.end(&token);
        assert!(on_a.get(&token).is_none(), "ended on b, ended on a");
    }

    /// A zone far over etcd's 1.5 MiB request limit is written in parts and
    /// loads whole.
    #[test]
    fn a_large_zone_is_written_in_parts() {
        let store = Etcd.fresh();
        let mut zone = crate::store::battery::zone("large.example.");
        let template = zone.hosts["web1"].clone();
        for i in 0..30_000u32 {
            let mut h = template.clone();
            h.name = format!("h{i}");
            h.key = None;
            h.addrs = vec![std::net::IpAddr::from(std::net::Ipv4Addr::from(
                0x0a00_0000 + i,
            ))];
            zone.hosts.insert(h.name.clone(), h);
        }
        let bytes = snapshot_json(&zone).expect("json").len();
        assert!(bytes > 3 << 20, "the snapshot is {bytes} bytes");
        store.replace_zone(&zone, &[]).expect("written in parts");
        let kv = store
            .get_one(&store.zone_key("large.example.", "snap"), 0)
            .expect("get")
            .expect("pointer");
        let r: BlobRef = parse(&kv.key, &kv.value).expect("pointer");
        assert!(r.parts >= bytes / PART, "{} parts", r.parts);
        assert_eq!(store.load_zone("large.example.").expect("load"), Some(zone));
    }
}
