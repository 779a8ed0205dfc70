//! A stand-in web backend for the tests: answers every HTTP request with JSON
//! naming itself, the method, path and body it received, so a test can tell
//! which host a routed request landed on, and which of its connections carried
//! it (`conn`, counted from 1), and the headers it got (`headers`, names in
//! lower case, repeated ones joined with ", "). `/hangup` is answered, then its connection closed
//! without warning; `/chunked` is answered in chunks, `/until-close` with no
//! length, the connection's end ending the body. `echo-backend NAME` prints `listening ADDR` on stdout.
//! With `ECHO_BACKEND_USERS=FILE` it is also the web application SSH users are
//! asked about (`users`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn handle(name: &str, conn: usize, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        let mut routed_by = String::new();
        let mut routed_by_count = 0;
        let mut authorized = false;
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let clean = |s: &str| s.trim().replace(['"', '\\'], "");
                let (name, value) = (clean(k).to_ascii_lowercase(), clean(v));
                match headers.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, old)) => *old = format!("{old}, {value}"),
                    None => headers.push((name, value)),
                }
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-switchboard-host" => {
                        routed_by = v.trim().to_string();
                        routed_by_count += 1;
                    }
                    other if other.starts_with("x-switchboard-") => {
                        routed_by = format!("unexpected {other}");
                        routed_by_count += 1;
                    }
                    "authorization" => authorized = !v.trim().is_empty(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        // Users for SSH (`ECHO_BACKEND_USERS`), and what it was asked about them.
        if let Some(table) = std::env::var_os("ECHO_BACKEND_USERS") {
            if let Some((status, answer)) = users(&table, &path) {
                write!(out, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len())?;
                out.flush()?;
                continue;
            }
        }
        // The git authenticator: anyone with credentials, nobody without.
        if path.starts_with("/switchboard/auth/") && !authorized {
            write!(out, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")?;
            out.flush()?;
            continue;
        }
        // `sidecar`: the one X-Switchboard-Host it got; anything else says so.
        let sidecar = if routed_by_count > 1 {
            "several x-switchboard headers".to_string()
        } else {
            routed_by.replace('"', "")
        };
        let headers: Vec<String> = headers
            .iter()
            .map(|(n, v)| format!("\"{n}\":\"{v}\""))
            .collect();
        let reply = format!(
            "{{\"host\":\"{name}\",\"conn\":{conn},\"sidecar\":\"{sidecar}\",\"method\":\"{method}\",\"path\":\"{}\",\"headers\":{{{}}},\"body\":\"{}\"}}",
            path.replace('"', ""),
            headers.join(","),
            String::from_utf8_lossy(&body).replace(['"', '\\'], "")
        );
        match path.as_str() {
            // Chunked, in two chunks written apart, with a trailer.
            "/chunked" => {
                let (a, b) = reply.split_at(reply.len() / 2);
                write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x};part=1\r\n{a}\r\n", a.len())?;
                out.flush()?;
                write!(out, "{:x}\r\n{b}\r\n0\r\nX-Trailer: yes\r\n\r\n", b.len())?;
                out.flush()?;
            }
            // Hop-by-hop headers a proxy must not pass on, then a hang-up.
            "/api/hop.close" => {
                write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close, X-Hop-Secret\r\nKeep-Alive: timeout=5\r\nX-Hop-Secret: 1\r\nContent-Length: {}\r\n\r\n{reply}", reply.len())?;
                out.flush()?;
                return Ok(());
            }
            // No length: the body ends with the connection.
            "/until-close" => {
                write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{reply}")?;
                out.flush()?;
                return Ok(());
            }
            _ => {
                let body = if method == "HEAD" { "" } else { reply.as_str() };
                write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", reply.len())?;
                out.flush()?;
                if path == "/hangup" {
                    return Ok(());
                }
            }
        }
    }
}

/// What `/switchboard/auth/...` questions about SSH users were asked, in order.
static ASKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Percent-decodes a query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The SSH users' web application, from the table file `table` (read on every
/// question, so a test may change it): lines `key FPR USER PUBLIC-KEY-LINE` and
/// `allow USER REPO read|write`. Answers `/switchboard/auth/ssh-key?fingerprint=FPR`
/// and `/switchboard/auth/git?...&user=USER`; `GET /auth-log` lists what was asked.
/// `None`: not a question for it.
fn users(table: &std::ffi::OsStr, path: &str) -> Option<(&'static str, String)> {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    if route == "/auth-log" {
        let asked = ASKED.lock().unwrap_or_else(|p| p.into_inner());
        let lines: Vec<String> = asked.iter().map(|l| format!("\"{l}\"")).collect();
        return Some(("200 OK", format!("[{}]", lines.join(","))));
    }
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .map(decode)
    };
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let mut asked = ASKED.lock().unwrap_or_else(|p| p.into_inner());
    match route {
        "/switchboard/auth/ssh-key" => {
            let fpr = param("fingerprint").unwrap_or_default();
            asked.push(format!("ssh-key {fpr}"));
            match rows
                .iter()
                .find(|r| r.len() > 4 && r[0] == "key" && r[1] == fpr)
            {
                Some(r) => Some((
                    "200 OK",
                    format!(
                        "{{\"user\":\"{}\",\"public_key\":\"{}\"}}",
                        r[2],
                        r[3..].join(" ")
                    ),
                )),
                None => Some(("404 Not Found", "{\"error\":\"no such key\"}".to_string())),
            }
        }
        "/switchboard/auth/git" => {
            let user = param("user")?;
            let repo = param("repository").unwrap_or_default();
            let access = param("access").unwrap_or_default();
            asked.push(format!("git {user} {repo} {access}"));
            let allowed = rows.iter().any(|r| {
                r.len() == 4 && r[0] == "allow" && r[1] == user && r[2] == repo && r[3] == access
            });
            if allowed {
                Some(("200 OK", "{}".to_string()))
            } else {
                Some((
                    "403 Forbidden",
                    format!("{{\"error\":\"{user} has no {access} access to {repo}\"}}"),
                ))
            }
        }
        _ => None,
    }
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "backend".into());
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo-backend: cannot bind: {e}");
            std::process::exit(1);
        }
    };
    if let Ok(addr) = listener.local_addr() {
        println!("listening {addr}");
    }
    let _ = std::io::stdout().flush();
    for (i, stream) in listener.incoming().flatten().enumerate() {
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = handle(&name, i + 1, stream);
        });
    }
}
