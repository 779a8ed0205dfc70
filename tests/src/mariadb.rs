//! Real MariaDB for the database tests: a cluster replicated by GTID, one
//! primary and its replicas, each server made by `mariadb-install-db` in its
//! own temporary directory and run by Debian's `mariadbd`.
//!
//! Each server is its own "host": its own loopback address (db1 127.0.0.11,
//! db2 127.0.0.12, …) and one port shared by all, as the directory keeps one
//! port per database. The test drives the servers as root over each one's
//! unix socket with the `mariadb` client (`Server::sql`), and the
//! application's traffic through a sidecar's ports with `mariadb` and
//! `mysql_async` (`app_client`, `app_opts`).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{run, stderr, stdout, Directory, Sidecar, DEADLINE};

/// The application's account: everything on database `app`.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-test-password";
/// The sidecars' monitoring account (`--db-user`, `--db-password-file`).
pub const MONITOR_USER: &str = "switchboard";
pub const MONITOR_PASSWORD: &str = "monitor-test-password";
/// The account replicas replicate with (on every server: any may become master).
pub const REPL_USER: &str = "repl";
pub const REPL_PASSWORD: &str = "repl-test-password";

/// The table the tests write: `app.t (id, v)`.
pub const TABLE: &str = "app.t";

/// Small InnoDB files and buffers, so a server is made and started in a
/// second or two; the redo log is written at each commit but not synced (a
/// killed server loses nothing, a crashed machine might). Each server gets its
/// own `--tmpdir` too: a starting server deletes the temporary files it finds
/// there, other servers' among them.
const SMALL: [&str; 5] = [
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--innodb-log-buffer-size=2M",
    "--innodb-data-file-path=ibdata1:12M:autoextend",
    "--innodb-flush-log-at-trx-commit=2",
];

/// Ports handed out in this process, so that clusters of tests running at the
/// same time never pick the same one.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port free on every one of `ips` now, and not handed out before.
fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    let mut taken = PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let Ok(first) = TcpListener::bind((ips[0], 0)) else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        let others: Vec<_> = ips[1..]
            .iter()
            .map(|ip| TcpListener::bind((*ip, port)))
            .collect();
        if others.iter().all(Result::is_ok) && taken.insert(port) {
            return port;
        }
    }
    panic!("no port free on every one of {ips:?}");
}

