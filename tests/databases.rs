//! Databases in the directory end to end (SPEC "Databases"): `db` commands,
//! the `DB.db`, `write.DB.db` and `read.DB.db` answers, positions reported in
//! hosts' signed heartbeats, lag events, promotion, freeze, read-only and zone
//! files. The sidecar's MariaDB ports are tested with real servers elsewhere;
//! here the hosts' sidecars are stood in for by heartbeats signed with each
//! host's own key, as a sidecar sends them.

use serde_json::{json, Value};
use switchboard_tests::{keygen, minimal_zone, signed_headers, stderr, unix_now, Directory};

const Z: &str = "cluster.example.";

fn n(rel: &str) -> String {
    format!("{rel}.{Z}")
}

/// Adds the three database hosts db1..db3 at 127.0.0.1..3, each with its own
/// key; returns the key files.
fn db_hosts(d: &Directory) -> Vec<std::path::PathBuf> {
    (1..=3)
        .map(|i| {
            let name = format!("db{i}");
            let (key, pubkey, _) = keygen(d.dir.path(), &name);
            d.cli_ok(&[
                "host",
                "add",
                &name,
                "--addr",
                &format!("127.0.0.{i}"),
                "--pubkey",
                &pubkey,
                "--roles",
                "db",
            ]);
            key
        })
        .collect()
}

/// A heartbeat from `host`'s sidecar, signed with its key, reporting one
/// position of database `main`: (status, body).
fn report(
    d: &Directory,
    host: &str,
    key: &std::path::Path,
    gtid: &str,
    behind: Option<u64>,
    replicating: bool,
) -> (u16, Value) {
    let body = json!({"databases": [{
        "db": "main", "gtid": gtid, "seconds_behind": behind,
        "replicating": replicating, "read_only": replicating,
    }]})
    .to_string()
    .into_bytes();
    let path = format!("/v1/hosts/{host}/heartbeat");
    let url = format!("{}{path}", d.server_url());
    let headers = signed_headers(key, "POST", &url, &body, unix_now());
    d.curl("POST", &path, &headers, Some(&body))
}

fn reported(d: &Directory, host: &str, key: &std::path::Path, gtid: &str, behind: Option<u64>) {
    let (code, body) = report(d, host, key, gtid, behind, host != "db1");
    assert_eq!(code, 200, "heartbeat of {host}: {body}");
}

fn txt(d: &Directory, name: &str) -> String {
    d.dig(&n(name), "TXT", &[]).data("TXT").join(" ")
}

/// The SRV targets of a name, as `PORT HOST`, sorted.
fn srv(d: &Directory, name: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .dig(&n(name), "SRV", &[])
        .data("SRV")
        .iter()
        .map(|s| {
            let p: Vec<&str> = s.split_whitespace().collect();
            format!("{} {}", p[2], p[3].trim_end_matches(&format!(".node.{Z}")))
        })
        .collect();
    v.sort();
    v
}

fn addrs(d: &Directory, name: &str) -> Vec<String> {
    d.dig(&n(name), "A", &[]).data("A")
}

fn serial(d: &Directory) -> String {
    d.dig(Z, "SOA", &[]).data("SOA").join("")
}

/// The audit log's `db` events: (name, action, message).
fn db_events(d: &Directory) -> Vec<(String, String, String)> {
    let out = d.cli_ok(&["--json", "events", "--last", "1000"]);
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON event per line"))
        .filter(|e| e["kind"] == "db")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("action"), s("message"))
        })
        .collect()
}

fn add_main(d: &Directory) {
    d.cli_ok(&[
        "db",
        "add",
        "main",
        "--master",
        "db1",
        "--replicas",
        "db2,db3",
        "--port",
        "3307",
        "--max-lag-s",
        "5",
    ]);
}

