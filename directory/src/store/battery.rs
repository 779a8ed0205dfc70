//! One test battery for every [`Store`] (as hickory-dns runs one zone-handler
//! battery against each of its stores): each behaviour the directory relies
//! on, as a function that takes fresh stores from a [`Backend`]. A backend's
//! unit tests run them all with [`battery_tests!`](crate::battery_tests)
//! (`store::memory`, `store::sled`; a new store, etcd say, adds one line), so
//! every store keeps the same contract. Not `cfg(test)`: a store in another
//! crate can run the battery too.
//!
//! What a backend cannot express is skipped, not faked: a store that holds
//! no serialized records (memory) cannot hold an unreadable one, and one that
//! cannot be reopened skips the reopen case.

use super::{Change, Store};
use crate::events::{Draft, Event};
use crate::model::{AdminKey, Zone};

/// How the battery gets stores of one backend.
pub trait Backend {
    type Store: Store;

    /// A new, empty store.
    fn fresh(&mut self) -> Self::Store;

    /// The same store closed and opened again; `None` when the backend keeps
    /// nothing across a reopen.
    fn reopen(&mut self, store: Self::Store) -> Option<Self::Store> {
        drop(store);
        None
    }

    /// Makes the stored record of `host` in `origin` unreadable, as a damaged
    /// disk or an older binary's format would; `false` when the backend holds
    /// no record that could be.
    fn damage_host(&mut self, _store: &Self::Store, _origin: &str, _host: &str) -> bool {
        false
    }
}

/// The zone the battery stores: hosts (one with a key, one with two
/// addresses), bindings, a repository, an admin key and static records.
pub fn zone(origin: &str) -> Zone {
    let text = format!(
        "$ORIGIN {origin}\n$TTL 3600\n\
         @ IN SOA ns1 hostmaster ( 7 3600 600 604800 30 )\n\
         @ IN NS ns1\n\
         ns1 IN A 127.0.0.1\n\
         www IN CNAME web1.node\n\
         web1.node 60 IN A 10.0.1.11\n\
         web1.node 60 IN TXT \"roles=web\" \"available=1\" \"key=ed25519:zsvsmQl5/mjycgBn4qXuyrfPFNfMoZgxV/Xy60+JRJc=\" \"rack=a1\"\n\
         web2.node 60 IN A 10.0.1.12\n\
         web2.node 60 IN AAAA fd00::12\n\
         web2.node 60 IN TXT \"roles=web\" \"available=1\"\n\
         repo1.node 60 IN A 10.0.3.11\n\
         repo1.node 60 IN TXT \"roles=repo\" \"available=1\"\n\
         repo2.node 60 IN A 10.0.3.12\n\
         repo2.node 60 IN TXT \"roles=repo\" \"available=1\"\n\
         web1._http._tcp 5 IN SRV 0 10 80 web1.node\n\
         web1._http._tcp 5 IN TXT \"readonly=0\" \"available=1\"\n\
         web2._http._tcp 5 IN SRV 0 10 80 web2.node\n\
         web2._http._tcp 5 IN TXT \"readonly=0\" \"available=1\"\n\
         repo1._ssh._tcp 5 IN SRV 0 0 22 repo1.node\n\
         repo1._ssh._tcp 5 IN TXT \"readonly=0\" \"available=1\"\n\
         arcanist.repo 5 IN TXT \"master=repo1\" \"replicas=repo2\" \"max_lag=0\" \"version.repo1=7\" \"version.repo2=7\"\n\
         ops._admin 60 IN TXT \"key=ed25519:tBgoI/KoTuYfrd2fNDc749DrvPspqsT2CcsB29CpN04=\"\n"
    );
    crate::zonefile::parse(&text, "the store battery's zone", Some(origin))
        .unwrap_or_else(|e| panic!("the battery's zone does not parse: {e}"))
}

const ORIGIN: &str = "battery.example.";

