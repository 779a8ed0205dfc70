//! State survives restarts and `kill -9`; zone files seed only an empty store.

use switchboard_tests::Directory;

const Z: &str = "cluster.example.";

fn n(rel: &str) -> String {
    format!("{rel}.{Z}")
}

fn serial(d: &Directory) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "status"])).expect("json");
    v["zones"][0]["serial"].as_u64().expect("serial")
}

#[test]
fn state_survives_a_clean_restart() {
    let mut d = Directory::demo();
    let before = serial(&d);
    d.cli_ok(&["host", "disable", "web2"]);
    d.cli_ok(&["repo", "promote", "arcanist", "repo3"]);
    assert_eq!(serial(&d), before + 2, "every change bumps the serial");
    d.stop();
    d.start();
    assert_eq!(serial(&d), before + 2);
    assert_eq!(
        d.dig(&n("http.service"), "A", &[]).data("A"),
        vec!["10.0.1.11"]
    );
    assert_eq!(
        d.dig(&n("write.arcanist.repo"), "A", &[]).data("A"),
        vec!["10.0.3.13"]
    );
    let soa = d.dig(Z, "SOA", &[]);
    assert!(
        soa.answer[0].data.contains(&format!(" {} ", before + 2)),
        "{:?}",
        soa.answer
    );
}

#[test]
fn an_acknowledged_change_survives_kill_9() {
    let mut d = Directory::demo();
    for round in 0..5 {
        let host = format!("extra{round}");
        let addr = format!("10.9.0.{round}");
        d.cli_ok(&["host", "add", &host, "--addr", &addr, "--roles", "build"]);
        // Killed the moment the CLI has its answer: no clean shutdown, no later flush.
        d.kill9();
        d.start();
        assert_eq!(
            d.dig(&n(&format!("{host}.node")), "A", &[]).data("A"),
            vec![addr]
        );
    }
    let hosts: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "host", "list"])).expect("json");
    assert_eq!(hosts.as_array().map(Vec::len), Some(15));
}

#[test]
fn the_store_wins_over_the_zone_file_after_the_first_start() {
    let mut d = Directory::demo();
    d.cli_ok(&["host", "disable", "db2"]);
    // Someone edits the zone file; the store is the truth until `zone import`.
    let path = d.zones_dir().join("cluster.example.zone");
    let text = std::fs::read_to_string(&path)
        .expect("zone")
        .replace("10.0.4.12", "10.0.4.99");
    std::fs::write(&path, &text).expect("write zone");
    d.stop();
    d.start();
    assert_eq!(d.dig(&n("db2.node"), "A", &[]).data("A"), vec!["10.0.4.12"]);
    assert!(d.dig(&n("db2.node"), "TXT", &[]).data("TXT")[0].contains("available=0"));
    let before = serial(&d);
    let out = d.cli_ok(&["zone", "import", path.to_str().expect("utf-8 path")]);
    assert!(out.contains("imported cluster.example."), "{out}");
    assert_eq!(d.dig(&n("db2.node"), "A", &[]).data("A"), vec!["10.0.4.99"]);
    assert!(d.dig(&n("db2.node"), "TXT", &[]).data("TXT")[0].contains("available=1"));
    assert!(serial(&d) > before, "an import moves the serial forward");
}

/// A clean stop saves the compiled view for a fast start; it must never outlive
/// the state it was built from: the next change drops it, even if the directory
/// is then killed before it could save a new one.
#[test]
fn a_saved_view_never_outlives_a_change() {
    let mut d = Directory::demo();
    d.cli_ok(&["host", "disable", "web2"]);
    d.stop(); // saves the view at this serial
    d.start(); // starts from it
    assert_eq!(
        d.dig(&n("http.service"), "A", &[]).data("A"),
        vec!["10.0.1.11"]
    );
    let before = serial(&d);
    d.cli_ok(&["host", "enable", "web2"]);
    d.cli_ok(&[
        "host", "add", "late", "--addr", "10.9.9.9", "--roles", "web",
    ]);
    d.kill9(); // no chance to save a new view
    d.start();
    assert_eq!(serial(&d), before + 2);
    let mut http = d.dig(&n("http.service"), "A", &[]).data("A");
    http.sort();
    assert_eq!(http, vec!["10.0.1.11", "10.0.1.12"]);
    assert_eq!(d.dig(&n("late.node"), "A", &[]).data("A"), vec!["10.9.9.9"]);
    let soa = d.dig(Z, "SOA", &[]);
    assert!(
        soa.answer[0].data.contains(&format!(" {} ", before + 2)),
        "{:?}",
        soa.answer
    );
    // And a clean stop after that change saves the new state, not the old.
    d.stop();
    d.start();
    assert_eq!(d.dig(&n("late.node"), "A", &[]).data("A"), vec!["10.9.9.9"]);
    assert_eq!(serial(&d), before + 2);
}
