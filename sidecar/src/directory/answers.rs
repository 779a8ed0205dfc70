//! What the sidecar knows of the directory: DNS answers, cached by TTL, kept past
//! their TTL when the directory cannot be reached (serve-stale, RFC 8767), and
//! marked to be asked again the moment the directory's change feed reports a new
//! serial. A marked answer is kept until a new one replaces it: a directory that
//! dies right after a change still leaves every name with its last answer.
//!
//! Lookups go through hickory-resolver, one per `--directory` server, each with
//! its own cache off, so this module alone decides what is fresh, what is
//! stale, and when to forget. With several servers (docs/sidecar.md, "Several
//! directory servers"), lookups take them in turn; a server that does not
//! answer in time (or answers with an error) is skipped for `RETRY` and the
//! next one is asked at once, so a lookup fails only when none answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::Resolver;
use switchboard_proto::schema;

use crate::metrics::Metrics;

/// The directory could not answer and nothing was cached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirError {
    #[error(
        "the directory at {server} did not answer ({reason}) and no earlier answer for {name} can be used"
    )]
    Unreachable {
        /// The servers asked, comma-separated.
        server: String,
        name: String,
        reason: String,
    },
    #[error("bad name {0:?}")]
    BadName(String),
}

/// One cached answer. `exists` is false for NXDOMAIN.
#[derive(Debug)]
pub struct Answer {
    pub exists: bool,
    pub records: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Its TXT attributes, parsed once (every routed request reads some).
    txt: OnceLock<Option<Txt>>,
    /// Its SRV targets, resolved once from the additional section.
    peers: OnceLock<Arc<[Peer]>>,
}

impl Answer {
    fn new(exists: bool, records: Vec<Record>, additionals: Vec<Record>) -> Self {
        Answer {
            exists,
            records,
            additionals,
            txt: OnceLock::new(),
            peers: OnceLock::new(),
        }
    }
}

/// TXT attributes (`key=value` strings) as a map, shared by every reader of an answer.
pub type Txt = Arc<HashMap<String, String>>;

/// Cache key: a name relative to the zone, lowercased (DNS names are
/// case-insensitive), and the record type. Looked up without building a
/// DNS name: a hit costs a copy and a hash of the text. Two spellings of one
/// name (`a.b` and `a.b.`) are two entries, each asked for and invalidated
/// like any other.
type Key = (Box<str>, RecordType);

struct Cached {
    answer: Arc<Answer>,
    expires: Instant,
}

#[derive(Default)]
struct Reachability {
    down_since: Option<Instant>,
    next_try: Option<Instant>,
}

/// Negative answers and empty sets are kept this long.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// While the directory is down, ask it again at most this often.
const RETRY: Duration = Duration::from_millis(500);
/// One of several servers that did not answer is asked first again after this
/// (before it, only when the others do not answer either).
const SERVER_RETRY: Duration = Duration::from_secs(5);
/// Names cached at most. Past it, answers past their TTL are forgotten first; if
/// every one is still fresh, a new answer is used but not kept.
const MAX_CACHED: usize = 65_536;

/// How much a cached answer is worth to one lookup.
#[derive(Clone, Copy)]
enum Fresh {
    /// Fresh within its TTL; past it, asked again, and served stale if the
    /// directory does not answer.
    Cached,
    /// Asked again whatever its TTL; served stale only if `stale_ok`.
    Now { stale_ok: bool },
}

/// TXT attributes as a map; `None` for NXDOMAIN. Parsed once per answer.
fn txt_map(a: &Answer) -> Option<Txt> {
    a.txt
        .get_or_init(|| {
            if !a.exists {
                return None;
            }
            let mut out = HashMap::new();
            for r in &a.records {
                if let RData::TXT(t) = &r.data {
                    for s in t.txt_data.iter() {
                        let s = String::from_utf8_lossy(s);
                        let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                        out.insert(k.to_string(), v.to_string());
                    }
                }
            }
            Some(Arc::new(out))
        })
        .clone()
}

/// A host's cluster listener, as the directory publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub addr: SocketAddr,
}

