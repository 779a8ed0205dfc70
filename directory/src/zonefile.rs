//! Zone files (RFC 1035 §5 master-file syntax): load into the model, export from it.
//!
//! Records are parsed by hickory-proto's zone parser. Canonical records (SPEC's
//! first table) become hosts, bindings, repositories and admin keys; records
//! outside Switchboard's subtrees are kept verbatim as static records; derived
//! names are refused, since the directory generates them. Errors name the file
//! and line: hickory's parser reports neither, so on error a light entry scan
//! (`entries`) finds the line the error belongs to.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine;
use hickory_proto::rr::rdata::{A, AAAA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_proto::serialize::txt::Parser;

use crate::model::{self, AdminKey, Binding, Health, Host, Loss, Repo, Soa, Zone, ZoneMeta};
use crate::schema::{self, txt};

mod plain;

/// A zone file that cannot be loaded: where, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{}: {message}", line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
pub struct ZoneFileError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Parses a zone file's text. `file` names it in errors; `origin` is the origin to
/// assume before any `$ORIGIN` (derived from the file name by the caller).
pub fn parse(text: &str, file: &str, origin: Option<&str>) -> Result<Zone, ZoneFileError> {
    parse_with(text, file, origin, true)
}

/// [`parse`] with hickory's parser reading the whole file, for the fuzz target that
/// checks the plain reader against it.
#[doc(hidden)]
pub fn parse_with_hickory(
    text: &str,
    file: &str,
    origin: Option<&str>,
) -> Result<Zone, ZoneFileError> {
    parse_with(text, file, origin, false)
}

fn parse_with(
    text: &str,
    file: &str,
    origin: Option<&str>,
    plain: bool,
) -> Result<Zone, ZoneFileError> {
    let fail = |line: Option<usize>, message: String| ZoneFileError {
        file: file.to_string(),
        line,
        message,
    };
    let origin_name = match origin {
        Some(o) => Some(
            Name::from_ascii(o)
                .map_err(|e| fail(None, format!("origin {o:?} is not a name: {e}")))?,
        ),
        None => None,
    };
    if let Some((line, message)) = forbidden(text) {
        return Err(fail(Some(line), message));
    }
    // The entry scan (line numbers, owners) is only needed to say where an error
    // is, so a good file skips it; `forbidden` has already refused `$INCLUDE`.
    let scan_error = |scanned: &[Entry]| {
        scanned
            .iter()
            .find_map(|e| e.error.as_ref().map(|m| fail(Some(e.line), m.clone())))
    };
    let built = match plain.then(|| plain::records(text, origin)).flatten() {
        Some((soa, records)) => build(soa, records),
        None => {
            let (_, rrsets) = Parser::new(text, None, origin_name.clone())
                .parse()
                .map_err(|e| {
                    let scanned = entries(text, origin_name.as_ref());
                    scan_error(&scanned).unwrap_or_else(|| {
                        let line = locate_syntax_error(&scanned, origin_name.as_ref());
                        fail(line, format!("{e}"))
                    })
                })?;
            let records: Vec<Record> = rrsets
                .into_values()
                .flat_map(RecordSet::into_iter)
                .filter(|r| r.record_type() != RecordType::RRSIG)
                .collect();
            let soa = records
                .iter()
                .find(|r| r.record_type() == RecordType::SOA)
                .cloned()
                .ok_or_else(|| fail(None, "the zone has no SOA record".to_string()))?;
            let apex = soa.name.to_lowercase();
            build(soa, records.into_iter().map(|r| Rec::parsed(r, &apex)))
        }
    };
    built.map_err(|(owner, rtype, message)| {
        let scanned = entries(text, origin_name.as_ref());
        if let Some(e) = scan_error(&scanned) {
            return e;
        }
        let line = scanned
            .iter()
            .find(|e| {
                e.owner
                    .as_ref()
                    .is_some_and(|o| o.eq_case(&owner) || o == &owner)
                    && rtype.is_none_or(|t| e.rtype == Some(t))
            })
            .map(|e| e.line);
        fail(line, message)
    })
}

/// Error from `build`: owner, type (if the error is about one record type), message.
type BuildError = (Name, Option<RecordType>, String);

/// An instance's SRV data: target (lower case), priority, weight, port.
type Srv = (Name, u16, u16, u16);

/// A record's owner as written: a parsed name, or (from [`plain::records`]) the text
/// and the origin it is relative to, made a `Name` only for an error or a static record.
#[derive(Debug, Clone)]
enum Owner<'a> {
    Name(Box<Name>),
    Text { written: &'a str, origin: &'a str },
}

