//! Zone transfers over TCP: AXFR (RFC 5936) and IXFR (RFC 1995), to requests
//! signed with one of the zone's TSIG keys (RFC 8945) only.
//!
//! An unsigned request is REFUSED; a bad signature gets NOTAUTH (`tsig`). A
//! full transfer streams the view it started on (one `Arc`, so a change
//! meanwhile neither blocks it nor shows half in it) a node at a time into
//! messages of about `MESSAGE_BYTES`, each signed over the previous one's MAC
//! (§5.3.1): the zone is never built a second time in memory. IXFR sends the
//! journal's run of changes from the client's serial (`transfer`), a lone SOA
//! when the client is current, and a full transfer when the journal does not
//! reach back that far.

use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{LowerName, Record, RecordType};
use tokio::io::AsyncWriteExt;

use super::handler::DnsHandler;
use super::message::{error_reply, keys_for, question, question_end, u16_at, zone_of};
use super::pack::Packer;
use crate::transfer::{newer, Diff};
use crate::tsig;
use crate::view::ZoneView;
use crate::wire;

const AXFR: u16 = 252;
const IXFR: u16 = 251;
/// A message is sent when it grows past this.
const MESSAGE_BYTES: usize = 32 * 1024;
/// No message grows past this: the 64 KiB a TCP message may hold, less room
/// for its TSIG record (a 255-byte key name, the algorithm, a 32-byte MAC).
/// A set bigger than that (a role's A records in a large zone) is split.
const MESSAGE_LIMIT: usize = 65535 - 512;
/// How long one message may take to be written to a slow secondary.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a query asks for a zone transfer (its one question's type).
pub fn is_transfer(m: &[u8]) -> bool {
    m.get(2).is_some_and(|f| f & 0xf8 == 0)
        && question_end(m)
            .and_then(|end| u16_at(m, end - 4))
            .is_some_and(|t| t == AXFR || t == IXFR)
}

/// Writes one length-prefixed message; false if the client is gone.
async fn write(wr: &mut tokio::net::tcp::OwnedWriteHalf, m: &[u8]) -> bool {
    let Ok(len) = u16::try_from(m.len()) else {
        return false;
    };
    let mut frame = Vec::with_capacity(2 + m.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(m);
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&frame)).await,
        Ok(Ok(()))
    )
}

/// Answers one transfer request on a TCP connection. Returns whether the
/// connection may go on.
pub async fn serve(
    handler: &DnsHandler,
    raw: Vec<u8>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
) -> bool {
    let (stripped, t) = match tsig::split(&raw) {
        Ok(Some(x)) => x,
        Ok(None) => {
            // Unsigned: nobody may transfer a zone without one of its keys.
            return match error_reply(&raw, ResponseCode::Refused) {
                Some(m) => write(wr, &m).await,
                None => false,
            };
        }
        Err(_) => {
            return match error_reply(&raw, ResponseCode::FormErr) {
                Some(m) => write(wr, &m).await,
                None => false,
            };
        }
    };
    let now = crate::time::unix_secs();
    let keys = keys_for(&handler.view().load(), handler.transfers(), &stripped);
    let (key, request_mac) = match tsig::verify(&stripped, t, &keys, now) {
        tsig::Checked::Good { key, tsig } => (key, tsig.mac),
        tsig::Checked::Refused { tsig, error } => {
            tracing::warn!(error, "zone transfer refused: unknown key or bad signature");
            let Some(mut m) = error_reply(&stripped, ResponseCode::NotAuth) else {
                return false;
            };
            tsig::append_unsigned(&mut m, &tsig, error);
            return write(wr, &m).await;
        }
        tsig::Checked::BadTime { key, tsig } => {
            tracing::warn!("zone transfer refused: signed at a time outside the fudge");
            let Some(mut m) = error_reply(&stripped, ResponseCode::NotAuth) else {
                return false;
            };
            let ours = now.to_be_bytes();
            tsig::sign(
                &mut m,
                &key,
                Some(&tsig.mac),
                false,
                now,
                tsig::BADTIME,
                &ours[2..],
            );
            return write(wr, &m).await;
        }
    };
    let (Some(zv), Some(q)) = (
        zone_of(&handler.view().load(), &stripped),
        question(&stripped),
    ) else {
        return false;
    };
    let qname = crate::wire::wire_name(q.name())
        .unwrap_or_default()
        .to_vec();
    let mut out = Out {
        id: u16::from_be_bytes([stripped[0], stripped[1]]),
        question: Some((qname, u16::from(q.query_type()))),
        key,
        mac: request_mac,
        first: true,
    };
    if zv.origin != LowerName::new(q.name()) {
        // Not a zone's apex: we hold no zone of that name (RFC 5936 §2.2.1).
        let Some(mut m) = error_reply(&stripped, ResponseCode::NotAuth) else {
            return false;
        };
        tsig::sign(&mut m, &out.key, Some(&out.mac), false, now, 0, &[]);
        return write(wr, &m).await;
    }
    let Some(soa) = crate::transfer::soa(&zv) else {
        return false;
    };
    let origin = zv.origin.to_string();
    let started = std::time::Instant::now();
    let (kind, sent) = if q.query_type() == RecordType::IXFR {
        let theirs = client_serial(&stripped);
        match theirs {
            Some(s) if !newer(zv.serial, s) => ("ixfr-current", out.one(wr, &soa).await),
            Some(s) => match handler.transfers().since(&origin, s, zv.serial) {
                Some(run) => ("ixfr", out.incremental(wr, &soa, &run).await),
                None => ("ixfr-as-axfr", out.full(wr, &zv, &soa).await),
            },
            None => ("ixfr-as-axfr", out.full(wr, &zv, &soa).await),
        }
    } else {
        ("axfr", out.full(wr, &zv, &soa).await)
    };
    match sent {
        Some(records) => {
            tracing::info!(zone = %origin, serial = zv.serial, kind, records, ms = started.elapsed().as_millis() as u64, "zone transferred");
            true
        }
        None => {
            tracing::warn!(zone = %origin, kind, "zone transfer cut short: the secondary went away");
            false
        }
    }
}

