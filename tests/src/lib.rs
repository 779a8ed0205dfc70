//! The end-to-end harness: starts the real `switchboard-directory` on free
//! loopback ports in its own temporary directories, and drives it with real
//! clients (`dig`, `curl`, the CLI itself). Tests read like the docs; the
//! harness hides ports, temp dirs and process handling.

pub mod etcd;
pub mod fuzz;
pub mod mariadb;
pub mod secondary;
pub mod webdriver;

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

/// The path of a workspace binary, built once per test process; from
/// `SWITCHBOARD_BIN_DIR` as it is when that is set (a benchmark's release build).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bins", "--workspace"])
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

/// A zone with only an SOA, NS and one admin key: hosts are added by the test.
pub fn minimal_zone(admin_pub: &str) -> String {
    format!(
        "$ORIGIN cluster.example.\n$TTL 3600\n@ IN SOA ns1 hostmaster ( 1 3600 600 604800 30 )\n  IN NS ns1\nns1 IN A 127.0.0.1\nadmin._admin 60 IN TXT \"key=ed25519:{admin_pub}\"\n"
    )
}

/// Reads a child's stdout for its "listening" line, on a thread.
fn listening_line(child: &mut Child) -> Result<mpsc::Receiver<String>, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let _ = tx.send(line);
            }
        }
    });
    Ok(rx)
}

/// Waits for a child's "listening" line and returns the words after it.
pub fn wait_listening(child: &mut Child, what: &str) -> String {
    let rx = listening_line(child).unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            return line;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("{what} exited ({status}) before listening: {err}");
        }
        assert!(Instant::now() < deadline, "{what} did not start listening");
    }
}

