//! The end-to-end harness: starts the real `switchboard-directory` on free
//! loopback ports in its own temporary directories, and drives it with real
//! clients (`dig`, `curl`, the CLI itself). Tests read like the docs; the
//! harness hides ports, temp dirs and process handling.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};

/// How long anything in a test may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

static BUILD: Once = Once::new();

/// The path of a workspace binary, built once per test process.
pub fn bin(name: &str) -> PathBuf {
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bins", "-p", "switchboard-directory"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("debug").join(name)
}

/// Runs a command with a deadline; panics (naming it) if it hangs.
pub fn run(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{desc} failed: {e}"),
        Err(_) => panic!("{desc} did not finish within {DEADLINE:?}"),
    }
}

/// Stdout of a command as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh key file in `dir`, made by the CLI's `keygen`; returns (path, base64 public key, fingerprint).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String, String) {
    let path = dir.join(format!("{name}.pem"));
    let out = run(Command::new(bin("switchboard-directory"))
        .args(["--json", "keygen", "--out"])
        .arg(&path));
    assert!(out.status.success(), "keygen failed: {}", stderr(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("keygen --json prints JSON");
    (
        path,
        v["public_key"].as_str().unwrap_or_default().to_string(),
        v["fingerprint"].as_str().unwrap_or_default().to_string(),
    )
}

/// The demo zone from `zones/`, with its admin key swapped for `admin_pub`.
pub fn demo_zone(admin_pub: &str) -> String {
    let text =
        std::fs::read_to_string(root().join("zones/cluster.example.zone")).expect("demo zone");
    text.lines()
        .map(|l| {
            if l.starts_with("demo._admin") {
                format!("demo._admin 60 IN TXT \"key=ed25519:{admin_pub}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A running directory with its own zones and data directories.
pub struct Directory {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub dns: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    /// The admin key file (its public half is `demo._admin` in the zone).
    pub admin_key: PathBuf,
    pub admin_pub: String,
}

impl Directory {
    /// Serves the demo cluster (with a fresh admin key).
    pub fn demo() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (admin_key, admin_pub, _) = keygen(dir.path(), "admin");
        std::fs::create_dir_all(dir.path().join("zones")).expect("mkdir zones");
        std::fs::write(
            dir.path().join("zones/cluster.example.zone"),
            demo_zone(&admin_pub),
        )
        .expect("write zone");
        let mut d = Directory {
            dir,
            child: None,
            dns: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            admin_key,
            admin_pub,
        };
        d.start();
        d
    }

    pub fn zones_dir(&self) -> PathBuf {
        self.dir.path().join("zones")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `serve` and waits for its "listening" line.
    pub fn start(&mut self) {
        let out = self.try_start();
        if let Err(e) = out {
            panic!("directory did not start: {e}");
        }
    }

    /// Starts `serve`; on failure returns its stderr.
    pub fn try_start(&mut self) -> Result<(), String> {
        let mut child = Command::new(bin("switchboard-directory"))
            .args([
                "serve",
                "--dns",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--zones",
            ])
            .arg(self.zones_dir())
            .arg("--data")
            .arg(self.data_dir())
            .env("SWITCHBOARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .and_then(|v| v.parse().ok())
                };
                self.dns = field("dns=").ok_or("no dns= in listening line")?;
                self.http = field("http=").ok_or("no http= in listening line")?;
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                return Err(stderr(&out));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("no listening line before the deadline".into());
            }
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + DEADLINE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("directory did not stop on SIGTERM within {DEADLINE:?}");
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn server_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The CLI against this directory, signing with the admin key.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_key(Some(&self.admin_key), args)
    }

    pub fn cli_with_key(&self, key: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("switchboard-directory"));
        cmd.arg("--server").arg(self.server_url());
        if let Some(k) = key {
            cmd.arg("--key").arg(k);
        }
        cmd.args(args)
            .env_remove("SWITCHBOARD_KEY")
            .env_remove("SWITCHBOARD_SERVER");
        run(&mut cmd)
    }

    /// The CLI, asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `dig` against this directory over UDP with EDNS; `extra` adds flags such as `+tcp`.
    pub fn dig(&self, name: &str, rtype: &str, extra: &[&str]) -> Dig {
        let out = run(Command::new("dig")
            .arg(format!("@{}", self.dns.ip()))
            .args(["-p", &self.dns.port().to_string()])
            .args([
                "+norecurse",
                "+noall",
                "+comments",
                "+answer",
                "+authority",
                "+additional",
                "+nocookie",
                "+time=5",
                "+tries=1",
            ])
            .args(extra)
            .args([name, rtype]));
        Dig::parse(&stdout(&out))
    }

    /// `curl` against the admin API: (status, body).
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> (u16, serde_json::Value) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o"]).arg(dir.path().join("body")).args([
            "-w",
            "%{http_code}",
            "-X",
            method,
        ]);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(b) = body {
            let f = dir.path().join("req");
            std::fs::write(&f, b).expect("write body");
            cmd.arg("--data-binary").arg(format!("@{}", f.display()));
            cmd.arg("-H").arg("Content-Type: application/json");
        }
        cmd.arg(format!("{}{}", self.server_url(), path));
        let out = run(&mut cmd);
        let code = stdout(&out).trim().parse().unwrap_or(0);
        let body = std::fs::read(dir.path().join("body")).unwrap_or_default();
        (
            code,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Polls `f` until it returns true or the deadline passes.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("timed out waiting for {what}");
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One resource record from dig's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// A parsed dig answer.
#[derive(Debug, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    pub raw: String,
}

impl Dig {
    pub fn parse(text: &str) -> Dig {
        let mut d = Dig {
            raw: text.to_string(),
            ..Default::default()
        };
        let mut section = "";
        for line in text.lines() {
            if let Some(rest) = line.split("status: ").nth(1) {
                d.status = rest.split(',').next().unwrap_or("").trim().to_string();
            } else if let Some(rest) = line.strip_prefix(";; flags: ") {
                d.flags = rest
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
            } else if line.starts_with(";; ANSWER SECTION") {
                section = "answer";
            } else if line.starts_with(";; AUTHORITY SECTION") {
                section = "authority";
            } else if line.starts_with(";; ADDITIONAL SECTION") {
                section = "additional";
            } else if line.starts_with(';') || line.trim().is_empty() {
                if line.trim().is_empty() {
                    section = "";
                }
            } else {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if parts.len() >= 4 {
                    let rr = Rr {
                        name: parts[0].to_string(),
                        ttl: parts[1].parse().unwrap_or(0),
                        rtype: parts[3].to_string(),
                        data: parts[4..].join(" "),
                    };
                    match section {
                        "answer" => d.answer.push(rr),
                        "authority" => d.authority.push(rr),
                        "additional" => d.additional.push(rr),
                        _ => {}
                    }
                }
            }
        }
        d
    }

    /// The data of answer records of one type, sorted.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        v.sort();
        v
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

/// Builds signed request headers with the library's signer, for tests that forge or replay.
pub fn signed_headers(
    key_file: &Path,
    method: &str,
    url: &str,
    body: &[u8],
    now: u64,
) -> Vec<(String, String)> {
    let pem = std::fs::read_to_string(key_file).expect("read key");
    let key =
        <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&pem)
            .expect("pkcs8 key");
    let keyid = switchboard_directory::sign::fingerprint(&key.verifying_key());
    let uri: http::Uri = url.parse().expect("url");
    let method: http::Method = method.parse().expect("method");
    let mut headers = http::HeaderMap::new();
    switchboard_directory::sign::Signer {
        key: &key,
        keyid: &keyid,
    }
    .sign(&method, &uri, &mut headers, body, now)
    .expect("sign");
    headers
        .iter()
        .filter(|(k, _)| *k != http::header::HOST)
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