/// The serial of the SOA in an IXFR request's authority section.
fn client_serial(query: &[u8]) -> Option<u32> {
    let m = Message::from_vec(query).ok()?;
    m.authorities.iter().find_map(|r| match &r.data {
        hickory_proto::rr::RData::SOA(s) => Some(s.serial),
        _ => None,
    })
}

/// How many nodes ahead of the one being copied are asked into cache.
const AHEAD: usize = 16;

/// The view's nodes, each one's name and sets prefetched `AHEAD` nodes
/// before it is copied: a full transfer otherwise waits on memory at every
/// node (their allocations are scattered), most of its time.
fn ahead<'a>(
    nodes: impl Iterator<Item = (&'a [u8], &'a crate::view::Node)>,
) -> impl Iterator<Item = (&'a [u8], &'a crate::view::Node)> {
    let mut nodes = nodes.fuse();
    let mut queue = std::collections::VecDeque::with_capacity(AHEAD + 1);
    std::iter::from_fn(move || {
        while queue.len() < AHEAD {
            let Some((owner, node)) = nodes.next() else {
                break;
            };
            crate::view::prefetch(<[u8]>::as_ptr(owner));
            crate::view::Node::prefetch(node);
            queue.push_back((owner, node));
        }
        queue.pop_front()
    })
}

/// What a transfer sends: a view's set at its owner, or one record.
/// Small, as it is moved through each iterator adapter: a record by value
/// made the moves most of a transfer's time.
enum Item<'a> {
    Set(&'a [u8], wire::Set<'a>),
    Record(&'a Record),
}

/// The answer being streamed: the MAC that signs the next message.
struct Out {
    id: u16,
    /// The question (lowercase wire name, type), for the first message only.
    question: Option<(Vec<u8>, u16)>,
    key: tsig::Key,
    mac: Vec<u8>,
    first: bool,
}

impl Out {
    /// Sends `items` in messages of about `MESSAGE_BYTES`, each compressed
    /// on its own and signed. Returns how many records went.
    async fn stream<'a>(
        &mut self,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        // Boxed: a closure's iterator held across an await is otherwise not
        // provably `Send` (rust-lang/rust#102211).
        mut items: Box<dyn Iterator<Item = Item<'a>> + Send + 'a>,
    ) -> Option<usize> {
        let mut sent = 0;
        let mut next = items.next();
        // How many records of `next` (a set) went in earlier messages.
        let mut from = 0;
        loop {
            let q = self.question.take();
            let mut p = Packer::new(q.as_ref().map(|(n, t)| (&n[..], *t)));
            while let Some(item) = &next {
                let whole = match item {
                    Item::Set(owner, set) => {
                        from = p.push_set(owner, set, from, MESSAGE_LIMIT)?;
                        from == set.answers
                    }
                    Item::Record(r) => p.push_record(r, MESSAGE_LIMIT)?,
                };
                if !whole {
                    if p.is_empty() {
                        // One record bigger than any message can hold.
                        return None;
                    }
                    break;
                }
                from = 0;
                next = items.next();
                if p.len() > MESSAGE_BYTES || p.count() > u16::MAX - 1024 {
                    break;
                }
            }
            sent += usize::from(p.count());
            let mut buf = p.finish(self.id);
            let now = crate::time::unix_secs();
            self.mac = tsig::sign(
                &mut buf,
                &self.key,
                Some(&self.mac),
                !self.first,
                now,
                0,
                &[],
            );
            self.first = false;
            if !write(wr, &buf).await {
                return None;
            }
            if next.is_none() {
                return Some(sent);
            }
        }
    }

    /// A lone SOA: the client is current.
    async fn one(
        &mut self,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        soa: &Record,
    ) -> Option<usize> {
        self.stream(wr, Box::new(std::iter::once(Item::Record(soa))))
            .await
    }

    /// SOA, every other record of the view, SOA: each set copied as it is
    /// encoded in the view.
    async fn full<'a>(
        &mut self,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        zv: &'a ZoneView,
        soa: &'a Record,
    ) -> Option<usize> {
        const SOA: u16 = 6;
        let sets = ahead(zv.nodes()).flat_map(|(owner, node)| {
            node.sets()
                .filter(|s| !s.alias && s.rtype != SOA)
                .map(move |s| Item::Set(owner, s))
        });
        let all = std::iter::once(Item::Record(soa))
            .chain(sets)
            .chain(std::iter::once(Item::Record(soa)));
        self.stream(wr, Box::new(all)).await
    }

    /// SOA, then each change as old SOA, removed, new SOA, added; then SOA.
    async fn incremental<'a>(
        &mut self,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        soa: &'a Record,
        run: &'a [Arc<Diff>],
    ) -> Option<usize> {
        let changes = run.iter().flat_map(|d| {
            std::iter::once(&d.old_soa)
                .chain(&d.removed)
                .chain(std::iter::once(&d.new_soa))
                .chain(&d.added)
                .map(Item::Record)
        });
        let all = std::iter::once(Item::Record(soa))
            .chain(changes)
            .chain(std::iter::once(Item::Record(soa)));
        self.stream(wr, Box::new(all)).await
    }
}