#[test]
fn a_database_is_added_answered_shown_and_removed() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let keys = db_hosts(&d);
    add_main(&d);
    let t = txt(&d, "main.db");
    for want in [
        "engine=mariadb",
        "master=db1",
        "replicas=db2,db3",
        "port=3307",
        "max_lag_s=5",
        "readonly=0",
    ] {
        assert!(t.contains(want), "{want} missing from {t}");
    }
    assert_eq!(srv(&d, "write.main.db"), ["3307 db1"]);
    assert_eq!(addrs(&d, "write.main.db"), ["127.0.0.1"]);
    // Replicas that have not reported do not serve reads; the master does.
    assert_eq!(srv(&d, "read.main.db"), ["3307 db1"]);
    reported(&d, "db1", &keys[0], "0-1-10", None);
    reported(&d, "db2", &keys[1], "0-1-10", Some(0));
    reported(&d, "db3", &keys[2], "0-1-9", Some(1));
    assert_eq!(
        srv(&d, "read.main.db"),
        ["3307 db1", "3307 db2", "3307 db3"]
    );
    assert_eq!(
        addrs(&d, "read.main.db"),
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    );
    // The same report again writes nothing: the serial stays.
    let before = serial(&d);
    reported(&d, "db2", &keys[1], "0-1-10", Some(0));
    assert_eq!(serial(&d), before, "a repeated position was written");

    let list: Value = serde_json::from_str(&d.cli_ok(&["--json", "db", "list"])).expect("json");
    assert_eq!(list[0]["name"], "main");
    assert_eq!(list[0]["readers"], json!(["db1", "db2", "db3"]));
    let show: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "db", "show", "main"])).expect("json");
    assert_eq!(show["positions"]["db3"]["gtid"], "0-1-9");
    assert_eq!(show["writer"], "db1");
    let human = d.cli_ok(&["db", "show", "main"]);
    assert!(
        human.contains("0-1-9") && human.contains("1 s behind"),
        "{human}"
    );
    assert!(d.cli_ok(&["db", "list"]).contains("db2,db3"));
    assert!(d.cli_ok(&["host", "show", "db2"]).contains("main"));

    // Refusals: one line, non-zero exit, nothing changed.
    let before = serial(&d);
    for (args, says) in [
        (
            vec!["db", "add", "main", "--master", "db1"],
            "already exists",
        ),
        (
            vec!["db", "add", "x", "--master", "nohost"],
            "no host nohost",
        ),
        (
            vec!["db", "add", "y", "--master", "db1", "--replicas", "db1"],
            "cannot also be a replica",
        ),
        (
            vec!["db", "add", "z", "--master", "db1", "--port", "0"],
            "port",
        ),
        (vec!["db", "show", "nodb"], "no database nodb"),
        (vec!["db", "thaw", "main"], "not frozen"),
        (vec!["host", "rm", "db3"], "still serves databases"),
    ] {
        let out = d.cli(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, body) = report(&d, "db2", &keys[1], "zero-one", Some(0), true);
    assert_eq!(code, 400, "a bad GTID was taken: {body}");
    // A host's key reports only its own positions.
    let body = json!({"databases": [{"db": "main", "gtid": "0-1-1", "replicating": true}]})
        .to_string()
        .into_bytes();
    let url = format!("{}/v1/hosts/db2/heartbeat", d.server_url());
    let headers = signed_headers(&keys[2], "POST", &url, &body, unix_now());
    let (code, _) = d.curl("POST", "/v1/hosts/db2/heartbeat", &headers, Some(&body));
    assert_eq!(code, 403, "db3's key reported db2's position");
    assert_eq!(serial(&d), before, "a refusal changed the zone");

    d.cli_ok(&["db", "rm", "main"]);
    assert_eq!(d.dig(&n("main.db"), "TXT", &[]).status, "NXDOMAIN");
    assert_eq!(d.dig(&n("write.main.db"), "SRV", &[]).status, "NXDOMAIN");
    let events = db_events(&d);
    let actions: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(actions, ["add", "remove"], "{events:?}");
}

#[test]
fn a_lagging_replica_leaves_read_and_comes_back_with_events() {
    let d = Directory::with_zone(minimal_zone, &["--lag-alert-after", "1"]);
    let keys = db_hosts(&d);
    add_main(&d);
    reported(&d, "db1", &keys[0], "0-1-10", None);
    reported(&d, "db2", &keys[1], "0-1-10", Some(0));
    reported(&d, "db3", &keys[2], "0-1-10", Some(0));
    assert_eq!(srv(&d, "read.main.db").len(), 3);
    // Behind max_lag_s (5): out of read.
    reported(&d, "db2", &keys[1], "0-1-8", Some(60));
    assert_eq!(srv(&d, "read.main.db"), ["3307 db1", "3307 db3"]);
    // Not replicating: out too.
    let (code, _) = report(&d, "db3", &keys[2], "0-1-10", None, false);
    assert_eq!(code, 200);
    assert_eq!(srv(&d, "read.main.db"), ["3307 db1"]);
    let lagging = |d: &Directory, host: &str, action: &str| {
        db_events(d)
            .iter()
            .any(|(n, a, _)| n == &format!("main/{host}") && a == action)
    };
    d.wait_for("db2 and db3 logged lagging", || {
        lagging(&d, "db2", "lagging") && lagging(&d, "db3", "lagging")
    });
    let show: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "db", "show", "main"])).expect("json");
    assert!(
        show["lagging"]["db3"]
            .as_str()
            .unwrap_or_default()
            .contains("not replicating"),
        "{show}"
    );
    // Caught up: back in read., and the event says so.
    reported(&d, "db2", &keys[1], "0-1-10", Some(0));
    reported(&d, "db3", &keys[2], "0-1-10", Some(0));
    assert_eq!(srv(&d, "read.main.db").len(), 3);
    d.wait_for("db2 and db3 logged caught-up", || {
        lagging(&d, "db2", "caught-up") && lagging(&d, "db3", "caught-up")
    });
}

