//! Zone files out: the model written as a master file that imports back to
//! the same state and that `named-checkzone` accepts, and static records in
//! master-file form.

use std::fmt::Write as _;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;

use crate::model::Zone;
use crate::schema::{self, txt};

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

/// Whether a static record can be exported: a type both hickory and BIND
/// read back as written, and a record that reads back identical.
pub(super) fn exportable(r: &Record) -> bool {
    STATIC_TYPES.contains(&r.record_type()) && round_trips(r)
}

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
            txt_line(&crate::txt::repo_txt(r, None))
        );
    }
    if !zone.dbs.is_empty() {
        let _ = writeln!(out, "\n; databases");
    }
    for d in zone.dbs.values() {
        let _ = writeln!(
            out,
            "{}.{}\t{service_ttl}\tIN\tTXT\t{}",
            d.name,
            schema::DB,
            txt_line(&crate::txt::db_txt(d, None))
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
