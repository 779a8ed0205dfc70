//! Resource limits of the sidecar's listeners and the directory's admin API:
//! request bodies past `--max-body-mb`, SSH tunnels past `--max-tunnels-per-peer`,
//! admin changes that are not signed or send no body, and admin connections past
//! their caps get a clear refusal, and what is within the limits still works.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_tests::{
    keygen, minimal_zone, run, signed_headers, stdout, unix_now, Backend, Directory, Sidecar,
    DEADLINE,
};

/// curl POST of `len` bytes to `url` with `headers`: (status, the reason header).
fn post(url: &str, len: usize, headers: &[(String, String)]) -> (u16, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; len]).expect("write body");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-D", "-", "-w", "\n%{http_code}"]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(url);
    let out = stdout(&run(&mut cmd));
    let code = out
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let reason = out
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-switchboard-reason:")
                .map(|r| r.trim().to_string())
        })
        .unwrap_or_default();
    (code, reason)
}

#[test]
fn bodies_past_the_limit_are_refused_on_both_listeners() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let backend = Backend::start("lim");
    let web = d.sidecar_with("lim1", "web", Some(&backend), &["--max-body-mb", "1"]);
    let other = d.sidecar("lim2", "web", None);

    // The user listener, on its way to the web backend.
    assert_eq!(post(&web.http_url("/upload"), 256 << 10, &[]).0, 200);
    assert_eq!(
        post(&web.http_url("/upload"), 2 << 20, &[]),
        (413, "body-too-large".to_string())
    );

    // The cluster listener: a signed call from another host.
    let url = web.cluster_url("/api/upload");
    let small = vec![b'x'; 256 << 10];
    let h = signed_headers(&other.key, "POST", &url, &small, unix_now());
    assert_eq!(post(&url, small.len(), &h).0, 200);
    let big = vec![b'x'; 2 << 20];
    let h = signed_headers(&other.key, "POST", &url, &big, unix_now());
    let (code, reason) = post(&url, big.len(), &h);
    assert_eq!(code, 413, "{reason}");
}

/// Opens a signed SSH tunnel (`POST /ssh/upload-pack/REPO`, upgraded) from `caller_key`:
/// the open stream on 101, or the status it was refused with.
fn tunnel(
    to: std::net::SocketAddr,
    caller_key: &std::path::Path,
    repo: &str,
) -> Result<TcpStream, (u16, String)> {
    let path = format!("/ssh/upload-pack/{repo}");
    let url = format!("http://{to}{path}");
    let headers = signed_headers(caller_key, "POST", &url, b"", unix_now());
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {to}\r\nConnection: upgrade\r\nUpgrade: switchboard-ssh\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let status: u16 = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        return Ok(s);
    }
    let mut rest = vec![0u8; 4096];
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let n = s.read(&mut rest).unwrap_or(0);
    Err((
        status,
        format!(
            "{}{}",
            String::from_utf8_lossy(&head),
            String::from_utf8_lossy(&rest[..n])
        ),
    ))
}

#[test]
fn ssh_tunnels_per_peer_are_capped() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let repo = d.sidecar_with("cap1", "repo", None, &["--max-tunnels-per-peer", "1"]);
    let caller = d.sidecar("cap2", "web", None);
    d.cli_ok(&["repo", "add", "capped", "--master", "cap1"]);

    let first = tunnel(repo.cluster, &caller.key, "capped")
        .unwrap_or_else(|(code, text)| panic!("the first tunnel did not open: {code}\n{text}"));
    match tunnel(repo.cluster, &caller.key, "capped") {
        Err((429, text)) => assert!(text.contains("too-many-tunnels"), "{text}"),
        Err((code, text)) => panic!("a second tunnel got {code}, not 429: {text}"),
        Ok(_) => panic!("a second tunnel from the same host opened past the limit of 1"),
    }
    // Once the first session ends, its slot is free again.
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tunnel(repo.cluster, &caller.key, "capped") {
            Ok(_) => break,
            Err((429, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err((code, text)) => panic!("the freed slot was not given back ({code}): {text}"),
        }
    }
}

/// Sends `head` (a request head, no body) to `to` and reads the answer's head
/// without sending a byte of the body: (status, the reason header). Status 0
/// when nothing came back in 10 s (the sidecar sat waiting for the body).
fn head_only(to: std::net::SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("send the head");
    read_answer_head(&mut s)
}

