//! The pre-built answers the DNS path reads.
//!
//! A `ZoneView` maps each owner name (lowercase wire format) to its record sets,
//! with the additional-section records already chosen and every answer already
//! encoded for the UDP fast path (`wire`). Every answer, NXDOMAIN and NODATA
//! included, is one zone match and one map lookup. The map is split in shards
//! behind `Arc`s: a change rebuilds only the names it touches (one host, one
//! service, one repository) and copies only the shards they live in, so the cost
//! of a change does not grow with the zone. The whole `View` is swapped
//! atomically (`arc_swap`), so readers never wait for a writer.
//!
//! Here: the view's types and its lookups. Beside them: `build` (a zone's
//! answers from its model), `scope` (the names a change touches), `patch`
//! (a view with those names rebuilt), `alias` (a CNAME's owner holds its
//! chain's answer for each type the chain's end holds, rebuilt when that end
//! changes), `cache` (a compiled view saved for a fast restart), `flat` (every
//! record as one zone file, for secondaries).

mod alias;
mod build;
pub mod cache;
mod flat;
mod patch;
mod scope;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::schema;
use crate::wire;

pub use build::{build, db_readers, db_readonly, readers, repo_readonly};
pub use flat::export_flat;
pub use patch::{names_of, patch};
pub use scope::Scope;

/// A zone whose answers cannot be built: a name of its apex is not a name.
/// Seeds and imports check this, so a change to a served zone never meets it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("bad origin: {0}")]
    Origin(String),
    #[error("bad SOA mname: {0}")]
    SoaMname(String),
    #[error("bad SOA rname: {0}")]
    SoaRname(String),
}

/// TTLs of the derived names (docs/dns-schema.md, "TTLs": 5 s service/repo,
/// 60 s node/key by default).
#[derive(Debug, Clone, Copy)]
pub struct ViewConfig {
    pub node_ttl: u32,
    pub service_ttl: u32,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            node_ttl: schema::DEFAULT_NODE_TTL,
            service_ttl: schema::DEFAULT_SERVICE_TTL,
        }
    }
}

/// Who a key fingerprint belongs to in a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner {
    Admin(String),
    Host(String),
}

/// A published key: its owner and the key itself, found by fingerprint.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub owner: KeyOwner,
    pub key: crate::model::PublicKey,
}

/// Everything at one owner name: each record set encoded for the fast path
/// (`wire::encode_set`), packed in one allocation; the full path decodes it.
/// Empty for an empty non-terminal (NODATA, not NXDOMAIN).
#[derive(Debug, Default, Clone)]
pub struct Node {
    sets: Box<[u8]>,
    /// At `FPR.key.Z`: whose key this is.
    pub key: Option<Box<KeyEntry>>,
}

/// A set's records decoded from its encoded response: (answers, additionals).
fn decode(message: &[u8]) -> (Vec<Record>, Vec<Record>) {
    match hickory_proto::op::Message::from_vec(message) {
        Ok(mut m) => (
            std::mem::take(&mut m.answers),
            std::mem::take(&mut m.additionals),
        ),
        Err(_) => (vec![], vec![]),
    }
}

const CNAME: u16 = 5;

impl Node {
    /// The name's own set of type `t`.
    pub fn set(&self, t: u16) -> Option<wire::Set<'_>> {
        wire::sets(&self.sets).find(|s| s.rtype == t && !s.alias)
    }

    /// The answer to a query of type `t` here: the set of that type (an alias
    /// set at a CNAME's owner), else the CNAME chain (RFC 1034 §4.3.2). One pass:
    /// the name's own sets come first, a chain's alias CNAME set last.
    pub fn answer(&self, t: u16) -> Option<wire::Set<'_>> {
        let mut cname = None;
        for s in wire::sets(&self.sets) {
            if s.rtype == t {
                return Some(s);
            }
            if s.rtype == CNAME {
                cname = Some(s);
            }
        }
        cname
    }

    /// Every set at this name, alias sets included.
    pub fn sets(&self) -> impl Iterator<Item = wire::Set<'_>> {
        wire::sets(&self.sets)
    }

    /// Asks the CPU to bring this node's sets into cache ahead of use: a
    /// zone transfer walks every node, and their bytes are scattered.
    #[inline]
    pub fn prefetch(&self) {
        prefetch(self.sets.as_ptr());
    }

    /// Whether the name has no records (an empty non-terminal).
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The records of the name's own set of type `t` at `name` (this node's
    /// lowercase wire name): (answers, additionals).
    pub fn decode(&self, name: &[u8], t: u16) -> Option<(Vec<Record>, Vec<Record>)> {
        self.set(t).map(|s| decode(&wire::message(name, &s)))
    }

    /// `answer(t)` at `name` (this node's lowercase wire name), decoded.
    pub fn decode_answer(&self, name: &[u8], t: u16) -> Option<(Vec<Record>, Vec<Record>)> {
        self.answer(t).map(|s| decode(&wire::message(name, &s)))
    }

    /// Every record of the name's own at `name` (this node's lowercase wire
    /// name), decoded: alias sets left out.
    pub fn records(&self, name: &[u8]) -> Vec<Record> {
        self.sets()
            .filter(|s| !s.alias)
            .flat_map(|s| decode(&wire::message(name, &s)).0)
            .collect()
    }
}

/// A hint to the CPU to load the cache line at `p`; nothing else happens.
#[inline]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault, whatever `p` is.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How many pieces the name map is split into.
const SHARDS: usize = 1024;

type Key = Box<[u8]>;
type Shard = Arc<FxHashMap<Key, Node>>;

fn shard_of(key: &[u8]) -> usize {
    (FxBuildHasher.hash_one(key) as usize) % SHARDS
}

