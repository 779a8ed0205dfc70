//! The full path: hickory-server decodes a query, `DnsHandler` answers it
//! from the view, and `Reply` encodes the answer for our own listeners.
//!
//! `DnsHandler` picks the zone, does one lookup in the current `View` and
//! hands borrowed records to the response encoder; a UDP answer is then cut to
//! the client's EDNS(0) buffer size at a record boundary, TC set when an
//! answer does not fit (`truncate`; RFC 1035 §4.2.1, RFC 2181 §9, RFC 6891
//! §7). No I/O, no lock, no allocation beyond the response itself. Queries
//! come here when the fast path (`fast`) declines them, and over TCP.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::truncate::truncate;
use crate::transfer::Transfers;
use crate::tsig;
use crate::view::{Lookup, View};

/// Answers queries from the shared view.
pub struct DnsHandler {
    view: Arc<ArcSwap<View>>,
    /// Zones' TSIG keys and journals: signed queries and transfers (`xfr`).
    transfers: Arc<Transfers>,
}

impl DnsHandler {
    /// A handler that holds no TSIG key: signed queries get BADKEY.
    pub fn new(view: Arc<ArcSwap<View>>) -> Self {
        Self::with_transfers(view, Default::default())
    }

    pub fn with_transfers(view: Arc<ArcSwap<View>>, transfers: Arc<Transfers>) -> Self {
        DnsHandler { view, transfers }
    }

    pub(super) fn view(&self) -> &Arc<ArcSwap<View>> {
        &self.view
    }

    pub(super) fn transfers(&self) -> &Transfers {
        &self.transfers
    }
}

/// Our EDNS version.
const EDNS_VERSION: u8 = 0;
/// The largest UDP payload we send, whatever the client offers (RFC 9715 advice).
const MAX_UDP_PAYLOAD: u16 = 1232;

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

async fn send_error(
    request: &Request,
    code: ResponseCode,
    edns: Option<&Edns>,
    mut handle: impl ResponseHandler,
) -> ResponseInfo {
    let mut high;
    let edns = match edns {
        Some(e) if code.high() != 0 => {
            high = e.clone();
            high.set_rcode_high(code.high());
            Some(&high)
        }
        other => other,
    };
    // RD and CD are defined for QUERY only (RFC 1035 §4.1.1, RFC 4035 §3.1.6):
    // a reply to any other opcode leaves them clear, as BIND's does.
    let mut metadata = request.metadata;
    if metadata.op_code != OpCode::Query {
        metadata.recursion_desired = false;
        metadata.checking_disabled = false;
    }
    let response = MessageResponseBuilder::new(&request.queries, edns).error_msg(&metadata, code);
    handle
        .send_response(response)
        .await
        .unwrap_or_else(|_| failed(request))
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut handle: R,
    ) -> ResponseInfo {
        let mut resp_edns;
        let edns = match request.edns.as_ref() {
            Some(req) => {
                resp_edns = Edns::new();
                resp_edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
                resp_edns.set_version(EDNS_VERSION);
                if req.version() > EDNS_VERSION {
                    return send_error(request, ResponseCode::BADVERS, Some(&resp_edns), handle)
                        .await;
                }
                Some(&resp_edns)
            }
            None => None,
        };
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, ResponseCode::NotImp, edns, handle).await;
        }
        let Ok(info) = request.request_info() else {
            return send_error(request, ResponseCode::FormErr, edns, handle).await;
        };
        let query = info.query;
        let qtype = query.query_type();
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR | RecordType::OPT)
        {
            return send_error(request, ResponseCode::Refused, edns, handle).await;
        }

        let view = self.view.load();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let builder = MessageResponseBuilder::new(&request.queries, edns);
        let empty: &[Record] = &[];
        let lookup = view.lookup(query.name(), qtype);
        if matches!(lookup, Lookup::NxDomain(_)) {
            metadata.response_code = ResponseCode::NXDomain;
        }
        let result = match lookup {
            Lookup::Refused => {
                drop(view);
                return send_error(request, ResponseCode::Refused, edns, handle).await;
            }
            // RFC 2308: both carry the SOA in the authority section.
            Lookup::NxDomain(zone) | Lookup::NoData(zone) => {
                let r = builder.build(
                    metadata,
                    empty,
                    empty,
                    std::iter::once(&zone.negative_soa),
                    empty,
                );
                handle.send_response(r).await
            }
            Lookup::Answer {
                records,
                additionals,
            } => {
                let r = builder.build(metadata, records.iter(), empty, empty, additionals.iter());
                handle.send_response(r).await
            }
            Lookup::Any(all) => {
                let r = builder.build(metadata, all.iter(), empty, empty, empty);
                handle.send_response(r).await
            }
        };
        result.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "failed to send DNS response");
            failed(request)
        })
    }
}

/// Where hickory's encoded answer goes: a UDP datagram, or a buffer the TCP
/// connection writes out.
#[derive(Clone)]
pub(super) enum Sink {
    Udp {
        socket: Arc<std::net::UdpSocket>,
        dst: std::net::SocketAddr,
    },
    Buffer(Arc<std::sync::Mutex<Vec<u8>>>),
}