/// Reads an answer's head: (status, the reason header); status 0 if none came.
fn read_answer_head(s: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let reason = text
        .lines()
        .find_map(|l| l.strip_prefix("x-switchboard-reason:"))
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    (status, reason)
}

/// A 1 MiB limit on a web host (`big1`) and a repository host (`big2`, master of `huge`).
fn limited() -> (Directory, Backend, Sidecar, Sidecar) {
    let d = Directory::with_zone(minimal_zone, &[]);
    let backend = Backend::start("big");
    let web = d.sidecar_with("big1", "web", Some(&backend), &["--max-body-mb", "1"]);
    let repo = d.sidecar_with("big2", "repo", None, &["--max-body-mb", "1"]);
    d.cli_ok(&["repo", "add", "huge", "--master", "big2"]);
    (d, backend, web, repo)
}

/// The requests each test sends: git pushes and fetches, Conduit calls with and
/// without a repository, and a plain page (which takes the short way).
const BIG_PATHS: [&str; 5] = [
    "/source/huge.git/git-receive-pack",
    "/source/huge.git/git-upload-pack",
    "/api/diffusion.querycommits",
    "/api/user.whoami",
    "/upload",
];

#[test]
fn a_declared_body_past_the_limit_is_refused_before_it_is_read() {
    let (_d, _backend, web, repo) = limited();
    let huge = "Content-Length: 5000000000\r\n";
    // The user listener: the answer comes back though the body never does.
    for path in BIG_PATHS {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: big1\r\nAuthorization: Basic dDpw\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n{huge}\r\n"
        );
        assert_eq!(
            head_only(web.http, &head),
            (413, "body-too-large".to_string()),
            "POST {path} on the user listener"
        );
    }
    // The cluster listener: a call signed by another host, refused once its
    // headers are checked and before its body is read.
    for path in BIG_PATHS {
        let url = repo.cluster_url(path);
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n{huge}", repo.cluster);
        for (k, v) in signed_headers(&web.key, "POST", &url, b"x", unix_now()) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(
            head_only(repo.cluster, &head),
            (413, "body-too-large".to_string()),
            "POST {path} on the cluster listener"
        );
    }
    // An unsigned call is still refused for that first.
    let head = format!(
        "POST /api/user.whoami HTTP/1.1\r\nHost: {}\r\n{huge}\r\n",
        repo.cluster
    );
    assert_eq!(
        head_only(repo.cluster, &head),
        (401, "no-signature".to_string())
    );
}

#[test]
fn a_chunked_body_is_cut_where_it_passes_the_limit() {
    let (_d, _backend, web, repo) = limited();
    // One chunk a byte over the limit, sent whole (so that nothing is left
    // unread when the sidecar answers), its end never sent.
    let over = (1 << 20) + 1;
    let chunk = format!("{over:x}\r\n{}", "x".repeat(over));
    let send = |to: std::net::SocketAddr, head: String| {
        let mut s = TcpStream::connect(to).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(head.as_bytes()).expect("send the head");
        s.write_all(chunk.as_bytes()).expect("send the chunk");
        read_answer_head(&mut s)
    };
    // The bodies the sidecar reads whole before it sends them on: a git request
    // for another host, a Conduit call, and any call on the cluster listener.
    for path in &BIG_PATHS[..3] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: big1\r\nAuthorization: Basic dDpw\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            send(web.http, head),
            (413, "body-too-large".to_string()),
            "chunked POST {path} on the user listener"
        );
        let url = repo.cluster_url(path);
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n",
            repo.cluster
        );
        for (k, v) in signed_headers(&web.key, "POST", &url, b"x", unix_now()) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(
            send(repo.cluster, head),
            (413, "body-too-large".to_string()),
            "chunked POST {path} on the cluster listener"
        );
    }
}

/// Sends the head of a request (no body, whatever Content-Length says) to the
/// directory's admin API and returns the open connection.
fn send_head(
    d: &Directory,
    method: &str,
    path: &str,
    content_length: usize,
    headers: &[(String, String)],
) -> TcpStream {
    let mut s = TcpStream::connect(d.http).expect("connect to the admin API");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {content_length}\r\n",
        d.http
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send the head");
    s
}