/// An event of the audit log, as `Directory` numbers them.
pub fn event(id: u64, by: &str) -> Event {
    Draft::new("host", "web1", "add")
        .message(format!("event {id}"))
        .finish(id, 1_700_000_000_000 + id, ORIGIN, by)
}

/// Every kind of change, each once, against [`zone`]; and the zone after them.
/// A database with a reported position and a recorded loss.
fn database() -> crate::model::Database {
    crate::model::Database {
        name: "main".into(),
        master: "db1".into(),
        replicas: vec!["db2".into()],
        port: 3307,
        max_lag_s: 5,
        frozen: None,
        positions: [(
            "db2".to_string(),
            crate::model::DbPosition {
                gtid: "0-1-5,1-2-3".into(),
                seconds_behind: Some(2),
                replicating: true,
                read_only: true,
                at: 1_700_000_000,
            },
        )]
        .into(),
        lost: vec![crate::model::DbLoss {
            old_master: "db2".into(),
            new_master: "db1".into(),
            old_gtid: "0-1-6".into(),
            new_gtid: "0-1-5".into(),
            at: 1_700_000_000,
        }],
    }
}

fn changes(before: &Zone) -> (Vec<Change>, Zone) {
    let gone = "repo2".to_string();
    let unbound = ("web2".to_string(), "http".to_string());
    let mut changed = before.hosts["web2"].clone();
    changed.available = !changed.available;
    let mut rebound = before.bindings[&("repo1".to_string(), "ssh".to_string())].clone();
    rebound.port = 2222;
    let mut repo = before.repos["arcanist"].clone();
    repo.versions.insert("repo1".into(), 8);
    repo.replicas.clear();
    repo.versions.remove("repo2");
    repo.canonicalize();
    let admin = AdminKey {
        name: "second".into(),
        key: crate::keys::public(&ed25519_dalek::SigningKey::from_bytes(&[7; 32])),
    };
    let changes = vec![
        Change::DelBinding {
            host: unbound.0.clone(),
            service: unbound.1.clone(),
        },
        Change::PutHost(changed),
        Change::PutBinding(rebound),
        Change::PutRepo(repo),
        Change::DelHost(gone),
        Change::PutAdmin(admin),
        Change::DelAdmin("ops".into()),
        Change::DelRepo("nothing-by-that-name".into()),
        Change::PutDb(database()),
        Change::PutDb(crate::model::Database {
            frozen: Some("maintenance".into()),
            ..database()
        }),
        Change::PutDb(crate::model::Database {
            name: "gone".into(),
            ..database()
        }),
        Change::DelDb("gone".into()),
    ];
    let mut after = before.clone();
    for c in &changes {
        c.clone().apply(&mut after);
    }
    after.serial += 1;
    (changes, after)
}

/// A new store holds nothing: no zone, no event, no cursor, no view.
pub fn empty_store_loads_nothing<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let loaded = store.load().expect("load");
    assert!(loaded.zones.is_empty(), "{:?}", loaded.zones);
    assert!(loaded.unreadable.is_empty(), "{:?}", loaded.unreadable);
    assert_eq!(store.last_event_id().expect("last"), 0);
    assert_eq!(store.events_after(0, 10).expect("events"), vec![]);
    assert_eq!(store.cursor("webhook x").expect("cursor"), None);
    assert_eq!(store.load_view(ORIGIN), None);
}

/// A zone written whole loads as it was written; written again, the new one
/// replaces it whole (nothing of the old one stays).
pub fn replaced_zone_loads_equal<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let zone = zone(ORIGIN);
    store.replace_zone(&zone, &[]).expect("seed");
    let loaded = store.load().expect("load");
    assert_eq!(loaded.zones, vec![zone.clone()]);
    assert_eq!(loaded.unreadable, vec![]);
    let (_, mut imported) = changes(&zone);
    imported.serial += 10;
    store.replace_zone(&imported, &[]).expect("import");
    assert_eq!(store.load().expect("load").zones, vec![imported]);
}

