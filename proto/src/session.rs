//! Session keys between two hosts (SPEC "Session keys"): one handshake, then
//! RFC 9421 `hmac-sha256` signatures under the key it gives (`sign::HmacSigner`).
//!
//! A (the caller) sends `POST /switchboard/session`, signed with its host key
//! as any call, with a [`Hello`]: its ephemeral X25519 share. B answers an
//! [`Accept`]: its own ephemeral share, a session id, the expiry, and an
//! ed25519 signature by B's host key over the [`transcript`]. A checks that
//! signature against the key the directory publishes for B. Both compute the
//! X25519 shared secret and derive the session key with HKDF-SHA256 (salt: the
//! domain label; info: the SHA-256 of the transcript), so the key is bound to
//! both shares, both host keys' fingerprints, the id and the expiry. The
//! ephemeral secrets live only for the handshake (zeroized when dropped).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Where a host asks another for a session.
pub const PATH: &str = "/switchboard/session";
/// Domain separation for the transcript signature and the key derivation.
pub const DOMAIN: &[u8] = b"switchboard session v1";
/// How long a session lasts.
pub const LIFETIME_SECS: u64 = 3600;
/// How far an `Accept`'s expiry may lie beyond `now + LIFETIME_SECS` (clock skew).
const SKEW_SECS: u64 = 30;

/// The caller's first message (JSON body of `POST /switchboard/session`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The caller's ephemeral X25519 public share, base64 (32 bytes).
    pub share: String,
}

/// The answer (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    /// The answering host's ephemeral X25519 public share, base64 (32 bytes).
    pub share: String,
    /// The session id: the `keyid` of every call signed under the session.
    pub session: String,
    /// Unix seconds after which the session is not accepted.
    pub expires: u64,
    /// Ed25519 signature by the answering host's key over the transcript, base64.
    pub signature: String,
}

/// A session key, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// An agreed session: its id, key and expiry (unix seconds).
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub key: Key,
    pub expires: u64,
}

/// Why a handshake message was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    #[error("the session answer's signature does not verify with the key the directory publishes for {0}")]
    BadSignature(String),
    #[error("the session answer expires at {expires}, not within the next {LIFETIME_SECS} s (now {now})")]
    BadExpiry { expires: u64, now: u64 },
    #[error("the X25519 exchange gave no shared secret (a low-order share)")]
    NotContributory,
}

impl HandshakeError {
    /// A stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "bad-handshake",
            Self::BadSignature(_) => "bad-signature",
            Self::BadExpiry { .. } => "session-expired",
            Self::NotContributory => "bad-handshake",
        }
    }
}

fn share_bytes(b64: &str) -> Result<[u8; 32], HandshakeError> {
    STANDARD
        .decode(b64)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| HandshakeError::Malformed("a share is 32 bytes in base64".into()))
}

/// Whether `id` is a session id as this module makes them: 1..=64 of `A-Za-z0-9-_`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses a [`Hello`] body.
pub fn parse_hello(body: &[u8]) -> Result<([u8; 32], Hello), HandshakeError> {
    let hello: Hello = serde_json::from_slice(body).map_err(|e| {
        HandshakeError::Malformed(format!("the body is {{\"share\": BASE64}} ({e})"))
    })?;
    Ok((share_bytes(&hello.share)?, hello))
}

/// Parses an [`Accept`] body (not yet verified).
pub fn parse_accept(body: &[u8]) -> Result<([u8; 32], Signature, Accept), HandshakeError> {
    let accept: Accept = serde_json::from_slice(body).map_err(|e| {
        HandshakeError::Malformed(format!(
            "the answer is {{\"share\", \"session\", \"expires\", \"signature\"}} ({e})"
        ))
    })?;
    let share = share_bytes(&accept.share)?;
    if !valid_id(&accept.session) {
        return Err(HandshakeError::Malformed(
            "the session id is 1 to 64 of A-Z a-z 0-9 - _".into(),
        ));
    }
    let signature = STANDARD
        .decode(&accept.signature)
        .ok()
        .and_then(|v| Signature::from_slice(&v).ok())
        .ok_or_else(|| HandshakeError::Malformed("the signature is 64 bytes in base64".into()))?;
    Ok((share, signature, accept))
}

/// What B signs and both derive from: the domain label, then each field
/// length-prefixed (so no two field lists give the same bytes).
pub fn transcript(
    caller_share: &[u8; 32],
    answer_share: &[u8; 32],
    caller_fpr: &str,
    answer_fpr: &str,
    id: &str,
    expires: u64,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(DOMAIN.len() + 64 + 120 + 8 + 40);
    t.extend_from_slice(DOMAIN);
    let fields: [&[u8]; 6] = [
        caller_share,
        answer_share,
        caller_fpr.as_bytes(),
        answer_fpr.as_bytes(),
        id.as_bytes(),
        &expires.to_be_bytes(),
    ];
    for f in fields {
        t.extend_from_slice(&(f.len() as u32).to_be_bytes());
        t.extend_from_slice(f);
    }
    t
}