/// A plain DNS query on the wire (no TCP length prefix): one question, class IN,
/// no RD, and an OPT record offering 4096 bytes when `edns`.
pub fn dns_query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if edns {
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

/// The value of `key=` in a "listening" line.
pub fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// A stand-in web backend that answers with its name (`tests/src/bin/echo-backend.rs`).
pub struct Backend {
    child: Child,
    pub addr: std::net::SocketAddr,
}

impl Backend {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// [`Self::start`] with environment variables (`ECHO_BACKEND_USERS`, say).
    pub fn start_with(name: &str, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut child = Command::new(bin("echo-backend"))
            .arg(name)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start echo-backend");
        let line = wait_listening(&mut child, "echo-backend");
        let addr = line
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .expect("backend address");
        Backend { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running sidecar for one host of the cluster.
pub struct Sidecar {
    pub name: String,
    pub key: PathBuf,
    pub repos: PathBuf,
    pub http: std::net::SocketAddr,
    pub cluster: std::net::SocketAddr,
    /// Its "listening" line (the ports it bound, `db=DB:KIND@ADDR` among them).
    pub listening: String,
    child: Option<Child>,
    args: Vec<std::ffi::OsString>,
    /// Extra environment for `run` (a test-only fail point, say).
    env: Vec<(String, String)>,
}

impl Sidecar {
    /// The admin API whose change feed this sidecar follows, from its metrics.
    pub fn feed_source(&self) -> Option<String> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix("switchboard_sidecar_feed_source{api=\"")
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        })
    }

    /// The command line `run` gets, minus the listeners.
    fn spawn(
        args: &[std::ffi::OsString],
        env: &[(String, String)],
        http: &str,
        cluster: &str,
    ) -> Child {
        Command::new(bin("switchboard-sidecar"))
            .arg("run")
            .args(args)
            .args(["--http", http, "--cluster", cluster])
            .env("SWITCHBOARD_LOG", "warn,switchboard_sidecar=info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard-sidecar")
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn cluster_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster)
    }

    /// Stops this sidecar (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Self::spawn(
            &self.args,
            &self.env,
            &self.http.to_string(),
            &self.cluster.to_string(),
        );
        self.listening = wait_listening(&mut child, &self.name);
        self.child = Some(child);
    }

    /// Starts it again on the same ports with `env` added to its environment
    /// (and to every later restart's).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.restart();
    }

    /// Keeps its log (stderr) from now on in the returned list, so that a test
    /// can show it; [`Self::terminate`] cannot read it after this.
    pub fn keep_log(&mut self) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(errors) = self.child.as_mut().and_then(|c| c.stderr.take()) {
            let keep = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(errors).lines().map_while(Result::ok) {
                    keep.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        log
    }

    /// The `ssh-exec` command line for this host (what sshd's ForceCommand runs).
    pub fn ssh_exec_command(&self) -> String {
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
        let mut cmd = format!("{} ssh-exec", quote(bin("switchboard-sidecar").as_os_str()));
        for a in &self.args {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        cmd
    }

    /// The `authorized-keys` command line for this host (sshd's `AuthorizedKeysCommand`, less `%f`).
    pub fn authorized_keys_command(&self) -> String {
        self.ssh_exec_command()
            .replacen(" ssh-exec", " authorized-keys", 1)
    }

    /// Whether this sidecar process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM: the sidecar drains and exits. Its log from now on, and
    /// its exit, are read through the returned handle.
    pub fn terminate(&mut self) -> Stopping {
        let mut child = self.child.take().expect("the sidecar is running");
        let errors = child.stderr.take().expect("the sidecar's stderr");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(errors).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let out = run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        assert!(out.status.success(), "kill -TERM: {}", stderr(&out));
        Stopping {
            name: self.name.clone(),
            child,
            log,
            seen: Vec::new(),
        }
    }

    /// The sidecar's Prometheus metrics.
    pub fn metrics(&self) -> String {
        stdout(&run(
            Command::new("curl").args(["-s", &self.cluster_url("/metrics")])
        ))
    }

    /// One metric's value (the first line that starts with `series`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A sidecar sent SIGTERM: its log lines and its exit.
pub struct Stopping {
    name: String,
    child: Child,
    log: mpsc::Receiver<String>,
    /// Every log line read so far.
    pub seen: Vec<String>,
}

impl Stopping {
    /// Waits for a log line containing `what`, and returns it.
    pub fn wait_log(&mut self, what: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(what)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "{} never logged {what:?}; it logged: {:#?}",
            self.name, self.seen
        );
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (within `DEADLINE`); its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running directory with its own zones and data directories.
pub struct Directory {
    pub dir: tempfile::TempDir,
    /// Extra `serve` flags (e.g. TTLs).
    pub serve_args: Vec<String>,
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
        Self::with_zone(demo_zone, &[])
    }

    /// Serves the zone `zone(admin_public_key)` with extra `serve` flags.
    pub fn with_zone(zone: impl Fn(&str) -> String, serve_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (admin_key, admin_pub, _) = keygen(dir.path(), "admin");
        std::fs::create_dir_all(dir.path().join("zones")).expect("mkdir zones");
        std::fs::write(
            dir.path().join("zones/cluster.example.zone"),
            zone(&admin_pub),
        )
        .expect("write zone");
        let mut d = Directory {
            dir,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            dns: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            admin_key,
            admin_pub,
        };
        d.start();
        d
    }

    /// Another directory server beside `other`: the same zone file and admin
    /// key, its own ports and data dir, with `serve_args` (a shared `--store`).
    pub fn beside(other: &Directory, serve_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("zones")).expect("mkdir zones");
        std::fs::copy(
            other.zones_dir().join("cluster.example.zone"),
            dir.path().join("zones/cluster.example.zone"),
        )
        .expect("copy zone");
        let admin_key = dir.path().join("admin.pem");
        std::fs::copy(&other.admin_key, &admin_key).expect("copy admin key");
        let mut d = Directory {
            dir,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            dns: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            admin_key,
            admin_pub: other.admin_pub.clone(),
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
        // A restart keeps its ports, so that sidecars find it again.
        let port = |a: std::net::SocketAddr| {
            if a.port() == 0 {
                "127.0.0.1:0".to_string()
            } else {
                a.to_string()
            }
        };
        let (dns, http) = (port(self.dns), port(self.http));
        let mut child = Command::new(bin("switchboard-directory"))
            .args(["serve", "--dns", &dns, "--http", &http, "--zones"])
            .arg(self.zones_dir())
            .arg("--data")
            .arg(self.data_dir())
            .args(&self.serve_args)
            .env("SWITCHBOARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let rx = listening_line(&mut child)?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                self.dns = field(&line, "dns=").ok_or("no dns= in listening line")?;
                self.http = field(&line, "http=").ok_or("no http= in listening line")?;
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

    /// The admin CLI as a function another thread can call (the directory's
    /// address and key, fixed now; restarts keep the address).
    pub fn cli_command(&self) -> impl Fn(&[&str]) -> Output + Send + 'static {
        let (server, key) = (self.server_url(), self.admin_key.clone());
        move |args: &[&str]| {
            let mut cmd = Command::new(bin("switchboard-directory"));
            cmd.arg("--server")
                .arg(&server)
                .arg("--key")
                .arg(&key)
                .args(args)
                .env_remove("SWITCHBOARD_KEY")
                .env_remove("SWITCHBOARD_SERVER");
            run(&mut cmd)
        }
    }

    /// The directory's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
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

impl Directory {
    /// Registers host `name` (127.0.0.1, a fresh key, `roles`), starts its sidecar
    /// with `backend` as its web backend, and publishes its cluster port.
    pub fn sidecar(&self, name: &str, roles: &str, backend: Option<&Backend>) -> Sidecar {
        self.sidecar_with(name, roles, backend, &[])
    }

    /// [`Self::sidecar`] with extra `run` flags (limits, say).
    pub fn sidecar_with(
        &self,
        name: &str,
        roles: &str,
        backend: Option<&Backend>,
        extra: &[&str],
    ) -> Sidecar {
        let dns = self.dns.to_string();
        let api = self.server_url();
        let at = ["--directory", &dns, "--directory-api", &api];
        sidecar_of(&[self], name, roles, backend, &at, extra)
    }

    /// [`Self::sidecar_with`] for a host at `addr` (a database host on its own
    /// loopback address, say), without a web backend; its cluster port listens
    /// on `addr`.
    pub fn sidecar_at(&self, name: &str, addr: &str, roles: &str, extra: &[&str]) -> Sidecar {
        let dns = self.dns.to_string();
        let api = self.server_url();
        let at = ["--directory", &dns, "--directory-api", &api];
        sidecar_of_at(&[self], name, addr, roles, None, &at, extra)
    }

    /// Another directory server seeded from this one's zone file, with the
    /// same admin key, its own store and ports, and `serve_args`.
    pub fn twin(&self, serve_args: &[&str]) -> Directory {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("zones")).expect("mkdir zones");
        std::fs::copy(
            self.zones_dir().join("cluster.example.zone"),
            dir.path().join("zones/cluster.example.zone"),
        )
        .expect("copy the zone file");
        let admin_key = dir.path().join("admin.pem");
        std::fs::copy(&self.admin_key, &admin_key).expect("copy the admin key");
        let mut d = Directory {
            dir,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            dns: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            admin_key,
            admin_pub: self.admin_pub.clone(),
        };
        d.start();
        d
    }
}

/// Registers host `name` (127.0.0.1, a fresh key, `roles`) in every directory
/// of `dirs`, starts its sidecar with `at` as its directory flags (`--directory`,
/// `--directory-api`) and `backend` as its web backend, and publishes its
/// cluster port in each.
/// What one call came to: the status and the backend that answered, or what went wrong.
pub type Outcome = Result<(u16, String), String>;

/// One Conduit call through `addr` (HTTP/1.1, its own connection): the status
/// and the backend that answered, or what went wrong.
pub fn conduit_call(addr: std::net::SocketAddr) -> Outcome {
    conduit_call_with(addr, "params=%7B%7D")
}

/// [`conduit_call`] with a body of about `size` bytes: over 64 KiB, the
/// sidecar reads it through hyper rather than its short way.
pub fn conduit_call_sized(addr: std::net::SocketAddr, size: usize) -> Outcome {
    let pad = "x".repeat(size.saturating_sub(20));
    conduit_call_with(addr, &format!("params=%7B%7D&pad={pad}"))
}

fn conduit_call_with(addr: std::net::SocketAddr, body: &str) -> Outcome {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /api/user.whoami HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let host = v["host"].as_str().unwrap_or(json).to_string();
    Ok((status, host))
}

pub fn sidecar_of(
    dirs: &[&Directory],
    name: &str,
    roles: &str,
    backend: Option<&Backend>,
    at: &[&str],
    extra: &[&str],
) -> Sidecar {
    sidecar_of_at(dirs, name, "127.0.0.1", roles, backend, at, extra)
}

/// [`sidecar_of`] for a host at `addr`: registered there, its cluster port
/// listening there.
pub fn sidecar_of_at(
    dirs: &[&Directory],
    name: &str,
    addr: &str,
    roles: &str,
    backend: Option<&Backend>,
    at: &[&str],
    extra: &[&str],
) -> Sidecar {
    let first = dirs.first().expect("at least one directory");
    let (key, pubkey, _) = keygen(first.dir.path(), name);
    for d in dirs {
        d.cli_ok(&[
            "host", "add", name, "--addr", addr, "--pubkey", &pubkey, "--roles", roles,
        ]);
    }
    let repos = first.dir.path().join(format!("repos-{name}"));
    let mut args: Vec<std::ffi::OsString> = vec!["--key".into(), key.clone().into()];
    args.extend(at.iter().map(|a| a.into()));
    args.extend([
        "--zone".into(),
        "cluster.example.".into(),
        "--repos".into(),
        repos.clone().into(),
    ]);
    if let Some(b) = backend {
        args.push("--web-backend".into());
        args.push(b.url().into());
    }
    args.extend(extra.iter().map(|a| a.into()));
    let mut child = Sidecar::spawn(&args, &[], "127.0.0.1:0", &format!("{addr}:0"));
    let line = wait_listening(&mut child, name);
    let http = field(&line, "http=").expect("http= in the sidecar's listening line");
    let cluster: std::net::SocketAddr =
        field(&line, "cluster=").expect("cluster= in the sidecar's listening line");
    for d in dirs {
        d.cli_ok(&[
            "bind",
            "add",
            name,
            "switchboard",
            &cluster.port().to_string(),
        ]);
    }
    Sidecar {
        name: name.to_string(),
        key,
        repos,
        http,
        cluster,
        listening: line,
        child: Some(child),
        args,
        env: Vec::new(),
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

/// A real OpenSSH server on a free loopback port, in its own directory, with
/// `ForceCommand` set to a host's `ssh-exec`, admitting one client key; or
/// (`Sshd::with_keys_command`) asking a host's `authorized-keys` for every key.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The root-owned directory under /run holding the `AuthorizedKeysCommand`.
    keys_dir: Option<PathBuf>,
}

/// A client key pair for ssh, made once per test directory.
pub fn ssh_client_key(dir: &Path) -> PathBuf {
    let key = dir.join("client_ed25519");
    if !key.exists() {
        let out = run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
        assert!(out.status.success(), "ssh-keygen: {}", stderr(&out));
    }
    key
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Sshd {
    pub fn start(dir: &Path, name: &str, force_command: &str, client_key: &Path) -> Sshd {
        let home = dir.join(format!("sshd-{name}"));
        std::fs::create_dir_all(&home).expect("sshd dir");
        let client_pub =
            std::fs::read_to_string(client_key.with_extension("pub")).expect("client .pub");
        std::fs::write(home.join("authorized_keys"), client_pub).expect("authorized_keys");
        let auth = format!(
            "AuthorizedKeysFile {ak}\nForceCommand {force_command}\n",
            ak = home.join("authorized_keys").display()
        );
        Self::start_config(&home, &auth, None)
    }

    /// An sshd with no authorized_keys file and no ForceCommand: its
    /// `AuthorizedKeysCommand` is `keys_command %f` (a host's `authorized-keys`),
    /// run as the current user. sshd wants the command and every directory above
    /// it owned by root (or that user) and not writable by others, so it is a
    /// wrapper script in a fresh directory under /run, removed on drop.
    pub fn with_keys_command(dir: &Path, name: &str, keys_command: &str) -> Sshd {
        use std::os::unix::fs::PermissionsExt;
        let home = dir.join(format!("sshd-{name}"));
        std::fs::create_dir_all(&home).expect("sshd dir");
        let base = Path::new("/run/switchboard-tests");
        std::fs::create_dir_all(base).expect("mkdir /run/switchboard-tests");
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        mode(base, 0o755);
        let keys_dir = base.join(format!("{name}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&keys_dir).expect("mkdir under /run/switchboard-tests");
        mode(&keys_dir, 0o755);
        let script = keys_dir.join("authorized-keys");
        std::fs::write(&script, format!("#!/bin/sh\nexec {keys_command} \"$@\"\n"))
            .expect("write the AuthorizedKeysCommand");
        mode(&script, 0o755);
        let me = stdout(&run(Command::new("id").arg("-un")));
        let auth = format!(
            "AuthorizedKeysFile none\nAuthorizedKeysCommand {} %f\nAuthorizedKeysCommandUser {}\n",
            script.display(),
            me.trim()
        );
        Self::start_config(&home, &auth, Some(keys_dir))
    }

    /// Starts sshd in `home` with `auth`, its lines on which keys it admits and what they run.
    fn start_config(home: &Path, auth: &str, keys_dir: Option<PathBuf>) -> Sshd {
        // sshd insists on its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = home.join("ssh_host_ed25519_key");
        if !host_key.exists() {
            let out = run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key));
            assert!(out.status.success(), "ssh-keygen: {}", stderr(&out));
        }
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("sshd (openssh-server) is installed");
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowTcpForwarding no\nX11Forwarding no\nPrintMotd no\nLogLevel ERROR\nMaxStartups 200\n{auth}",
                hk = host_key.display(),
                pid = home.join("sshd.pid").display(),
            );
            let conf = home.join("sshd_config");
            std::fs::write(&conf, config).expect("sshd_config");
            let mut child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + DEADLINE;
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd {
                        child,
                        port,
                        keys_dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                assert!(Instant::now() < deadline, "sshd did not listen on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sshd would not start");
    }

    /// `GIT_SSH_COMMAND` for git (the port comes from the URL); add `-p PORT 127.0.0.1` for ssh.
    pub fn ssh_command(&self, client_key: &Path) -> String {
        format!(
            "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes",
            client_key.display()
        )
    }

    /// The git URL of `repo` through this sshd.
    pub fn url(&self, repo: &str) -> String {
        format!("ssh://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.keys_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `git` as the tests run it: a fixed identity, `main` for new repositories,
/// never a prompt, and over SSH with `ssh` (a `GIT_SSH_COMMAND`) when given.
pub struct Git {
    pub ssh: Option<String>,
}

impl Git {
    pub fn over_ssh(ssh: impl Into<String>) -> Git {
        Git {
            ssh: Some(ssh.into()),
        }
    }

    /// The command `git ARGS` in `dir`, not yet run.
    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(["-c", "user.name=Test", "-c", "user.email=t@example.com"])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0");
        if let Some(ssh) = &self.ssh {
            cmd.env("GIT_SSH_COMMAND", ssh);
        }
        cmd
    }

    pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
        run(&mut self.command(dir, args))
    }

    /// Runs `git ARGS`, which must succeed; its stdout.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(
            out.status.success(),
            "git {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// One new commit (a random line in `file`) in the work tree `dir`, made
    /// with `git init` on first use; its sha.
    pub fn commit(&self, dir: &Path) -> String {
        if !dir.join(".git").exists() {
            let (parent, name) = (
                dir.parent().expect("a work tree has a parent"),
                dir.file_name().and_then(|n| n.to_str()).expect("a name"),
            );
            self.ok(parent, &["init", "-q", name]);
        }
        std::fs::write(dir.join("file"), format!("{}\n", rand::random::<u64>())).expect("write");
        self.ok(dir, &["add", "file"]);
        self.ok(dir, &["commit", "-q", "-m", "change"]);
        self.ok(dir, &["rev-parse", "HEAD"]).trim().to_string()
    }
}

/// A log line without its terminal colours (`tracing` writes them).
pub fn plain_log_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
