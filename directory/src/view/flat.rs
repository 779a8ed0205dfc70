//! A view as one flat zone file: every record the directory serves for a
//! zone, derived ones included, for secondaries (BIND, Knot, NSD) to load.

use std::fmt::Write as _;

use hickory_proto::rr::{Name, Record, RecordType};

use super::ZoneView;
use crate::zonefile;

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
