//! `failover-latency API-ADDR KEYFILE ZONE REPO HOST-A HOST-B SIDECAR-URL... -- COUNT`:
//! promotes REPO back and forth between HOST-A and HOST-B (both up to date) COUNT
//! times through the signed admin API, and after each promotion polls a Conduit
//! write (`diffusion.repository.edit`) through every sidecar URL until each one
//! lands on the new master (the echo/backends answer with their host name, or
//! the body names it). Prints p50/p90/p99 in milliseconds as JSON.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn fail(msg: String) -> ! {
    switchboard_bench::fail("failover-latency", msg)
}

fn http(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    switchboard_bench::http(addr, req).unwrap_or_else(|e| fail(format!("{addr}: {e}")))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let sep = a
        .iter()
        .position(|x| x == "--")
        .unwrap_or_else(|| fail("usage: ... -- COUNT".into()));
    if sep < 8 || a.len() != sep + 2 {
        fail(
            "usage: failover-latency API KEYFILE ZONE REPO HOST-A HOST-B SIDECAR-ADDR... -- COUNT"
                .into(),
        );
    }
    let api: SocketAddr = a[1]
        .parse()
        .unwrap_or_else(|_| fail("bad API address".into()));
    let key = switchboard_directory::keys::read(std::path::Path::new(&a[2]))
        .unwrap_or_else(|e| fail(e.to_string()));
    let (repo, hosts) = (&a[4], [&a[5], &a[6]]);
    let sidecars: Vec<SocketAddr> = a[7..sep]
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| fail(format!("bad address {s}")))
        })
        .collect();
    let count: usize = a[sep + 1]
        .parse()
        .unwrap_or_else(|_| fail("bad COUNT".into()));
    let mut samples = Vec::new();
    for i in 0..count {
        let target = hosts[(i + 1) % 2];
        let path = format!("/v1/repos/{repo}/promote");
        let body = format!("{{\"host\":\"{target}\"}}");
        let req =
            switchboard_bench::signed_post(api, &key, &path, &body).unwrap_or_else(|e| fail(e));
        let start = Instant::now();
        let resp = http(api, &req);
        if !resp.starts_with(b"HTTP/1.1 200") {
            fail(format!(
                "promotion refused: {}",
                String::from_utf8_lossy(&resp)
            ));
        }
        let want = format!("\"host\":\"{target}\"");
        for s in &sidecars {
            loop {
                let call = format!("POST /api/diffusion.repository.edit HTTP/1.1\r\nHost: {s}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\nrepository={repo}", 11 + repo.len());
                let out = http(*s, call.as_bytes());
                if String::from_utf8_lossy(&out).contains(&want) {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    fail(format!("{s} never sent writes to {target}"));
                }
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p90, p99) = switchboard_bench::percentiles(&mut samples);
    println!(
        "{{\"promotions\":{count},\"p50_ms\":{p50:.3},\"p90_ms\":{p90:.3},\"p99_ms\":{p99:.3}}}"
    );
}