impl Owner<'_> {
    fn of(name: Name) -> Self {
        Owner::Name(Box::new(name))
    }

    /// The name as hickory reads it (`None` only if the plain reader took an owner
    /// hickory would refuse, which it must not).
    fn written(&self) -> Option<Name> {
        match self {
            Owner::Name(n) => Some((**n).clone()),
            Owner::Text { written, origin } => plain::name(written, origin),
        }
    }

    /// The name in lower case, as errors show it.
    fn name(&self) -> Name {
        self.written().map_or_else(Name::root, |n| n.to_lowercase())
    }
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.name().fmt(f)
    }
}

/// One record for [`build`]: its owner, its labels below the apex (lower case, leaf
/// first; `None` outside the zone), TTL, class and data, kept small (~100 bytes)
/// while a whole zone of them waits to be built.
#[derive(Debug)]
struct Rec<'a> {
    owner: Owner<'a>,
    rel: Option<Vec<Cow<'a, str>>>,
    ttl: u32,
    class: DNSClass,
    data: Data<'a>,
}

/// A record's data: hickory's, or the plain reader's until [`build`] takes it.
#[derive(Debug)]
enum Data<'a> {
    Parsed(Box<RData>),
    A(std::net::Ipv4Addr),
    Aaaa(std::net::Ipv6Addr),
    Txt(Vec<&'a str>),
    Srv(u16, u16, u16, Box<Name>),
}

impl Data<'_> {
    fn into_rdata(self) -> RData {
        match self {
            Data::Parsed(d) => *d,
            Data::A(a) => RData::A(A(a)),
            Data::Aaaa(a) => RData::AAAA(AAAA(a)),
            Data::Txt(t) => RData::TXT(TXT::new(t.into_iter().map(str::to_string).collect())),
            Data::Srv(priority, weight, port, target) => {
                RData::SRV(SRV::new(priority, weight, port, *target))
            }
        }
    }
}

impl<'a> Rec<'a> {
    /// A record from hickory's parser, placed relative to `apex`.
    fn parsed(r: Record, apex: &Name) -> Rec<'static> {
        let lower = r.name.to_lowercase();
        let rel = apex.zone_of(&lower).then(|| {
            lower
                .iter()
                .take(lower.num_labels() as usize - apex.num_labels() as usize)
                .map(|l| Cow::Owned(String::from_utf8_lossy(l).to_ascii_lowercase()))
                .collect()
        });
        Rec {
            owner: Owner::of(r.name),
            rel,
            ttl: r.ttl,
            class: r.dns_class,
            data: Data::Parsed(Box::new(r.data)),
        }
    }

    fn full(self) -> Full<'a> {
        Full {
            owner: self.owner,
            rel: self.rel,
            ttl: self.ttl,
            class: self.class,
            data: self.data.into_rdata(),
        }
    }
}

/// A [`Rec`] with its data made hickory's, as [`build`] works on it.
struct Full<'a> {
    owner: Owner<'a>,
    rel: Option<Vec<Cow<'a, str>>>,
    ttl: u32,
    class: DNSClass,
    data: RData,
}

impl Full<'_> {
    fn record_type(&self) -> RecordType {
        self.data.record_type()
    }

    /// Whether the data is empty (a `TXT` with no strings, say), so it could not be
    /// written back as it was read.
    fn is_empty(&self) -> bool {
        match &self.data {
            RData::A(_) | RData::AAAA(_) | RData::SRV(_) => false,
            RData::TXT(t) => t.txt_data.is_empty(),
            d => d.to_bytes().map_or(true, |b| b.is_empty()),
        }
    }

    fn into_record(self) -> Result<Record, BuildError> {
        let Some(name) = self.owner.written() else {
            return err(&self.owner, None, format!("{} is not a name", self.owner));
        };
        let mut r = Record::from_rdata(name, self.ttl, self.data);
        r.dns_class = self.class;
        Ok(r)
    }
}

fn err<T>(
    owner: &Owner<'_>,
    rtype: Option<RecordType>,
    msg: impl Into<String>,
) -> Result<T, BuildError> {
    Err((owner.name(), rtype, msg.into()))
}

/// TXT strings as `key=value` pairs (RFC 6763 §6); a string without '=' is a key with empty value.
fn txt_pairs(owner: &Owner<'_>, data: &RData) -> Result<Vec<(String, String)>, BuildError> {
    let RData::TXT(t) = data else {
        return err(owner, None, "expected a TXT record");
    };
    t.txt_data
        .iter()
        .map(|s| {
            let s = std::str::from_utf8(s).map_err(|_| {
                (
                    owner.name(),
                    Some(RecordType::TXT),
                    "TXT string is not UTF-8".to_string(),
                )
            })?;
            let (k, v) = s.split_once('=').unwrap_or((s, ""));
            Ok((k.to_ascii_lowercase(), v.to_string()))
        })
        .collect()
}

