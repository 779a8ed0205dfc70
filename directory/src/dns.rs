//! The DNS front: hickory-server's listeners, Switchboard's own answer path.
//!
//! A request is decoded by hickory-server; `DnsHandler` picks the zone, does one
//! lookup in the current `View` and hands borrowed records to the response
//! encoder, which applies the client's EDNS(0) buffer size and sets TC when an
//! answer does not fit (RFC 1035 §4.2.1, RFC 6891 §7). No I/O, no lock, no
//! allocation beyond the response itself.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::view::{Lookup, View};

/// Answers queries from the shared view.
pub struct DnsHandler {
    view: Arc<ArcSwap<View>>,
}

impl DnsHandler {
    pub fn new(view: Arc<ArcSwap<View>>) -> Self {
        DnsHandler { view }
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
    let response =
        MessageResponseBuilder::new(&request.queries, edns).error_msg(&request.metadata, code);
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
        let result = match view.lookup(query.name(), qtype) {
            Lookup::Refused => {
                drop(view);
                return send_error(request, ResponseCode::Refused, edns, handle).await;
            }
            Lookup::NxDomain(zone) => {
                metadata.response_code = ResponseCode::NXDomain;
                let r = builder.build(
                    metadata,
                    empty,
                    empty,
                    std::iter::once(&zone.negative_soa),
                    empty,
                );
                handle.send_response(r).await
            }
            Lookup::NoData(zone) => {
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

/// Idle time after which a TCP client that sends nothing is dropped.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends hickory's answer for a slow-path UDP query on our own socket.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<std::net::UdpSocket>,
    dst: std::net::SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
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
        let max = response
            .edns()
            .map(|e| e.max_payload().max(512))
            .unwrap_or(512);
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = hickory_server::proto::serialize::binary::BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
        self.socket
            .send_to(&bytes, self.dst)
            .map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
        Ok(info)
    }
}

/// The full path for a UDP query the fast path declined: hickory decodes it, the
/// handler answers (truncating when needed); an undecodable query with a readable
/// header gets FORMERR, anything shorter is dropped.
async fn slow_udp(
    handler: Arc<DnsHandler>,
    raw: Vec<u8>,
    src: std::net::SocketAddr,
    socket: Arc<std::net::UdpSocket>,
) {
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    match Request::from_bytes(raw.clone(), src, Protocol::Udp) {
        Ok(req) => {
            if req.metadata.message_type == MessageType::Response {
                return;
            }
            handler
                .handle_request::<_, TokioTime>(&req, UdpReply { socket, dst: src })
                .await;
        }
        Err(_) if raw.len() >= 12 && raw[2] & 0x80 == 0 => {
            let mut h = [0u8; 12];
            h[0..2].copy_from_slice(&raw[0..2]);
            h[2] = 0x80 | (raw[2] & 0x78);
            h[3] = 1;
            let _ = socket.send_to(&h, src);
        }
        Err(_) => {}
    }
}

/// Serves UDP on `socket` with `workers` threads, each a loop of receive, fast
/// answer, send; declined queries go to `slow_udp` on the runtime.
pub fn spawn_udp(
    socket: std::net::UdpSocket,
    view: Arc<ArcSwap<View>>,
    handler: Arc<DnsHandler>,
    runtime: tokio::runtime::Handle,
    workers: usize,
) {
    let socket = Arc::new(socket);
    for i in 0..workers.max(1) {
        let (socket, view, handler, runtime) = (
            socket.clone(),
            view.clone(),
            handler.clone(),
            runtime.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || {
                let mut buf = [0u8; 4096];
                let mut out = Vec::with_capacity(4096);
                loop {
                    let (n, src) = match socket.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "UDP receive failed");
                            continue;
                        }
                    };
                    let query = &buf[..n];
                    let answered = {
                        let v = view.load();
                        crate::wire::answer(&v, query, &mut out).is_some()
                    };
                    if answered {
                        let _ = socket.send_to(&out, src);
                    } else {
                        let raw = query.to_vec();
                        runtime.spawn(slow_udp(handler.clone(), raw, src, socket.clone()));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a UDP worker");
        }
    }
}