/// Reads what the server sends until it closes the connection, or `until`:
/// (everything read, whether the server closed it).
fn read_until_closed(s: &mut TcpStream, until: Instant) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true)
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// The status code of an HTTP/1.1 answer.
fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_change_with_a_bad_signature_is_refused_before_its_body_is_sent() {
    let d = Directory::demo();
    let import = "/v1/zones/cluster.example";
    let url = format!("{}{import}", d.server_url());
    // 60 MiB: within what a zone import may carry, so only the signature can refuse it.
    let declared = 60 << 20;
    let (stranger, _, _) = keygen(d.dir.path(), "stranger");
    let garbage = vec![("Signature".to_string(), "garbage".to_string())];
    let unknown = signed_headers(&stranger, "PUT", &url, b"$ORIGIN x.\n", unix_now());
    for (what, headers, reason) in [
        ("Signature: garbage", garbage, "no-signature"),
        ("an unknown keyid", unknown, "unknown-key"),
    ] {
        let mut s = send_head(&d, "PUT", import, declared, &headers);
        // Not a byte of the body is sent: the answer must come anyway, and the
        // directory must hang up rather than wait for 60 MiB.
        let (answer, closed) = read_until_closed(&mut s, Instant::now() + DEADLINE);
        assert_eq!(
            status_of(&answer),
            401,
            "{what}: no refusal before the body was sent: {answer:?}"
        );
        assert!(answer.contains(reason), "{what}: {answer}");
        assert!(
            closed,
            "{what}: the connection stayed open after the refusal"
        );
    }

    // A good signature on a body larger than its route takes: refused by its
    // declared length, before the body too.
    let hosts = "/v1/hosts";
    let h = signed_headers(
        &d.admin_key,
        "POST",
        &format!("{}{hosts}", d.server_url()),
        b"{}",
        unix_now(),
    );
    let mut s = send_head(&d, "POST", hosts, 8 << 20, &h);
    let (answer, _) = read_until_closed(&mut s, Instant::now() + DEADLINE);
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.contains("body-too-large"), "{answer}");
}

#[test]
fn connections_that_send_no_body_are_closed_while_signed_changes_get_in() {
    // The documented bound: a body must have arrived within --http-body-timeout (10 s).
    const BODY_TIMEOUT: Duration = Duration::from_secs(10);
    let d = Directory::demo();
    let import = "/v1/zones/cluster.example";
    let url = format!("{}{import}", d.server_url());
    let opened = Instant::now();
    // Fifty imports, each signed by the admin key (the most the directory lets
    // through before a body), each promising 1 MiB and sending nothing.
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| {
            let h = signed_headers(&d.admin_key, "PUT", &url, b"zone", unix_now());
            send_head(&d, "PUT", import, 1 << 20, &h)
        })
        .collect();

    // Meanwhile, a signed change gets in and is applied.
    d.cli_ok(&["host", "disable", "db2"]);

    let until = opened + BODY_TIMEOUT + Duration::from_secs(5);
    for (i, s) in idle.iter_mut().enumerate() {
        let (answer, closed) = read_until_closed(s, until);
        assert!(
            closed,
            "connection {i} is still open {:?} after it sent its headers",
            opened.elapsed()
        );
        assert_eq!(status_of(&answer), 408, "connection {i}: {answer}");
        assert!(answer.contains("body-timeout"), "connection {i}: {answer}");
    }

    // And afterwards.
    d.cli_ok(&["host", "enable", "db2"]);
    let hosts: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "host", "show", "db2"])).expect("json");
    assert_eq!(hosts["available"], true);
}

#[test]
fn admin_connections_are_capped_per_client_and_in_all() {
    let d = Directory::with_zone(minimal_zone, &["--http-max-per-client", "4"]);
    // Four connections that say nothing hold this client's four places.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(d.http).expect("connect"))
        .collect();
    d.wait_for("a fifth connection refused", || {
        let mut s = send_head(&d, "GET", "/v1/status", 0, &[]);
        let (answer, closed) = read_until_closed(&mut s, Instant::now() + DEADLINE);
        closed && status_of(&answer) == 503 && answer.contains("too-many-connections")
    });
    // One place freed: the CLI gets in again.
    drop(held);
    d.wait_for("the CLI answered once the connections closed", || {
        d.cli(&["status"]).status.success()
    });

    let d = Directory::with_zone(minimal_zone, &["--http-max-connections", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(d.http).expect("connect"))
        .collect();
    let out = d.cli(&["status"]);
    assert!(!out.status.success(), "a fourth connection was served");
    assert!(
        switchboard_tests::stderr(&out).contains("too many"),
        "{}",
        switchboard_tests::stderr(&out)
    );
    drop(held);
    d.wait_for("the CLI answered once the connections closed", || {
        d.cli(&["status"]).status.success()
    });
}
