//! Zone files: export round-trips and passes `named-checkzone`; a bad file is
//! refused at start with its file and line.

use std::process::Command;

use switchboard_tests::{run, stderr, stdout, Directory};

#[test]
fn export_imports_back_to_the_same_state_and_bind_accepts_it() {
    let d = Directory::demo();
    d.cli_ok(&["host", "disable", "daemon2"]);
    d.cli_ok(&["repo", "promote", "phabricator", "repo3", "--force"]);
    d.cli_ok(&[
        "bind",
        "add",
        "web1",
        "grpc",
        "9000",
        "--role",
        "master",
        "--prop",
        "proto=h2",
        "--priority",
        "5",
        "--check",
        "http:200:/healthz",
        "--check-failures",
        "5",
    ]);
    let exported = d.cli_ok(&["zone", "export", "cluster.example"]);
    let file = d.dir.path().join("exported.zone");
    std::fs::write(&file, &exported).expect("write export");

    let check = run(Command::new("named-checkzone")
        .arg("cluster.example")
        .arg(&file));
    assert!(
        check.status.success(),
        "named-checkzone refused the export:\n{}{}\n{exported}",
        stdout(&check),
        stderr(&check)
    );

    let model = |d: &Directory| -> Vec<serde_json::Value> {
        ["host list", "bind list", "repo list", "admin list"]
            .iter()
            .map(|c| {
                let mut args = vec!["--json"];
                args.extend(c.split(' '));
                serde_json::from_str(&d.cli_ok(&args)).expect("json")
            })
            .collect()
    };
    let before = model(&d);
    d.cli_ok(&["zone", "import", file.to_str().expect("utf-8")]);
    assert_eq!(model(&d), before, "export then import changes nothing");
    let again = d.cli_ok(&["zone", "export", "cluster.example"]);
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("SOA") && !l.starts_with("; zone"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(&again),
        strip(&exported),
        "a second export is identical but for the serial"
    );
}

