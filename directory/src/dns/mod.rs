//! The DNS front: hickory-server's listeners, Switchboard's own answer path.
//!
//! A request is decoded by hickory-server; `DnsHandler` picks the zone, does one
//! lookup in the current `View` and hands borrowed records to the response
//! encoder; a UDP answer is then cut to the client's EDNS(0) buffer size at a
//! record boundary, TC set when an answer does not fit (`wire::truncate`;
//! RFC 1035 §4.2.1, RFC 2181 §9, RFC 6891 §7). No I/O, no lock, no
//! allocation beyond the response itself.

pub mod fast;

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

/// Where hickory's encoded answer goes: a UDP datagram, or a buffer the TCP
/// connection writes out.
#[derive(Clone)]
enum Sink {
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
            if crate::wire::truncate(&mut bytes, max) {
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
fn formerr(raw: &[u8]) -> Option<[u8; 12]> {
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
async fn full_path(
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

/// The full path for a UDP query the fast path declined: hickory decodes it, the
/// handler answers (truncating when needed); an undecodable query with a readable
/// header gets FORMERR, anything shorter is dropped.
async fn slow_udp(
    handler: Arc<DnsHandler>,
    raw: Vec<u8>,
    src: std::net::SocketAddr,
    socket: Arc<std::net::UdpSocket>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let header = formerr(&raw);
    let sink = Sink::Udp {
        socket: socket.clone(),
        dst: src,
    };
    let answered = full_path(
        &handler,
        raw,
        src,
        hickory_server::net::xfer::Protocol::Udp,
        sink,
    )
    .await;
    if let (false, Some(h)) = (answered, header) {
        let _ = socket.send_to(&h, src);
    }
}

/// How many UDP queries may be on the full path at once; past it, more are
/// dropped (a flood of unusual queries must not grow memory without bound).
const SLOW_UDP_INFLIGHT: usize = 1024;

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

/// Serves UDP on `socket` with `workers` threads, each a loop of receive, fast
/// answer, send, a batch of packets at a time (`mmsg`); declined queries go to
/// `slow_udp` on the runtime. With `rrl`,
/// every answer first asks the rate limiter.
pub fn spawn_udp(
    socket: std::net::UdpSocket,
    view: Arc<ArcSwap<View>>,
    handler: Arc<DnsHandler>,
    runtime: tokio::runtime::Handle,
    workers: usize,
    rrl: Option<Arc<crate::rrl::Rrl>>,
) {
    use crate::rrl::Verdict;
    let socket = Arc::new(socket);
    let slow = Arc::new(tokio::sync::Semaphore::new(SLOW_UDP_INFLIGHT));
    for i in 0..workers.max(1) {
        let (socket, view, handler, runtime, rrl, slow) = (
            socket.clone(),
            view.clone(),
            handler.clone(),
            runtime.clone(),
            rrl.clone(),
            slow.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || {
                let mut batch = crate::mmsg::Batch::default();
                let mut outs: Vec<Vec<u8>> = (0..crate::mmsg::BATCH)
                    .map(|_| Vec::with_capacity(4096))
                    .collect();
                let mut replies = Vec::with_capacity(crate::mmsg::BATCH);
                // (checked: `Instant` may be younger than a minute right after boot)
                let mut shed_logged = std::time::Instant::now()
                    .checked_sub(Duration::from_secs(60))
                    .unwrap_or_else(std::time::Instant::now);
                loop {
                    let n = match batch.recv(&socket) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "UDP receive failed");
                            continue;
                        }
                    };
                    replies.clear();
                    for (i, out) in outs.iter_mut().enumerate().take(n) {
                        let (query, src) = batch.packet(i);
                        let Some(src) = src else { continue };
                        if let Some(rrl) = &rrl {
                            match rrl.check(src.ip(), std::time::Instant::now()) {
                                Verdict::Send => {}
                                Verdict::Slip => {
                                    if fast::truncated(query, out).is_some() {
                                        replies.push(i);
                                    }
                                    continue;
                                }
                                Verdict::Drop => continue,
                            }
                        }
                        let answered = {
                            let v = view.load();
                            fast::answer(&v, query, out).is_some()
                        };
                        if answered {
                            replies.push(i);
                        } else if let Ok(permit) = slow.clone().try_acquire_owned() {
                            let raw = query.to_vec();
                            runtime.spawn(slow_udp(
                                handler.clone(),
                                raw,
                                src,
                                socket.clone(),
                                permit,
                            ));
                        } else if shed_logged.elapsed() >= Duration::from_secs(10) {
                            tracing::warn!(
                                inflight = SLOW_UDP_INFLIGHT,
                                "too many queries on the full path; dropping until some finish"
                            );
                            shed_logged = std::time::Instant::now();
                        }
                    }
                    batch.send(&socket, &replies, &outs);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a UDP worker");
        }
    }
}

/// Limits of the TCP listener.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_client: usize,
    /// A client must send each length prefix, and then each message, within this.
    pub idle: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1024,
            max_per_client: 64,
            idle: TCP_TIMEOUT,
        }
    }
}

/// Who holds the TCP connection slots.
#[derive(Default)]
struct Slots {
    total: usize,
    per_client: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// Frees a connection's slot when the connection ends.
struct Slot {
    slots: Arc<std::sync::Mutex<Slots>>,
    client: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

fn take_slot(
    slots: &Arc<std::sync::Mutex<Slots>>,
    client: std::net::IpAddr,
    limits: &TcpLimits,
) -> Option<Slot> {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    let mine = s.per_client.get(&client).copied().unwrap_or(0);
    if s.total >= limits.max_connections || mine >= limits.max_per_client {
        return None;
    }
    s.total += 1;
    s.per_client.insert(client, mine + 1);
    Some(Slot {
        slots: slots.clone(),
        client,
    })
}

/// Serves DNS over TCP (RFC 7766) until `stop` turns true: length-prefixed
/// queries, answered in order on the full path. A connection beyond the limits
/// is closed at once; one that sends nothing, or too slowly, is closed after
/// `limits.idle`; running out of file descriptors pauses accepting instead of
/// spinning.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    handler: Arc<DnsHandler>,
    limits: TcpLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(std::sync::Mutex::new(Slots::default()));
    let mut refused_logged = std::time::Instant::now()
        .checked_sub(Duration::from_secs(60))
        .unwrap_or_else(std::time::Instant::now);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, src) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&slots, crate::rrl::client(src.ip()), &limits) else {
            if refused_logged.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(client = %src.ip(), "TCP connection limit reached; closing new connections");
                refused_logged = std::time::Instant::now();
            }
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tcp_connection(stream, src, &handler, limits.idle, stop).await;
        });
    }
}

async fn tcp_connection(
    stream: tokio::net::TcpStream,
    src: std::net::SocketAddr,
    handler: &DnsHandler,
    idle: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;
    let (mut rd, mut wr) = stream.into_split();
    loop {
        let mut len = [0u8; 2];
        tokio::select! {
            r = timeout(idle, rd.read_exact(&mut len)) => match r {
                Ok(Ok(_)) => {}
                _ => return,
            },
            _ = stop.changed() => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        let mut msg = vec![0u8; n];
        match timeout(idle, rd.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(answer) =
            respond(handler, msg, src, hickory_server::net::xfer::Protocol::Tcp).await
        else {
            return;
        };
        let Ok(alen) = u16::try_from(answer.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(2 + answer.len());
        frame.extend_from_slice(&alen.to_be_bytes());
        frame.extend_from_slice(&answer);
        match timeout(idle, wr.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
