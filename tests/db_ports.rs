//! The sidecar's database ports on real MariaDB 10.11 (SPEC "Databases",
//! docs/databases.md): a primary and two replicas replicating by GTID
//! (`tests/src/mariadb.rs`), a sidecar on each database host (`--db-local`)
//! and a web host's sidecar with a write port and a read port, driven by the
//! `mariadb` client and by `mysql_async`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use serde_json::Value;
use switchboard_directory::model::gtid_behind;
use switchboard_tests::mariadb::{
    app_client, app_client_with, app_opts, db_port, monitor_grants, runtime, Cluster, MONITOR_USER,
    TABLE,
};
use switchboard_tests::{
    minimal_zone, plain_log_line, stderr, stdout, Directory, Sidecar, DEADLINE,
};

/// A directory, a cluster of three servers (db1 the primary), a sidecar on
/// each database host and a web host's sidecar (`web1`) with both ports of
/// database `main`. Shows every sidecar's log, and the servers' error logs,
/// when a test fails.
struct Rig {
    /// web1, then db1..db3's.
    sidecars: Vec<Sidecar>,
    /// Each sidecar's log, in the same order.
    logs: Vec<Arc<Mutex<Vec<String>>>>,
    c: Cluster,
    d: Directory,
    write: SocketAddr,
    read: SocketAddr,
}

impl Rig {
    fn new() -> Rig {
        let d = Directory::with_zone(minimal_zone, &[]);
        let c = Cluster::start(2);
        let mut hosts = c.sidecars(&d, "main");
        c.add_database(&d, "main");
        let password = c.password_file.display().to_string();
        let mut web = d.sidecar_with(
            "web1",
            "web",
            None,
            &[
                "--db",
                "main=write@127.0.0.1:0",
                "--db",
                "main=read@127.0.0.1:0",
                "--db-user",
                MONITOR_USER,
                "--db-password-file",
                &password,
            ],
        );
        let (write, read) = (
            db_port(&web, "main", "write"),
            db_port(&web, "main", "read"),
        );
        let mut logs = vec![web.keep_log()];
        logs.extend(hosts.iter_mut().map(Sidecar::keep_log));
        let mut sidecars = vec![web];
        sidecars.append(&mut hosts);
        let rig = Rig {
            sidecars,
            logs,
            c,
            d,
            write,
            read,
        };
        // Ready: every host has reported its position, writes reach db1 and
        // reads a replica.
        rig.wait("every database host's position in `db show`", || {
            let show = rig.show();
            ["db1", "db2", "db3"]
                .iter()
                .all(|h| show["positions"][h]["gtid"].is_string())
        });
        rig.wait("the write port reaching db1", || {
            server_id(rig.write).is_ok_and(|id| id == 1)
        });
        rig.wait("the read port reaching a replica", || {
            server_id(rig.read).is_ok_and(|id| id != 1)
        });
        rig
    }

    /// `db show main --json`.
    fn show(&self) -> Value {
        serde_json::from_str(&self.d.cli_ok(&["--json", "db", "show", "main"]))
            .expect("db show --json prints JSON")
    }

    /// Polls `f` every 20 ms until it holds, or panics after [`DEADLINE`].
    fn wait(&self, what: &str, mut f: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if f() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (s, log) in self.sidecars.iter().zip(&self.logs) {
            let name = &s.name;
            let log = log.lock().unwrap_or_else(|p| p.into_inner());
            eprintln!("---- {name}'s log ({} lines)", log.len());
            for l in log.iter() {
                eprintln!("{name}: {}", plain_log_line(l));
            }
        }
        for s in &self.c.servers {
            eprintln!("---- {}'s error log (tail)\n{}", s.name, s.error_log());
        }
    }
}

/// `SELECT @@server_id` on a new connection through `addr` (the `mariadb` client).
fn server_id(addr: SocketAddr) -> Result<u32, String> {
    let out = app_client(addr, "SELECT @@server_id");
    if !out.status.success() {
        return Err(stderr(&out).trim().to_string());
    }
    stdout(&out)
        .trim()
        .parse()
        .map_err(|_| format!("not a server id: {:?}", stdout(&out)))
}

/// Inserts `v` into the test table on a new connection through `addr`.
fn insert(addr: SocketAddr, v: &str) -> Result<(), String> {
    let out = app_client(addr, &format!("INSERT INTO {TABLE} (v) VALUES ('{v}')"));
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr(&out).trim().to_string())
    }
}