/// Starts a directory on a zone file with `line` replacing the demo zone's
/// `needle` line, and returns the start-up error.
fn start_error(needle: &str, line: &str) -> String {
    let mut d = Directory::demo();
    d.kill9();
    let path = d.zones_dir().join("cluster.example.zone");
    let text = std::fs::read_to_string(&path).expect("zone");
    assert!(text.contains(needle), "demo zone has {needle}");
    let bad = text
        .lines()
        .map(|l| {
            if l.starts_with(needle) {
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, bad).expect("write zone");
    std::fs::remove_dir_all(d.data_dir()).expect("fresh store");
    match d.try_start() {
        Ok(()) => panic!("a zone file with {line:?} was accepted"),
        Err(e) => e,
    }
}

fn line_of(needle: &str) -> usize {
    let text =
        std::fs::read_to_string(switchboard_tests::root().join("zones/cluster.example.zone"))
            .expect("zone");
    text.lines()
        .position(|l| l.starts_with(needle))
        .expect("line")
        + 1
}

#[test]
fn a_bad_zone_file_is_refused_at_start_naming_file_and_line() {
    let cases = [
        (
            "db2.node ",
            "db2.node 60 IN A 10.0.4.300",
            "network address",
        ),
        (
            "repo2._ssh._tcp          5 IN SRV",
            "repo2._ssh._tcp 5 IN SRV 0 0 22 repo9.node",
            "SRV target must be repo2.node",
        ),
        (
            "repo2._ssh._tcp          5 IN SRV",
            "repo9._ssh._tcp 5 IN SRV 0 0 22 repo9.node",
            "unknown host repo9",
        ),
        ("db1.node ", "db1.node 60 IN A (10.0.4.11", "never closed"),
        (
            "web1.node     60 IN TXT",
            "web1.node 60 IN TXT \"available=maybe\"",
            "available",
        ),
        (
            "arcanist.repo",
            "arcanist.repo 5 IN TXT \"master=nosuch\"",
            "nosuch",
        ),
        ("www ", "mysql.service 5 IN SRV 0 0 1 db1.node", "derives"),
        ("www ", "$INCLUDE /etc/passwd", "$INCLUDE"),
        (
            "build1.node   60 IN TXT",
            "build1.node 60 IN MX 10 mail",
            "only A, AAAA and TXT",
        ),
        ("www ", "www IN TXT \"caf\\233\"", "DDD escapes"),
        ("www ", "www IN HTTPS 1 . alpn=h2,h3", "cannot be exported"),
        (
            "web2.node     60 IN TXT",
            "web2.node 60 IN TXT \"roles=web\" \"key=ed25519:zsvsmQl5/mjycgBn4qXuyrfPFNfMoZgxV/Xy60+JRJc=\"",
            "same key",
        ),
        (
            "arcanist.repo",
            "arcanist.repo 5 IN TXT \"master=repo2\"\narcanist.repo 5 IN TXT \"max_lag=1\"",
            "more than one TXT",
        ),
    ];
    for (needle, line, why) in cases {
        let err = start_error(needle, line);
        let want = format!("cluster.example.zone:{}:", line_of(needle));
        assert!(err.contains(&want), "{line:?}: wanted {want} in {err}");
        assert!(err.contains(why), "{line:?}: wanted {why:?} in {err}");
    }
}

#[test]
fn an_include_hidden_behind_a_quote_is_still_refused() {
    let err = start_error(
        "www ",
        "x1 IN TXT a\"b\n$INCLUDE /etc/passwd\nx2 IN TXT c\"d",
    );
    let want = format!("cluster.example.zone:{}:", line_of("www ") + 1);
    assert!(err.contains(&want) && err.contains("$INCLUDE"), "{err}");
}

/// A zone checker from the Debian packages `scripts/test.sh` installs
/// (`nsd-checkzone` lives in /usr/sbin, which a user's PATH may lack).
fn checker(name: &str) -> Command {
    let sbin = std::path::Path::new("/usr/sbin").join(name);
    Command::new(if sbin.exists() {
        sbin.into_os_string()
    } else {
        name.into()
    })
}

#[test]
fn flat_export_loads_in_bind_nsd_and_knot_with_their_defaults() {
    let d = Directory::demo();
    let flat = d.cli_ok(&["zone", "export", "cluster.example", "--flat"]);
    let file = d.dir.path().join("flat.zone");
    std::fs::write(&file, &flat).expect("write flat export");
    // `-k fail` is BIND's check-names for a primary zone (named.conf's default).
    let checks = [
        ("named-checkzone", vec!["-k", "fail", "cluster.example"]),
        ("nsd-checkzone", vec!["cluster.example"]),
        ("kzonecheck", vec!["-o", "cluster.example"]),
    ];
    for (tool, args) in checks {
        let out = run(checker(tool).args(&args).arg(&file));
        assert!(
            out.status.success(),
            "{tool} refused the flat export:\n{}{}\n{flat}",
            stdout(&out),
            stderr(&out)
        );
    }
    // Its shape: each service's SRV records at `_SVC._tcp.Z` and `SVC.service.Z`,
    // addresses only at hostnames (`SVC.service.Z`, `HOST.node.Z`).
    let has = |line: &str| flat.lines().any(|l| l == line);
    for line in [
        "_conduit._tcp.cluster.example.\t5\tIN\tSRV\t0 10 80 web1.node.cluster.example.",
        "conduit.service.cluster.example.\t5\tIN\tSRV\t0 10 80 web1.node.cluster.example.",
        "conduit.service.cluster.example.\t5\tIN\tA\t10.0.1.11",
        "conduit.service.cluster.example.\t5\tIN\tAAAA\tfd00::12",
        "_conduit._tcp.cluster.example.\t5\tIN\tPTR\tweb1._conduit._tcp.cluster.example.",
        "web2.node.cluster.example.\t60\tIN\tAAAA\tfd00::12",
    ] {
        assert!(has(line), "{line:?} in\n{flat}");
    }
    let misplaced: Vec<&str> = flat
        .lines()
        .filter(|l| {
            let mut f = l.split('\t');
            let owner = f.next().unwrap_or_default();
            let rtype = f.nth(2).unwrap_or_default();
            owner.contains('_') && matches!(rtype, "A" | "AAAA")
        })
        .collect();
    assert!(
        misplaced.is_empty(),
        "addresses at non-hostnames: {misplaced:?}"
    );
}
