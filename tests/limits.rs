//! Resource limits of the sidecar's listeners: request bodies past
//! `--max-body-mb` and SSH tunnels past `--max-tunnels-per-peer` get a clear
//! refusal, and what is within the limits still works.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_tests::{
    minimal_zone, run, signed_headers, stdout, unix_now, Backend, Directory, DEADLINE,
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
