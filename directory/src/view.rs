//! The pre-built answers the DNS path reads.
//!
//! A `ZoneView` maps each owner name (lowercase wire format) to its record sets,
//! with the additional-section records already chosen and every answer already
//! encoded for the UDP fast path (`wire`). Every answer, NXDOMAIN and NODATA
//! included, is one zone match and one map lookup. The map is split in shards
//! behind `Arc`s: a change rebuilds only the names it touches (one host, one
//! service, one repository) and copies only the shards they live in, so the cost
//! of a change does not grow with the zone. The whole `View` is swapped
//! atomically (`arc_swap`), so readers never wait for a writer. A CNAME's owner
//! also holds alias sets, its chain's answer for each type the chain's end
//! holds (`aliased`), rebuilt when that end changes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::model::{Binding, Repo, Role, Zone};
use crate::schema;
use crate::wire;
use crate::zonefile;

/// TTLs of the derived names (SPEC: 5 s service/repo, 60 s node/key by default).
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

/// One record set at a name, with what goes in the additional section (while building).
#[derive(Debug, Default, Clone)]
struct RrSet {
    rtype: Option<RecordType>,
    records: Vec<Record>,
    additionals: Vec<Record>,
}

/// A name's record sets while a view is built; `Node` keeps only their encoding.
#[derive(Debug, Default, Clone)]
struct BuildNode {
    sets: Vec<RrSet>,
    key: Option<KeyEntry>,
}

impl BuildNode {
    fn set_mut(&mut self, t: RecordType) -> &mut RrSet {
        match self.sets.iter().position(|s| s.rtype == Some(t)) {
            Some(i) => &mut self.sets[i],
            None => {
                self.sets.push(RrSet {
                    rtype: Some(t),
                    ..Default::default()
                });
                let last = self.sets.len() - 1;
                &mut self.sets[last]
            }
        }
    }

    fn encode(self, name: &Name) -> Node {
        let mut sets = Vec::new();
        for s in &self.sets {
            if let Some(t) = s.rtype {
                wire::encode_set(name, t, &s.records, &s.additionals, &mut sets);
            }
        }
        Node {
            sets: sets.into_boxed_slice(),
            key: self.key.map(Box::new),
        }
    }
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

/// What a change touches: the groups of names to rebuild. `Scope::all()` is a
/// whole zone.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    all: bool,
    pub hosts: BTreeSet<String>,
    pub services: BTreeSet<String>,
    pub repos: BTreeSet<String>,
    pub admins: BTreeSet<String>,
    /// `_services._dns-sd._udp`: the list of service types.
    pub service_index: bool,
}

impl Scope {
    pub fn all() -> Self {
        Scope {
            all: true,
            ..Default::default()
        }
    }

    /// A host and everything that shows it: its bindings' services and its repositories.
    pub fn host(zone: &Zone, host: &str) -> Self {
        let mut s = Scope::default();
        s.hosts.insert(host.to_string());
        s.services
            .extend(zone.bindings_of(host).map(|b| b.service.clone()));
        s.repos.extend(
            zone.repos
                .values()
                .filter(|r| r.has_host(host))
                .map(|r| r.name.clone()),
        );
        s
    }

    /// A binding: its service, the type list, and (for the cluster listener) the
    /// repositories whose read/write answers carry its port.
    pub fn binding(zone: &Zone, host: &str, service: &str) -> Self {
        let mut s = Scope {
            service_index: true,
            ..Default::default()
        };
        s.services.insert(service.to_string());
        if service == schema::SWITCHBOARD_SERVICE {
            s.repos.extend(
                zone.repos
                    .values()
                    .filter(|r| r.has_host(host))
                    .map(|r| r.name.clone()),
            );
        }
        s
    }

    fn has(set: &BTreeSet<String>, all: bool, x: &str) -> bool {
        all || set.contains(x)
    }
}

/// A predicate choosing bindings for a role-filtered answer.
type BindingFilter = dyn Fn(&Binding) -> bool;

struct Builder<'z> {
    origin: Name,
    names: FxHashMap<Name, BuildNode>,
    /// What the answers need of each host they name, looked up once a build: a
    /// service's names name each of its hosts up to a dozen times.
    hosts: FxHashMap<&'z str, Option<HostInfo<'z>>>,
    zone: &'z Zone,
    cfg: ViewConfig,
    scope: &'z Scope,
    /// In a full build, host names are encoded as soon as they are built,
    /// straight into the shards: most of a zone's names are hosts, and holding
    /// every host's hickory records until the end cost hundreds of megabytes
    /// of short-lived memory (and the time to fault it in).
    eager: Option<Eager>,
}

/// Names encoded early, and the parents they need as (empty) nodes.
#[derive(Default)]
struct Eager {
    shards: Vec<FxHashMap<Key, Node>>,
    parents: rustc_hash::FxHashSet<Name>,
    /// The parents' keys, so that each parent's `Name` is made once.
    parent_keys: rustc_hash::FxHashSet<Key>,
}

impl Eager {
    fn new() -> Self {
        Eager {
            shards: (0..SHARDS).map(|_| FxHashMap::default()).collect(),
            parents: Default::default(),
            parent_keys: Default::default(),
        }
    }

