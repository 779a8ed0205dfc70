//! Console logins: the one-time codes a signed `POST /v1/sessions` mints
//! (`admin::sessions`) and the browser sessions the console trades them for
//! (`console`). Held in memory, keyed by the SHA-256 of their secret: a
//! restart signs everyone out, and a memory dump does not hand out sessions.

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
        insert(&self.codes, digest(&code), s).then_some(code)
    }

    /// Trades a code (once) for a session token.
    pub fn redeem(&self, code: &str) -> Result<(String, Session), RedeemError> {
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
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&digest(token))
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    pub fn end(&self, token: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&digest(token));
    }
}