/// Encodes hickory's answer for a query on one of our own listeners.
#[derive(Clone)]
struct Reply(Sink);

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        // The client's UDP buffer: 512 bytes without EDNS (RFC 1035 §4.2.1).
        let max = response
            .edns()
            .map(|e| usize::from(e.max_payload().max(512)))
            .unwrap_or(512);
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = hickory_server::proto::serialize::binary::BinEncoder::new(&mut bytes);
        let mut info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
        // A record past 64 KiB is rolled back, but its bytes stay in the
        // buffer: the message ends where the encoder does.
        let end = encoder.offset();
        bytes.truncate(end);
        if let Sink::Udp { .. } = &self.0 {
            // Cut to the client's buffer ourselves: hickory's own cut can drop
            // the OPT record, and sets TC when only additional records went.
            if truncate(&mut bytes, max) {
                use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
                if let Ok(h) = Header::read(&mut BinDecoder::new(&bytes)) {
                    info = ResponseInfo::from(h);
                }
            }
        }
        match &self.0 {
            Sink::Udp { socket, dst } => {
                socket
                    .send_to(&bytes, dst)
                    .map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
            }
            Sink::Buffer(buf) => *buf.lock().unwrap_or_else(|p| p.into_inner()) = bytes,
        }
        Ok(info)
    }
}

/// FORMERR for a query whose header is readable but whose body is not; `None`
/// for anything shorter than a header or that is itself a response.
pub(super) fn formerr(raw: &[u8]) -> Option<[u8; 12]> {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return None;
    }
    let mut h = [0u8; 12];
    h[0..2].copy_from_slice(&raw[0..2]);
    h[2] = 0x80 | (raw[2] & 0x78);
    h[3] = 1;
    Some(h)
}

/// The full path for one query: hickory decodes it and the handler answers into
/// `sink`. `false` if it was not answered (a response, or undecodable; the
/// caller sends `formerr` if it can).
pub(super) async fn full_path(
    handler: &DnsHandler,
    raw: Vec<u8>,
    src: std::net::SocketAddr,
    protocol: hickory_server::net::xfer::Protocol,
    sink: Sink,
) -> bool {
    // Only a message with additional records can carry a TSIG (the fast path
    // takes none that has one).
    if raw.len() >= 12 && raw[2] & 0x80 == 0 && raw[10..12] != [0, 0] {
        match tsig::split(&raw) {
            Ok(Some((stripped, t))) => {
                return signed(handler, stripped, t, src, protocol, sink).await;
            }
            Ok(None) => {}
            Err(_) => return false,
        }
    }
    unsigned(handler, raw, src, protocol, sink).await
}

async fn unsigned(
    handler: &DnsHandler,
    raw: Vec<u8>,
    src: std::net::SocketAddr,
    protocol: hickory_server::net::xfer::Protocol,
    sink: Sink,
) -> bool {
    use hickory_server::net::runtime::TokioTime;
    match Request::from_bytes(raw, src, protocol) {
        Ok(req) if req.metadata.message_type == MessageType::Query => {
            handler
                .handle_request::<_, TokioTime>(&req, Reply(sink))
                .await;
            true
        }
        _ => false,
    }
}

/// A query signed with TSIG (a secondary's SOA check, say): checked against
/// the keys of the zone it asks about (RFC 8945 §5.2), answered as an unsigned
/// one would be, and the answer signed over the query's MAC (§5.3).
async fn signed(
    handler: &DnsHandler,
    stripped: Vec<u8>,
    t: tsig::Tsig,
    src: std::net::SocketAddr,
    protocol: hickory_server::net::xfer::Protocol,
    sink: Sink,
) -> bool {
    let now = crate::time::unix_secs();
    let keys = super::message::keys_for(&handler.view.load(), &handler.transfers, &stripped);
    let (mut answer, key, error, other) = match tsig::verify(&stripped, t, &keys, now) {
        tsig::Checked::Good { key, tsig } => {
            let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
            let answered = Box::pin(unsigned(
                handler,
                stripped,
                src,
                protocol,
                Sink::Buffer(buf.clone()),
            ))
            .await;
            let mut answer = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
            if !answered || answer.is_empty() {
                return false;
            }
            if let Sink::Udp { .. } = &sink {
                let edns = super::message::udp_limit(&answer);
                truncate(&mut answer, edns.saturating_sub(tsig::record_len(&key)));
            }
            tsig::sign(&mut answer, &key, Some(&tsig.mac), false, now, 0, &[]);
            return send_raw(&sink, answer);
        }
        tsig::Checked::Refused { tsig, error } => {
            let Some(mut m) = super::message::error_reply(&stripped, ResponseCode::NotAuth) else {
                return false;
            };
            tsig::append_unsigned(&mut m, &tsig, error);
            return send_raw(&sink, m);
        }
        tsig::Checked::BadTime { key, tsig } => (
            super::message::error_reply(&stripped, ResponseCode::NotAuth),
            key,
            tsig::BADTIME,
            tsig,
        ),
    };
    let Some(m) = answer.as_mut() else {
        return false;
    };
    let ours = now.to_be_bytes();
    tsig::sign(m, &key, Some(&other.mac), false, now, error, &ours[2..]);
    send_raw(&sink, std::mem::take(m))
}

/// Sends an answer already encoded.
fn send_raw(sink: &Sink, bytes: Vec<u8>) -> bool {
    match sink {
        Sink::Udp { socket, dst } => socket.send_to(&bytes, dst).is_ok(),
        Sink::Buffer(buf) => {
            *buf.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
            true
        }
    }
}

/// The full path's answer to one query as bytes (no size limit: for TCP), FORMERR
/// for an undecodable query with a readable header, `None` for anything else.
pub async fn respond(
    handler: &DnsHandler,
    raw: Vec<u8>,
    src: std::net::SocketAddr,
    protocol: hickory_server::net::xfer::Protocol,
) -> Option<Vec<u8>> {
    let header = formerr(&raw);
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let answered = full_path(handler, raw, src, protocol, Sink::Buffer(buf.clone())).await;
    let answer = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
    if answered && !answer.is_empty() {
        Some(answer)
    } else {
        header.map(|h| h.to_vec())
    }
}
