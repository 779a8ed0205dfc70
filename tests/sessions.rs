//! Session keys between hosts (SPEC "Session keys"): real sidecars and curl.
//! The test plays a calling host itself where it must hold a session key: it
//! performs the handshake with the host's key file (`switchboard_proto`'s
//! session module, sent by curl) and signs calls under the key it got.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_proto::session::{Initiator, Session, PATH};
use switchboard_proto::sign::{BodyHash, HmacSigner};
use switchboard_tests::{
    conduit_call, conduit_call_sized, keygen, minimal_zone, run, signed_headers, stdout, unix_now,
    Backend, Directory, Sidecar,
};

/// One curl call: (status, `X-Switchboard-Reason`, body).
fn curl(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o"])
        .arg(dir.path().join("out"))
        .arg("-D")
        .arg(dir.path().join("head"))
        .args(["-w", "%{http_code}", "-X", method]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    if !body.is_empty() {
        std::fs::write(dir.path().join("req"), body).expect("write");
        cmd.arg("--data-binary")
            .arg(format!("@{}", dir.path().join("req").display()))
            .args(["-H", "Content-Type: application/json"]);
    }
    cmd.arg(url);
    let code = stdout(&run(&mut cmd)).trim().parse().unwrap_or(0);
    let head = std::fs::read_to_string(dir.path().join("head")).unwrap_or_default();
    let reason = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-switchboard-reason:")
                .map(|r| r.trim().to_string())
        })
        .unwrap_or_default();
    let out = std::fs::read(dir.path().join("out")).unwrap_or_default();
    (code, reason, out)
}

fn verifying_key(key_file: &Path) -> ed25519_dalek::VerifyingKey {
    let pem = std::fs::read_to_string(key_file).expect("read key");
    <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&pem)
        .expect("pkcs8 key")
        .verifying_key()
}

/// The handshake a calling host makes, by the host whose key is `key_file`
/// with `to`: the session, or the refusal (status, reason).
fn handshake(key_file: &Path, to: &Sidecar) -> Result<Session, (u16, String)> {
    let init = Initiator::new();
    let body = serde_json::to_vec(&init.hello()).expect("json");
    let url = to.cluster_url(PATH);
    let headers = signed_headers(key_file, "POST", &url, &body, unix_now());
    let (code, reason, answer) = curl("POST", &url, &headers, &body);
    if code != 200 {
        return Err((code, reason));
    }
    let me = switchboard_proto::sign::fingerprint(&verifying_key(key_file));
    let session = init
        .finish(&answer, &me, &to.name, &verifying_key(&to.key), unix_now())
        .expect("a good answer");
    Ok(session)
}

/// Headers of a GET of `url` signed under `session`.
fn session_signed(session: &Session, url: &str) -> Vec<(String, String)> {
    session_signed_call(session, "GET", url, b"")
}

/// Headers of `method url` with `body`, signed under `session`.
fn session_signed_call(
    session: &Session,
    method: &str,
    url: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let uri: http::Uri = url.parse().expect("url");
    let method = http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut h = http::HeaderMap::new();
    HmacSigner {
        key: &session.key.0,
        keyid: &session.id,
    }
    .sign_hashed(&method, &uri, &mut h, &BodyHash::of(body), unix_now())
    .expect("sign");
    h.iter()
        .filter(|(k, _)| *k != http::header::HOST)
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect()
}

/// The body of the Conduit calls the tests make with POST.
const CALL: &[u8] = br#"{"params":{}}"#;

/// A session-signed Conduit call on `to`'s cluster listener, made twice: a GET
/// (which the listener leaves to hyper) and a POST with a body (which its short
/// way takes). Both must get the same answer: (status, reason).
fn session_call(session: &Session, to: &Sidecar) -> (u16, String) {
    let url = to.cluster_url("/api/user.whoami");
    let (code, reason, _) = curl("GET", &url, &session_signed(session, &url), b"");
    let headers = session_signed_call(session, "POST", &url, CALL);
    let (post_code, post_reason, _) = curl("POST", &url, &headers, CALL);
    if (code, &reason) != (post_code, &post_reason) {
        return (
            0,
            format!("GET: {code} {reason}, POST: {post_code} {post_reason}"),
        );
    }
    (code, reason)
}

