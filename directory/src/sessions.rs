//! Console logins: the one-time codes a signed `POST /v1/sessions` mints
//! (`admin::sessions`) and the browser sessions the console trades them for
//! (`console`). Held in memory, keyed by the SHA-256 of their secret: a
//! restart signs everyone out, and a memory dump does not hand out sessions.
//! With a shared store (etcd) they live in the store instead, under the same
//! digests, so a login made on one directory server holds on every other
//! (docs/high-availability.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login code may wait to be used.
pub const CODE_TTL: Duration = Duration::from_secs(300);
/// The default and the longest session.
pub const DEFAULT_SESSION_MINUTES: u64 = 60;
pub const MAX_SESSION_MINUTES: u64 = 12 * 60;
/// Codes and sessions held at once (each kind).
const MAX_SESSIONS: usize = 1024;

/// Why a login code did not become a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    /// Never issued, used already, or expired.
    #[error("the login code is unknown, used or expired")]
    Unknown,
    /// The table of sessions is full; the code stays usable.
    #[error("too many console sessions are open")]
    Full,
}

/// Who a session (or a code that will become one) belongs to.
#[derive(Debug, Clone)]
pub struct Session {
    pub admin: String,
    /// The admin key's fingerprint when the session began.
    pub fingerprint: String,
    pub zone: String,
    expires: Instant,
    /// Unix seconds, for display.
    pub expires_unix: u64,
    pub ttl: Duration,
    /// Carried by every change form.
    pub csrf: String,
}

/// Login codes and live sessions, keyed by the SHA-256 of their secret (a
/// memory dump does not hand out sessions).
#[derive(Default)]
pub struct Sessions {
    codes: Mutex<HashMap<[u8; 32], Session>>,
    live: Mutex<HashMap<[u8; 32], Session>>,
    /// The directory whose shared store holds them instead (`in_store`).
    shared: Option<std::sync::Arc<crate::state::Directory>>,
}

/// A code or session as a shared store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    admin: String,
    fingerprint: String,
    zone: String,
    expires_ms: u64,
    ttl_s: u64,
    csrf: String,
}

impl Stored {
    fn of(s: &Session) -> Self {
        Stored {
            admin: s.admin.clone(),
            fingerprint: s.fingerprint.clone(),
            zone: s.zone.clone(),
            expires_ms: s.expires_unix * 1000,
            ttl_s: s.ttl.as_secs(),
            csrf: s.csrf.clone(),
        }
    }

    /// The session, unless it has expired.
    fn session(self) -> Option<Session> {
        let left = self.expires_ms.checked_sub(crate::time::unix_ms())?;
        Some(Session {
            admin: self.admin,
            fingerprint: self.fingerprint,
            zone: self.zone,
            expires: Instant::now() + Duration::from_millis(left),
            expires_unix: self.expires_ms / 1000,
            ttl: Duration::from_secs(self.ttl_s),
            csrf: self.csrf,
        })
    }
}

/// Runs store work from a reactor thread without stalling it (the console's
/// handlers are async; a shared store's calls wait on the network).
fn off_reactor<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn store_key(kind: &str, secret: &str) -> String {
    format!("{kind}/{}", data_encoding::HEXLOWER.encode(&digest(secret)))
}

fn digest(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

fn secret() -> String {
    data_encoding::BASE32_NOPAD
        .encode(&rand::random::<[u8; 20]>())
        .to_ascii_lowercase()
}

/// Inserts unless full of unexpired entries.
fn insert(map: &Mutex<HashMap<[u8; 32], Session>>, key: [u8; 32], s: Session) -> bool {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    m.retain(|_, s| s.expires > now);
    if m.len() >= MAX_SESSIONS {
        return false;
    }
    m.insert(key, s);
    true
}

impl Sessions {
    /// Codes and sessions kept in `dir`'s store (when it shares them).
    pub fn in_store(dir: std::sync::Arc<crate::state::Directory>) -> Self {
        Sessions {
            shared: Some(dir),
            ..Default::default()
        }
    }

    fn put(&self, dir: &crate::state::Directory, kind: &str, secret: &str, s: &Session) -> bool {
        let Ok(value) = serde_json::to_vec(&Stored::of(s)) else {
            return false;
        };
        let key = store_key(kind, secret);
        off_reactor(|| dir.store().put_session(&key, &value, s.expires_unix * 1000))
            .map_err(|e| tracing::warn!(error = %e, "cannot store a console login"))
            .is_ok()
    }

    fn fetch(&self, dir: &crate::state::Directory, kind: &str, secret: &str) -> Option<Session> {
        let key = store_key(kind, secret);
        let bytes = off_reactor(|| dir.store().session(&key))
            .map_err(|e| tracing::warn!(error = %e, "cannot read a console login from the store"))
            .ok()??;
        serde_json::from_slice::<Stored>(&bytes).ok()?.session()
    }

    /// A one-time login code for `admin` on `zone`.
    pub fn mint(
        &self,
        admin: &str,
        fingerprint: &str,
        zone: &str,
        ttl: Duration,
    ) -> Option<String> {
        let code = secret();
        let s = Session {
            admin: admin.to_string(),
            fingerprint: fingerprint.to_string(),
            zone: zone.to_string(),
            expires: Instant::now() + CODE_TTL,
            expires_unix: crate::time::unix_secs() + CODE_TTL.as_secs(),
            ttl,
            csrf: String::new(),
        };
        if let Some(dir) = &self.shared {
            return self.put(dir, "code", &code, &s).then_some(code);
        }
        insert(&self.codes, digest(&code), s).then_some(code)
    }

    /// Trades a code (once) for a session token.
    pub fn redeem(&self, code: &str) -> Result<(String, Session), RedeemError> {
        if let Some(dir) = &self.shared {
            let pending = self.fetch(dir, "code", code).ok_or(RedeemError::Unknown)?;
            // Spent first: of two servers given the same code, one wins.
            let key = store_key("code", code);
            if !off_reactor(|| dir.store().end_session(&key)).unwrap_or(false) {
                return Err(RedeemError::Unknown);
            }
            let token = secret();
            let s = Session {
                expires: Instant::now() + pending.ttl,
                expires_unix: crate::time::unix_secs() + pending.ttl.as_secs(),
                csrf: secret(),
                ..pending
            };
            return if self.put(dir, "live", &token, &s) {
                Ok((token, s))
            } else {
                Err(RedeemError::Full)
            };
        }
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(code);
        let pending = codes
            .get(&key)
            .filter(|p| p.expires > Instant::now())
            .cloned()
            .ok_or(RedeemError::Unknown)?;
        let token = secret();
        let s = Session {
            expires: Instant::now() + pending.ttl,
            expires_unix: crate::time::unix_secs() + pending.ttl.as_secs(),
            csrf: secret(),
            ..pending
        };
        // The code is spent only once the session exists (it stays usable if
        // the table of sessions is full for a moment).
        if !insert(&self.live, digest(&token), s.clone()) {
            return Err(RedeemError::Full);
        }
        codes.remove(&key);
        Ok((token, s))
    }

    pub fn get(&self, token: &str) -> Option<Session> {
        if let Some(dir) = &self.shared {
            return self.fetch(dir, "live", token);
        }
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&digest(token))
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    pub fn end(&self, token: &str) {
        if let Some(dir) = &self.shared {
            let key = store_key("live", token);
            if let Err(e) = off_reactor(|| dir.store().end_session(&key)) {
                tracing::warn!(error = %e, "cannot end a console session in the store; it ends when it expires");
            }
            return;
        }
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&digest(token));
    }
}
