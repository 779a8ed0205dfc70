//! Session keys for calls between hosts (SPEC "Session keys"; the handshake
//! itself is `switchboard_proto::session`).
//!
//! As a caller, this host keeps one session per peer it calls, made by one
//! handshake (`POST /switchboard/session`, signed with the host key) and
//! renewed a minute before its hour is up; calls are then signed with
//! `hmac-sha256` under it. As the answering host, it keeps the sessions
//! others made with it, by id. On every directory change both kinds are
//! checked again: a session whose peer (or this host) was removed, got another
//! key or was marked unavailable is dropped at once. A caller whose session
//! the peer does not know (it restarted) handshakes again and resends.
//! `--cluster-auth ed25519` signs every call with the host key instead; both
//! kinds are always accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Limited};
use switchboard_proto::model::PublicKey;
use switchboard_proto::schema;
use switchboard_proto::session::{self, Accept, HandshakeError, Initiator, Key};
use switchboard_proto::sign::Signer;
use switchboard_proto::time::unix_secs;

use crate::directory::answers::{DirectoryClient, Peer};
use crate::identity::{self, Identity, KeyInfo};
use crate::metrics::{Metrics, SessionCounters};
use crate::outbound::client::{Client, SendError};
use crate::reply::REASON;

/// How a sidecar signs its calls to other hosts (`run --cluster-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterAuth {
    /// One handshake per peer, then HMAC-SHA256 under the session key.
    #[default]
    Session,
    /// One ed25519 signature per call.
    Ed25519,
}

impl std::str::FromStr for ClusterAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "session" => Ok(Self::Session),
            "ed25519" => Ok(Self::Ed25519),
            _ => Err(format!("{s:?} is not session or ed25519")),
        }
    }
}

/// A new session is made this long before the current one expires.
const RENEW_BEFORE_SECS: u64 = 60;
/// After a failed handshake, calls to that peer are signed with ed25519 this long.
const HANDSHAKE_BACKOFF: Duration = Duration::from_secs(5);
/// Sessions one calling host may hold here at once; its oldest goes first.
const PER_CALLER: usize = 16;
/// Sessions this host answers for at once, from all callers.
const MAX_INCOMING: usize = 65_536;
/// Largest handshake answer read.
const MAX_ANSWER: usize = 4096;

/// A session this host made with a peer, for its calls to that peer.
pub struct OutSession {
    pub id: String,
    pub key: Key,
    pub expires: u64,
    /// The peer's cluster address when the session was made.
    addr: std::net::SocketAddr,
    /// The fingerprint of the key the directory published for the peer.
    peer_fpr: String,
}

/// A session another host made with this one.
pub struct InSession {
    pub key: Key,
    pub caller_fpr: String,
    pub caller_host: String,
    pub expires: u64,
}

/// Why a session-signed call is refused before its signature is checked.
#[derive(Debug, thiserror::Error)]
pub enum SessionRefusal {
    #[error("session {0:?} is not known here (this host restarted, or the directory removed, changed or disabled one of the two hosts): make a new session")]
    Unknown(String),
    #[error("session {0:?} expired: make a new session")]
    Expired(String),
}

impl SessionRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown(_) => "unknown-session",
            Self::Expired(_) => "session-expired",
        }
    }
}

/// Both tables of sessions, and how this host signs.
pub struct Sessions {
    pub auth: ClusterAuth,
    identity: Arc<Identity>,
    dir: Arc<DirectoryClient>,
    metrics: Arc<Metrics>,
    out: Mutex<HashMap<String, Arc<OutSession>>>,
    /// One handshake at a time per peer; calls wait for it.
    handshaking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Peers whose last handshake failed, until when to sign with ed25519.
    backoff: Mutex<HashMap<String, Instant>>,
    incoming: Mutex<HashMap<String, Arc<InSession>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    pub fn new(
        auth: ClusterAuth,
        identity: Arc<Identity>,
        dir: Arc<DirectoryClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sessions {
            auth,
            identity,
            dir,
            metrics,
            out: Mutex::default(),
            handshaking: Mutex::default(),
            backoff: Mutex::default(),
            incoming: Mutex::default(),
        }
    }