/// HKDF-SHA256 from the X25519 shared secret, bound to the transcript.
pub fn derive(shared: &[u8; 32], transcript: &[u8]) -> Key {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(DOMAIN), shared);
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 255 * 32 limit.
    let _ = hk.expand(&Sha256::digest(transcript), &mut okm);
    let key = Key(okm);
    okm.zeroize();
    key
}

/// The caller's side of one handshake.
pub struct Initiator {
    secret: x25519_dalek::EphemeralSecret,
    share: [u8; 32],
}

impl Default for Initiator {
    fn default() -> Self {
        Self::new()
    }
}

impl Initiator {
    /// A fresh ephemeral secret.
    pub fn new() -> Self {
        let secret = x25519_dalek::EphemeralSecret::random_from_rng(rand::rngs::OsRng);
        let share = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Initiator { secret, share }
    }

    /// The message to send.
    pub fn hello(&self) -> Hello {
        Hello {
            share: STANDARD.encode(self.share),
        }
    }

    /// Checks B's answer (`body`) against `peer_key`, the key the directory
    /// publishes for the host called (`peer_host`, for messages), and derives
    /// the session. Consumes the ephemeral secret.
    pub fn finish(
        self,
        body: &[u8],
        my_fpr: &str,
        peer_host: &str,
        peer_key: &VerifyingKey,
        now: u64,
    ) -> Result<Session, HandshakeError> {
        let (share, signature, accept) = parse_accept(body)?;
        let peer_fpr = crate::sign::fingerprint(peer_key);
        let t = transcript(
            &self.share,
            &share,
            my_fpr,
            &peer_fpr,
            &accept.session,
            accept.expires,
        );
        if peer_key.verify_strict(&t, &signature).is_err() {
            return Err(HandshakeError::BadSignature(peer_host.to_string()));
        }
        if accept.expires <= now || accept.expires > now + LIFETIME_SECS + SKEW_SECS {
            return Err(HandshakeError::BadExpiry {
                expires: accept.expires,
                now,
            });
        }
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(share));
        if !shared.was_contributory() {
            return Err(HandshakeError::NotContributory);
        }
        Ok(Session {
            key: derive(shared.as_bytes(), &t),
            id: accept.session,
            expires: accept.expires,
        })
    }
}