/// The server ids `n` new read connections (`mysql_async`) land on, counted.
fn spread(read: SocketAddr, n: usize) -> BTreeMap<u32, usize> {
    runtime().block_on(async {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let mut conn = mysql_async::Conn::new(app_opts(read))
                .await
                .expect("a read connection");
            let id: u32 = conn
                .query_first("SELECT @@server_id")
                .await
                .expect("SELECT @@server_id")
                .expect("a row");
            conn.disconnect().await.expect("disconnect");
            *seen.entry(id).or_insert(0) += 1;
        }
        seen
    })
}

#[test]
fn the_harness_replicates_and_a_delayed_replica_sees_writes_later() {
    let c = Cluster::start(2);
    let (db1, db2, db3) = (c.server("db1"), c.server("db2"), c.server("db3"));
    assert_eq!(db1.value("SELECT @@server_id"), "1");
    assert!(!db1.read_only() && db2.read_only() && db3.read_only());
    // The monitoring account has the grants docs/databases.md gives, on every server.
    let shown = db3.value(&format!("SHOW GRANTS FOR '{MONITOR_USER}'@'%'"));
    let set = |list: &str| -> std::collections::BTreeSet<String> {
        list.split(',').map(|g| g.trim().to_string()).collect()
    };
    let on_db3 = shown
        .strip_prefix("GRANT ")
        .and_then(|g| g.split_once(" ON *.*"))
        .map(|(g, _)| set(g));
    assert_eq!(on_db3, Some(set(&monitor_grants())), "{shown}");

    db1.sql("INSERT INTO app.t (v) VALUES ('first')");
    c.wait_replicated();
    assert_eq!((db2.count("first"), db3.count("first")), (1, 1));

    db3.delay(2);
    db1.sql("INSERT INTO app.t (v) VALUES ('second')");
    let pos = db1.gtid_binlog_pos();
    let written = Instant::now();
    assert!(
        db2.wait_gtid(&pos, Duration::from_secs(5)),
        "db2 did not get it"
    );
    assert_eq!(db2.count("second"), 1);
    assert_eq!(db3.count("second"), 0, "the delayed replica has it already");
    assert!(
        db3.wait_gtid(&pos, Duration::from_secs(10)),
        "db3 never got it"
    );
    assert_eq!(db3.count("second"), 1);
    // MASTER_DELAY counts from the event's timestamp, in whole seconds.
    assert!(
        written.elapsed() >= Duration::from_millis(900),
        "db3 applied it {:?} after the write, with MASTER_DELAY=2",
        written.elapsed()
    );
}

#[test]
fn writes_through_the_write_port_land_on_the_primary() {
    let r = Rig::new();
    let db1 = r.c.server("db1");
    insert(r.write, "by-the-client").expect("insert with the mariadb client");
    assert_eq!(db1.count("by-the-client"), 1);

    let id = runtime().block_on(async {
        let mut conn = mysql_async::Conn::new(app_opts(r.write))
            .await
            .expect("a write connection");
        conn.query_drop(format!("INSERT INTO {TABLE} (v) VALUES ('by-rust')"))
            .await
            .expect("insert with mysql_async");
        let id: Option<u32> = conn
            .query_first("SELECT @@server_id")
            .await
            .expect("SELECT @@server_id");
        conn.disconnect().await.expect("disconnect");
        id
    });
    assert_eq!(id, Some(1));
    assert_eq!(db1.count("by-rust"), 1);
    // They replicate like any other write.
    r.c.wait_replicated();
    assert_eq!(r.c.server("db3").count("by-rust"), 1);
}

#[test]
fn reads_spread_over_the_replicas_and_not_the_master_while_they_are_current() {
    let r = Rig::new();
    r.c.wait_replicated();
    let seen = spread(r.read, 20);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        [2, 3],
        "server ids of 20 read connections: {seen:?}"
    );
    // The mariadb client too.
    let ids: Vec<u32> = (0..6).map(|_| server_id(r.read).expect("a read")).collect();
    assert!(ids.contains(&2) && ids.contains(&3), "{ids:?}");
}