    /// The counters handshakes and signed calls are counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn fresh_out(&self, peer: &Peer, now: u64) -> Option<Arc<OutSession>> {
        lock(&self.out)
            .get(&peer.host)
            .filter(|s| s.addr == peer.addr && s.expires > now + RENEW_BEFORE_SECS)
            .cloned()
    }

    /// The session to sign a call to `peer` with, made now if there is none
    /// (or it is within a minute of its end). `None`: sign with ed25519 (the
    /// mode, or the peer's last handshake failed a moment ago).
    pub async fn for_peer(&self, client: &Client, peer: &Peer) -> Option<Arc<OutSession>> {
        if self.auth == ClusterAuth::Ed25519 {
            return None;
        }
        if let Some(s) = self.fresh_out(peer, unix_secs()) {
            return Some(s);
        }
        let gate = lock(&self.handshaking)
            .entry(peer.host.clone())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(s) = self.fresh_out(peer, unix_secs()) {
            return Some(s);
        }
        if lock(&self.backoff)
            .get(&peer.host)
            .is_some_and(|until| *until > Instant::now())
        {
            return None;
        }
        match self.handshake(client, peer).await {
            Ok(s) => {
                let s = Arc::new(s);
                SessionCounters::add(&self.metrics.sessions.handshakes_made);
                tracing::debug!(peer = %peer.host, session = %s.id, "session made");
                lock(&self.out).insert(peer.host.clone(), s.clone());
                lock(&self.backoff).remove(&peer.host);
                Some(s)
            }
            Err(e) => {
                tracing::warn!(peer = %peer.host, addr = %peer.addr, error = %e, "session handshake failed; signing calls to it with ed25519 for {} s", HANDSHAKE_BACKOFF.as_secs());
                lock(&self.backoff).insert(peer.host.clone(), Instant::now() + HANDSHAKE_BACKOFF);
                None
            }
        }
    }

    /// Drops the session with `peer` if it is still `id` (the peer refused it).
    pub fn forget(&self, host: &str, id: &str) {
        let mut out = lock(&self.out);
        if out.get(host).is_some_and(|s| s.id == id) {
            out.remove(host);
            SessionCounters::add(&self.metrics.sessions.dropped);
        }
    }

    /// The key the directory publishes for `host` (its node TXT `key=`), and
    /// whether it is available.
    async fn published_key(&self, host: &str) -> Result<Option<(PublicKey, bool)>, String> {
        let attrs = self
            .dir
            .txt(&format!("{host}.{}", schema::NODE))
            .await
            .map_err(|e| e.to_string())?;
        Ok(attrs.and_then(|a| {
            let key = a.get(schema::txt::KEY)?.parse::<PublicKey>().ok()?;
            let available = a.get(schema::txt::AVAILABLE).map(String::as_str) != Some("0");
            Some((key, available))
        }))
    }

    /// One handshake with `peer`: a signed `POST /switchboard/session` with
    /// this host's share; the answer checked against the key the directory
    /// publishes for `peer.host`.
    /// The handshake call to the peer at `addr`, signed with the host key.
    fn hello_request(
        &self,
        addr: &str,
        body: &[u8],
    ) -> Result<Request<crate::body::BoxBody>, String> {
        let uri = Uri::from_static(session::PATH);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(addr).map_err(|e| e.to_string())?,
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Signer {
            key: &self.identity.key,
            keyid: &self.identity.fingerprint,
        }
        .sign(&Method::POST, &uri, &mut headers, body, unix_secs())
        .map_err(|e| e.to_string())?;
        SessionCounters::add(&self.metrics.sessions.signed_ed25519);
        let mut req = Request::new(
            http_body_util::Full::new(Bytes::copy_from_slice(body))
                .map_err(|e| match e {})
                .boxed(),
        );
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }

    async fn handshake(&self, client: &Client, peer: &Peer) -> Result<OutSession, String> {
        let (key, _) = self
            .published_key(&peer.host)
            .await?
            .ok_or_else(|| format!("the directory publishes no key for {}", peer.host))?;
        let verifying = key
            .verifying_key()
            .map_err(|_| format!("the key of {} is not a valid ed25519 key", peer.host))?;
        let init = Initiator::new();
        let body = serde_json::to_vec(&init.hello()).map_err(|e| e.to_string())?;
        let addr = peer.addr.to_string();
        // A pooled connection the peer closed (it restarted) a moment ago may
        // take the call and die under it: once more, signed anew, on a new one
        // (the pool may hold more connections to the process that went away).
        let mut attempts = 0;
        let resp = loop {
            attempts += 1;
            let req = self.hello_request(&addr, &body)?;
            let sent = if attempts == 1 {
                client.send_peer(&peer.host, &addr, req).await
            } else {
                client.send_peer_fresh(&peer.host, &addr, req).await
            };
            match sent {
                Ok(r) => break r,
                Err(SendError::Http(e)) if attempts == 1 && e.is_incomplete_message() => {
                    tracing::debug!(peer = %peer.host, error = %e, "handshake met a closed connection; again on another");
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let status = resp.status();
        let reason = resp
            .headers()
            .get(REASON)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let answer = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!(
                "{} answered HTTP {} {reason}: {}",
                peer.host,
                status.as_u16(),
                String::from_utf8_lossy(&answer).trim()
            ));
        }
        let s = init
            .finish(
                &answer,
                &self.identity.fingerprint,
                &peer.host,
                &verifying,
                unix_secs(),
            )
            .map_err(|e| e.to_string())?;
        Ok(OutSession {
            id: s.id,
            key: s.key,
            expires: s.expires,
            addr: peer.addr,
            peer_fpr: key.fingerprint(),
        })
    }

    /// Answers a handshake from `caller` (whose ed25519 signature on the call
    /// was checked): a new session kept here, and the answer to send.
    pub fn answer(&self, body: &[u8], caller: &KeyInfo) -> Result<Accept, HandshakeError> {
        let caller_fpr = caller.key.fingerprint();
        let now = unix_secs();
        let (accept, s) = session::respond(
            body,
            &caller_fpr,
            &self.identity.key,
            &self.identity.fingerprint,
            now,
        )?;
        let mut incoming = lock(&self.incoming);
        if incoming.len() >= MAX_INCOMING {
            incoming.retain(|_, s| s.expires > now);
        }
        let mine: Vec<(String, u64)> = incoming
            .iter()
            .filter(|(_, s)| s.caller_fpr == caller_fpr)
            .map(|(id, s)| (id.clone(), s.expires))
            .collect();
        if mine.len() >= PER_CALLER {
            if let Some((oldest, _)) = mine.iter().min_by_key(|(_, e)| *e) {
                incoming.remove(oldest);
            }
        }
        if incoming.len() >= MAX_INCOMING {
            return Err(HandshakeError::Malformed(format!(
                "this host holds {MAX_INCOMING} sessions; try again later"
            )));
        }
        incoming.insert(
            s.id,
            Arc::new(InSession {
                key: s.key,
                caller_fpr,
                caller_host: caller.host.clone(),
                expires: s.expires,
            }),
        );
        SessionCounters::add(&self.metrics.sessions.handshakes_answered);
        Ok(accept)
    }

    /// The session a call names (`keyid`), if it is known and not expired.
    pub fn incoming(&self, id: &str, now: u64) -> Result<Arc<InSession>, SessionRefusal> {
        let mut incoming = lock(&self.incoming);
        match incoming.get(id) {
            None => Err(SessionRefusal::Unknown(id.to_string())),
            Some(s) if s.expires < now => {
                incoming.remove(id);
                Err(SessionRefusal::Expired(id.to_string()))
            }
            Some(s) => Ok(s.clone()),
        }
    }

    /// Drops an incoming session (its caller is no longer who it was).
    pub fn drop_incoming(&self, id: &str) {
        if lock(&self.incoming).remove(id).is_some() {
            SessionCounters::add(&self.metrics.sessions.dropped);
        }
    }

    /// Sessions held now: (made with peers, answered for callers).
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.out).len(), lock(&self.incoming).len())
    }

    /// Checks every session against the directory as it is now: a session
    /// whose peer or caller was removed, has another key or is marked
    /// unavailable, or any session if this host is, is dropped; so are expired
    /// ones. An unanswered lookup drops nothing (the directory may be away).
    pub async fn recheck(&self) {
        let now = unix_secs();
        let me = identity::lookup(&self.dir, &self.identity.fingerprint).await;
        let me_ok = match me {
            Ok(Some(info)) => !matches!(
                self.dir.host_available(&info.host).await,
                Ok(Some(false)) | Ok(None)
            ),
            Ok(None) => false,
            Err(_) => true,
        };
        let mut gone: Vec<String> = Vec::new();
        let outs: Vec<(String, Arc<OutSession>)> = lock(&self.out)
            .iter()
            .map(|(h, s)| (h.clone(), s.clone()))
            .collect();
        for (host, s) in outs {
            let keep = me_ok
                && s.expires > now
                && match self.published_key(&host).await {
                    Ok(Some((key, available))) => available && key.fingerprint() == s.peer_fpr,
                    Ok(None) => false,
                    Err(_) => true,
                };
            if !keep {
                tracing::info!(peer = %host, session = %s.id, "session dropped: the directory changed");
                self.forget(&host, &s.id);
            }
        }
        let ins: Vec<(String, Arc<InSession>)> = lock(&self.incoming)
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut checked: HashMap<String, bool> = HashMap::new();
        for (id, s) in ins {
            let caller_ok = match checked.get(&s.caller_fpr) {
                Some(ok) => *ok,
                None => {
                    let ok = match identity::lookup(&self.dir, &s.caller_fpr).await {
                        Ok(Some(info)) if info.host == s.caller_host => !matches!(
                            self.dir.host_available(&info.host).await,
                            Ok(Some(false)) | Ok(None)
                        ),
                        Ok(_) => false,
                        Err(_) => true,
                    };
                    checked.insert(s.caller_fpr.clone(), ok);
                    ok
                }
            };
            if !(me_ok && caller_ok && s.expires >= now) {
                tracing::info!(caller = %s.caller_host, session = %id, "session dropped: the directory changed");
                gone.push(id);
            }
        }
        for id in gone {
            self.drop_incoming(&id);
        }
    }

    /// Re-checks the sessions on every directory change (and once a minute,
    /// for expiry), for as long as the process runs.
    pub async fn watch(self: Arc<Self>) {
        let mut changes = self.dir.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            self.recheck().await;
        }
    }
}