/// The answering side: from the caller's [`Hello`] body and its fingerprint
/// (already authenticated by the call's ed25519 signature), a new session and
/// the [`Accept`] to send back.
pub fn respond(
    body: &[u8],
    caller_fpr: &str,
    my_key: &SigningKey,
    my_fpr: &str,
    now: u64,
) -> Result<(Accept, Session), HandshakeError> {
    let (caller_share, _) = parse_hello(body)?;
    let secret = x25519_dalek::EphemeralSecret::random_from_rng(rand::rngs::OsRng);
    let share = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
    let expires = now + LIFETIME_SECS;
    let t = transcript(&caller_share, &share, caller_fpr, my_fpr, &id, expires);
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(caller_share));
    if !shared.was_contributory() {
        return Err(HandshakeError::NotContributory);
    }
    let accept = Accept {
        share: STANDARD.encode(share),
        session: id.clone(),
        expires,
        signature: STANDARD.encode(my_key.sign(&t).to_bytes()),
    };
    Ok((
        accept,
        Session {
            key: derive(shared.as_bytes(), &t),
            id,
            expires,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn keys() -> (SigningKey, SigningKey) {
        (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        )
    }

    fn fpr(k: &SigningKey) -> String {
        crate::sign::fingerprint(&k.verifying_key())
    }

    #[test]
    fn both_sides_derive_the_same_key() {
        let (a, b) = keys();
        let init = Initiator::new();
        let hello = serde_json::to_vec(&init.hello()).unwrap();
        let (accept, theirs) = respond(&hello, &fpr(&a), &b, &fpr(&b), NOW).unwrap();
        let body = serde_json::to_vec(&accept).unwrap();
        let ours = init
            .finish(&body, &fpr(&a), "b", &b.verifying_key(), NOW)
            .unwrap();
        assert_eq!(ours.key.0, theirs.key.0);
        assert_eq!(
            (ours.id.as_str(), ours.expires),
            (theirs.id.as_str(), NOW + 3600)
        );
        assert!(valid_id(&ours.id));
        // Another handshake, another key and id.
        let init = Initiator::new();
        let hello = serde_json::to_vec(&init.hello()).unwrap();
        let (again, other) = respond(&hello, &fpr(&a), &b, &fpr(&b), NOW).unwrap();
        assert_ne!(other.key.0, theirs.key.0);
        assert_ne!(again.session, accept.session);
    }

    #[test]
    fn any_change_gives_another_key() {
        let shared = [9u8; 32];
        let (s1, s2) = ([1u8; 32], [2u8; 32]);
        let base = derive(&shared, &transcript(&s1, &s2, "fa", "fb", "id", NOW)).0;
        let variants = [
            transcript(&s2, &s2, "fa", "fb", "id", NOW),
            transcript(&s1, &s1, "fa", "fb", "id", NOW),
            transcript(&s1, &s2, "fx", "fb", "id", NOW),
            transcript(&s1, &s2, "fa", "fx", "id", NOW),
            transcript(&s1, &s2, "fa", "fb", "id2", NOW),
            transcript(&s1, &s2, "fa", "fb", "id", NOW + 1),
            // Moving a byte between fields changes the transcript too.
            transcript(&s1, &s2, "f", "afb", "id", NOW),
        ];
        for t in variants {
            assert_ne!(derive(&shared, &t).0, base);
        }
        assert_ne!(
            derive(&[8u8; 32], &transcript(&s1, &s2, "fa", "fb", "id", NOW)).0,
            base
        );
    }

    #[test]
    fn the_caller_refuses_a_wrong_answer() {
        let (a, b) = keys();
        let answer = |edit: &dyn Fn(&mut Accept)| {
            let init = Initiator::new();
            let hello = serde_json::to_vec(&init.hello()).unwrap();
            let (mut accept, _) = respond(&hello, &fpr(&a), &b, &fpr(&b), NOW).unwrap();
            edit(&mut accept);
            let body = serde_json::to_vec(&accept).unwrap();
            init.finish(&body, &fpr(&a), "b", &b.verifying_key(), NOW)
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(answer(&|_| {}), Ok(()));
        assert_eq!(answer(&|x| x.expires += 1), Err("bad-signature"));
        assert_eq!(answer(&|x| x.session.push('x')), Err("bad-signature"));
        let other = STANDARD.encode([5u8; 32]);
        assert_eq!(answer(&|x| x.share = other.clone()), Err("bad-signature"));
        assert_eq!(answer(&|x| x.session = "a b".into()), Err("bad-handshake"));
        assert_eq!(
            answer(&|x| x.signature = "AAAA".into()),
            Err("bad-handshake")
        );
        // Signed by another key than the directory's for the host called.
        let init = Initiator::new();
        let hello = serde_json::to_vec(&init.hello()).unwrap();
        let (accept, _) = respond(&hello, &fpr(&a), &a, &fpr(&b), NOW).unwrap();
        let body = serde_json::to_vec(&accept).unwrap();
        let e = init.finish(&body, &fpr(&a), "b", &b.verifying_key(), NOW);
        assert_eq!(e.unwrap_err().reason(), "bad-signature");
        // An answer for another caller (fingerprint in the transcript).
        let init = Initiator::new();
        let hello = serde_json::to_vec(&init.hello()).unwrap();
        let (accept, _) = respond(&hello, &fpr(&b), &b, &fpr(&b), NOW).unwrap();
        let body = serde_json::to_vec(&accept).unwrap();
        let e = init.finish(&body, &fpr(&a), "b", &b.verifying_key(), NOW);
        assert_eq!(e.unwrap_err().reason(), "bad-signature");
        // Expired by the caller's clock.
        let init = Initiator::new();
        let hello = serde_json::to_vec(&init.hello()).unwrap();
        let (accept, _) = respond(&hello, &fpr(&a), &b, &fpr(&b), NOW).unwrap();
        let body = serde_json::to_vec(&accept).unwrap();
        let e = init.finish(&body, &fpr(&a), "b", &b.verifying_key(), NOW + 3600);
        assert_eq!(e.unwrap_err().reason(), "session-expired");
    }

    #[test]
    fn malformed_hellos_and_low_order_shares() {
        let (a, b) = keys();
        for body in [
            &b""[..],
            b"{}",
            b"{\"share\":\"AAAA\"}",
            b"[1]",
            b"{\"share\":1}",
        ] {
            let e = respond(body, &fpr(&a), &b, &fpr(&b), NOW).unwrap_err();
            assert_eq!(e.reason(), "bad-handshake");
        }
        let zero = serde_json::to_vec(&Hello {
            share: STANDARD.encode([0u8; 32]),
        })
        .unwrap();
        let e = respond(&zero, &fpr(&a), &b, &fpr(&b), NOW).unwrap_err();
        assert!(matches!(e, HandshakeError::NotContributory));
    }
}