fn flag(owner: &Owner<'_>, key: &str, v: &str) -> Result<bool, BuildError> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => err(
            owner,
            Some(RecordType::TXT),
            format!("{key}={v:?} must be 1 or 0"),
        ),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Which part of the schema a name falls in, relative to the zone apex.
enum Place {
    Apex,
    Node(String),
    Instance { host: String, service: String },
    Repo(String),
    Admin(String),
    Derived,
    Static,
}

fn place(rel: &[Cow<'_, str>]) -> Place {
    let s: Vec<&str> = rel.iter().map(|l| l.as_ref()).collect();
    match s.as_slice() {
        [] => Place::Apex,
        [h, schema::NODE] => Place::Node(h.to_string()),
        [h, svc, schema::TCP] if svc.starts_with('_') && !h.starts_with('_') => Place::Instance {
            host: h.to_string(),
            service: svc[1..].to_string(),
        },
        [r, schema::REPO] => Place::Repo(r.to_string()),
        [a, schema::ADMIN] => Place::Admin(a.to_string()),
        [a, b, c] if [*a, *b, *c] == schema::DNS_SD_SERVICES => Place::Derived,
        [.., last]
            if [
                schema::SERVICE,
                schema::KEY,
                schema::TCP,
                schema::NODE,
                schema::REPO,
                schema::ADMIN,
            ]
            .contains(last) =>
        {
            Place::Derived
        }
        _ => Place::Static,
    }
}

/// Turns parsed records into the model.
fn build<'a>(soa: Record, records: impl IntoIterator<Item = Rec<'a>>) -> Result<Zone, BuildError> {
    let apex = soa.name.to_lowercase();
    let apex_owner = Owner::of(apex.clone());
    let RData::SOA(soa_data) = &soa.data else {
        return err(&apex_owner, Some(RecordType::SOA), "bad SOA");
    };
    let meta_soa = Soa {
        mname: soa_data.mname.to_ascii(),
        rname: soa_data.rname.to_ascii(),
        refresh: soa_data.refresh,
        retry: soa_data.retry,
        expire: soa_data.expire,
        minimum: soa_data.minimum,
        ttl: soa.ttl,
    };
    let serial = soa_data.serial;
    let mut ns = Vec::new();
    let mut ns_ttl = soa.ttl;
    let mut statics = Vec::new();
    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    // Records of one RRset are collected and applied after the loop, an equal one
    // again dropped as hickory's `RecordSet::insert` drops it (RFC 2181 §5), so the
    // records' order in the file (beyond each RRset's own) does not matter.
    let mut host_txt: Vec<(String, Owner, RData)> = Vec::new();
    let mut srvs: BTreeMap<(String, String), Vec<Srv>> = BTreeMap::new();
    let mut binding_txt: BTreeMap<(String, String), Vec<(Owner, RData)>> = BTreeMap::new();
    let mut admin_txt: BTreeMap<String, Vec<RData>> = BTreeMap::new();
    let mut repos = BTreeMap::new();
    // Each repository's TXT data: the same record twice is one record (RFC 2181 §5).
    let mut repo_txt: BTreeMap<String, RData> = BTreeMap::new();
    let mut admins = BTreeMap::new();

    for r in records {
        let r = r.full();
        let owner = r.owner.clone();
        let rtype = r.record_type();
        if r.is_empty() {
            // `TXT` with no strings, say: it cannot be written back as it was read.
            return err(
                &owner,
                Some(rtype),
                format!("{rtype} record at {owner} has no data"),
            );
        }
        if r.class != DNSClass::IN {
            return err(
                &owner,
                Some(rtype),
                format!(
                    "class {} record at {owner}: the directory serves class IN only",
                    r.class
                ),
            );
        }
        let Some(rel) = &r.rel else {
            return err(&owner, None, format!("{owner} is outside the zone {apex}"));
        };
        match place(rel) {
            Place::Apex => match rtype {
                RecordType::SOA if owner.name() == apex => {
                    if r.data != soa.data {
                        return err(&owner, Some(rtype), "a zone has exactly one SOA record");
                    }
                }
                RecordType::NS => {
                    if let RData::NS(n) = &r.data {
                        ns.push(n.0.to_ascii());
                        ns_ttl = r.ttl;
                    }
                }
                _ => statics.push(r.into_record()?),
            },
            Place::Node(h) => {
                model::validate_label("host name", &h).or_else(|e| err(&owner, None, e.0))?;
                let host = hosts.entry(h.clone()).or_insert_with(|| Host {
                    name: h.clone(),
                    addrs: vec![],
                    key: None,
                    roles: vec![],
                    available: true,
                    health: Health::Unknown,
                    props: Default::default(),
                });
                match &r.data {
                    // The same record twice is one record (RFC 2181 §5).
                    RData::A(a) if host.addrs.contains(&IpAddr::V4(a.0)) => {}
                    RData::AAAA(a) if host.addrs.contains(&IpAddr::V6(a.0)) => {}
                    RData::A(a) => host.addrs.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => host.addrs.push(IpAddr::V6(a.0)),
                    RData::TXT(_) => host_txt.push((h, owner, r.data)),
                    _ => {
                        return err(&owner, Some(rtype), format!(
                            "{owner} is a host name: only A, AAAA and TXT records belong there"
                        ))
                    }
                }
            }
            Place::Instance { host, service } => match &r.data {
                RData::SRV(s) => {
                    let srv = (s.target.to_lowercase(), s.priority, s.weight, s.port);
                    let set = srvs.entry((host, service)).or_default();
                    if !set.contains(&srv) {
                        set.push(srv);
                    }
                }
                RData::TXT(_) => {
                    txt_pairs(&owner, &r.data)?;
                    let set = binding_txt.entry((host, service)).or_default();
                    if !set.iter().any(|(_, d)| d == &r.data) {
                        set.push((owner, r.data));
                    }
                }
                _ => {
                    return err(&owner, Some(rtype), format!(
                        "{owner} is a service instance: only SRV and TXT records belong there"
                    ))
                }
            },
            Place::Repo(name) => {
                if repo_txt.get(&name) == Some(&r.data) {
                    continue;
                }
                if repos.contains_key(&name) {
                    return err(&owner, Some(rtype), format!("repository {name} has more than one TXT record: put every attribute in one"));
                }
                if rtype != RecordType::TXT {
                    return err(&owner, Some(rtype), format!("{owner} is a repository: only TXT belongs there"));
                }
                let mut repo = Repo {
                    name: name.clone(),
                    master: String::new(),
                    replicas: vec![],
                    versions: BTreeMap::new(),
                    max_lag: 0,
                    readonly: false,
                    lost: vec![],
                    auto_failover: false,
                };
                for (k, v) in txt_pairs(&owner, &r.data)? {
                    let bad = |what: &str| (owner.name(), Some(rtype), format!("{k}={v:?}: {what}"));
                    match k.as_str() {
                        txt::MASTER => repo.master = v,
                        txt::REPLICAS => repo.replicas = list(&v),
                        txt::MAX_LAG => repo.max_lag = v.parse().map_err(|_| bad("not a number"))?,
                        txt::READONLY => repo.readonly = flag(&owner, &k, &v)?,
                        txt::AUTO_FAILOVER => repo.auto_failover = flag(&owner, &k, &v)?,
                        _ if k.starts_with(txt::VERSION_OF) => {
                            let host = &k[txt::VERSION_OF.len()..];
                            repo.versions.insert(host.to_string(), v.parse().map_err(|_| bad("not a number"))?);
                        }
                        txt::LOST => repo.lost.push(Loss::from_txt(&v).map_err(|e| bad(&e.0))?),
                        // `version=` is derived (the master's); accept it from an export.
                        txt::VERSION => {}
                        _ => return Err(bad("unknown repository attribute")),
                    }
                }
                if repo.master.is_empty() {
                    return err(&owner, Some(rtype), format!("repository {name} has no master=HOST"));
                }
                model::validate_repo(&repo).or_else(|e| err(&owner, Some(rtype), e.0))?;
                repo.canonicalize();
                repo_txt.insert(name.clone(), r.data.clone());
                repos.insert(name, repo);
            }
            Place::Admin(name) => {
                let seen = admin_txt.entry(name.clone()).or_default();
                if seen.contains(&r.data) {
                    continue;
                }
                seen.push(r.data.clone());
                let mut key = None;
                for (k, v) in txt_pairs(&owner, &r.data)? {
                    if k == txt::KEY {
                        key = Some(v.parse().or_else(|e: model::Invalid| err(&owner, Some(rtype), e.0))?);
                    }
                }
                let Some(key) = key else {
                    return err(&owner, Some(rtype), "an admin record needs key=ed25519:BASE64");
                };
                let admin = AdminKey { name: name.clone(), key };
                model::validate_admin(&admin).or_else(|e| err(&owner, None, e.0))?;
                admins.insert(name, admin);
            }
            Place::Derived => {
                return err(&owner, Some(rtype), format!(
                    "{owner} is a name the directory derives from the model; remove it from the zone file"
                ))
            }
            Place::Static => statics.push(r.into_record()?),
        }
    }
    // The zone does not depend on how the file orders its RRsets: addresses IPv4
    // first, static records by name and type. Within an RRset the records keep the
    // order written, and a record equal to one before it (RFC 2136 §1.1.1: name,
    // class, type and data; the TTL aside) is dropped, as hickory's
    // `RecordSet::insert` drops it.
    for h in hosts.values_mut() {
        h.addrs.sort_by_key(IpAddr::is_ipv6);
    }
    statics.sort_by(|a, b| (&a.name, a.record_type()).cmp(&(&b.name, b.record_type())));
    let mut kept: Vec<Record> = Vec::with_capacity(statics.len());
    for r in statics {
        let mut same = kept
            .iter()
            .rev()
            .take_while(|k| k.name == r.name && k.record_type() == r.record_type());
        if !same.any(|k| *k == r) {
            kept.push(r);
        }
    }
    let statics = kept;

    // Each host's TXT records, in the order written, an equal one again dropped.
    host_txt.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen: Vec<&RData> = Vec::new();
    for (i, (h, owner, data)) in host_txt.iter().enumerate() {
        if i == 0 || host_txt[i - 1].0 != *h {
            seen.clear();
        }
        if seen.contains(&data) {
            continue;
        }
        seen.push(data);
        let Some(host) = hosts.get_mut(h) else {
            continue;
        };
        let rtype = Some(RecordType::TXT);
        for (k, v) in txt_pairs(owner, data)? {
            match k.as_str() {
                txt::ROLES => host.roles = list(&v),
                txt::AVAILABLE => host.available = flag(owner, &k, &v)?,
                txt::KEY => {
                    host.key = Some(
                        v.parse()
                            .or_else(|e: model::Invalid| err(owner, rtype, e.0))?,
                    )
                }
                txt::HEALTH => {
                    host.health = v
                        .parse()
                        .or_else(|e: model::Invalid| err(owner, rtype, e.0))?
                }
                _ => {
                    host.props.insert(k, v);
                }
            }
        }
    }
    for h in hosts.values() {
        model::validate_host(h)
            .or_else(|e| err(&Owner::of(node_name(&apex, &h.name)), None, e.0))?;
    }
    let mut bindings = BTreeMap::new();
    for ((host, service), set) in srvs {
        // The last of the set's records, as when each is applied in turn.
        let Some((target, prio, weight, port)) = set.into_iter().last() else {
            continue;
        };
        let owner = Owner::of(instance_name(&apex, &host, &service));
        if !hosts.contains_key(&host) {
            return err(
                &owner,
                Some(RecordType::SRV),
                format!("binding of unknown host {host}: add {host}.node records"),
            );
        }
        if target != node_name(&apex, &host) {
            return err(
                &owner,
                Some(RecordType::SRV),
                format!("the SRV target must be {host}.node.{apex}"),
            );
        }
        let mut b = Binding {
            host: host.clone(),
            service: service.clone(),
            port,
            role: None,
            readonly: false,
            weight,
            priority: None,
            available: true,
            health: Health::Unknown,
            props: Default::default(),
            check: None,
        };
        let txt = binding_txt
            .remove(&(host.clone(), service.clone()))
            .and_then(|set| set.into_iter().last());
        if let Some((towner, data)) = txt {
            let pairs = txt_pairs(&towner, &data)?;
            if pairs.iter().any(|(k, _)| k.starts_with("check_"))
                && !pairs.iter().any(|(k, _)| k == txt::CHECK)
            {
                return err(
                    &towner,
                    Some(RecordType::TXT),
                    "check_* attributes need check=tcp or check=http:STATUS:PATH",
                );
            }
            for (k, v) in pairs {
                let bad = |e: model::Invalid| (towner.name(), Some(RecordType::TXT), e.0);
                match k.as_str() {
                    txt::ROLE if v.is_empty() || v == "none" => b.role = None,
                    txt::ROLE => b.role = Some(v.parse().map_err(bad)?),
                    txt::READONLY => b.readonly = flag(&towner, &k, &v)?,
                    txt::AVAILABLE => b.available = flag(&towner, &k, &v)?,
                    txt::HEALTH => b.health = v.parse().map_err(bad)?,
                    txt::WEIGHT | txt::PRIORITY => {}
                    _ if model::Check::set(&mut b.check, &k, &v).map_err(bad)? => {}
                    _ => {
                        b.props.insert(k, v);
                    }
                }
            }
        }
        if prio != b.srv_priority() {
            b.priority = Some(prio);
        }
        model::validate_binding(&b).or_else(|e| err(&owner, None, e.0))?;
        bindings.insert((host, service), b);
    }
    let leftover = binding_txt
        .into_iter()
        .find_map(|(key, set)| Some((key, set.into_iter().next()?)));
    if let Some(((host, service), (owner, _))) = leftover {
        return err(
            &owner,
            Some(RecordType::TXT),
            format!("TXT for {host}._{service}._tcp without its SRV record"),
        );
    }
    for repo in repos.values() {
        for h in repo.hosts() {
            if !hosts.contains_key(h) {
                let owner = Owner::of(
                    Name::from_ascii(format!("{}.{}.{apex}", repo.name, schema::REPO))
                        .unwrap_or(apex.clone()),
                );
                return err(
                    &owner,
                    Some(RecordType::TXT),
                    format!(
                        "repository {} names host {h}, which has no {h}.node records",
                        repo.name
                    ),
                );
            }
        }
    }
    for r in &statics {
        if !STATIC_TYPES.contains(&r.record_type()) || !round_trips(r) {
            return err(&Owner::of(r.name.clone()), Some(r.record_type()), format!(
                "static {} records cannot be exported faithfully yet; leave them out of the zone", r.record_type()
            ));
        }
    }
    let mut keys: BTreeMap<[u8; 32], String> = BTreeMap::new();
    let owners = hosts
        .values()
        .filter_map(|h| h.key.map(|k| (k, node_name(&apex, &h.name))))
        .chain(admins.values().map(|a: &AdminKey| {
            let n = Name::from_ascii(format!("{}.{}.{apex}", a.name, schema::ADMIN))
                .unwrap_or(apex.clone());
            (a.key, n)
        }));
    for (key, owner) in owners {
        if let Some(first) = keys.insert(key.0, owner.to_string()) {
            return err(&Owner::of(owner), Some(RecordType::TXT), format!("the same key is already given to {first}: every host and admin needs its own key"));
        }
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let statics = statics
        .iter()
        .map(|r| {
            r.to_bytes().map(|b| engine.encode(b)).or_else(|e| {
                err(
                    &Owner::of(r.name.clone()),
                    Some(r.record_type()),
                    format!("cannot encode: {e}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut zone = Zone::new(
        ZoneMeta {
            origin: apex.to_ascii(),
            soa: meta_soa,
            ns,
            ns_ttl,
            statics,
        },
        serial.max(1),
    );
    zone.hosts = hosts;
    zone.bindings = bindings;
    zone.repos = repos;
    zone.admins = admins;
    zone.shrink();
    Ok(zone)
}

fn node_name(apex: &Name, host: &str) -> Name {
    Name::from_ascii(format!("{host}.{}.{apex}", schema::NODE)).unwrap_or_else(|_| apex.clone())
}

fn instance_name(apex: &Name, host: &str, service: &str) -> Name {
    Name::from_ascii(format!("{host}._{service}.{}.{apex}", schema::TCP))
        .unwrap_or_else(|_| apex.clone())
}

/// Refuses what must never reach hickory's parser, wherever it appears on a line
/// (even where a quote might hide it): `$INCLUDE`, which would read files outside
/// the zones directory, and `\DDD` escapes, which hickory-proto 0.26 decodes
/// wrongly (it would serve other bytes than BIND does).
fn forbidden(text: &str) -> Option<(usize, String)> {
    for (i, line) in text.lines().enumerate() {
        if line.to_ascii_uppercase().contains("$INCLUDE") {
            return Some((
                i + 1,
                "$INCLUDE is not supported: put the records in this file".into(),
            ));
        }
        let b = line.as_bytes();
        if b.windows(4)
            .any(|w| w[0] == b'\\' && w[1..].iter().all(u8::is_ascii_digit))
        {
            return Some((
                i + 1,
                "\\DDD escapes are not supported: write the character itself".into(),
            ));
        }
    }
    None
}

/// One entry of a zone file, as the line scan sees it.
struct Entry {
    line: usize,
    owner: Option<Name>,
    rtype: Option<RecordType>,
    /// The entry's text with its owner made absolute, for re-parsing alone.
    text: String,
    error: Option<String>,
}

/// Splits a zone file into entries (joining parenthesised lines, skipping comments)
/// and notes each one's first line, owner and type. Also refuses `$INCLUDE`, which
/// would read files outside the zones directory.
fn entries(text: &str, origin: Option<&Name>) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut origin = origin.cloned();
    let mut last_owner: Option<Name> = None;
    let mut cur = String::new();
    let mut start = 1;
    let mut line = 1;
    let (mut depth, mut quoted, mut escaped, mut comment) = (0i32, false, false, false);
    let finish = |cur: &mut String,
                  start: usize,
                  out: &mut Vec<Entry>,
                  origin: &mut Option<Name>,
                  last_owner: &mut Option<Name>| {
        let entry = std::mem::take(cur);
        if entry.trim().is_empty() {
            return;
        }
        let mut words = entry.split_whitespace();
        let first = words.next().unwrap_or("");
        let upper = first.to_ascii_uppercase();
        if upper == "$INCLUDE" {
            out.push(Entry {
                line: start,
                owner: None,
                rtype: None,
                text: entry,
                error: Some("$INCLUDE is not supported: put the records in this file".into()),
            });
            return;
        }
        if upper == "$ORIGIN" {
            if let Some(o) = words.next() {
                match Name::parse(o, origin.as_ref()) {
                    Ok(n) => *origin = Some(n),
                    Err(e) => out.push(Entry {
                        line: start,
                        owner: None,
                        rtype: None,
                        text: entry.clone(),
                        error: Some(format!("bad $ORIGIN: {e}")),
                    }),
                }
            }
            return;
        }
        if upper.starts_with('$') {
            return;
        }
        let (owner, rest): (Option<Name>, Vec<&str>) = if entry.starts_with([' ', '\t']) {
            (last_owner.clone(), entry.split_whitespace().collect())
        } else if first == "@" {
            (origin.clone(), words.collect())
        } else {
            (Name::parse(first, origin.as_ref()).ok(), words.collect())
        };
        let rtype = rest
            .iter()
            .filter(|w| !w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .find(|w| !matches!(w.to_ascii_uppercase().as_str(), "IN" | "CH" | "HS" | "CS"))
            .and_then(|w| w.to_ascii_uppercase().parse::<RecordType>().ok());
        let text = match &owner {
            Some(o) => format!("{} {}", o, rest.join(" ")),
            None => entry.clone(),
        };
        *last_owner = owner.clone();
        out.push(Entry {
            line: start,
            owner,
            rtype,
            text,
            error: None,
        });
    };
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
            if depth <= 0 && !quoted {
                finish(&mut cur, start, &mut out, &mut origin, &mut last_owner);
                start = line;
                depth = 0;
                continue;
            }
            cur.push(' ');
            continue;
        }
        if comment {
            continue;
        }
        if escaped {
            escaped = false;
            cur.push(c);
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                comment = true;
                continue;
            }
            '(' if !quoted => {
                depth += 1;
                cur.push(' ');
                continue;
            }
            ')' if !quoted && depth == 0 => {
                out.push(Entry {
                    line,
                    owner: None,
                    rtype: None,
                    text: String::new(),
                    error: Some("')' without a '(' before it".into()),
                });
                continue;
            }
            ')' if !quoted => {
                depth -= 1;
                cur.push(' ');
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if depth > 0 || quoted {
        let what = if quoted {
            "a '\"' is never closed"
        } else {
            "a '(' is never closed"
        };
        out.push(Entry {
            line: start,
            owner: None,
            rtype: None,
            text: String::new(),
            error: Some(what.to_string()),
        });
        return out;
    }
    finish(&mut cur, start, &mut out, &mut origin, &mut last_owner);
    out
}

/// Re-parses each entry alone to find the first one hickory's parser refuses.
fn locate_syntax_error(scanned: &[Entry], origin: Option<&Name>) -> Option<usize> {
    let head = match origin {
        Some(o) => format!("$ORIGIN {o}\n$TTL 3600\n"),
        None => "$TTL 3600\n".to_string(),
    };
    for e in scanned {
        if e.owner.is_none() {
            return Some(e.line);
        }
        let text = format!("{head}{}\n", e.text);
        if Parser::new(text.as_str(), None, origin.cloned())
            .parse()
            .is_err()
        {
            return Some(e.line);
        }
    }
    None
}

/// A static record in master-file form. TXT and HINFO are written with quoted
/// strings (hickory's `Display` leaves them bare); other types use `Display`.
pub fn static_line(r: &Record) -> String {
    let strings = |v: Vec<String>| txt_line(&v);
    let rdata = match &r.data {
        RData::TXT(t) => strings(
            t.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
        ),
        RData::HINFO(h) => strings(vec![
            String::from_utf8_lossy(&h.cpu).into_owned(),
            String::from_utf8_lossy(&h.os).into_owned(),
        ]),
        other => other.to_string(),
    };
    format!("{}\t{}\tIN\t{}\t{rdata}", r.name, r.ttl, r.record_type())
}

/// Static record types whose exported form both hickory and BIND read back as
/// written. Others (SVCB/HTTPS, for one, whose hickory form BIND rejects) are
/// refused rather than exported wrongly.
const STATIC_TYPES: [RecordType; 12] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::DNAME,
    RecordType::MX,
    RecordType::NS,
    RecordType::PTR,
    RecordType::SRV,
    RecordType::TXT,
    RecordType::HINFO,
    RecordType::SSHFP,
    RecordType::TLSA,
];

/// Whether a static record reads back identical from its exported line.
fn round_trips(r: &Record) -> bool {
    let line = format!("{}\n", static_line(r));
    match Parser::new(line.as_str(), None, Some(Name::root())).parse() {
        Ok((_, sets)) => {
            let back: Vec<&Record> = sets
                .values()
                .flat_map(|s| s.records_without_rrsigs())
                .collect();
            back.len() == 1 && back[0].data == r.data && back[0].name == r.name
        }
        Err(_) => false,
    }
}

/// Quotes one TXT string for a zone file.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn txt_line(strings: &[String]) -> String {
    strings
        .iter()
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes a zone file that imports back to the same state and that
/// `named-checkzone` accepts. Names are written relative to `$ORIGIN`.
pub fn export(zone: &Zone, node_ttl: u32, service_ttl: u32) -> String {
    let o = &zone.meta.origin;
    let s = &zone.meta.soa;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "; zone {o} exported by switchboard-directory, serial {}",
        zone.serial
    );
    let _ = writeln!(out, "$ORIGIN {o}");
    let _ = writeln!(out, "$TTL {}", s.ttl);
    let _ = writeln!(
        out,
        "@\t{}\tIN\tSOA\t{} {} ( {} {} {} {} {} )",
        s.ttl, s.mname, s.rname, zone.serial, s.refresh, s.retry, s.expire, s.minimum
    );
    for ns in &zone.meta.ns {
        let _ = writeln!(out, "@\t{}\tIN\tNS\t{ns}", zone.meta.ns_ttl);
    }
    let _ = writeln!(out, "\n; hosts");
    for h in zone.hosts.values() {
        for a in &h.addrs {
            let t = if a.is_ipv4() { "A" } else { "AAAA" };
            let _ = writeln!(out, "{}.{}\t{node_ttl}\tIN\t{t}\t{a}", h.name, schema::NODE);
        }
        let _ = writeln!(
            out,
            "{}.{}\t{node_ttl}\tIN\tTXT\t{}",
            h.name,
            schema::NODE,
            txt_line(&crate::txt::host_txt(h))
        );
    }
    let _ = writeln!(out, "\n; bindings (DNS-SD instances)");
    for b in zone.bindings.values() {
        let owner = format!("{}._{}.{}", b.host, b.service, schema::TCP);
        let _ = writeln!(
            out,
            "{owner}\t{service_ttl}\tIN\tSRV\t{} {} {} {}.{}",
            b.srv_priority(),
            b.weight,
            b.port,
            b.host,
            schema::NODE
        );
        let _ = writeln!(
            out,
            "{owner}\t{service_ttl}\tIN\tTXT\t{}",
            txt_line(&crate::txt::binding_txt(b))
        );
    }
    let _ = writeln!(out, "\n; repositories");
    for r in zone.repos.values() {
        let _ = writeln!(
            out,
            "{}.{}\t{service_ttl}\tIN\tTXT\t{}",
            r.name,
            schema::REPO,
            txt_line(&crate::txt::repo_txt(r, false))
        );
    }
    let _ = writeln!(out, "\n; admin keys");
    for a in zone.admins.values() {
        let _ = writeln!(
            out,
            "{}.{}\t{node_ttl}\tIN\tTXT\t{}",
            a.name,
            schema::ADMIN,
            quote(&format!("{}={}", txt::KEY, a.key))
        );
    }
    let statics = zone.meta.static_records();
    if !statics.is_empty() {
        let _ = writeln!(out, "\n; static records");
    }
    for r in statics {
        let _ = writeln!(out, "{}", static_line(&r));
    }
    out
}

/// The origin a file name implies: `cluster.example.zone` -> `cluster.example.`.
pub fn origin_from_file_name(path: &std::path::Path) -> Option<String> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".zone")?;
    Some(format!("{}.", stem.trim_end_matches('.')))
}