#[test]
fn a_read_right_after_a_write_sees_it_1000_times_with_a_delayed_replica() {
    let r = Rig::new();
    r.c.server("db3").delay(2);
    let tries = 1000;
    let start = Instant::now();
    let (misses, by_server) = runtime().block_on(async {
        let mut writer = mysql_async::Conn::new(app_opts(r.write))
            .await
            .expect("a write connection");
        let mut misses = Vec::new();
        let mut by_server = BTreeMap::new();
        for i in 0..tries {
            let v = format!("raw-{i}");
            writer
                .query_drop(format!("INSERT INTO {TABLE} (v) VALUES ('{v}')"))
                .await
                .expect("a write");
            let mut reader = mysql_async::Conn::new(app_opts(r.read))
                .await
                .expect("a read connection");
            let (id, n): (u32, u64) = reader
                .query_first(format!(
                    "SELECT @@server_id, COUNT(*) FROM {TABLE} WHERE v = '{v}'"
                ))
                .await
                .expect("a read")
                .expect("a row");
            reader.disconnect().await.expect("disconnect");
            *by_server.entry(id).or_insert(0) += 1;
            if n == 0 {
                misses.push((i, id));
            }
        }
        writer.disconnect().await.expect("disconnect");
        (misses, by_server)
    });
    let took = start.elapsed();
    eprintln!(
        "read-after-write: {tries} tries in {took:?} ({:?} each); reads by server id: {by_server:?}",
        took / tries
    );
    assert!(misses.is_empty(), "misses (try, server id): {misses:?}");
    assert!(
        !by_server.contains_key(&3),
        "the delayed replica served a read right after a write: {by_server:?}"
    );
    // And with the mariadb client.
    for i in 0..20 {
        let v = format!("cli-raw-{i}");
        insert(r.write, &v).expect("a write");
        let out = app_client(
            r.read,
            &format!("SELECT COUNT(*) FROM {TABLE} WHERE v = '{v}'"),
        );
        assert_eq!(stdout(&out).trim(), "1", "try {i}: {}", stderr(&out));
    }
}

#[test]
fn a_replica_that_stops_replicating_stops_getting_reads() {
    let r = Rig::new();
    r.c.wait_replicated();
    let seen = spread(r.read, 10);
    assert!(seen.contains_key(&2), "{seen:?}");
    r.c.server("db2").stop_slave();
    let stopped = Instant::now();
    // The last read db2 serves, then 20 in a row elsewhere.
    let mut last_on_db2 = None;
    let mut run = 0;
    while run < 20 {
        assert!(stopped.elapsed() < DEADLINE, "db2 kept getting reads");
        let id = server_id(r.read).expect("a read");
        if id == 2 {
            last_on_db2 = Some(stopped.elapsed());
            run = 0;
        } else {
            run += 1;
        }
    }
    let last = last_on_db2.unwrap_or_default();
    eprintln!("db2's last read came {last:?} after STOP SLAVE");
    assert!(
        last < Duration::from_secs(2),
        "db2 got reads for {last:?} after STOP SLAVE"
    );
}