/// One `--directory` server and whether it answers.
struct Server {
    addr: SocketAddr,
    resolver: Resolver<TokioRuntimeProvider>,
    reach: Mutex<Reachability>,
}

impl Server {
    /// Not known to be down, or down long enough to be asked again.
    fn eligible(&self, now: Instant) -> bool {
        let r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        r.next_try.is_none_or(|t| now >= t)
    }

    fn answered(&self, several: bool) {
        let mut r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = r.down_since.take() {
            if several {
                tracing::info!(server = %self.addr, down_for = ?since.elapsed(), "directory server answers again");
            }
        }
        r.next_try = None;
    }

    fn failed(&self, reason: &str, several: bool) {
        let mut r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        if r.down_since.is_none() {
            r.down_since = Some(Instant::now());
            if several {
                tracing::warn!(server = %self.addr, reason, "directory server did not answer; asking the others, and this one again in a moment");
            }
        }
        r.next_try = Some(Instant::now() + SERVER_RETRY);
    }
}

/// What the servers said to one question.
enum Outcome {
    Found(Vec<Record>, Vec<Record>),
    NxDomain,
    NoRecords,
}

/// Cached, stale-tolerant access to the directory's DNS answers.
pub struct DirectoryClient {
    servers: Vec<Server>,
    /// Where the next lookup starts among `servers` (they take turns).
    turn: AtomicUsize,
    /// The servers, comma-separated, for messages.
    names: String,
    zone: Name,
    cache: Mutex<HashMap<Key, Cached>>,
    /// Bumped by `invalidate`; an answer asked for before a bump is not cached.
    generation: AtomicU64,
    reach: Mutex<Reachability>,
    /// Ticks on every invalidation, for work that follows directory changes.
    changed: tokio::sync::watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
}

