//! State survives restarts and `kill -9`; zone files seed only an empty store.

use std::time::Duration;

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

/// SIGKILL at random moments while a client streams signed changes: after 50
/// kill/restart cycles every change the CLI saw acknowledged is there, and the
/// store opened every time.
#[test]
fn fifty_random_kills_lose_no_acknowledged_change() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut d = Directory::demo();
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, done) = (acked.clone(), done.clone());
        let cli = d.cli_command();
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !done.load(Ordering::SeqCst) {
                i += 1;
                let host = format!("k{i}");
                let addr = format!("10.7.{}.{}", i / 250, i % 250 + 1);
                let out = cli(&["host", "add", &host, "--addr", &addr, "--roles", "build"]);
                if out.status.success() {
                    acked.lock().expect("lock").push((host, addr));
                }
            }
        })
    };
    for cycle in 0..50 {
        let acked_before = acked.lock().expect("lock").len();
        // Let at least one change land in this cycle, then kill at a random moment.
        d.wait_for("a change acknowledged in this cycle", || {
            acked.lock().expect("lock").len() > acked_before
        });
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 60));
        d.kill9();
        if let Err(e) = d.try_start() {
            panic!("cycle {cycle}: the store did not open after kill -9: {e}");
        }
    }
    done.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 50, "{} changes acknowledged", acked.len());
    let hosts: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "host", "list"])).expect("json");
    let stored: std::collections::HashMap<String, String> = hosts
        .as_array()
        .expect("host list")
        .iter()
        .filter_map(|h| {
            Some((
                h["name"].as_str()?.to_string(),
                h["addrs"][0].as_str()?.to_string(),
            ))
        })
        .collect();
    for (host, addr) in &acked {
        assert_eq!(
            stored.get(host),
            Some(addr),
            "acknowledged {host} lost after 50 kills"
        );
    }
    // And DNS agrees with the store for the last and first acknowledged hosts.
    for (host, addr) in [acked.first(), acked.last()].into_iter().flatten() {
        assert_eq!(
            d.dig(&n(&format!("{host}.node")), "A", &[]).data("A"),
            vec![addr.clone()]
        );
    }
}

#[test]
fn a_stored_record_that_cannot_be_read_is_left_out_and_everything_else_is_served() {
    use switchboard_directory::model::PublicKey;
    use switchboard_directory::store::{sled::SledStore, Change, Store};
    let mut d = Directory::demo();
    d.stop();
    {
        // Records as a buggy or older directory may have written them: a key
        // that is not a curve point inside the zone's snapshot, and in two
        // later changes.
        let off_curve = (0u8..=255)
            .map(|i| [i; 32])
            .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
            .expect("some 32-byte string is not a point");
        let store = SledStore::open(&d.data_dir()).expect("open the store");
        let mut zone = store.load().expect("load").zones.remove(0);
        let weak = |name: &str, from: &switchboard_directory::model::Host| {
            let mut h = from.clone();
            h.name = name.to_string();
            h.key = Some(PublicKey(off_curve));
            h
        };
        let web2 = zone.hosts["web2"].clone();
        zone.hosts.insert("evil1".into(), weak("evil1", &web2));
        zone.serial += 1;
        store.replace_zone(&zone, &[]).expect("write a snapshot");
        let web1 = weak("web1", &zone.hosts["web1"]);
        store
            .commit(
                zone.origin(),
                zone.serial + 1,
                &[Change::PutHost(weak("evil2", &web2)), Change::PutHost(web1)],
                &[],
            )
            .expect("commit");
    }
    d.try_start()
        .unwrap_or_else(|e| panic!("one bad record stopped the directory: {e}"));
    // Everything else is served; the unreadable entities are not.
    assert_eq!(d.dig(&n("web2.node"), "A", &[]).status, "NOERROR");
    assert!(!d.dig(&n("web2.node"), "A", &[]).data("A").is_empty());
    for gone in ["evil1", "evil2", "web1"] {
        assert_eq!(
            d.dig(&n(&format!("{gone}.node")), "A", &[]).status,
            "NXDOMAIN",
            "{gone}"
        );
    }
    // `status` counts and names them.
    let v: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "status"])).expect("json");
    let bad = v["unreadable"].as_array().expect("an unreadable list");
    assert_eq!(bad.len(), 3, "{v}");
    for name in ["evil1", "evil2", "web1"] {
        assert!(
            bad.iter()
                .any(|u| u["key"].as_str().unwrap_or_default().contains(name)
                    && u["reason"].as_str().unwrap_or_default().contains("key")),
            "{name} missing from {v}"
        );
    }
    let table = d.cli_ok(&["status"]);
    assert!(
        table.contains("3 stored record(s) could not be read"),
        "{table}"
    );
    // Changes go on, and survive a restart.
    d.cli_ok(&["host", "disable", "db1"]);
    let before = serial(&d);
    d.stop();
    d.start();
    assert_eq!(serial(&d), before);
    assert_eq!(d.dig(&n("web2.node"), "A", &[]).status, "NOERROR");
}