    fn get(&self, name: &Name) -> Option<&Node> {
        let k = key_of(name)?;
        self.shards[shard_of(&k)].get(&k)
    }
}

/// A host as the answers that name it see it.
struct HostInfo<'z> {
    /// `HOST.node.Z`.
    node: Name,
    /// Its A/AAAA records at `node`, for additional sections.
    addr_records: Vec<Record>,
    addrs: &'z [IpAddr],
    in_service: bool,
}

fn txt(strings: Vec<String>) -> RData {
    RData::TXT(TXT::new(strings))
}

fn addr_rdata(a: &IpAddr) -> RData {
    match a {
        IpAddr::V4(v4) => RData::A(A(*v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
    }
}

impl<'z> Builder<'z> {
    fn name(&self, rel: &[&str]) -> Option<Name> {
        Name::from_labels(rel.iter().map(|s| s.as_bytes()))
            .ok()?
            .append_domain(&self.origin)
            .ok()
    }

    fn node(&mut self, name: &Name) -> &mut BuildNode {
        self.names.entry(name.clone()).or_default()
    }

    fn add(&mut self, name: &Name, ttl: u32, data: RData) {
        let t = data.record_type();
        let rec = Record::from_rdata(name.clone(), ttl, data);
        self.node(name).set_mut(t).records.push(rec);
    }

    /// What the answers need of `host` (no addresses and out of service when the
    /// zone does not have it); `None` only when its name is not a valid name.
    fn host_info(&mut self, host: &'z str) -> Option<&HostInfo<'z>> {
        if !self.hosts.contains_key(host) {
            let info = self.name(&[host, schema::NODE]).map(|node| {
                let h = self.zone.hosts.get(host);
                let addrs = h.map(|h| h.addrs.as_slice()).unwrap_or_default();
                HostInfo {
                    addr_records: addrs
                        .iter()
                        .map(|a| Record::from_rdata(node.clone(), self.cfg.node_ttl, addr_rdata(a)))
                        .collect(),
                    node,
                    addrs,
                    in_service: h.is_some_and(|h| h.in_service()),
                }
            });
            self.hosts.insert(host, info);
        }
        self.hosts.get(host).and_then(Option::as_ref)
    }

    /// SRV records, the matching A/AAAA at `name`, and targets' addresses as additionals.
    fn srv_answer(&mut self, name: &Name, targets: &[(&'z str, u16, u16, u16)], ttl: u32) {
        // Each target host appears once per name (a binding is host x service), so
        // only addresses shared by several hosts need de-duplicating.
        let mut srv = Vec::with_capacity(targets.len());
        let mut extra = Vec::with_capacity(targets.len());
        let mut addrs = Vec::new();
        let mut seen = HashSet::new();
        for &(host, prio, weight, port) in targets {
            let Some(info) = self.host_info(host) else {
                continue;
            };
            srv.push(Record::from_rdata(
                name.clone(),
                ttl,
                RData::SRV(SRV::new(prio, weight, port, info.node.clone())),
            ));
            extra.extend(info.addr_records.iter().cloned());
            for a in info.addrs {
                if seen.insert(*a) {
                    addrs.push(Record::from_rdata(name.clone(), ttl, addr_rdata(a)));
                }
            }
        }
        // Make the name exist even when nothing is eligible: NODATA, not NXDOMAIN.
        let node = self.node(name);
        if !srv.is_empty() {
            let set = node.set_mut(RecordType::SRV);
            set.records = srv;
            set.additionals = extra;
        }
        for r in addrs {
            node.set_mut(r.record_type()).records.push(r);
        }
    }

    fn switchboard_port(&self, host: &str) -> u16 {
        self.zone
            .bindings
            .get(&(host.to_string(), schema::SWITCHBOARD_SERVICE.to_string()))
            .map(|b| b.port)
            .unwrap_or(0)
    }

    fn eligible(&mut self, b: &'z Binding) -> bool {
        b.available
            && b.health != crate::model::Health::Critical
            && self.host_info(&b.host).is_some_and(|h| h.in_service)
    }

    fn host(&mut self, h: &crate::model::Host) {
        let ttl = self.cfg.node_ttl;
        let Some(node) = self.name(&[&h.name, schema::NODE]) else {
            return;
        };
        for a in &h.addrs {
            self.add(&node, ttl, addr_rdata(a));
        }
        self.add(&node, ttl, txt(crate::txt::host_txt(h)));
        if let Some(key) = &h.key {
            let fpr = key.fingerprint();
            if let Some(kname) = self.name(&[&fpr, schema::KEY]) {
                self.add(&kname, ttl, RData::PTR(PTR(node.clone())));
                self.add(
                    &kname,
                    ttl,
                    txt(vec![
                        format!("{}={}", schema::txt::HOST, h.name),
                        format!("{}={}", schema::txt::ROLES, h.roles.join(",")),
                        format!("{}={key}", schema::txt::KEY),
                    ]),
                );
                self.node(&kname).key = Some(KeyEntry {
                    owner: KeyOwner::Host(h.name.clone()),
                    key: *key,
                });
            }
        }
    }

    /// Runs `f`, whose names are complete when it returns; in a full build
    /// they are encoded into the shards at once instead of joining `names`.
    fn eagerly(&mut self, f: impl FnOnce(&mut Self)) {
        if self.eager.is_none() {
            return f(self);
        }
        let rest = std::mem::take(&mut self.names);
        f(self);
        let built = std::mem::replace(&mut self.names, rest);
        if let Some(eager) = &mut self.eager {
            for (name, node) in built {
                if let Some(k) = key_of(&name) {
                    let parent = wire_parent(&k).unwrap_or_default();
                    if !eager.parent_keys.contains(parent) {
                        eager.parent_keys.insert(parent.into());
                        eager.parents.insert(name.base_name());
                    }
                    let node = node.encode(&name);
                    eager.shards[shard_of(&k)].insert(k, node);
                }
            }
        }
    }

    fn hosts(&mut self) {
        let zone = self.zone;
        if self.scope.all {
            for h in zone.hosts.values() {
                self.eagerly(|b| b.host(h));
            }
        } else {
            for name in &self.scope.hosts {
                if let Some(h) = zone.hosts.get(name) {
                    self.host(h);
                }
            }
        }
    }

    fn service(&mut self, svc: &str, bindings: Vec<&'z Binding>) {
        let ttl = self.cfg.service_ttl;
        let svc_label = format!("_{svc}");
        let (Some(type_name), Some(service_name)) = (
            self.name(&[&svc_label, schema::TCP]),
            self.name(&[svc, schema::SERVICE]),
        ) else {
            return;
        };
        for b in &bindings {
            let Some(inst) = self.name(&[&b.host, &svc_label, schema::TCP]) else {
                continue;
            };
            self.add(&type_name, ttl, RData::PTR(PTR(inst.clone())));
            if let Some(info) = self.host_info(&b.host) {
                let (target, extra) = (info.node.clone(), info.addr_records.clone());
                self.add(
                    &inst,
                    ttl,
                    RData::SRV(SRV::new(b.srv_priority(), b.weight, b.port, target)),
                );
                self.node(&inst).set_mut(RecordType::SRV).additionals = extra;
            }
            self.add(&inst, ttl, txt(crate::txt::binding_txt(b)));
        }
        let live: Vec<&Binding> = bindings.into_iter().filter(|b| self.eligible(b)).collect();
        let targets = |pred: &dyn Fn(&Binding) -> bool| -> Vec<(&'z str, u16, u16, u16)> {
            live.iter()
                .filter(|b| pred(b))
                .map(|b| (b.host.as_str(), b.srv_priority(), b.weight, b.port))
                .collect()
        };
        let all = targets(&|_| true);
        self.srv_answer(&service_name, &all, ttl);
        self.srv_answer(&type_name, &all, ttl);
        let filters: [(&str, &BindingFilter); 4] = [
            ("master", &|b| b.role == Some(Role::Master)),
            ("replica", &|b| b.role == Some(Role::Replica)),
            ("readonly", &|b| b.readonly),
            ("readwrite", &|b| !b.readonly),
        ];
        for (label, pred) in filters {
            if let Some(n) = self.name(&[label, svc, schema::SERVICE]) {
                let t = targets(pred);
                self.srv_answer(&n, &t, ttl);
            }
        }
    }

    fn services(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.service_ttl;
        let mut by_service: std::collections::BTreeMap<&str, Vec<&Binding>> = Default::default();
        for b in zone.bindings.values() {
            if Scope::has(&self.scope.services, self.scope.all, &b.service) {
                by_service.entry(b.service.as_str()).or_default().push(b);
            }
        }
        for (svc, bindings) in by_service {
            self.eagerly(|b| b.service(svc, bindings));
        }
        if self.scope.all || self.scope.service_index {
            let Some(services_name) = self.name(&schema::DNS_SD_SERVICES) else {
                return;
            };
            self.node(&services_name);
            let all: BTreeSet<&str> = zone.bindings.values().map(|b| b.service.as_str()).collect();
            for svc in all {
                if let Some(type_name) = self.name(&[&format!("_{svc}"), schema::TCP]) {
                    self.add(&services_name, ttl, RData::PTR(PTR(type_name)));
                }
            }
        }
    }

    fn repos(&mut self) {
        let zone = self.zone;
        let ttl = self.cfg.service_ttl;
        for r in zone
            .repos
            .values()
            .filter(|r| Scope::has(&self.scope.repos, self.scope.all, &r.name))
        {
            let Some(name) = self.name(&[&r.name, schema::REPO]) else {
                continue;
            };
            self.add(&name, ttl, txt(crate::txt::repo_txt(r, true)));
            let in_service = |h: &str| zone.hosts.get(h).is_some_and(|h| h.in_service());
            let write: Vec<_> = std::iter::once(r.master.as_str())
                .filter(|h| in_service(h))
                .map(|h| (h, 0, 0, self.switchboard_port(h)))
                .collect();
            if let Some(n) = self.name(&[schema::WRITE, &r.name, schema::REPO]) {
                self.srv_answer(&n, &write, ttl);
            }
            let read: Vec<_> = readers(r)
                .filter(|h| in_service(h))
                .map(|h| (h, 0, 0, self.switchboard_port(h)))
                .collect();
            if let Some(n) = self.name(&[schema::READ, &r.name, schema::REPO]) {
                self.srv_answer(&n, &read, ttl);
            }
        }
    }

    fn admins(&mut self) {
        let zone = self.zone;
        for a in zone
            .admins
            .values()
            .filter(|a| Scope::has(&self.scope.admins, self.scope.all, &a.name))
        {
            if let Some(n) = self.name(&[&a.name, schema::ADMIN]) {
                self.add(
                    &n,
                    self.cfg.node_ttl,
                    txt(vec![format!("{}={}", schema::txt::KEY, a.key)]),
                );
            }
        }
    }
}

/// Hosts of a repository whose version is within `max_lag` of the master's.
pub fn readers(r: &Repo) -> impl Iterator<Item = &str> {
    r.hosts().filter(|h| r.is_current(h))
}

fn admin_keys(zone: &Zone) -> HashMap<String, KeyEntry> {
    zone.admins
        .values()
        .map(|a| {
            (
                a.key.fingerprint(),
                KeyEntry {
                    owner: KeyOwner::Admin(a.name.clone()),
                    key: a.key,
                },
            )
        })
        .collect()
}

/// The zone's origin, SOA and negative SOA.
fn apex(zone: &Zone) -> Result<(Name, Record, Record), String> {
    let origin = Name::from_ascii(&zone.meta.origin).map_err(|e| format!("bad origin: {e}"))?;
    let soa = &zone.meta.soa;
    let soa_data = SOA::new(
        Name::from_ascii(&soa.mname).map_err(|e| format!("bad SOA mname: {e}"))?,
        Name::from_ascii(&soa.rname).map_err(|e| format!("bad SOA rname: {e}"))?,
        zone.serial,
        soa.refresh,
        soa.retry,
        soa.expire,
        soa.minimum,
    );
    let record = Record::from_rdata(origin.clone(), soa.ttl, RData::SOA(soa_data.clone()));
    let negative = Record::from_rdata(
        origin.clone(),
        soa.ttl.min(soa.minimum),
        RData::SOA(soa_data),
    );
    Ok((origin, record, negative))
}

/// The names of `scope` built from `zone`.
fn build_names(
    zone: &Zone,
    cfg: ViewConfig,
    origin: &Name,
    scope: &Scope,
) -> FxHashMap<Name, BuildNode> {
    build_names_with(zone, cfg, origin, scope, None).0
}

/// The names of `scope`, with `eager` given: hosts already encoded in it.
fn build_names_with(
    zone: &Zone,
    cfg: ViewConfig,
    origin: &Name,
    scope: &Scope,
    eager: Option<Eager>,
) -> (FxHashMap<Name, BuildNode>, Option<Eager>) {
    let mut b = Builder {
        origin: origin.clone(),
        names: FxHashMap::default(),
        hosts: FxHashMap::default(),
        zone,
        cfg,
        scope,
        eager,
    };
    b.hosts();
    b.services();
    b.repos();
    b.admins();
    (b.names, b.eager)
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

/// Builds the answers of one zone from its model.
pub fn build(zone: &Zone, cfg: ViewConfig) -> Result<ZoneView, String> {
    let (origin, soa, negative_soa) = apex(zone)?;
    let (mut names, eager) =
        build_names_with(zone, cfg, &origin, &Scope::all(), Some(Eager::new()));
    let mut eager = eager.unwrap_or_else(Eager::new);
    {
        let apex_node = names.entry(origin.clone()).or_default();
        apex_node.set_mut(RecordType::SOA).records.push(soa);
        for ns in &zone.meta.ns {
            if let Ok(n) = Name::from_ascii(ns) {
                apex_node
                    .set_mut(RecordType::NS)
                    .records
                    .push(Record::from_rdata(
                        origin.clone(),
                        zone.meta.ns_ttl,
                        RData::NS(NS(n)),
                    ));
            }
        }
    }
    // Static records: served verbatim, never over a derived set of the same type.
    let statics: Vec<Record> = zone.meta.static_records()
        .into_iter()
        .filter(|r| {
            let t = r.record_type();
            let lower = r.name.to_lowercase();
            let derived = names
                .get(&lower)
                .is_some_and(|n| n.sets.iter().any(|s| s.rtype == Some(t)))
                || eager
                    .get(&lower)
                    .is_some_and(|n| n.set(u16::from(t)).is_some());
            if derived {
                tracing::warn!(name = %r.name, rtype = %t, "static record shadowed by a derived one; ignored");
            }
            !derived
        })
        .collect();
    let cnames = cname_owners(&statics);
    for r in statics {
        let t = r.record_type();
        names
            .entry(r.name.to_lowercase())
            .or_default()
            .set_mut(t)
            .records
            .push(r);
    }
    // NS targets inside the zone get their addresses in the additional section.
    let glue: Vec<Record> = zone
        .meta
        .ns
        .iter()
        .filter_map(|n| Name::from_ascii(n).ok())
        .flat_map(|t| {
            let t = t.to_lowercase();
            let mut found: Vec<Record> = names
                .get(&t)
                .map(|n| {
                    n.sets
                        .iter()
                        .filter(|s| matches!(s.rtype, Some(RecordType::A | RecordType::AAAA)))
                        .flat_map(|s| s.records.iter().cloned())
                        .collect()
                })
                .unwrap_or_default();
            if let (Some(node), Some(k)) = (eager.get(&t), key_of(&t)) {
                for rt in [RecordType::A, RecordType::AAAA] {
                    if let Some((answers, _)) = node.decode(&k, u16::from(rt)) {
                        found.extend(answers);
                    }
                }
            }
            found
        })
        .collect();
    if let Some(apex_node) = names.get_mut(&origin) {
        apex_node.set_mut(RecordType::NS).additionals = glue;
    }
    // The early-encoded names' parents exist too (`node.Z`, `key.Z`), and
    // every ancestor of those.
    for p in std::mem::take(&mut eager.parents) {
        if p.num_labels() > origin.num_labels() && eager.get(&p).is_none() {
            names.entry(p).or_default();
        }
    }
    add_ancestors(&mut names, &origin, |n| eager.get(n).is_some());
    let mut shards = eager.shards;
    for (name, mut node) in names {
        let Some(k) = key_of(&name) else { continue };
        let shard = &mut shards[shard_of(&k)];
        // A name built both early and late: one node with both. (The zone
        // file refuses static records at derived names, so nothing reaches
        // this today; it keeps the view whole if that ever changes.)
        if let Some(early) = shard.remove(&k) {
            for t in early.sets().map(|s| s.rtype).collect::<Vec<_>>() {
                if let Some((answers, additionals)) = early.decode(&k, t) {
                    let set = node.set_mut(RecordType::from(t));
                    set.records.extend(answers);
                    set.additionals.extend(additionals);
                }
            }
            if node.key.is_none() {
                node.key = early.key.map(|b| *b);
            }
        }
        shard.insert(k, node.encode(&name));
    }
    let aliases = chase(&mut shards, &origin, cnames);
    Ok(finish(
        origin,
        zone.serial,
        negative_soa,
        shards.into_iter().map(Arc::new).collect(),
        Arc::new(admin_keys(zone)),
        Arc::new(aliases),
    ))
}

/// How many CNAMEs an answer follows; a longer chain is answered with the
/// CNAMEs so far, as a loop is.
const MAX_CHAIN: usize = 8;

/// The owners of the CNAMEs among `statics` (CNAMEs are static records only).
fn cname_owners(statics: &[Record]) -> Vec<Key> {
    let mut owners: Vec<Key> = statics
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .filter_map(|r| key_of(&r.name))
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

/// Gives each CNAME owner among `owners` its alias sets (see `aliased`) in
/// `shards`, and returns the owners by the end of their chain.
fn chase(shards: &mut [FxHashMap<Key, Node>], origin: &Name, owners: Vec<Key>) -> Aliases {
    let origin = key_of(origin).unwrap_or_default();
    let mut aliases = Aliases::default();
    let mut rebuilt = Vec::with_capacity(owners.len());
    for owner in owners {
        let at = |k: &[u8]| shards[shard_of(k)].get(k);
        let Some((node, end)) = aliased(&owner, &origin, at) else {
            continue;
        };
        if let Some(end) = end {
            aliases.entry(end).or_default().push(owner.clone());
        }
        rebuilt.push((owner, node));
    }
    for (k, node) in rebuilt {
        shards[shard_of(&k)].insert(k, node);
    }
    aliases
}

/// The node at the CNAME owner `owner` with its alias sets rebuilt from the
/// nodes `at` finds, and the in-zone name its chain ends at (`None` when it
/// leaves the zone, loops or runs past `MAX_CHAIN`). An authoritative answer
/// follows a CNAME within its zone (RFC 1034 §4.3.2): for each type the chain's
/// end holds, an alias set of the CNAMEs then that end's records (and their
/// additionals); for a chain of several CNAMEs, an alias CNAME set of them all,
/// the answer for any other type.
fn aliased<'a>(
    owner: &[u8],
    origin: &[u8],
    at: impl Fn(&[u8]) -> Option<&'a Node>,
) -> Option<(Node, Option<Key>)> {
    let node = at(owner)?;
    let mut chain: Vec<Record> = Vec::new();
    let mut seen: Vec<Key> = Vec::new();
    let mut cur: Key = owner.into();
    let end = loop {
        let cname = at(&cur)
            .and_then(|n| n.decode(&cur, CNAME))
            .and_then(|(answers, _)| answers.into_iter().next());
        let Some(cname) = cname else {
            break Some(cur);
        };
        let RData::CNAME(target) = &cname.data else {
            break None;
        };
        let next = wire::wire_name(&target.0);
        chain.push(cname);
        seen.push(cur);
        match next {
            Some(k) if within(&k, origin) && !seen.contains(&k) && chain.len() < MAX_CHAIN => {
                cur = k
            }
            _ => break None,
        }
    };
    let owner_name = chain.first()?.name.clone();
    let mut sets = wire::retain_sets(&node.sets, |s| !s.alias);
    if let Some((end_key, end_node)) = end.as_deref().and_then(|k| Some((k, at(k)?))) {
        for s in end_node.sets().filter(|s| !s.alias) {
            if node.set(s.rtype).is_some() {
                continue;
            }
            let (answers, additionals) = decode(&wire::message(end_key, &s));
            let records: Vec<Record> = chain.iter().cloned().chain(answers).collect();
            let t = RecordType::from(s.rtype);
            wire::encode_alias_set(&owner_name, t, &records, &additionals, &mut sets);
        }
    }
    if chain.len() > 1 {
        wire::encode_alias_set(&owner_name, RecordType::CNAME, &chain, &[], &mut sets);
    }
    let node = Node {
        sets: sets.into_boxed_slice(),
        key: node.key.clone(),
    };
    Some((node, end))
}

/// Whether the lowercase wire name `name` is `origin` or below it.
fn within(name: &[u8], origin: &[u8]) -> bool {
    let mut n = Some(name);
    while let Some(x) = n {
        if x == origin {
            return true;
        }
        n = wire_parent(x);
    }
    false
}

/// The parent of a lowercase wire name (its first label dropped), if it has one.
fn wire_parent(name: &[u8]) -> Option<&[u8]> {
    let len = usize::from(*name.first()?);
    if len == 0 {
        return None;
    }
    name.get(1 + len..)
}

/// Every ancestor of a name exists (RFC 8020): empty nodes for those missing,
/// unless `exists` says the view already has them.
fn add_ancestors(
    names: &mut FxHashMap<Name, BuildNode>,
    origin: &Name,
    exists: impl Fn(&Name) -> bool,
) {
    let mut missing: rustc_hash::FxHashSet<Name> = Default::default();
    for n in names.keys() {
        let mut cur = n.base_name();
        while cur.num_labels() > origin.num_labels()
            && !names.contains_key(&cur)
            && !missing.contains(&cur)
        {
            if exists(&cur) {
                break;
            }
            let parent = cur.base_name();
            missing.insert(cur);
            cur = parent;
        }
    }
    for n in missing {
        names.insert(n, BuildNode::default());
    }
}

/// The names `scope` covers in `zone` now: call before changing the model, and
/// hand the result to `patch` after.
pub fn names_of(zone: &Zone, cfg: ViewConfig, scope: &Scope) -> Result<Vec<Name>, String> {
    let (origin, _, _) = apex(zone)?;
    Ok(build_names(zone, cfg, &origin, scope).into_keys().collect())
}

/// A copy of `old` with the names of `scope` rebuilt from `after` (and those in
/// `gone` that `after` no longer has, removed), the apex SOA at the new serial,
/// and only the touched shards copied.
pub fn patch(
    old: &ZoneView,
    gone: Vec<Name>,
    after: &Zone,
    scope: &Scope,
    cfg: ViewConfig,
) -> Result<ZoneView, String> {
    let (origin, soa, negative_soa) = apex(after)?;
    // A change to a host that is a name server of the zone changes the glue
    // at the apex: rebuild (rare; the patch below keeps the apex's NS set).
    let ns_host = after.meta.ns.iter().any(|ns| {
        scope.hosts.iter().any(|h| {
            let node = format!("{h}.{}.{}", schema::NODE, after.meta.origin);
            ns.trim_end_matches('.')
                .eq_ignore_ascii_case(node.trim_end_matches('.'))
        })
    });
    if scope.all || ns_host {
        return build(after, cfg);
    }
    let mut fresh = build_names(after, cfg, &origin, scope);
    add_ancestors(&mut fresh, &origin, |n| {
        key_of(n).is_some_and(|k| old.node(&k).is_some())
    });
    // The apex keeps its NS and static records; only the SOA moves.
    let mut apex_node = key_of(&origin)
        .and_then(|k| old.node(&k).cloned())
        .unwrap_or_default();
    let mut sets = wire::retain_sets(&apex_node.sets, |s| s.rtype != u16::from(RecordType::SOA));
    wire::encode_set(&origin, RecordType::SOA, &[soa], &[], &mut sets);
    apex_node.sets = sets.into_boxed_slice();
    let mut touched: HashMap<usize, FxHashMap<Key, Node>> = HashMap::new();
    fn shard<'a>(
        touched: &'a mut HashMap<usize, FxHashMap<Key, Node>>,
        old: &ZoneView,
        i: usize,
    ) -> &'a mut FxHashMap<Key, Node> {
        touched.entry(i).or_insert_with(|| (*old.shards[i]).clone())
    }
    let mut removed: Vec<Key> = Vec::new();
    for name in gone {
        if !fresh.contains_key(&name) {
            if let Some(k) = key_of(&name) {
                shard(&mut touched, old, shard_of(&k)).remove(&k);
                removed.push(k);
            }
        }
    }
    let fresh_keys: rustc_hash::FxHashSet<Key> = fresh.keys().filter_map(key_of).collect();
    for (name, node) in fresh {
        let node = node.encode(&name);
        if let Some(k) = key_of(&name) {
            shard(&mut touched, old, shard_of(&k)).insert(k, node);
        }
    }
    if let Some(k) = key_of(&origin) {
        shard(&mut touched, old, shard_of(&k)).insert(k, apex_node);
    }
    // An empty non-terminal whose last descendant went is no name any more
    // (NXDOMAIN, as in a rebuilt view, not NODATA).
    let origin_len = key_of(&origin).map_or(0, |k| k.len());
    let mut orphans: rustc_hash::FxHashSet<Key> = Default::default();
    for k in &removed {
        let mut a: &[u8] = k;
        while let Some(parent) = wire_parent(a).filter(|p| p.len() > origin_len) {
            let i = shard_of(parent);
            let node = match touched.get(&i) {
                Some(m) => m.get(parent),
                None => old.shards[i].get(parent),
            };
            if node.is_some_and(Node::is_empty) && !fresh_keys.contains(parent) {
                orphans.insert(parent.into());
            }
            a = parent;
        }
    }
    if !orphans.is_empty() {
        // One pass over every name: which of them still has a descendant.
        let mut kept: rustc_hash::FxHashSet<Key> = Default::default();
        for i in 0..SHARDS {
            let keys: Vec<&Key> = match touched.get(&i) {
                Some(m) => m.keys().collect(),
                None => old.shards[i].keys().collect(),
            };
            for k in keys {
                let mut a: &[u8] = k;
                while let Some(parent) = wire_parent(a).filter(|p| p.len() > origin_len) {
                    if orphans.contains(parent) {
                        kept.insert(parent.into());
                    }
                    a = parent;
                }
            }
        }
        for k in orphans.difference(&kept) {
            shard(&mut touched, old, shard_of(k)).remove(k);
        }
    }
    // Alias sets whose chain ends at a name this change rebuilt or removed (or
    // at the apex, whose SOA moved).
    let origin_key = key_of(&origin).unwrap_or_default();
    let owners: rustc_hash::FxHashSet<&Key> = if old.aliases.is_empty() {
        Default::default()
    } else {
        fresh_keys
            .iter()
            .chain(&removed)
            .chain(&orphans)
            .chain(std::iter::once(&origin_key))
            .filter_map(|k| old.aliases.get(k))
            .flatten()
            .collect()
    };
    if !owners.is_empty() {
        let rebuilt: Vec<(Key, Node)> = {
            let at = |k: &[u8]| {
                let i = shard_of(k);
                match touched.get(&i) {
                    Some(m) => m.get(k),
                    None => old.shards[i].get(k),
                }
            };
            owners
                .iter()
                .filter_map(|&o| aliased(o, &origin_key, at).map(|(n, _)| (o.clone(), n)))
                .collect()
        };
        for (k, node) in rebuilt {
            shard(&mut touched, old, shard_of(&k)).insert(k, node);
        }
    }
    let mut shards = old.shards.clone();
    for (i, map) in touched {
        shards[i] = Arc::new(map);
    }
    let admins = if scope.all || !scope.admins.is_empty() {
        Arc::new(admin_keys(after))
    } else {
        old.admin_keys.clone()
    };
    Ok(finish(
        origin,
        after.serial,
        negative_soa,
        shards,
        admins,
        old.aliases.clone(),
    ))
}

/// Whether `name` is a host name as BIND's `check-names` reads RFC 952/1123:
/// letters, digits and inner hyphens, a leading `*` label allowed.
fn is_hostname(name: &Name) -> bool {
    name.iter().enumerate().all(|(i, label)| {
        (i == 0 && label == b"*")
            || label.iter().enumerate().all(|(j, &c)| {
                c.is_ascii_alphanumeric() || (c == b'-' && j != 0 && j + 1 != label.len())
            })
    })
}

/// Every record the directory serves for a zone, derived ones included, as a zone
/// file: what a secondary (BIND, Knot, NSD) loads, with their default checks,
/// to answer as the directory does at this serial. One difference: address
/// records at names that are not host names (`_SVC._tcp.Z`) are left out, as
/// BIND refuses a primary zone that has them (`check-names`); `SVC.service.Z`
/// carries the same addresses.
pub fn export_flat(zv: &ZoneView) -> String {
    let records = zv.records();
    let address = |r: &&Record| matches!(r.record_type(), RecordType::A | RecordType::AAAA);
    let left_out = records
        .iter()
        .filter(|r| address(r) && !is_hostname(&r.name))
        .count();
    let mut lines: Vec<String> = records
        .iter()
        .filter(|r| r.record_type() != RecordType::SOA)
        .filter(|r| !address(r) || is_hostname(&r.name))
        .map(zonefile::static_line)
        .collect();
    lines.sort();
    lines.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "; zone {} flattened by switchboard-directory, serial {}",
        zv.origin, zv.serial
    );
    if left_out > 0 {
        let _ = writeln!(
            out,
            "; {left_out} A/AAAA records at names that are not host names (_SVC._tcp) left out: \
             secondaries refuse them (BIND check-names); SVC.service has the same addresses"
        );
    }
    if let Some(soa) = records.iter().find(|r| r.record_type() == RecordType::SOA) {
        let _ = writeln!(out, "{}", zonefile::static_line(soa));
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    out
}

/// A compiled view saved beside the store, so a restart need not rebuild it
/// (as NSD's `nsd.db` once did). It is trusted only when it was written by
/// this very binary (`stamp`: SHA-256 of the executable), for this zone at this
/// serial, with the same TTLs; the store drops it in the batch of any change
/// after it was written, so it never outlives the state it was built from.
pub mod cache {
    use super::*;

    const MAGIC: &[u8; 8] = b"SBVIEW1\0";

    /// SHA-256 of the running executable, or `None` if it cannot be read.
    pub fn stamp() -> Option<[u8; 32]> {
        use sha2::Digest;
        let exe = std::env::current_exe().ok()?;
        let mut file = std::fs::File::open(exe).ok()?;
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut file, &mut hasher).ok()?;
        Some(hasher.finalize().into())
    }

    /// The view as bytes.
    pub fn encode(zv: &ZoneView, cfg: ViewConfig, stamp: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 << 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(stamp);
        for n in [zv.serial, cfg.node_ttl, cfg.service_ttl] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&(zv.name_count() as u32).to_be_bytes());
        for (k, node) in zv.nodes() {
            out.push(k.len() as u8);
            out.extend_from_slice(k);
            out.extend_from_slice(&(node.sets.len() as u32).to_be_bytes());
            out.extend_from_slice(&node.sets);
            match node.key.as_deref() {
                None => out.push(0),
                Some(e) => {
                    let (tag, name) = match &e.owner {
                        KeyOwner::Admin(n) => (1, n),
                        KeyOwner::Host(n) => (2, n),
                    };
                    out.push(tag);
                    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(&e.key.0);
                }
            }
        }
        out
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn u8(&mut self) -> Option<u8> {
            Some(self.take(1)?[0])
        }
        fn u16(&mut self) -> Option<u16> {
            Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
    }

    /// The view of `zone` from `bytes`, or `None` if they are not a view of this
    /// zone at its serial written by this binary with these TTLs (or are damaged).
    pub fn decode(
        zone: &Zone,
        cfg: ViewConfig,
        stamp: &[u8; 32],
        bytes: &[u8],
    ) -> Option<ZoneView> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC || r.take(32)? != stamp {
            return None;
        }
        if [r.u32()?, r.u32()?, r.u32()?] != [zone.serial, cfg.node_ttl, cfg.service_ttl] {
            return None;
        }
        let (origin, _, negative_soa) = apex(zone).ok()?;
        let count = r.u32()? as usize;
        let mut shards: Vec<FxHashMap<Key, Node>> = (0..SHARDS)
            .map(|_| FxHashMap::with_capacity_and_hasher(count / SHARDS + 1, FxBuildHasher))
            .collect();
        for _ in 0..count {
            let klen = r.u8()? as usize;
            let k: Key = r.take(klen)?.into();
            let slen = r.u32()? as usize;
            let sets: Box<[u8]> = r.take(slen)?.into();
            let key = match r.u8()? {
                0 => None,
                tag @ (1 | 2) => {
                    let len = r.u16()? as usize;
                    let name = std::str::from_utf8(r.take(len)?).ok()?.to_string();
                    let raw: [u8; 32] = r.take(32)?.try_into().ok()?;
                    let owner = if tag == 1 {
                        KeyOwner::Admin(name)
                    } else {
                        KeyOwner::Host(name)
                    };
                    Some(Box::new(KeyEntry {
                        owner,
                        key: crate::model::PublicKey(raw),
                    }))
                }
                _ => return None,
            };
            shards[shard_of(&k)].insert(k, Node { sets, key });
        }
        if !r.0.is_empty() {
            return None;
        }
        let cnames = cname_owners(&zone.meta.static_records());
        let aliases = chase(&mut shards, &origin, cnames);
        Some(finish(
            origin,
            zone.serial,
            negative_soa,
            shards.into_iter().map(Arc::new).collect(),
            Arc::new(admin_keys(zone)),
            Arc::new(aliases),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view;

    fn dump(zv: &view::ZoneView) -> Vec<String> {
        zv.canonical()
    }

    #[test]
    fn a_saved_view_loads_as_built_and_only_for_its_state() {
        let text = include_str!("../../zones/cluster.example.zone");
        let mut zone =
            crate::zonefile::parse(text, "demo", Some("cluster.example.")).expect("demo zone");
        let cfg = ViewConfig::default();
        let built = view::build(&zone, cfg).expect("build");
        let stamp = [7u8; 32];
        let bytes = view::cache::encode(&built, cfg, &stamp);
        let loaded = view::cache::decode(&zone, cfg, &stamp, &bytes).expect("decodes");
        assert_eq!(dump(&loaded), dump(&built));
        assert!(loaded.key(&built_key_fingerprint(&zone)).is_some());
        // Another binary, other TTLs, another serial, damaged bytes: rebuild.
        assert!(view::cache::decode(&zone, cfg, &[8u8; 32], &bytes).is_none());
        let other = ViewConfig {
            node_ttl: cfg.node_ttl + 1,
            ..cfg
        };
        assert!(view::cache::decode(&zone, other, &stamp, &bytes).is_none());
        for cut in [0, 10, 60, bytes.len() / 2, bytes.len() - 1] {
            assert!(view::cache::decode(&zone, cfg, &stamp, &bytes[..cut]).is_none());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(view::cache::decode(&zone, cfg, &stamp, &longer).is_none());
        zone.serial += 1;
        assert!(view::cache::decode(&zone, cfg, &stamp, &bytes).is_none());
    }

    /// The fingerprint of some host key in the zone.
    fn built_key_fingerprint(zone: &Zone) -> String {
        zone.hosts
            .values()
            .find_map(|h| h.key)
            .expect("the demo zone has host keys")
            .fingerprint()
    }
}