impl DirectoryClient {
    /// A client for zone `zone` served at `servers` (at least one).
    pub fn new(
        servers: &[SocketAddr],
        zone: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DirError> {
        let mut zone = Name::from_ascii(zone).map_err(|_| DirError::BadName(zone.to_string()))?;
        zone.set_fqdn(true);
        let names = servers
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if servers.is_empty() {
            return Err(DirError::Unreachable {
                server: names,
                name: zone.to_string(),
                reason: "no --directory given".into(),
            });
        }
        let several = servers.len() > 1;
        let servers = servers
            .iter()
            .map(|&s| {
                Ok(Server {
                    addr: s,
                    resolver: Self::resolver(s, &zone, several)?,
                    reach: Mutex::default(),
                })
            })
            .collect::<Result<Vec<_>, DirError>>()?;
        Ok(DirectoryClient {
            servers,
            turn: AtomicUsize::new(0),
            names,
            zone,
            cache: Mutex::default(),
            generation: AtomicU64::new(0),
            reach: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
            metrics,
        })
    }

    /// A resolver that asks `server` alone, with no cache of its own: twice
    /// (500 ms each) when it is the only one, once when there are `several`
    /// (the next server is the retry).
    fn resolver(
        server: SocketAddr,
        zone: &Name,
        several: bool,
    ) -> Result<Resolver<TokioRuntimeProvider>, DirError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.timeout = Duration::from_millis(500);
        opts.attempts = if several { 0 } else { 1 };
        opts.ndots = 0;
        opts.recursion_desired = false;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.edns0 = true;
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| DirError::Unreachable {
            server: server.to_string(),
            name: zone.to_string(),
            reason: e.to_string(),
        })
    }

    /// The `--directory` servers.
    pub fn servers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.servers.iter().map(|s| s.addr)
    }

    /// Asks the servers in turn, starting with the next one's turn: first those
    /// not known to be down, then the others. The first answer (NXDOMAIN and
    /// NODATA included) is the answer; an error or a timeout moves on to the
    /// next server at once.
    async fn resolve(&self, name: &Name, t: RecordType) -> Result<Outcome, String> {
        let n = self.servers.len();
        let several = n > 1;
        let start = if several {
            self.turn.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        let now = Instant::now();
        let in_turn = (0..n).map(|i| &self.servers[(start + i) % n]);
        let (up, down): (Vec<&Server>, Vec<&Server>) = in_turn.partition(|s| s.eligible(now));
        let mut last = String::new();
        for s in up.into_iter().chain(down) {
            match s.resolver.lookup(name.clone(), t).await {
                Ok(l) => {
                    s.answered(several);
                    return Ok(Outcome::Found(
                        l.answers().to_vec(),
                        l.additionals().to_vec(),
                    ));
                }
                Err(e) if e.is_nx_domain() => {
                    s.answered(several);
                    return Ok(Outcome::NxDomain);
                }
                Err(e) if e.is_no_records_found() => {
                    s.answered(several);
                    return Ok(Outcome::NoRecords);
                }
                Err(e) => {
                    last = if several {
                        format!("{}: {e}", s.addr)
                    } else {
                        e.to_string()
                    };
                    s.failed(&e.to_string(), several);
                }
            }
        }
        Err(last)
    }

    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The directory changed: every cached answer is to be asked for again on
    /// its next use, and is kept until a new one arrives (served stale if the
    /// directory does not answer).
    pub fn invalidate(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        for c in cache.values_mut() {
            c.expires = c.expires.min(now);
        }
        drop(cache);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Moves on every invalidation: anything derived from answers is stale when it moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A receiver that wakes on every directory change the feed reports.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Asks the directory now, whatever is cached. When it cannot answer: the
    /// last answer if `stale_ok` (serve-stale), else an error (for checks that
    /// must not be stale). The cached answer is kept either way.
    pub async fn txt_fresh(&self, rel: &str, stale_ok: bool) -> Result<Option<Txt>, DirError> {
        let a = self
            .ask(rel, RecordType::TXT, Fresh::Now { stale_ok })
            .await?;
        Ok(txt_map(&a))
    }

    fn name(&self, rel: &str) -> Result<Name, DirError> {
        Name::from_ascii(rel)
            .and_then(|n| n.append_domain(&self.zone))
            .map_err(|_| DirError::BadName(rel.to_string()))
    }

    /// The answer for `rel` (relative to the zone) and type `t`.
    pub async fn lookup(&self, rel: &str, t: RecordType) -> Result<Arc<Answer>, DirError> {
        self.ask(rel, t, Fresh::Cached).await
    }

    async fn ask(&self, rel: &str, t: RecordType, fresh: Fresh) -> Result<Arc<Answer>, DirError> {
        let key: Key = (
            if rel.bytes().any(|b| b.is_ascii_uppercase()) {
                rel.to_ascii_lowercase().into()
            } else {
                rel.into()
            },
            t,
        );
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match (cache.get(&key), fresh) {
                (Some(c), Fresh::Cached) if c.expires > now => return Ok(c.answer.clone()),
                (_, Fresh::Now { stale_ok: false }) => None,
                (c, _) => c.map(|c| c.answer.clone()),
            }
        };
        // While the directory is down, don't make every request wait for a timeout.
        let skip = {
            let r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
            stale.is_some() && r.next_try.is_some_and(|t| now < t)
        };
        let name = self.name(rel)?;
        if !skip {
            let gen = self.generation.load(Ordering::SeqCst);
            match self.resolve(&name, t).await {
                Ok(Outcome::Found(records, additionals)) => {
                    return Ok(self.remember(gen, key, true, records, additionals))
                }
                Ok(Outcome::NxDomain) => return Ok(self.remember(gen, key, false, vec![], vec![])),
                Ok(Outcome::NoRecords) => return Ok(self.remember(gen, key, true, vec![], vec![])),
                Err(reason) => {
                    self.unreachable(&reason);
                    if stale.is_none() {
                        return Err(DirError::Unreachable {
                            server: self.names.clone(),
                            name: name.to_string(),
                            reason,
                        });
                    }
                }
            }
        }
        self.metrics.set_stale(true);
        self.metrics.stale_answers.fetch_add(1, Ordering::Relaxed);
        stale.ok_or_else(|| DirError::Unreachable {
            server: self.names.clone(),
            name: name.to_string(),
            reason: "down".into(),
        })
    }

    fn remember(
        &self,
        gen: u64,
        key: Key,
        exists: bool,
        records: Vec<Record>,
        additionals: Vec<Record>,
    ) -> Arc<Answer> {
        let ttl = records
            .iter()
            .filter(|r| r.record_type() == key.1)
            .map(|r| Duration::from_secs(u64::from(r.ttl)))
            .min()
            .unwrap_or(NEGATIVE_TTL);
        let answer = Arc::new(Answer::new(exists, records, additionals));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let known = cache.contains_key(&key);
        if !known && cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| c.expires > now);
        }
        if self.generation.load(Ordering::SeqCst) == gen && (known || cache.len() < MAX_CACHED) {
            cache.insert(
                key,
                Cached {
                    answer: answer.clone(),
                    expires: Instant::now() + ttl,
                },
            );
        }
        drop(cache);
        self.reachable();
        answer
    }

    fn reachable(&self) {
        self.metrics.answered();
        self.metrics.directory_up.store(true, Ordering::Relaxed);
        self.metrics.set_stale(false);
        let mut r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = r.down_since.take() {
            tracing::info!(server = %self.names, down_for = ?since.elapsed(), "directory reachable again; fresh answers from now on");
        }
        r.next_try = None;
    }

    fn unreachable(&self, reason: &str) {
        self.metrics.directory_up.store(false, Ordering::Relaxed);
        let mut r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        if r.down_since.is_none() {
            r.down_since = Some(Instant::now());
            tracing::warn!(server = %self.names, reason, "directory unreachable; routing on the last answers (serve-stale)");
        }
        r.next_try = Some(Instant::now() + RETRY);
    }

    /// TXT attributes at `rel` as a map; `None` for NXDOMAIN.
    pub async fn txt(&self, rel: &str) -> Result<Option<Txt>, DirError> {
        let a = self.lookup(rel, RecordType::TXT).await?;
        Ok(txt_map(&a))
    }

    /// The hosts an SRV name points at, with their addresses and the SRV port;
    /// `None` for NXDOMAIN, empty when the name exists but no host is eligible.
    /// Resolved once per answer when the additional section gives every
    /// address (the directory sends them); else each time, by asking.
    pub async fn srv(&self, rel: &str) -> Result<Option<Arc<[Peer]>>, DirError> {
        let a = self.lookup(rel, RecordType::SRV).await?;
        if !a.exists {
            return Ok(None);
        }
        if let Some(peers) = a.peers.get() {
            return Ok(Some(peers.clone()));
        }
        let mut out = Vec::new();
        let mut complete = true;
        for r in &a.records {
            let RData::SRV(srv) = &r.data else { continue };
            let target = &srv.target;
            let Some(host) = target
                .iter()
                .next()
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            else {
                continue;
            };
            let addr = a
                .additionals
                .iter()
                .filter(|x| {
                    x.name.eq_case(target) || x.name.to_lowercase() == target.to_lowercase()
                })
                .find_map(|x| match &x.data {
                    RData::A(v4) => Some(IpAddr::V4(v4.0)),
                    RData::AAAA(v6) => Some(IpAddr::V6(v6.0)),
                    _ => None,
                });
            let addr = match addr {
                Some(a) => a,
                None => {
                    complete = false;
                    match self.address(&host).await? {
                        Some(a) => a,
                        None => continue,
                    }
                }
            };
            out.push(Peer {
                host,
                addr: SocketAddr::new(addr, srv.port),
            });
        }
        let peers: Arc<[Peer]> = out.into();
        if complete {
            let _ = a.peers.set(peers.clone());
        }
        Ok(Some(peers))
    }

    /// A host's first address from `HOST.node.Z`.
    pub async fn address(&self, host: &str) -> Result<Option<IpAddr>, DirError> {
        let rel = format!("{host}.{}", schema::NODE);
        let a = self.lookup(&rel, RecordType::A).await?;
        if let Some(ip) = a.records.iter().find_map(|r| match &r.data {
            RData::A(v4) => Some(IpAddr::V4(v4.0)),
            _ => None,
        }) {
            return Ok(Some(ip));
        }
        let a = self.lookup(&rel, RecordType::AAAA).await?;
        Ok(a.records.iter().find_map(|r| match &r.data {
            RData::AAAA(v6) => Some(IpAddr::V6(v6.0)),
            _ => None,
        }))
    }

    /// Every address of a host (`HOST.node.Z` A and AAAA).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DirError> {
        let rel = format!("{host}.{}", schema::NODE);
        let mut out = Vec::new();
        for t in [RecordType::A, RecordType::AAAA] {
            for r in &self.lookup(&rel, t).await?.records {
                match &r.data {
                    RData::A(v4) => out.push(IpAddr::V4(v4.0)),
                    RData::AAAA(v6) => out.push(IpAddr::V6(v6.0)),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// A host's cluster listener (`HOST._switchboard._tcp.Z`).
    pub async fn cluster_endpoint(&self, host: &str) -> Result<Option<Peer>, DirError> {
        let rel = format!("{host}._{}.{}", schema::SWITCHBOARD_SERVICE, schema::TCP);
        Ok(self
            .srv(&rel)
            .await?
            .and_then(|v| v.first().cloned())
            .filter(|p| p.addr.port() != 0))
    }

    /// Whether a host is marked available (`available=1` in its node TXT); `None` if unknown.
    pub async fn host_available(&self, host: &str) -> Result<Option<bool>, DirError> {
        Ok(self
            .txt(&format!("{host}.{}", schema::NODE))
            .await?
            .map(|t| t.get(schema::txt::AVAILABLE).map(String::as_str) != Some("0")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A DNS server on loopback that answers every query NXDOMAIN (or, when
    /// `silent`, never), counting the queries it gets.
    fn server(silent: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                seen.fetch_add(1, Ordering::SeqCst);
                if silent || n < 12 {
                    continue;
                }
                let mut reply = buf[..n].to_vec();
                reply[2] = 0x84 | (reply[2] & 0x01); // QR, AA, RD as asked
                reply[3] = 0x03; // NXDOMAIN
                reply[6..12].fill(0); // no answer, authority or additional (drops the OPT)
                let q_end = 12 + reply[12..].iter().position(|&b| b == 0).unwrap_or(0) + 5;
                reply.truncate(q_end.min(n));
                let _ = sock.send_to(&reply, from);
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn lookups_take_the_servers_in_turn_and_skip_one_that_is_silent() {
        let (a, at_a) = server(false);
        let (b, at_b) = server(false);
        let dir = DirectoryClient::new(&[a, b], "z.", Arc::default()).unwrap();
        for i in 0..10 {
            let ans = dir.lookup(&format!("n{i}"), RecordType::A).await.unwrap();
            assert!(!ans.exists);
        }
        assert_eq!(at_a.load(Ordering::SeqCst), 5);
        assert_eq!(at_b.load(Ordering::SeqCst), 5);

        let (quiet, at_quiet) = server(true);
        let (c, at_c) = server(false);
        let dir = DirectoryClient::new(&[quiet, c], "z.", Arc::default()).unwrap();
        let mut asked_quiet = 0;
        for i in 0..10 {
            let ans = dir.lookup(&format!("n{i}"), RecordType::A).await.unwrap();
            assert!(!ans.exists, "every lookup answered");
            if i == 0 {
                asked_quiet = at_quiet.load(Ordering::SeqCst);
            }
        }
        // The silent server cost the first lookup one timeout (500 ms), then
        // was left alone.
        assert!(asked_quiet > 0);
        assert_eq!(at_quiet.load(Ordering::SeqCst), asked_quiet);
        assert_eq!(at_c.load(Ordering::SeqCst), 10);

        let dir = DirectoryClient::new(&[quiet], "z.", Arc::default()).unwrap();
        let e = dir.lookup("x", RecordType::A).await.unwrap_err();
        assert!(e.to_string().contains(&quiet.to_string()), "{e}");
    }
}
