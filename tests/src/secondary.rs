//! Standard secondaries for the zone-transfer tests: Debian's BIND 9, NSD and
//! Knot, each started on a free loopback port in its own directory with its
//! own configuration, transferring from the directory with a TSIG key.
//! The configurations are the ones docs/high-availability.md shows.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, run, stdout, Dig, DEADLINE};

/// Which secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bind,
    Nsd,
    Knot,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bind => "bind",
            Kind::Nsd => "nsd",
            Kind::Knot => "knot",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Kind::Bind => "/usr/sbin/named",
            Kind::Nsd => "/usr/sbin/nsd",
            Kind::Knot => "/usr/sbin/knotd",
        }
    }
}

/// A TSIG key as the secondaries' configurations name it.
#[derive(Debug, Clone)]
pub struct TsigKey {
    pub name: String,
    pub secret: String,
}

/// A running secondary of `zone`.
pub struct Secondary {
    pub kind: Kind,
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// The configuration of `kind`, serving `zone` from `primary` on `port`.
fn config(
    kind: Kind,
    dir: &Path,
    port: u16,
    zone: &str,
    primary: std::net::SocketAddr,
    key: &TsigKey,
) -> String {
    let d = dir.display();
    let (pip, pport) = (primary.ip(), primary.port());
    let (kname, secret) = (&key.name, &key.secret);
    match kind {
        Kind::Bind => format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
}};
controls {{ }};
logging {{
    channel everything {{ file "{d}/named.log"; severity info; print-time yes; print-category yes; }};
    channel transfers {{ file "{d}/named.log"; severity debug 3; print-time yes; print-category yes; }};
    category default {{ everything; }};
    category xfer-in {{ transfers; }};
    category notify {{ everything; }};
}};
key "{kname}" {{
    algorithm hmac-sha256;
    secret "{secret}";
}};
zone "{zone}" {{
    type secondary;
    primaries {{ {pip} port {pport} key "{kname}"; }};
    file "{d}/{zone}db";
}};
"#
        ),
        Kind::Nsd => format!(
            r#"server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    zonelistfile: "{d}/zone.list"
    logfile: "{d}/nsd.log"
    verbosity: 2
    zonefiles-write: 1
    server-count: 1
remote-control:
    control-enable: no
key:
    name: "{kname}"
    algorithm: hmac-sha256
    secret: "{secret}"
zone:
    name: "{zone}"
    zonefile: "{zone}zone"
    allow-notify: {pip} {kname}
    request-xfr: {pip}@{pport} {kname}
"#
        ),
        Kind::Knot => format!(
            r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
log:
  - target: "{d}/knot.log"
    any: info
database:
    storage: "{d}"
control:
    listen: "{d}/knot.sock"
key:
  - id: {kname}
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: directory
    address: {pip}@{pport}
    key: {kname}
acl:
  - id: notify-from-directory
    address: {pip}
    key: {kname}
    action: notify
zone:
  - domain: {zone}
    storage: "{d}"
    master: directory
    acl: notify-from-directory
"#
        ),
    }
}

impl Secondary {
    /// Starts `kind` as a secondary of `zone` (absolute, with the final dot)
    /// transferring from `primary` with `key`, in a directory under `parent`.
    pub fn start(
        kind: Kind,
        parent: &Path,
        zone: &str,
        primary: std::net::SocketAddr,
        key: &TsigKey,
    ) -> Secondary {
        let mut s = Self::prepare(kind, parent, zone, primary, key);
        s.restart();
        s
    }

    /// `start` without starting: its port and configuration, so that the
    /// directory can list it first (`restart` starts it).
    pub fn prepare(
        kind: Kind,
        parent: &Path,
        zone: &str,
        primary: std::net::SocketAddr,
        key: &TsigKey,
    ) -> Secondary {
        let bin = kind.binary();
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: scripts/test.sh installs bind9, nsd and knot"
        );
        let dir = parent.join(kind.name());
        std::fs::create_dir_all(&dir).expect("secondary's dir");
        let log = dir.join(format!(
            "{}.log",
            match kind {
                Kind::Bind => "named",
                Kind::Nsd => "nsd",
                Kind::Knot => "knot",
            }
        ));
        let port = free_port();
        let conf = dir.join("secondary.conf");
        std::fs::write(&conf, config(kind, &dir, port, zone, primary, key)).expect("config");
        Secondary {
            kind,
            port,
            dir,
            child: None,
            log,
        }
    }

    /// Starts the server again (same port, same directory: what it
    /// transferred before is still there).
    pub fn restart(&mut self) {
        let conf = self.dir.join("secondary.conf");
        let mut cmd = Command::new(self.kind.binary());
        match self.kind {
            // Debug level 3: the xfer-in log says whether a transfer was IXFR.
            Kind::Bind => cmd.args(["-g", "-d", "3", "-n", "1", "-c"]).arg(&conf),
            Kind::Nsd => cmd.args(["-d", "-c"]).arg(&conf),
            Kind::Knot => cmd.args(["-c"]).arg(&conf),
        };
        let err = std::fs::File::create(self.dir.join("stderr")).expect("stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.kind.name()));
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited ({status}) at start: {}\n{}",
                    self.kind.name(),
                    std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {}",
                self.kind.name(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the server has written what it transferred to disk (BIND
    /// and NSD write zone files a moment after; Knot keeps a journal at once),
    /// so that a restart starts from it.
    pub fn wait_saved(&self, zone: &str) {
        let file = match self.kind {
            Kind::Bind => format!("{zone}db"),
            Kind::Nsd => format!("{zone}zone"),
            Kind::Knot => return,
        };
        let deadline = Instant::now() + DEADLINE;
        while !self.dir.join(&file).exists() {
            assert!(
                Instant::now() < deadline,
                "{} did not write {file}",
                self.kind.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server as an operator would (SIGTERM), and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
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
        }
    }

    /// Kills the server (kill -9).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server logged so far (its log file and stderr).
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default());
        s
    }

    /// `dig` against this secondary, as `Directory::dig` asks the directory.
    pub fn dig(&self, name: &str, rtype: &str) -> Dig {
        let out = run(Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "+norecurse",
                "+noall",
                "+comments",
                "+answer",
                "+nocookie",
                "+time=2",
                "+tries=1",
            ])
            .args([name, rtype]));
        Dig::parse(&stdout(&out))
    }

    /// The serial of the zone it serves, if it serves it.
    pub fn serial(&self, zone: &str) -> Option<u32> {
        let d = self.dig(zone, "SOA");
        d.answer
            .iter()
            .find(|r| r.rtype == "SOA")
            .and_then(|r| r.data.split_whitespace().nth(2)?.parse().ok())
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        self.kill();
    }
}
