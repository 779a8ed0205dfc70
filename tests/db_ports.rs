//! The sidecar's database ports on real MariaDB 10.11 (SPEC "Databases",
//! docs/databases.md): a primary and two replicas replicating by GTID
//! (`tests/src/mariadb.rs`), a sidecar on each database host (`--db-local`)
//! and a web host's sidecar with a write port and a read port, driven by the
//! `mariadb` client and by `mysql_async`.

use std::time::{Duration, Instant};

use switchboard_tests::mariadb::Cluster;

#[test]
fn the_harness_replicates_and_a_delayed_replica_sees_writes_later() {
    let c = Cluster::start(2);
    let (db1, db2, db3) = (c.server("db1"), c.server("db2"), c.server("db3"));
    assert_eq!(db1.value("SELECT @@server_id"), "1");
    assert!(!db1.read_only() && db2.read_only() && db3.read_only());

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