#[test]
fn a_replica_that_stays_short_of_the_masters_position_leaves_read() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let keys = db_hosts(&d);
    d.cli_ok(&[
        "db",
        "add",
        "main",
        "--master",
        "db1",
        "--replicas",
        "db2",
        "--max-lag-s",
        "1",
    ]);
    reported(&d, "db1", &keys[0], "0-1-100", None);
    // It says it replicates, 0 s behind, and it lacks 10 of the master's transactions.
    reported(&d, "db2", &keys[1], "0-1-90", Some(0));
    assert_eq!(
        srv(&d, "read.main.db"),
        ["3306 db1", "3306 db2"],
        "in flight"
    );
    // The same report, while the master's position gets older than max_lag_s.
    d.wait_for("db2 out of read.", || {
        reported(&d, "db2", &keys[1], "0-1-90", Some(0));
        srv(&d, "read.main.db") == ["3306 db1"]
    });
    let show: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "db", "show", "main"])).expect("json");
    assert!(
        show["lagging"]["db2"]
            .as_str()
            .unwrap_or_default()
            .contains("lacks the master's position"),
        "{show}"
    );
    // Once it has it, it is back.
    reported(&d, "db2", &keys[1], "0-1-100", Some(0));
    assert_eq!(srv(&d, "read.main.db"), ["3306 db1", "3306 db2"]);
}

#[test]
fn promote_is_refused_when_another_replica_has_more() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let keys = db_hosts(&d);
    add_main(&d);
    // The master died after its last report; db3 received more from it.
    reported(&d, "db1", &keys[0], "0-1-100", None);
    reported(&d, "db2", &keys[1], "0-1-100", Some(0));
    reported(&d, "db3", &keys[2], "0-1-104", Some(0));
    let out = d.cli(&["db", "promote", "main", "db2"]);
    assert!(!out.status.success(), "db2 was promoted over db3");
    assert!(
        stderr(&out).contains("behind replica db3") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert!(txt(&d, "main.db").contains("master=db1"));
    d.cli_ok(&["db", "promote", "main", "db3"]);
    assert!(txt(&d, "main.db").contains("master=db3"));
}

#[test]
fn promote_is_refused_when_behind_and_forced_records_the_loss() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let keys = db_hosts(&d);
    add_main(&d);
    reported(&d, "db1", &keys[0], "0-1-100", None);
    reported(&d, "db2", &keys[1], "0-1-90", Some(3));
    reported(&d, "db3", &keys[2], "0-1-100", Some(0));
    let out = d.cli(&["db", "promote", "main", "db2"]);
    assert!(!out.status.success(), "a replica behind was promoted");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(txt(&d, "main.db").contains("master=db1"));
    // One that has everything the master reported is promoted.
    d.cli_ok(&["db", "promote", "main", "db3"]);
    assert!(txt(&d, "main.db").contains("master=db3"));
    assert!(txt(&d, "main.db").contains("replicas=db1,db2"));
    assert_eq!(srv(&d, "write.main.db"), ["3307 db3"]);
    assert_eq!(addrs(&d, "write.main.db"), ["127.0.0.3"]);
    // Forced: the loss is recorded in the model, the TXT and the event.
    d.cli_ok(&["db", "promote", "main", "db2", "--force"]);
    let show: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "db", "show", "main"])).expect("json");
    assert_eq!(show["master"], "db2");
    let lost = &show["lost"][0];
    assert_eq!(lost["old_master"], "db3");
    assert_eq!(lost["old_gtid"], "0-1-100");
    assert_eq!(lost["new_gtid"], "0-1-90");
    assert!(
        txt(&d, "main.db").contains("lost=db3>db2:0-1-100>0-1-90@"),
        "{}",
        txt(&d, "main.db")
    );
    let events = db_events(&d);
    let promotes: Vec<&String> = events
        .iter()
        .filter(|e| e.1 == "promote")
        .map(|e| &e.2)
        .collect();
    assert_eq!(promotes.len(), 2, "{events:?}");
    assert!(promotes[1].contains("may be lost"), "{}", promotes[1]);
    assert!(!promotes[0].contains("may be lost"), "{}", promotes[0]);
}