/// What a replica has received from its master (`Gtid_IO_Pos`).
fn received(s: &switchboard_tests::mariadb::Server) -> String {
    s.sql("SHOW SLAVE STATUS\\G")
        .lines()
        .find_map(|l| l.trim().strip_prefix("Gtid_IO_Pos:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn a_promotion_moves_writes_within_a_second_and_loses_nothing_acknowledged() {
    let mut r = Rig::new();
    // A writer on one connection through the write port, until db1 dies.
    let write = r.write;
    let writer = std::thread::spawn(move || {
        runtime().block_on(async {
            let mut conn = mysql_async::Conn::new(app_opts(write))
                .await
                .expect("a write connection");
            let mut acked = Vec::new();
            for i in 0.. {
                let v = format!("before-{i}");
                if conn
                    .query_drop(format!("INSERT INTO {TABLE} (v) VALUES ('{v}')"))
                    .await
                    .is_err()
                {
                    break;
                }
                acked.push(v);
            }
            acked
        })
    });
    r.wait("writes through the port", || {
        r.c.server("db1").count("before-50") == 1
    });
    r.c.server_mut("db1").kill();
    let acked = writer.join().expect("the writer");
    assert!(acked.len() > 50, "{} writes acknowledged", acked.len());

    // Semi-synchronous replication: every acknowledged write reached a
    // replica. Each applies what it received; the DBA promotes the one
    // furthest on (`db show`), which the directory then takes without --force.
    for name in ["db2", "db3"] {
        let s = r.c.server(name);
        let io = received(s);
        assert!(
            s.wait_gtid(&io, Duration::from_secs(10)),
            "{name} applies what it received ({io})"
        );
    }
    let (p2, p3) = (
        r.c.server("db2").gtid_slave_pos(),
        r.c.server("db3").gtid_slave_pos(),
    );
    let (new, other) = if gtid_behind(&p2, &p3) {
        ("db3", "db2")
    } else {
        ("db2", "db3")
    };
    let actual = r.c.server(new).gtid_slave_pos();
    r.wait("the reported positions to be the servers'", || {
        let show = r.show();
        let gtid = |h: &str| {
            show["positions"][h]["gtid"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let master = gtid("db1");
        !master.is_empty()
            && !gtid_behind(&gtid(new), &master)
            && !gtid_behind(&gtid(new), &actual)
            && !gtid_behind(&gtid(new), &gtid(other))
    });
    r.d.cli_ok(&["db", "promote", "main", new]);
    let promoted = Instant::now();
    let mut last_error = String::new();
    let resumed = loop {
        match insert(r.write, "after-promote") {
            Ok(()) => break promoted.elapsed(),
            Err(e) => last_error = e,
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(2),
            "no write through the port 2 s after the promotion; last error: {last_error}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "writes resumed {resumed:?} after `db promote {new}` returned (last refusal: {last_error:?})"
    );
    let master = r.c.server(new);
    assert_eq!(master.count("after-promote"), 1, "the write went elsewhere");
    assert!(
        resumed < Duration::from_secs(1),
        "writes resumed {resumed:?} after the promotion"
    );
    let on_new: std::collections::HashSet<String> = master
        .sql(&format!("SELECT v FROM {TABLE} WHERE v LIKE 'before-%'"))
        .lines()
        .map(str::to_string)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|v| !on_new.contains(*v)).collect();
    assert!(lost.is_empty(), "acknowledged, not on {new}: {lost:?}");
    // The other replica follows the new master.
    let pos = master.gtid_binlog_pos();
    assert!(
        r.c.server(other).wait_gtid(&pos, Duration::from_secs(10)),
        "{other} does not follow {new}: {}",
        r.c.server(other).sql("SHOW SLAVE STATUS\\G")
    );

    // The old master comes back: its sidecar fences it, and it gets no writes.
    r.c.server_mut("db1").start();
    let fenced = r.wait("db1 read-only", || r.c.server("db1").read_only());
    eprintln!("db1 was made read-only {fenced:?} after it answered again");
    let db1_pos = r.c.server("db1").gtid_binlog_pos();
    for i in 0..10 {
        insert(r.write, &format!("after-return-{i}")).expect("a write through the port");
    }
    assert_eq!(
        r.c.server(new).count("after-return-9"),
        1,
        "writes after db1's return"
    );
    assert_eq!(r.c.server("db1").count("after-return-9"), 0);
    assert_eq!(
        r.c.server("db1").gtid_binlog_pos(),
        db1_pos,
        "db1 took writes"
    );
}

#[test]
fn a_switchover_closes_write_connections_to_the_old_master_and_fences_it() {
    let r = Rig::new();
    let (db1, db2) = (r.c.server("db1"), r.c.server("db2"));
    let closed = runtime().block_on(async {
        let mut open = mysql_async::Conn::new(app_opts(r.write))
            .await
            .expect("a write connection");
        open.query_drop(format!("INSERT INTO {TABLE} (v) VALUES ('open')"))
            .await
            .expect("a write");
        r.wait("db2's reported position to cover db1's", || {
            let show = r.show();
            let master = show["positions"]["db1"]["gtid"].as_str().unwrap_or("");
            let db2 = show["positions"]["db2"]["gtid"].as_str().unwrap_or("");
            master == db1.gtid_binlog_pos() && !gtid_behind(db2, master)
        });
        r.d.cli_ok(&["db", "promote", "main", "db2"]);
        let promoted = Instant::now();
        // The connection open to db1 is closed: its next statement fails.
        while open.query_drop("SELECT 1").await.is_ok() {
            assert!(
                promoted.elapsed() < Duration::from_secs(2),
                "a write connection to the old master still open 2 s after the promotion"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        promoted.elapsed()
    });
    eprintln!("the open write connection was closed {closed:?} after `db promote` returned");
    assert!(
        closed < Duration::from_secs(1),
        "the open write connection lasted {closed:?} after the promotion"
    );
    r.wait("writes through the port on db2", || {
        insert(r.write, "after-switchover").is_ok()
    });
    assert_eq!(db2.count("after-switchover"), 1);
    assert_eq!(db1.count("after-switchover"), 0);
    r.wait("db1 read-only", || db1.read_only());
    assert!(!db2.read_only(), "the new master is read-only");
    let db1_log = r.logs[1]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .join("\n");
    assert!(db1_log.contains("fenced"), "db1's sidecar log: {db1_log}");
}

#[test]
fn promoting_a_replica_behind_is_refused_unless_forced_and_the_loss_is_recorded() {
    let r = Rig::new();
    let db3 = r.c.server("db3");
    db3.stop_slave();
    let behind = db3.gtid_slave_pos();
    for i in 0..5 {
        insert(r.write, &format!("only-on-db1-{i}")).expect("a write");
    }
    let master = r.c.server("db1").gtid_binlog_pos();
    r.wait("db1's new position and db3's old one in `db show`", || {
        let show = r.show();
        show["positions"]["db1"]["gtid"] == master.as_str()
            && show["positions"]["db3"]["gtid"] == behind.as_str()
            && show["positions"]["db3"]["replicating"] == false
    });
    let out = r.d.cli(&["db", "promote", "main", "db3"]);
    assert!(!out.status.success(), "a replica behind was promoted");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(r.show()["writer"], "db1", "a refusal changed the master");

    r.d.cli_ok(&["db", "promote", "main", "db3", "--force"]);
    let show = r.show();
    let lost = &show["lost"][0];
    assert_eq!(lost["old_master"], "db1", "{show}");
    assert_eq!(lost["new_master"], "db3", "{show}");
    assert_eq!(lost["old_gtid"], master.as_str(), "{show}");
    assert_eq!(lost["new_gtid"], behind.as_str(), "{show}");
    // The write port follows the directory, loss and all.
    r.wait("writes reaching db3", || {
        insert(r.write, "on-db3").is_ok() && db3.count("on-db3") >= 1
    });
}

#[test]
fn read_only_and_frozen_answer_the_mariadb_client_with_an_error_and_reads_go_on() {
    let r = Rig::new();
    // The write port's answer to a new connection, once it is an error 1290:
    // what the client prints by default, and without TLS. (By default the
    // client asks for TLS, and says so of an error that comes before it.)
    let refused = |what: &str| {
        let start = Instant::now();
        loop {
            let out = app_client(r.write, "SELECT @@server_id");
            if !out.status.success() && stderr(&out).contains("1290") {
                let plain = app_client_with(r.write, &["--skip-ssl"], "SELECT @@server_id");
                return (stderr(&out), stderr(&plain));
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the write port did not refuse ({what}) within 5 s; it answers: {}{}\n`db show`: {}\nDNS: {:?}",
                stdout(&out),
                stderr(&out),
                r.d.cli_ok(&["db", "show", "main"]),
                r.d.dig("main.db.cluster.example.", "TXT", &[]).data("TXT"),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    r.d.cli_ok(&["host", "disable", "db1"]);
    let (e, plain) = refused("no available master");
    let says = "switchboard: database main is read-only: its master db1 is not available; reads still work through the read port";
    assert!(e.contains(says), "{e}");
    assert_eq!(plain.trim(), format!("ERROR 1290 (HY000): {says}"));
    let id = server_id(r.read).expect("a read while read-only");
    assert!(id == 2 || id == 3, "read on {id}");
    r.d.cli_ok(&["host", "enable", "db1"]);
    r.wait("writes again", || insert(r.write, "after-enable").is_ok());

    r.d.cli_ok(&[
        "db",
        "freeze",
        "main",
        "--message",
        "schema change until 14:00",
    ]);
    let (e, plain) = refused("frozen");
    let says = "switchboard: database main is frozen: schema change until 14:00";
    assert!(e.contains(says), "{e}");
    assert_eq!(plain.trim(), format!("ERROR 1290 (HY000): {says}"));
    // mysql_async sees the same error.
    let err = runtime()
        .block_on(mysql_async::Conn::new(app_opts(r.write)))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("schema change until 14:00"), "{err:?}");
    let id = server_id(r.read).expect("a read while frozen");
    assert!(id == 2 || id == 3, "read on {id}");

    r.d.cli_ok(&["db", "thaw", "main"]);
    r.wait("writes after the thaw", || {
        insert(r.write, "after-thaw").is_ok()
    });
    assert_eq!(r.c.server("db1").count("after-thaw"), 1);
}

#[test]
fn reads_go_on_when_the_master_dies() {
    let mut r = Rig::new();
    r.c.wait_replicated();
    r.c.server_mut("db1").kill();
    let killed = Instant::now();
    let mut ids = BTreeMap::new();
    for i in 0..30 {
        let asked = Instant::now();
        let id = server_id(r.read)
            .unwrap_or_else(|e| panic!("read {i}, {:?} after the kill: {e}", killed.elapsed()));
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(2), "read {i} took {took:?}");
        *ids.entry(id).or_insert(0) += 1;
    }
    eprintln!("reads after the master died, by server id: {ids:?}");
    assert!(!ids.contains_key(&1), "{ids:?}");
    assert_eq!(ids.values().sum::<usize>(), 30);
}
