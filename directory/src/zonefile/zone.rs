//! Records into the model: canonical records (docs/dns-schema.md) become
//! hosts, bindings, repositories and admin keys; records outside
//! Switchboard's subtrees are kept verbatim as static records; derived names
//! are refused, since the directory generates them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use super::export::exportable;
use super::{err, BuildError, Owner, Rec};
use crate::model::{
    self, AdminKey, Binding, Database, DbLoss, Health, Host, Loss, Repo, Soa, Zone, ZoneMeta,
};
use crate::schema::{self, txt};

/// An instance's SRV data: target (lower case), priority, weight, port.
type Srv = (Name, u16, u16, u16);

/// TXT strings as `key=value` pairs (RFC 6763 §6); a string without '=' is a key with empty value.
fn txt_pairs(owner: &Owner<'_>, data: &RData) -> Result<Vec<(String, String)>, BuildError> {
    let RData::TXT(t) = data else {
        return err(owner, None, "expected a TXT record");
    };
    t.txt_data
        .iter()
        .map(|s| {
            let s = std::str::from_utf8(s).map_err(|_| {
                BuildError::new(owner, Some(RecordType::TXT), "TXT string is not UTF-8")
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
    Db(String),
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
        [d, schema::DB] => Place::Db(d.to_string()),
        [a, schema::ADMIN] => Place::Admin(a.to_string()),
        [a, b, c] if [*a, *b, *c] == schema::DNS_SD_SERVICES => Place::Derived,
        [.., last]
            if [
                schema::SERVICE,
                schema::KEY,
                schema::TCP,
                schema::NODE,
                schema::REPO,
                schema::DB,
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
pub(super) fn build<'a>(
    soa: Record,
    records: impl IntoIterator<Item = Rec<'a>>,
) -> Result<Zone, BuildError> {
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
    let mut dbs: BTreeMap<String, Database> = BTreeMap::new();
    let mut db_txt: BTreeMap<String, RData> = BTreeMap::new();
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
                    frozen: None,
                };
                let mut frozen = false;
                for (k, v) in txt_pairs(&owner, &r.data)? {
                    let bad = |what: &str| BuildError::new(&owner, Some(rtype), format!("{k}={v:?}: {what}"));
                    match k.as_str() {
                        txt::MASTER => repo.master = v,
                        txt::REPLICAS => repo.replicas = list(&v),
                        txt::MAX_LAG => repo.max_lag = v.parse().map_err(|_| bad("not a number"))?,
                        txt::READONLY => repo.readonly = flag(&owner, &k, &v)?,
                        txt::AUTO_FAILOVER => repo.auto_failover = flag(&owner, &k, &v)?,
                        txt::FROZEN => frozen = flag(&owner, &k, &v)?,
                        txt::FROZEN_MESSAGE => repo.frozen = Some(v),
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
                if frozen != repo.frozen.is_some() {
                    return err(&owner, Some(rtype), format!("repository {name}: frozen=1 and frozen_message=TEXT go together"));
                }
                model::validate_repo(&repo).or_else(|e| err(&owner, Some(rtype), e.0))?;
                repo.canonicalize();
                repo_txt.insert(name.clone(), r.data.clone());
                repos.insert(name, repo);
            }
            Place::Db(name) => {
                if db_txt.get(&name) == Some(&r.data) {
                    continue;
                }
                if dbs.contains_key(&name) {
                    return err(&owner, Some(rtype), format!("database {name} has more than one TXT record: put every attribute in one"));
                }
                if rtype != RecordType::TXT {
                    return err(&owner, Some(rtype), format!("{owner} is a database: only TXT belongs there"));
                }
                let mut db = Database {
                    name: name.clone(),
                    master: String::new(),
                    replicas: vec![],
                    port: model::DEFAULT_DB_PORT,
                    max_lag_s: model::DEFAULT_DB_MAX_LAG_S,
                    frozen: None,
                    positions: BTreeMap::new(),
                    lost: vec![],
                };
                let mut frozen = false;
                for (k, v) in txt_pairs(&owner, &r.data)? {
                    let bad = |what: &str| BuildError::new(&owner, Some(rtype), format!("{k}={v:?}: {what}"));
                    match k.as_str() {
                        txt::ENGINE if v == "mariadb" => {}
                        txt::ENGINE => return Err(bad("the only engine is mariadb")),
                        txt::MASTER => db.master = v,
                        txt::REPLICAS => db.replicas = list(&v),
                        txt::PORT => db.port = v.parse().map_err(|_| bad("not a port"))?,
                        txt::MAX_LAG_S => db.max_lag_s = v.parse().map_err(|_| bad("not a number"))?,
                        txt::FROZEN => frozen = flag(&owner, &k, &v)?,
                        txt::FROZEN_MESSAGE => db.frozen = Some(v),
                        txt::LOST => db.lost.push(DbLoss::from_txt(&v).map_err(|e| bad(&e.0))?),
                        // `readonly=` is derived (no available master, or frozen); accept it from an answer.
                        txt::READONLY => {}
                        _ => return Err(bad("unknown database attribute")),
                    }
                }
                if db.master.is_empty() {
                    return err(&owner, Some(rtype), format!("database {name} has no master=HOST"));
                }
                if frozen != db.frozen.is_some() {
                    return err(&owner, Some(rtype), format!("database {name}: frozen=1 and frozen_message=TEXT go together"));
                }
                model::validate_database(&db).or_else(|e| err(&owner, Some(rtype), e.0))?;
                db_txt.insert(name.clone(), r.data.clone());
                dbs.insert(name, db);
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
                let bad = |e: model::Invalid| BuildError::new(&towner, Some(RecordType::TXT), e.0);
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
    for db in dbs.values() {
        for h in db.hosts() {
            if !hosts.contains_key(h) {
                let owner = Owner::of(
                    Name::from_ascii(format!("{}.{}.{apex}", db.name, schema::DB))
                        .unwrap_or(apex.clone()),
                );
                return err(
                    &owner,
                    Some(RecordType::TXT),
                    format!(
                        "database {} names host {h}, which has no {h}.node records",
                        db.name
                    ),
                );
            }
        }
    }
    for r in &statics {
        if !exportable(r) {
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
    zone.dbs = dbs;
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