#[test]
fn freeze_and_a_master_out_of_service_leave_no_write_answer() {
    let d = Directory::with_zone(minimal_zone, &[]);
    let keys = db_hosts(&d);
    add_main(&d);
    reported(&d, "db2", &keys[1], "", Some(0));
    d.cli_ok(&[
        "db",
        "freeze",
        "main",
        "--message",
        "moving racks until 10:00",
    ]);
    let t = txt(&d, "main.db");
    assert!(t.contains("frozen=1") && t.contains("readonly=1"), "{t}");
    assert!(t.contains("frozen_message=moving racks until 10:00"), "{t}");
    let w = d.dig(&n("write.main.db"), "SRV", &[]);
    assert_eq!(w.status, "NOERROR");
    assert!(w.data("SRV").is_empty(), "frozen, yet {:?}", w.data("SRV"));
    assert!(addrs(&d, "write.main.db").is_empty());
    assert_eq!(
        srv(&d, "read.main.db"),
        ["3307 db1", "3307 db2"],
        "reads go on"
    );
    d.cli_ok(&["db", "thaw", "main"]);
    assert!(txt(&d, "main.db").contains("readonly=0"));
    assert_eq!(srv(&d, "write.main.db"), ["3307 db1"]);
    // The master out of service: read-only, reads go to the replica.
    d.cli_ok(&["host", "disable", "db1"]);
    assert!(txt(&d, "main.db").contains("readonly=1"));
    assert!(srv(&d, "write.main.db").is_empty());
    assert_eq!(srv(&d, "read.main.db"), ["3307 db2"]);
    d.cli_ok(&["host", "enable", "db1"]);
    assert_eq!(srv(&d, "write.main.db"), ["3307 db1"]);
    let events = db_events(&d);
    let actions: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(actions, ["add", "freeze", "thaw"], "{events:?}");
    assert!(events[1].2.contains("moving racks"), "{events:?}");
}

#[test]
fn databases_survive_a_restart_and_a_zone_export_and_import() {
    let mut d = Directory::with_zone(minimal_zone, &[]);
    let keys = db_hosts(&d);
    add_main(&d);
    reported(&d, "db1", &keys[0], "0-1-7,1-2-3", None);
    reported(&d, "db2", &keys[1], "0-1-5", Some(0));
    d.cli_ok(&["db", "promote", "main", "db2", "--force"]);
    d.cli_ok(&["db", "freeze", "main", "--message", "after the failover"]);
    let before = txt(&d, "main.db");
    d.stop();
    d.start();
    assert_eq!(txt(&d, "main.db"), before, "changed by a restart");
    let show: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "db", "show", "main"])).expect("json");
    assert_eq!(show["positions"]["db2"]["gtid"], "0-1-5", "{show}");
    let export = d.cli_ok(&["zone", "export", Z]);
    let line = export
        .lines()
        .find(|l| l.starts_with("main.db"))
        .unwrap_or_else(|| panic!("no main.db in the export:\n{export}"));
    assert!(line.contains("lost=db1>db2:0-1-7;1-2-3>0-1-5@"), "{line}");
    assert!(
        !line.contains("0-1-5,"),
        "positions are not configuration: {line}"
    );
    // An import of a zone that keeps the database keeps its hosts' positions.
    let path = d.dir.path().join("export.zone");
    std::fs::write(&path, &export).expect("write export");
    d.cli_ok(&["zone", "import", path.to_str().expect("utf-8 path")]);
    let show: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "db", "show", "main"])).expect("json");
    assert_eq!(show["positions"]["db2"]["gtid"], "0-1-5", "{show}");
    // Remove it, then import the export: it comes back as it was.
    d.cli_ok(&["db", "thaw", "main"]);
    d.cli_ok(&["db", "rm", "main"]);
    assert_eq!(d.dig(&n("main.db"), "TXT", &[]).status, "NXDOMAIN");
    d.cli_ok(&["zone", "import", path.to_str().expect("utf-8 path")]);
    assert_eq!(txt(&d, "main.db"), before);
    let again = d.cli_ok(&["zone", "export", Z]);
    let line2 = again.lines().find(|l| l.starts_with("main.db"));
    assert_eq!(line2, Some(line), "the round trip changed the record");
    // A database record that names no host is refused.
    let bad = export.replace("master=db2", "master=db9");
    std::fs::write(&path, bad).expect("write bad zone");
    let out = d.cli(&["zone", "import", path.to_str().expect("utf-8 path")]);
    assert!(
        !out.status.success(),
        "a database without its host was imported"
    );
    assert!(stderr(&out).contains("db9"), "{}", stderr(&out));
}