/// Sends `POST /api/user.whoami` to `to`'s cluster listener with `headers` and a
/// declared body of `declared` bytes, none of which is sent; the answer (head
/// and body) that comes back within 10 s, or as much of it as did.
fn head_only(to: &Sidecar, headers: &[(String, String)], declared: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(to.cluster).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = format!(
        "POST /api/user.whoami HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n",
        to.cluster
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return text,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A host the test plays (enrolled, no sidecar), and the host it calls.
struct Pair {
    d: Directory,
    alpha_key: std::path::PathBuf,
    beta: Sidecar,
    _backend: Backend,
    _keys: tempfile::TempDir,
}

fn pair() -> Pair {
    let d = Directory::with_zone(minimal_zone, &[]);
    let keys = tempfile::tempdir().expect("tempdir");
    let (alpha_key, alpha_pub, _) = keygen(keys.path(), "alpha");
    d.cli_ok(&[
        "host",
        "add",
        "alpha",
        "--addr",
        "127.0.0.1",
        "--pubkey",
        &alpha_pub,
        "--roles",
        "web",
    ]);
    let backend = Backend::start("beta");
    let beta = d.sidecar("beta", "web", Some(&backend));
    Pair {
        d,
        alpha_key,
        beta,
        _backend: backend,
        _keys: keys,
    }
}

/// Polls session calls until one is refused (401); the time from `since`.
fn refused_after(p: &Pair, session: &Session, since: Instant) -> (Duration, String) {
    let mut refusal = String::new();
    p.d.wait_for("the session call to be refused", || {
        let (code, reason) = session_call(session, &p.beta);
        refusal = reason;
        code == 401
    });
    (since.elapsed(), refusal)
}

#[test]
fn a_session_of_a_host_since_disabled_is_refused_within_a_second() {
    let p = pair();
    let session = handshake(&p.alpha_key, &p.beta).expect("handshake");
    assert_eq!(session_call(&session, &p.beta), (200, String::new()));
    p.d.cli_ok(&["host", "disable", "alpha"]);
    let acked = Instant::now();
    let (took, reason) = refused_after(&p, &session, acked);
    assert!(
        took <= Duration::from_secs(1),
        "refused only after {took:?}"
    );
    assert!(
        ["unknown-session", "host-unavailable"].contains(&reason.as_str()),
        "{reason}"
    );
    // A disabled host gets no new session either.
    let refused = handshake(&p.alpha_key, &p.beta).expect_err("no session for a disabled host");
    assert_eq!(refused, (401, "host-unavailable".to_string()));
    p.d.cli_ok(&["host", "enable", "alpha"]);
    p.d.wait_for("a new session once enabled", || {
        handshake(&p.alpha_key, &p.beta).is_ok_and(|s| session_call(&s, &p.beta).0 == 200)
    });
    // The old one stays gone: it was dropped with the change.
    assert_eq!(
        session_call(&session, &p.beta),
        (401, "unknown-session".into())
    );
}

#[test]
fn a_session_of_a_host_whose_key_changed_is_refused_within_a_second() {
    let p = pair();
    let session = handshake(&p.alpha_key, &p.beta).expect("handshake");
    assert_eq!(session_call(&session, &p.beta).0, 200);
    let keys = tempfile::tempdir().expect("tempdir");
    let (new_key, new_pub, _) = keygen(keys.path(), "alpha2");
    p.d.cli_ok(&["host", "rm", "alpha"]);
    p.d.cli_ok(&[
        "host",
        "add",
        "alpha",
        "--addr",
        "127.0.0.1",
        "--pubkey",
        &new_pub,
        "--roles",
        "web",
    ]);
    let acked = Instant::now();
    let (took, reason) = refused_after(&p, &session, acked);
    assert!(
        took <= Duration::from_secs(1),
        "refused only after {took:?}"
    );
    assert!(
        ["unknown-session", "unknown-key"].contains(&reason.as_str()),
        "{reason}"
    );
    // The old key makes no new session; the new one does.
    assert_eq!(
        handshake(&p.alpha_key, &p.beta).expect_err("old key").0,
        401
    );
    let fresh = handshake(&new_key, &p.beta).expect("new key");
    assert_eq!(session_call(&fresh, &p.beta).0, 200);
}

#[test]
fn a_replayed_session_call_is_refused() {
    let p = pair();
    let session = handshake(&p.alpha_key, &p.beta).expect("handshake");
    let url = p.beta.cluster_url("/api/user.whoami");
    let headers = session_signed(&session, &url);
    let (first, _, body) = curl("GET", &url, &headers, b"");
    assert_eq!(first, 200, "{}", String::from_utf8_lossy(&body));
    let (again, reason, _) = curl("GET", &url, &headers, b"");
    assert_eq!((again, reason.as_str()), (401, "replayed"));
    // Tampered (another path under the same signature) and unknown sessions too.
    let other = p.beta.cluster_url("/api/user.query");
    let (code, reason, _) = curl("GET", &other, &session_signed(&session, &url), b"");
    assert_eq!((code, reason.as_str()), (401, "bad-signature"));
    let forged = Session {
        id: "no-such-session".into(),
        ..session.clone()
    };
    assert_eq!(
        session_call(&forged, &p.beta),
        (401, "unknown-session".into())
    );
    // A session key signs only for the host it was made with.
    let (code, reason, _) = curl(
        "GET",
        &url,
        &session_signed(&session, &p.d.server_url()),
        b"",
    );
    assert_eq!((code, reason.as_str()), (401, "bad-signature"));

    // The same on the listener's short way (a POST with a body), and a body
    // other than the one signed.
    let headers = session_signed_call(&session, "POST", &url, CALL);
    let (first, _, body) = curl("POST", &url, &headers, CALL);
    assert_eq!(first, 200, "{}", String::from_utf8_lossy(&body));
    let (again, reason, _) = curl("POST", &url, &headers, CALL);
    assert_eq!((again, reason.as_str()), (401, "replayed"));
    let headers = session_signed_call(&session, "POST", &url, CALL);
    let (code, reason, _) = curl("POST", &url, &headers, br#"{"params":{"x":1}}"#);
    assert_eq!((code, reason.as_str()), (401, "changed-body"));
    let headers = session_signed_call(&session, "POST", &other, CALL);
    let (code, reason, _) = curl("POST", &url, &headers, CALL);
    assert_eq!((code, reason.as_str()), (401, "bad-signature"));
    let headers = session_signed_call(&forged, "POST", &url, CALL);
    let (code, reason, _) = curl("POST", &url, &headers, CALL);
    assert_eq!((code, reason.as_str()), (401, "unknown-session"));
    // The head is checked before the body is read: a refused caller gets its
    // answer without sending the 60 KB it declared.
    let answer = head_only(&p.beta, &headers, 60_000);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("unknown-session"), "{answer}");
    let headers = session_signed_call(&session, "POST", &p.d.server_url(), CALL);
    let (code, reason, _) = curl("POST", &url, &headers, CALL);
    assert_eq!((code, reason.as_str()), (401, "bad-signature"));
}

/// Writes `request` `times` times on one connection to `to`'s cluster
/// listener, then reads until the listener closes it (or 10 s pass):
/// what came back, and whether it was closed.
fn pipelined(to: &Sidecar, request: &str, times: usize) -> (String, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(to.cluster).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.repeat(times).as_bytes())
        .expect("write");
    let mut out = Vec::new();
    let closed = loop {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            // A reset after the answer is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn a_refused_call_ends_its_connection() {
    // An unsigned caller gets one refusal per connection, on hyper's path (a
    // GET) as on the short way (a POST with a body): it cannot pipeline more.
    let p = pair();
    let host = p.beta.cluster;
    for request in [
        format!("GET /api/user.whoami HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("POST /api/user.whoami HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"),
    ] {
        let (answers, closed) = pipelined(&p.beta, &request, 3);
        assert_eq!(answers.matches("HTTP/1.1 401").count(), 1, "{answers}");
        assert!(answers.contains("no-signature"), "{answers}");
        assert!(closed, "the connection stayed open after: {answers}");
    }
}

/// app [web, backend] serves Conduit for front [web, no backend], which
/// forwards each call to it.
fn front_and_app(front_args: &[&str]) -> (Directory, Sidecar, Sidecar, Backend) {
    let d = Directory::with_zone(minimal_zone, &[]);
    let backend = Backend::start("app");
    let app = d.sidecar("app", "web", Some(&backend));
    d.cli_ok(&["bind", "add", "app", "conduit", "80"]);
    let front = d.sidecar_with("front", "web", None, front_args);
    (d, front, app, backend)
}

fn calls(s: &Sidecar, dir: &str, auth: &str) -> f64 {
    s.metric(&format!(
        "switchboard_sidecar_cluster_calls_total{{direction=\"{dir}\",auth=\"{auth}\"}}"
    ))
    .unwrap_or(-1.0)
}

#[test]
fn calls_between_hosts_are_session_signed_by_default() {
    let (_d, front, app, _b) = front_and_app(&[]);
    for _ in 0..5 {
        assert_eq!(conduit_call(front.http), Ok((200, "app".into())));
    }
    let handshakes = "switchboard_sidecar_session_handshakes_total";
    assert_eq!(
        front.metric(&format!("{handshakes}{{side=\"made\"}}")),
        Some(1.0)
    );
    assert_eq!(
        app.metric(&format!("{handshakes}{{side=\"answered\"}}")),
        Some(1.0)
    );
    assert_eq!(calls(&front, "signed", "session"), 5.0);
    assert_eq!(
        calls(&front, "signed", "ed25519"),
        1.0,
        "the handshake only"
    );
    assert_eq!(calls(&app, "verified", "session"), 5.0);
    assert_eq!(calls(&app, "verified", "ed25519"), 1.0);

    // --cluster-auth ed25519 keeps one signature per call; the receiver takes both.
    let (_d, front, app, _b) = front_and_app(&["--cluster-auth", "ed25519"]);
    for _ in 0..3 {
        assert_eq!(conduit_call(front.http), Ok((200, "app".into())));
    }
    assert_eq!(calls(&front, "signed", "session"), 0.0);
    assert_eq!(calls(&front, "signed", "ed25519"), 3.0);
    assert_eq!(calls(&app, "verified", "ed25519"), 3.0);
    assert_eq!(
        front.metric("switchboard_sidecar_session_handshakes_total{side=\"made\"}"),
        Some(0.0)
    );
}

#[test]
fn a_restart_of_either_side_fails_no_request() {
    let (_d, mut front, mut app, _b) = front_and_app(&[]);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(conduit_call(front.http));
    }
    // The receiver forgets every session: the first call after its restart is
    // refused as unknown-session, and sent again under a new one.
    app.restart();
    for _ in 0..3 {
        outcomes.push(conduit_call(front.http));
    }
    assert!(
        outcomes.iter().all(|o| *o == Ok((200, "app".to_string()))),
        "{outcomes:?}"
    );
    assert_eq!(
        front.metric("switchboard_sidecar_session_resends_total"),
        Some(1.0)
    );
    assert_eq!(
        front.metric("switchboard_sidecar_session_handshakes_total{side=\"made\"}"),
        Some(2.0)
    );
    // The same with a body too large for the sidecars' short way (hyper's path).
    app.restart();
    outcomes.push(conduit_call_sized(front.http, 100_000));
    assert!(
        outcomes.iter().all(|o| *o == Ok((200, "app".to_string()))),
        "{outcomes:?}"
    );
    assert_eq!(
        front.metric("switchboard_sidecar_session_resends_total"),
        Some(2.0)
    );
    // A new session, not five seconds of ed25519: the handshake does not die on
    // a pooled connection to the process that just went away.
    assert_eq!(
        front.metric("switchboard_sidecar_session_handshakes_total{side=\"made\"}"),
        Some(3.0)
    );
    // The sender forgets its sessions: it makes a new one.
    front.restart();
    for _ in 0..3 {
        outcomes.push(conduit_call(front.http));
    }
    assert!(
        outcomes.iter().all(|o| *o == Ok((200, "app".to_string()))),
        "{outcomes:?}"
    );
    assert_eq!(
        app.metric("switchboard_sidecar_session_handshakes_total{side=\"answered\"}"),
        Some(2.0)
    );
}