/// One MariaDB server: its host name, address, data and process.
pub struct Server {
    /// The host it stands for (`db1`, …).
    pub name: String,
    pub id: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Its own directory: `data/`, `sock`, `error.log`.
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// `mariadb-install-db` into `dir/data`.
    fn install(name: &str, id: u32, ip: Ipv4Addr, port: u16, dir: PathBuf) -> Server {
        std::fs::create_dir_all(dir.join("tmp")).expect("mkdir for a server");
        let out = run(Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--user={}", whoami()))
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .args(SMALL));
        assert!(
            out.status.success(),
            "mariadb-install-db for {name} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
        Server {
            name: name.to_string(),
            id,
            ip,
            port,
            dir,
            child: None,
        }
    }

    /// Where its server listens, as a host of the directory sees it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// The tail of its error log (to show when a test fails).
    pub fn error_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts `mariadbd` on its data directory and waits (within the
    /// deadline) until it answers on its socket and its TCP address.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--user={}", whoami()))
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg(format!("--bind-address={}", self.ip))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server-id={}", self.id))
            .args([
                "--log-bin=binlog",
                "--binlog-format=ROW",
                "--log-slave-updates",
                "--gtid-strict-mode=1",
                // Semi-synchronous: a commit is acknowledged once a replica
                // has it, so a crashed master loses nothing acknowledged
                // (docs/databases.md). Async again after 2 s without one.
                "--rpl-semi-sync-master-enabled=ON",
                "--rpl-semi-sync-slave-enabled=ON",
                "--rpl-semi-sync-master-timeout=2000",
                "--skip-name-resolve",
                "--performance-schema=OFF",
            ])
            .args(SMALL)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "mariadbd {} exited ({status}) while starting:\n{}",
                    self.name,
                    self.error_log()
                );
            }
            if self.try_sql("SELECT 1").is_ok()
                && TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd {} did not answer within {DEADLINE:?}:\n{}",
                self.name,
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it at once (SIGKILL): no shutdown, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts it again on the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs `q` as root over the unix socket (`mariadb -N -B`): the rows, tab-separated.
    pub fn try_sql(&self, q: &str) -> Result<String, String> {
        let out = run(Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-N", "-B", "-e", q]));
        if out.status.success() {
            Ok(stdout(&out))
        } else {
            Err(stderr(&out).trim().to_string())
        }
    }

    /// [`Self::try_sql`], panicking (naming the server and the query) on failure.
    pub fn sql(&self, q: &str) -> String {
        self.try_sql(q)
            .unwrap_or_else(|e| panic!("{} on {}: {e}", q, self.name))
    }

    /// The first column of the first row of `q`, trimmed.
    pub fn value(&self, q: &str) -> String {
        self.sql(q).lines().next().unwrap_or("").trim().to_string()
    }

    /// Everything this server has written to its binary log.
    pub fn gtid_binlog_pos(&self) -> String {
        self.value("SELECT @@gtid_binlog_pos")
    }

    /// Everything this server has applied as a replica.
    pub fn gtid_slave_pos(&self) -> String {
        self.value("SELECT @@gtid_slave_pos")
    }

    /// Whether it is read-only; false while it does not answer (a fencing
    /// sidecar closes every client connection, this one's too).
    pub fn read_only(&self) -> bool {
        self.try_sql("SELECT @@read_only")
            .is_ok_and(|v| v.trim() == "1")
    }

    /// Waits up to `timeout` until it has applied `pos` (`MASTER_GTID_WAIT`).
    pub fn wait_gtid(&self, pos: &str, timeout: Duration) -> bool {
        let q = format!(
            "SELECT MASTER_GTID_WAIT('{pos}', {:.3})",
            timeout.as_secs_f64()
        );
        self.value(&q) == "0"
    }

    /// Replicates with a delay of `secs` (`MASTER_DELAY`).
    pub fn delay(&self, secs: u32) {
        self.sql(&format!(
            "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY={secs}; START SLAVE"
        ));
    }

    pub fn stop_slave(&self) {
        self.sql("STOP SLAVE");
    }

    pub fn start_slave(&self) {
        self.sql("START SLAVE");
    }

    /// How many rows of [`TABLE`] have `v = value`.
    pub fn count(&self, value: &str) -> u64 {
        self.value(&format!("SELECT COUNT(*) FROM {TABLE} WHERE v = '{value}'"))
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary (`db1`) and its replicas (`db2`, `db3`, …), replicating by GTID.
pub struct Cluster {
    /// Holds every server's directory, and the password file.
    pub dir: tempfile::TempDir,
    /// The port every server listens on, at its own address.
    pub port: u16,
    /// `db1` (the primary at the start) first.
    pub servers: Vec<Server>,
    /// The monitoring account's password, for `--db-password-file`.
    pub password_file: PathBuf,
}

impl Cluster {
    /// Makes and starts a primary and `replicas` replicas: replication set up
    /// first (by GTID, `MASTER_USE_GTID=slave_pos`), then the accounts and the
    /// table made on the primary, so that they replicate; returns once every
    /// replica has them.
    pub fn start(replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = replicas + 1;
        let ips: Vec<Ipv4Addr> = (1..=n as u8)
            .map(|i| Ipv4Addr::new(127, 0, 0, 10 + i))
            .collect();
        let port = free_port_on(&ips);
        let mut servers: Vec<Server> = std::thread::scope(|s| {
            let jobs: Vec<_> = ips
                .iter()
                .enumerate()
                .map(|(i, ip)| {
                    let id = i as u32 + 1;
                    let d = dir.path().join(format!("db{id}"));
                    s.spawn(move || Server::install(&format!("db{id}"), id, *ip, port, d))
                })
                .collect();
            jobs.into_iter()
                .map(|j| j.join().expect("installing a server"))
                .collect()
        });
        std::thread::scope(|s| {
            for server in servers.iter_mut() {
                s.spawn(move || server.start());
            }
        });
        let password_file = dir.path().join("db-password");
        std::fs::write(&password_file, format!("{MONITOR_PASSWORD}\n")).expect("password file");
        let cluster = Cluster {
            dir,
            port,
            servers,
            password_file,
        };
        // The replication account on every server, kept out of the binary
        // log: it must exist before replication starts, and on each server,
        // as any may become master.
        for s in &cluster.servers {
            s.sql(&format!(
                "SET sql_log_bin=0; CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'; \
                 GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'; SET sql_log_bin=1"
            ));
        }
        let primary = cluster.primary();
        for r in cluster.replicas() {
            r.sql(&format!(
                "SET GLOBAL read_only=1; CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={port}, \
                 MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', \
                 MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE",
                primary.ip
            ));
        }
        let grants = monitor_grants();
        primary.sql(&format!(
            "CREATE DATABASE app; \
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'; \
             GRANT ALL ON app.* TO '{APP_USER}'@'%'; \
             CREATE USER '{MONITOR_USER}'@'%' IDENTIFIED BY '{MONITOR_PASSWORD}'; \
             GRANT {grants} ON *.* TO '{MONITOR_USER}'@'%'; \
             CREATE TABLE {TABLE} (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64) NOT NULL, KEY (v))"
        ));
        cluster.wait_replicated();
        cluster
    }

    /// The server standing for host `name`.
    pub fn server(&self, name: &str) -> &Server {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    pub fn server_mut(&mut self, name: &str) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    /// The primary it was made with (db1).
    pub fn primary(&self) -> &Server {
        &self.servers[0]
    }

    /// The replicas it was made with.
    pub fn replicas(&self) -> &[Server] {
        &self.servers[1..]
    }

    /// Waits until every replica has applied everything the primary has now.
    pub fn wait_replicated(&self) {
        let pos = self.primary().gtid_binlog_pos();
        for r in self.replicas() {
            assert!(
                r.wait_gtid(&pos, Duration::from_secs(15)),
                "{} did not reach the primary's position {pos:?}; it has {:?}:\n{}",
                r.name,
                r.gtid_slave_pos(),
                r.sql("SHOW SLAVE STATUS\\G")
            );
        }
    }

    /// Adds each server's host to `dir` at the server's address (role `db`)
    /// and starts its sidecar, which serves database `db` on it (`--db-local`).
    pub fn sidecars(&self, dir: &Directory, db: &str) -> Vec<Sidecar> {
        let local = format!("--db-local={db}");
        let password = format!("--db-password-file={}", self.password_file.display());
        let user = format!("--db-user={MONITOR_USER}");
        self.servers
            .iter()
            .map(|s| {
                dir.sidecar_at(
                    &s.name,
                    &s.ip.to_string(),
                    "db",
                    &[&local, &user, &password],
                )
            })
            .collect()
    }

    /// `db add DB --master db1 --replicas db2,… --port PORT` in `dir`.
    pub fn add_database(&self, dir: &Directory, db: &str) {
        let replicas: Vec<&str> = self.replicas().iter().map(|s| s.name.as_str()).collect();
        let port = self.port.to_string();
        dir.cli_ok(&[
            "db",
            "add",
            db,
            "--master",
            &self.primary().name,
            "--replicas",
            &replicas.join(","),
            "--port",
            &port,
        ]);
    }
}

/// The grants docs/databases.md gives the monitoring account, read from its
/// `GRANT … ON *.* TO 'switchboard'@'%'`: the tests run with what an operator
/// is told to grant, no more.
pub fn monitor_grants() -> String {
    let doc = std::fs::read_to_string(crate::root().join("docs/databases.md"))
        .expect("docs/databases.md");
    let tail = format!(" ON *.* TO '{MONITOR_USER}'@'%'");
    let grants = doc
        .split("GRANT ")
        .skip(1)
        .find_map(|rest| rest.split_once(&tail).map(|(g, _)| g))
        .unwrap_or_else(|| panic!("no `GRANT …{tail}` in docs/databases.md"));
    grants.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The user this process runs as, for `mariadbd --user`.
fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| stdout(&o).trim().to_string())
        })
        .unwrap_or_else(|| "root".to_string())
}

/// The address of a sidecar's `--db DB=KIND@…` port, from its listening line
/// (`db=DB:KIND@ADDR`).
pub fn db_port(sidecar: &Sidecar, db: &str, kind: &str) -> SocketAddr {
    let key = format!("db={db}:{kind}@");
    crate::field(&sidecar.listening, &key).unwrap_or_else(|| {
        panic!(
            "no {key} in {}'s listening line: {}",
            sidecar.name, sidecar.listening
        )
    })
}

/// The `mariadb` client as the application, over TCP to `addr` (a sidecar's
/// port), running `q` on database `app`.
pub fn app_client(addr: SocketAddr, q: &str) -> Output {
    app_client_with(addr, &[], q)
}

/// [`app_client`] with more of the client's flags (`--skip-ssl`, say).
pub fn app_client_with(addr: SocketAddr, flags: &[&str], q: &str) -> Output {
    run(Command::new("mariadb")
        .arg("--no-defaults")
        .args(flags)
        .args(["--protocol=TCP", "-h"])
        .arg(addr.ip().to_string())
        .arg("-P")
        .arg(addr.port().to_string())
        .arg(format!("-u{APP_USER}"))
        .arg(format!("-p{APP_PASSWORD}"))
        .args(["--connect-timeout=5", "-N", "-B", "-D", "app", "-e", q]))
}

/// `mysql_async` options for the application at `addr` (a sidecar's port):
/// TCP only, never the unix socket the server would name.
pub fn app_opts(addr: SocketAddr) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(APP_USER))
        .pass(Some(APP_PASSWORD))
        .db_name(Some("app"))
        .prefer_socket(false)
        .stmt_cache_size(0)
        .into()
}

/// A one-thread runtime for `mysql_async` in a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
