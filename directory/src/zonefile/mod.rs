//! Zone files (RFC 1035 §5 master-file syntax), text in and out: `parse`
//! reads one into the model, `export` writes the model back.
//!
//! Reading: most lines are read by the plain reader (`plain`), the rest by
//! hickory-proto's zone parser, into records (`Rec`, here); `zone` turns them
//! into the model (canonical records become hosts, bindings, repositories
//! and admin keys; others are kept verbatim as static records; derived names
//! are refused, since the directory generates them). Errors name the file and
//! line: hickory's parser reports neither, so on error `locate` scans the
//! file's entries for the line the error belongs to. Writing is `export`.
//! The view's flat export for secondaries is `view::flat`, not here.

mod export;
mod locate;
mod plain;
mod zone;

use std::borrow::Cow;

use hickory_proto::rr::rdata::{A, AAAA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_proto::serialize::txt::Parser;

use crate::model::Zone;

use locate::{entries, forbidden, locate_syntax_error, Entry};
use zone::build;

pub use export::{export, static_line};

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
    built.map_err(
        |BuildError {
             owner,
             rtype,
             message,
         }| {
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
        },
    )
}

/// What `zone::build` found wrong: the record's owner, its type (if the error
/// is about one record type) and why; `parse` adds the file and line.
#[derive(Debug)]
struct BuildError {
    owner: Name,
    rtype: Option<RecordType>,
    message: String,
}

impl BuildError {
    fn new(owner: &Owner<'_>, rtype: Option<RecordType>, message: impl Into<String>) -> Self {
        BuildError {
            owner: owner.name(),
            rtype,
            message: message.into(),
        }
    }
}

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
    Err(BuildError::new(owner, rtype, msg))
}

/// The origin a file name implies: `cluster.example.zone` -> `cluster.example.`.
pub fn origin_from_file_name(path: &std::path::Path) -> Option<String> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".zone")?;
    Some(format!("{}.", stem.trim_end_matches('.')))
}
