//! What session keys cost, in-process: `session-handshake N` runs N
//! handshakes (caller and answering host both: two X25519 key pairs and
//! exchanges, one ed25519 signature and its check, HKDF) and N calls signed
//! and verified each way (hmac-sha256 under a session key, ed25519 with the
//! host key), and prints "handshake_us hmac_us ed25519_us", microseconds each.

use std::time::Instant;

use ed25519_dalek::SigningKey;
use http::{HeaderMap, Method, Uri};
use switchboard_proto::session::{respond, Initiator};
use switchboard_proto::sign::{self, BodyHash, HmacSigner, Policy, Signer};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .max(1);
    let (a, b) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let (fa, fb) = (
        sign::fingerprint(&a.verifying_key()),
        sign::fingerprint(&b.verifying_key()),
    );
    let now = 1_700_000_000;
    let started = Instant::now();
    let mut last = None;
    for _ in 0..n {
        let init = Initiator::new();
        let hello = serde_json::to_vec(&init.hello()).expect("json");
        let (accept, theirs) = respond(&hello, &fa, &b, &fb, now).expect("answer");
        let body = serde_json::to_vec(&accept).expect("json");
        let ours = init
            .finish(&body, &fa, "b", &b.verifying_key(), now)
            .expect("finish");
        assert_eq!(ours.key.0, theirs.key.0);
        last = Some(ours);
    }
    let handshake = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let session = last.expect("one session");

    let uri: Uri = "http://127.0.0.1:7443/api/diffusion.querycommits"
        .parse()
        .expect("uri");
    let path: Uri = "/api/diffusion.querycommits".parse().expect("uri");
    let hash = BodyHash::of(b"repository=hop");
    let policy = Policy::default();
    let started = Instant::now();
    for _ in 0..n {
        let mut h = HeaderMap::new();
        HmacSigner {
            key: &session.key.0,
            keyid: &session.id,
        }
        .sign_hashed(&Method::POST, &uri, &mut h, &hash, now)
        .expect("sign");
        let p = sign::parse(&h).expect("parse");
        p.verify_hmac_headers(&Method::POST, &path, &h, true, &session.key.0, now, &policy)
            .expect("verify");
    }
    let hmac = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let started = Instant::now();
    for _ in 0..n {
        let mut h = HeaderMap::new();
        Signer {
            key: &a,
            keyid: &fa,
        }
        .sign_hashed(&Method::POST, &uri, &mut h, &hash, now)
        .expect("sign");
        let p = sign::parse(&h).expect("parse");
        p.verify_headers(
            &Method::POST,
            &path,
            &h,
            true,
            &a.verifying_key(),
            now,
            &policy,
        )
        .expect("verify");
    }
    let ed = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("{handshake:.1} {hmac:.1} {ed:.1}");
}
