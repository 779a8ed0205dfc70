//! `change-latency API DNS KEYFILE ZONE HOSTS COUNT [from-ack]`: makes COUNT
//! signed changes (disable or enable a random host `hN`) through the admin API
//! and, after each, polls DNS until the host's TXT shows the change. Prints one
//! line of JSON with the p50, p90 and p99 of "change sent" (with `from-ack`:
//! "change acknowledged") to "first DNS answer that shows it", in
//! milliseconds, and `per_s`, the changes one client made per second. DNS may
//! be another directory server's sharing the store (docs/high-availability.md).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rand::Rng;

fn fail(msg: String) -> ! {
    switchboard_bench::fail("change-latency", msg)
}

/// A TXT query for `name`, as bytes.
fn txt_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 16, 0, 1]);
    q
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 7 && !(a.len() == 8 && a[7] == "from-ack") {
        fail("usage: change-latency API-ADDR DNS-ADDR KEYFILE ZONE HOSTS COUNT [from-ack]".into());
    }
    let from_ack = a.len() == 8;
    let api: SocketAddr = a[1]
        .parse()
        .unwrap_or_else(|_| fail("bad API address".into()));
    let dns: SocketAddr = a[2]
        .parse()
        .unwrap_or_else(|_| fail("bad DNS address".into()));
    let key = switchboard_directory::keys::read(std::path::Path::new(&a[3]))
        .unwrap_or_else(|e| fail(e.to_string()));
    let zone = a[4].trim_end_matches('.').to_string();
    let hosts: usize = a[5].parse().unwrap_or_else(|_| fail("bad HOSTS".into()));
    let count: usize = a[6].parse().unwrap_or_else(|_| fail("bad COUNT".into()));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| fail(e.to_string()));
    udp.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut rng = rand::thread_rng();
    let mut samples = Vec::with_capacity(count);
    let mut disabled = std::collections::HashSet::new();
    let began = Instant::now();
    for i in 0..count {
        let h = rng.gen_range(0..hosts);
        let enable = disabled.contains(&h);
        let path = format!(
            "/v1/hosts/h{h}/{}",
            if enable { "enable" } else { "disable" }
        );
        let want: &[u8] = if enable {
            b"available=1"
        } else {
            b"available=0"
        };
        let req = switchboard_bench::signed_post(api, &key, &path, "").unwrap_or_else(|e| fail(e));
        let mut start = Instant::now();
        let resp = switchboard_bench::http(api, &req).unwrap_or_else(|e| fail(e.to_string()));
        if from_ack {
            start = Instant::now();
        }
        if !resp.starts_with(b"HTTP/1.1 200") {
            fail(format!(
                "change refused: {}",
                String::from_utf8_lossy(&resp)
            ));
        }
        let name = format!("h{h}.node.{zone}.");
        loop {
            let q = txt_query(i as u16, &name);
            let _ = udp.send_to(&q, dns);
            let mut buf = [0u8; 1500];
            if let Ok(n) = udp.recv(&mut buf) {
                if buf[..n].windows(want.len()).any(|w| w == want) {
                    break;
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                fail(format!("h{h} never showed the change"));
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        if enable {
            disabled.remove(&h);
        } else {
            disabled.insert(h);
        }
    }
    let per_s = count as f64 / began.elapsed().as_secs_f64();
    let (p50, p90, p99) = switchboard_bench::percentiles(&mut samples);
    println!("{{\"changes\":{count},\"p50_ms\":{p50:.3},\"p90_ms\":{p90:.3},\"p99_ms\":{p99:.3},\"per_s\":{per_s:.1}}}");
}