/// The answers of one zone.
#[derive(Debug)]
pub struct ZoneView {
    pub origin: LowerName,
    pub serial: u32,
    /// The SOA for the authority section of negative answers (TTL per RFC 2308 §5).
    pub negative_soa: Record,
    /// The origin in lowercase wire format, for the fast path's zone match.
    pub wire_origin: Box<[u8]>,
    /// The negative SOA from its TYPE on, for the fast path.
    pub soa_tail: Box<[u8]>,
    shards: Vec<Shard>,
    admin_keys: Arc<HashMap<String, KeyEntry>>,
    /// The owners of the zone's CNAMEs by the in-zone name their chain ends at:
    /// a change there rebuilds their alias sets. (CNAMEs are static records,
    /// so only a zone import changes the chains themselves.)
    aliases: Arc<Aliases>,
}

/// CNAME owners by their chain's end (lowercase wire names).
type Aliases = FxHashMap<Key, Vec<Key>>;

/// The result of looking a question up.
pub enum Lookup<'a> {
    /// The name is in no zone of ours.
    Refused,
    NxDomain(&'a ZoneView),
    NoData(&'a ZoneView),
    Answer {
        records: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// `ANY`: every record at the name.
    Any(Vec<Record>),
}

impl ZoneView {
    /// The node at a lowercase wire-format name.
    pub fn node(&self, key: &[u8]) -> Option<&Node> {
        self.shards[shard_of(key)].get(key)
    }

    /// The answer to (name, type) within this zone (the full path).
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        let Some(key) = wire::wire_name(&Name::from(name.clone())) else {
            return Lookup::NxDomain(self);
        };
        let Some(node) = self.node(&key) else {
            return Lookup::NxDomain(self);
        };
        if qtype == RecordType::ANY && !node.is_empty() {
            return Lookup::Any(node.records(&key));
        }
        match node.decode_answer(&key, u16::from(qtype)) {
            Some((records, additionals)) => Lookup::Answer {
                records,
                additionals,
            },
            None => Lookup::NoData(self),
        }
    }

    /// Who holds the key with this fingerprint, if anyone in this zone.
    pub fn key(&self, fingerprint: &str) -> Option<&KeyEntry> {
        if let Some(e) = self.admin_keys.get(fingerprint) {
            return Some(e);
        }
        let name = Name::from_ascii(format!("{fingerprint}.{}.", schema::KEY)).ok()?;
        let name = name.append_domain(&Name::from(self.origin.clone())).ok()?;
        self.node(&wire::wire_name(&name)?)?.key.as_deref()
    }

    /// Every owner name (lowercase wire format) and its node, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = (&[u8], &Node)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (&k[..], v)))
    }

    /// Every record of the zone (decoded: for exports, not for answering).
    pub fn records(&self) -> Vec<Record> {
        self.shards
            .iter()
            .flat_map(|s| s.iter())
            .flat_map(|(k, n)| n.records(k))
            .collect()
    }

    /// Every name with records and its encoded answers, one sorted line each:
    /// two views answer alike exactly when these are equal (tests and fuzzing
    /// compare a patched view with a rebuilt one this way).
    pub fn canonical(&self) -> Vec<String> {
        // Empty non-terminals too: NODATA and NXDOMAIN differ.
        let mut out: Vec<String> = self
            .nodes()
            .map(|(k, n)| {
                let mut sets: Vec<String> = n
                    .sets()
                    .map(|s| {
                        format!(
                            "{}{}:{}:{}:{}",
                            if s.alias { "alias " } else { "" },
                            s.rtype,
                            s.answers,
                            s.additionals,
                            data_encoding::HEXLOWER.encode(s.body)
                        )
                    })
                    .collect();
                sets.sort();
                format!("{k:?} {sets:?} {:?}", n.key.as_ref().map(|k| &k.owner))
            })
            .collect();
        out.sort();
        out
    }

    /// How many owner names the view holds (for status and tests).
    pub fn name_count(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// All zones' answers. Swapped whole on change.
#[derive(Debug, Default)]
pub struct View {
    /// Longest origin first, so the most specific zone wins.
    pub zones: Vec<Arc<ZoneView>>,
}

impl View {
    /// The zone that is authoritative for `name`, if any.
    pub fn zone_for(&self, name: &LowerName) -> Option<&ZoneView> {
        self.zones
            .iter()
            .find(|z| z.origin.zone_of(name))
            .map(Arc::as_ref)
    }

    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        match self.zone_for(name) {
            Some(z) => z.lookup(name, qtype),
            None => Lookup::Refused,
        }
    }

    /// A copy of this view with one zone replaced (or added, or removed with `None`).
    pub fn with_zone(&self, origin: &LowerName, zone: Option<Arc<ZoneView>>) -> View {
        let mut zones: Vec<Arc<ZoneView>> = self
            .zones
            .iter()
            .filter(|z| &z.origin != origin)
            .cloned()
            .collect();
        zones.extend(zone);
        zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        View { zones }
    }
}

fn finish(
    origin: Name,
    serial: u32,
    negative_soa: Record,
    shards: Vec<Shard>,
    admin_keys: Arc<HashMap<String, KeyEntry>>,
    aliases: Arc<Aliases>,
) -> ZoneView {
    ZoneView {
        origin: LowerName::new(&origin),
        serial,
        wire_origin: wire::wire_name(&origin).unwrap_or_default(),
        soa_tail: wire::soa_tail(&negative_soa),
        negative_soa,
        shards,
        admin_keys,
        aliases,
    }
}

fn key_of(name: &Name) -> Option<Key> {
    wire::wire_name(name)
}