/// Committed changes load as the zone they describe, serial included.
pub fn committed_changes_load_equal<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let zone = zone(ORIGIN);
    store.replace_zone(&zone, &[]).expect("seed");
    let (changes, after) = changes(&zone);
    store
        .commit(ORIGIN, after.serial, &changes, &[])
        .expect("commit");
    let loaded = store.load().expect("load");
    assert_eq!(loaded.zones, vec![after.clone()]);
    assert_eq!(loaded.unreadable, vec![]);
    // A commit with no change moves the serial only.
    store
        .commit(ORIGIN, after.serial + 1, &[], &[])
        .expect("commit");
    let mut later = after;
    later.serial += 1;
    assert_eq!(store.load().expect("load").zones, vec![later]);
}

/// Zones are kept apart: a change, a replacement or a saved view of one
/// leaves the other as it was.
pub fn zones_are_kept_apart<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let (one, other) = (zone(ORIGIN), zone("other.example."));
    store.replace_zone(&one, &[]).expect("seed one");
    store.replace_zone(&other, &[]).expect("seed other");
    store
        .save_view(other.origin(), b"other")
        .expect("save view");
    let (changes, after) = changes(&one);
    store
        .commit(ORIGIN, after.serial, &changes, &[])
        .expect("commit");
    store.replace_zone(&after, &[]).expect("replace");
    let mut loaded = store.load().expect("load").zones;
    loaded.sort_by(|a, b| a.origin().cmp(b.origin()));
    assert_eq!(loaded, vec![after, other.clone()]);
    assert_eq!(
        store.load_view(other.origin()).as_deref(),
        Some(&b"other"[..])
    );
}

/// Events written with a change, with a zone or alone come back in order of
/// id, after any id, at most `limit` at a time; the last id is the largest.
pub fn events_are_read_in_order<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let zone = zone(ORIGIN);
    store
        .replace_zone(&zone, &[event(1, "directory")])
        .expect("seed");
    let host = zone.hosts["web1"].clone();
    store
        .commit(
            ORIGIN,
            zone.serial + 1,
            &[Change::PutHost(host)],
            &[event(2, "admin ops")],
        )
        .expect("commit");
    store
        .append_events(&[event(3, "host web1"), event(4, "check")])
        .expect("append");
    let all: Vec<Event> = (1..=4)
        .map(|id| {
            event(
                id,
                ["directory", "admin ops", "host web1", "check"][id as usize - 1],
            )
        })
        .collect();
    assert_eq!(store.last_event_id().expect("last"), 4);
    assert_eq!(store.events_after(0, 10).expect("all"), all);
    assert_eq!(store.events_after(1, 1).expect("one"), all[1..2]);
    assert_eq!(store.events_after(2, 10).expect("after 2"), all[2..]);
    assert_eq!(store.events_after(4, 10).expect("none"), vec![]);
    assert_eq!(store.events_after(u64::MAX, 10).expect("none"), vec![]);
    // The zone never sees the log: it loads as before.
    assert_eq!(store.load().expect("load").zones.len(), 1);
}

/// Each reader keeps its own place in the log; a place moves both ways.
pub fn cursors_are_kept_per_reader<B: Backend>(b: &mut B) {
    let store = b.fresh();
    store.set_cursor("webhook x", 2).expect("cursor");
    store.set_cursor("webhook y", 5).expect("cursor");
    assert_eq!(store.cursor("webhook x").expect("cursor"), Some(2));
    assert_eq!(store.cursor("webhook y").expect("cursor"), Some(5));
    assert_eq!(store.cursor("webhook z").expect("cursor"), None);
    store.set_cursor("webhook y", 3).expect("cursor");
    assert_eq!(store.cursor("webhook y").expect("cursor"), Some(3));
}

