//! Resource limits of the sidecar's listeners: request bodies past
//! `--max-body-mb` and SSH tunnels past `--max-tunnels-per-peer` get a clear
//! refusal, and what is within the limits still works.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_tests::{
    minimal_zone, run, signed_headers, stdout, unix_now, Backend, Directory, Sidecar, DEADLINE,
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
