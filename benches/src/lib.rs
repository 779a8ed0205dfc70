//! Helpers the load tools in `src/bin` share: signed admin-API calls over a bare
//! HTTP/1.1 connection (no client library between the tool and the measurement).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ed25519_dalek::SigningKey;

/// Prints `msg` and exits: the tools have nothing to recover.
pub fn fail(tool: &str, msg: String) -> ! {
    eprintln!("{tool}: {msg}");
    std::process::exit(1)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sends `req` on a fresh connection and reads the answer to the end.
pub fn http(addr: SocketAddr, req: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(out)
}

/// A signed `POST path` with a JSON `body` to the admin API at `api`, as raw bytes.
pub fn signed_post(
    api: SocketAddr,
    key: &SigningKey,
    path: &str,
    body: &str,
) -> Result<Vec<u8>, String> {
    let keyid = switchboard_directory::keys::public(key).fingerprint();
    let uri: http::Uri = format!("http://{api}{path}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut headers = http::HeaderMap::new();
    switchboard_directory::sign::Signer { key, keyid: &keyid }
        .sign(
            &http::Method::POST,
            &uri,
            &mut headers,
            body.as_bytes(),
            unix_now(),
        )
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    Ok(req.into_bytes())
}

/// p50, p90, p99 of `samples` (sorted in place).
pub fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        samples
            .get(((samples.len().max(1) as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    (pct(0.5), pct(0.9), pct(0.99))
}