/// A saved view lasts until the zone's next change, and no further: a
/// commit or a replacement drops it in the same write.
pub fn a_saved_view_lasts_until_the_next_change<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let zone = zone(ORIGIN);
    store.replace_zone(&zone, &[]).expect("seed");
    store.save_view(zone.origin(), b"view").expect("save view");
    assert_eq!(store.load().expect("load").zones, vec![zone.clone()]);
    assert_eq!(
        store.load_view(zone.origin()).as_deref(),
        Some(&b"view"[..])
    );
    store
        .commit(zone.origin(), zone.serial + 1, &[], &[])
        .expect("commit");
    assert_eq!(store.load_view(zone.origin()), None);
    store.save_view(zone.origin(), b"view").expect("save view");
    store.replace_zone(&zone, &[]).expect("replace");
    assert_eq!(store.load_view(zone.origin()), None);
}

/// A record that cannot be read is reported and left out, never fatal: the
/// rest of the zone loads (where the backend can hold a bad record).
pub fn an_unreadable_record_is_reported_not_fatal<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let zone = zone(ORIGIN);
    store.replace_zone(&zone, &[]).expect("seed");
    if !b.damage_host(&store, ORIGIN, "web2") {
        return;
    }
    let loaded = store.load().expect("one bad record does not fail the load");
    let mut without = zone;
    without.hosts.remove("web2");
    assert_eq!(loaded.zones, vec![without]);
    assert_eq!(loaded.unreadable.len(), 1, "{:?}", loaded.unreadable);
    assert!(
        loaded.unreadable[0].key.contains("web2"),
        "the report names the record: {:?}",
        loaded.unreadable
    );
}

/// What was written is there after the store is closed and opened again:
/// zones, events, cursors and saved views (where the backend is durable).
pub fn everything_survives_a_reopen<B: Backend>(b: &mut B) {
    let store = b.fresh();
    let zone = zone(ORIGIN);
    store.replace_zone(&zone, &[]).expect("seed");
    let (changes, after) = changes(&zone);
    store
        .commit(ORIGIN, after.serial, &changes, &[event(1, "admin ops")])
        .expect("commit");
    store
        .append_events(&[event(2, "host web1"), event(3, "directory")])
        .expect("append");
    store.set_cursor("webhook x", 2).expect("cursor");
    store.save_view(ORIGIN, b"view").expect("save view");
    let Some(store) = b.reopen(store) else {
        return;
    };
    let loaded = store.load().expect("load");
    assert_eq!(loaded.zones, vec![after]);
    assert_eq!(loaded.unreadable, vec![]);
    assert_eq!(store.last_event_id().expect("last"), 3);
    assert_eq!(
        store.events_after(0, 10).expect("all"),
        vec![
            event(1, "admin ops"),
            event(2, "host web1"),
            event(3, "directory")
        ]
    );
    assert_eq!(store.cursor("webhook x").expect("cursor"), Some(2));
    assert_eq!(store.cursor("webhook y").expect("cursor"), None);
    assert_eq!(store.load_view(ORIGIN).as_deref(), Some(&b"view"[..]));
}

/// Runs every case of the battery as its own `#[test]`, each on stores from
/// `$backend` (an expression, evaluated once per case). Exported at the crate
/// root, so a store in another crate can run the battery too.
#[macro_export]
macro_rules! battery_tests {
    ($backend:expr) => {
        $crate::battery_tests!(
            $backend;
            empty_store_loads_nothing,
            replaced_zone_loads_equal,
            committed_changes_load_equal,
            zones_are_kept_apart,
            events_are_read_in_order,
            cursors_are_kept_per_reader,
            a_saved_view_lasts_until_the_next_change,
            an_unreadable_record_is_reported_not_fatal,
            everything_survives_a_reopen,
        );
    };
    ($backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::store::battery::$case(&mut $backend);
            }
        )*
    };
}
