//! The admin API and CLI end to end: changes appear in DNS before the CLI
//! returns, refusals carry their reason, and the CLI fails in one line.

use switchboard_tests::{keygen, signed_headers, stderr, stdout, unix_now, Directory};

const Z: &str = "cluster.example.";

fn n(rel: &str) -> String {
    format!("{rel}.{Z}")
}

#[test]
fn disabled_host_leaves_service_answers_before_the_cli_returns() {
    let d = Directory::demo();
    let out = d.cli_ok(&["host", "disable", "db1"]);
    assert!(out.contains("db1 is now unavailable"), "{out}");
    // No wait: the change is in DNS when the CLI has returned.
    assert_eq!(
        d.dig(&n("mysql.service"), "SRV", &[]).data("SRV"),
        vec![format!("10 0 3306 db2.node.{Z}")]
    );
    assert!(d
        .dig(&n("master.mysql.service"), "SRV", &[])
        .answer
        .is_empty());
    // The host keeps its node records, marked unavailable.
    assert_eq!(d.dig(&n("db1.node"), "A", &[]).data("A"), vec!["10.0.4.11"]);
    assert!(d.dig(&n("db1.node"), "TXT", &[]).data("TXT")[0].contains("\"available=0\""));
    d.cli_ok(&["host", "enable", "db1"]);
    assert_eq!(d.dig(&n("mysql.service"), "SRV", &[]).data("SRV").len(), 2);
}

#[test]
fn unavailable_master_drops_out_of_write_and_read_answers() {
    let d = Directory::demo();
    d.cli_ok(&["host", "disable", "repo1"]);
    let w = d.dig(&n("write.phabricator.repo"), "SRV", &[]);
    assert_eq!(w.status, "NOERROR");
    assert!(w.answer.is_empty(), "no master to write to: {:?}", w.answer);
    assert_eq!(
        d.dig(&n("read.phabricator.repo"), "A", &[]).data("A"),
        vec!["10.0.3.12"]
    );
}

#[test]
fn hosts_and_bindings_added_with_the_cli_appear_in_dns() {
    let d = Directory::demo();
    let (_, pubkey, fpr) = keygen(d.dir.path(), "web3");
    d.cli_ok(&[
        "host",
        "add",
        "web3",
        "--addr",
        "10.0.1.13",
        "--addr",
        "fd00::13",
        "--pubkey",
        &pubkey,
        "--roles",
        "web,daemon",
    ]);
    d.cli_ok(&["bind", "add", "web3", "http", "8080"]);
    assert_eq!(
        d.dig(&n("web3.node"), "A", &[]).data("A"),
        vec!["10.0.1.13"]
    );
    assert!(d
        .dig(&n("http.service"), "SRV", &[])
        .data("SRV")
        .contains(&format!("0 0 8080 web3.node.{Z}")));
    assert_eq!(
        d.dig(&n(&format!("{fpr}.key")), "PTR", &[]).data("PTR"),
        vec![format!("web3.node.{Z}")]
    );
    assert_eq!(
        d.dig(&n("_services._dns-sd._udp"), "PTR", &[])
            .data("PTR")
            .len(),
        6
    );
    d.cli_ok(&["bind", "add", "web3", "grpc", "9000", "--role", "master"]);
    assert_eq!(
        d.dig(&n("_services._dns-sd._udp"), "PTR", &[])
            .data("PTR")
            .len(),
        7
    );
    assert_eq!(
        d.dig(&n("master.grpc.service"), "SRV", &[]).data("SRV"),
        vec![format!("0 0 9000 web3.node.{Z}")]
    );

    // A host with bindings cannot be removed; the message says what to do.
    let rm = d.cli(&["host", "rm", "web3"]);
    assert!(!rm.status.success());
    assert!(stderr(&rm).contains("bind rm"), "{}", stderr(&rm));
    d.cli_ok(&["bind", "rm", "web3", "http"]);
    d.cli_ok(&["bind", "rm", "web3", "grpc"]);
    d.cli_ok(&["host", "rm", "web3"]);
    assert_eq!(d.dig(&n("web3.node"), "A", &[]).status, "NXDOMAIN");
    assert_eq!(
        d.dig(&n(&format!("{fpr}.key")), "PTR", &[]).status,
        "NXDOMAIN"
    );
}

#[test]
fn promote_refuses_a_stale_replica_unless_forced_and_records_the_loss() {
    let d = Directory::demo();
    // repo3 is at 41, the master repo1 at 42.
    let refused = d.cli(&["repo", "promote", "phabricator", "repo3"]);
    assert!(!refused.status.success());
    let msg = stderr(&refused);
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    assert!(msg.contains("behind") && msg.contains("--force"), "{msg}");
    assert_eq!(
        d.dig(&n("write.phabricator.repo"), "A", &[]).data("A"),
        vec!["10.0.3.11"]
    );

    // An up-to-date replica is promoted without force.
    d.cli_ok(&["repo", "promote", "arcanist", "repo1"]);
    assert_eq!(
        d.dig(&n("write.arcanist.repo"), "A", &[]).data("A"),
        vec!["10.0.3.11"]
    );

    d.cli_ok(&["repo", "promote", "phabricator", "repo3", "--force"]);
    assert_eq!(
        d.dig(&n("write.phabricator.repo"), "A", &[]).data("A"),
        vec!["10.0.3.13"]
    );
    // repo1 and repo2 hold version 42, which the new master lacks: they no longer serve reads.
    assert_eq!(
        d.dig(&n("read.phabricator.repo"), "A", &[]).data("A"),
        vec!["10.0.3.13"]
    );
    let show: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "repo", "show", "phabricator"])).expect("json");
    assert_eq!(show["master"], "repo3");
    assert_eq!(show["version"], 41);
    assert_eq!(show["lost"][0]["from"], 42);
    assert_eq!(show["lost"][0]["to"], 42);
    assert_eq!(show["lost"][0]["old_master"], "repo1");
    let human = d.cli_ok(&["repo", "show", "phabricator"]);
    assert!(human.contains("42..=42 written on repo1"), "{human}");
    // Tables show times as RFC 3339 in UTC; --json keeps the number.
    let at = show["lost"][0]["at"]
        .as_u64()
        .expect("a unix time in --json");
    assert!(at > 1_700_000_000, "{show}");
    let line = human
        .lines()
        .find(|l| l.contains("42..=42"))
        .expect("the loss line");
    let when = line.rsplit(' ').next().unwrap_or_default();
    assert!(
        when.len() == 20
            && when.ends_with('Z')
            && when.as_bytes()[4] == b'-'
            && when.as_bytes()[10] == b'T',
        "not RFC 3339: {line}"
    );
    let events = d.cli_ok(&["events"]);
    let first = events.lines().next().unwrap_or_default();
    assert!(
        first.len() > 20 && first.as_bytes()[10] == b'T' && first.as_bytes()[19] == b'Z',
        "events table time is not RFC 3339: {first}"
    );
}

#[test]
fn json_output_is_stable_for_scripts() {
    let d = Directory::demo();
    let hosts: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "host", "list"])).expect("json");
    assert_eq!(hosts.as_array().map(Vec::len), Some(10));
    let status: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "status"])).expect("json");
    assert_eq!(status["zones"][0]["zone"], Z);
    let table = d.cli_ok(&["host", "list"]);
    assert!(
        table.lines().next().unwrap_or_default().starts_with("HOST"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 11);
}

#[test]
fn every_refusal_reason_of_the_admin_api() {
    let d = Directory::demo();
    let url = |p: &str| format!("{}{p}", d.server_url());
    let disable = "/v1/hosts/db1/disable";

    // No signature at all.
    let (code, body) = d.curl("POST", disable, &[], None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("no-signature")),
        "{body}"
    );

    // Headers that are not RFC 9421 structured fields.
    let garbage = vec![
        (
            "Signature-Input".to_string(),
            "sig1=(\"@method\";created=oops".to_string(),
        ),
        ("Signature".to_string(), "sig1=:!!!:".to_string()),
    ];
    let (code, body) = d.curl("POST", disable, &garbage, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("malformed-signature")),
        "{body}"
    );

    // A good signature, for comparison.
    let h = signed_headers(&d.admin_key, "POST", &url(disable), b"", unix_now());
    assert_eq!(d.curl("POST", disable, &h, None).0, 200);

    // The same request again: replayed.
    let (code, body) = d.curl("POST", disable, &h, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("replayed")),
        "{body}"
    );

    // A signature that does not match: the path was changed after signing.
    let h = signed_headers(
        &d.admin_key,
        "POST",
        &url("/v1/hosts/db2/disable"),
        b"",
        unix_now(),
    );
    let (code, body) = d.curl("POST", disable, &h, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("bad-signature")),
        "{body}"
    );

    // Corrupted signature bytes.
    let mut h = signed_headers(&d.admin_key, "POST", &url(disable), b"", unix_now());
    for (k, v) in h.iter_mut() {
        if k == "signature" {
            // sig1=:BASE64: -- flip the first character of the signature bytes.
            let at = v.find(':').map(|i| i + 1).unwrap_or(0);
            let flipped = if v[at..].starts_with('A') { "B" } else { "A" };
            v.replace_range(at..at + 1, flipped);
        }
    }
    let (code, body) = d.curl("POST", disable, &h, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("bad-signature")),
        "{body}"
    );

    // A body changed after signing.
    let add = "/v1/bindings";
    let signed_body = br#"{"host":"db1","service":"backup","port":9000}"#;
    let h = signed_headers(&d.admin_key, "POST", &url(add), signed_body, unix_now());
    let (code, body) = d.curl(
        "POST",
        add,
        &h,
        Some(br#"{"host":"db1","service":"backup","port":9001}"#),
    );
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("changed-body")),
        "{body}"
    );

    // Stale: signed two minutes ago.
    let h = signed_headers(&d.admin_key, "POST", &url(disable), b"", unix_now() - 120);
    let (code, body) = d.curl("POST", disable, &h, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("stale-signature")),
        "{body}"
    );

    // A key nobody registered.
    let (stranger, _, _) = keygen(d.dir.path(), "stranger");
    let h = signed_headers(&stranger, "POST", &url(disable), b"", unix_now());
    let (code, body) = d.curl("POST", disable, &h, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("unknown-key")),
        "{body}"
    );

    // A host's own key: may report its own health, nothing else.
    let (hostkey, pubkey, _) = keygen(d.dir.path(), "web9");
    d.cli_ok(&[
        "host",
        "add",
        "web9",
        "--addr",
        "10.0.1.19",
        "--pubkey",
        &pubkey,
        "--roles",
        "web",
    ]);
    let h = signed_headers(&hostkey, "POST", &url(disable), b"", unix_now());
    let (code, body) = d.curl("POST", disable, &h, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (403, Some("key-not-allowed")),
        "{body}"
    );
    let health = br#"{"health":"critical"}"#;
    let h = signed_headers(
        &hostkey,
        "PUT",
        &url("/v1/hosts/web1/health"),
        health,
        unix_now(),
    );
    let (code, body) = d.curl("PUT", "/v1/hosts/web1/health", &h, Some(health));
    assert_eq!(
        (code, body["reason"].as_str()),
        (403, Some("key-not-allowed")),
        "{body}"
    );
    let h = signed_headers(
        &hostkey,
        "PUT",
        &url("/v1/hosts/web9/health"),
        health,
        unix_now(),
    );
    let (code, body) = d.curl("PUT", "/v1/hosts/web9/health", &h, Some(health));
    assert_eq!(code, 200, "{body}");
    assert!(d.dig(&n("web9.node"), "TXT", &[]).data("TXT")[0].contains("\"health=critical\""));

    // Refusals changed nothing: db1 was disabled once, by the good request.
    let hosts: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "host", "show", "db1"])).expect("json");
    assert_eq!(hosts["available"], false);
    assert!(d.cli_ok(&["--json", "bind", "list", "backup"]).trim() == "[]");
}

#[test]
fn bad_input_gets_a_clear_refusal() {
    let d = Directory::demo();
    let url = |p: &str| format!("{}{p}", d.server_url());
    // Not JSON.
    let body = b"{not json";
    let h = signed_headers(&d.admin_key, "POST", &url("/v1/hosts"), body, unix_now());
    let (code, v) = d.curl("POST", "/v1/hosts", &h, Some(body));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("JSON"));
    // A name that is not a label.
    let body = br#"{"name":"../etc","addrs":["10.0.0.1"]}"#;
    let h = signed_headers(&d.admin_key, "POST", &url("/v1/hosts"), body, unix_now());
    let (code, v) = d.curl("POST", "/v1/hosts", &h, Some(body));
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a DNS label"),
        "{v}"
    );
    // Unknown routes and methods.
    assert_eq!(d.curl("GET", "/v1/nothing", &[], None).0, 404);
    assert_eq!(d.curl("PATCH", "/v1/hosts", &[], None).0, 405);
    // The CLI: bad arguments and a missing key fail in one line, non-zero.
    let out = d.cli(&["host", "add", "bad_name", "--addr", "10.0.0.1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a DNS label"), "{}", stderr(&out));
    let out = d.cli_with_key(None, &["host", "disable", "db1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--key"), "{}", stderr(&out));
    let out = d.cli(&["host", "show", "nosuch"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no host nosuch"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_new_zone_inside_an_existing_one_needs_that_zones_admin() {
    let d = Directory::demo();
    let (other_key, other_pub, _) = keygen(d.dir.path(), "other-admin");
    let zone = |origin: &str| {
        format!("$ORIGIN {origin}\n@ 3600 IN SOA ns1 hostmaster ( 1 3600 600 604800 30 )\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.9\nboss._admin 60 IN TXT \"key=ed25519:{other_pub}\"\n")
    };
    let write = |name: &str, text: String| {
        let p = d.dir.path().join(name);
        std::fs::write(&p, text).expect("write zone");
        p.to_str().expect("utf-8").to_string()
    };
    // A zone beside the demo zone: any admin may create it.
    d.cli_ok(&[
        "zone",
        "import",
        &write("other.test.zone", zone("other.test.")),
    ]);
    assert_eq!(
        d.dig("ns1.other.test.", "A", &[]).data("A"),
        vec!["127.0.0.9"]
    );
    // Its admin may not carve a zone out of cluster.example.
    let sub = write("node.cluster.example.zone", zone("node.cluster.example."));
    let out = d.cli_with_key(
        Some(&other_key),
        &["--zone", "other.test", "zone", "import", &sub],
    );
    assert!(
        !out.status.success(),
        "an outside admin took over node.cluster.example."
    );
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert_eq!(
        d.dig(&n("web1.node"), "A", &[]).data("A"),
        vec!["10.0.1.11"]
    );
    // cluster.example.'s own admin may.
    d.cli_ok(&["zone", "import", &sub]);
    assert_eq!(
        d.dig("ns1.node.cluster.example.", "A", &[]).data("A"),
        vec!["127.0.0.9"]
    );
}

#[test]
fn oversized_values_are_refused_not_served_broken() {
    let d = Directory::demo();
    let long: Vec<String> = (0..14).map(|i| format!("repository-host-{i:02}")).collect();
    for h in &long {
        d.cli_ok(&["host", "add", h, "--addr", "10.7.0.1"]);
    }
    let out = d.cli(&[
        "repo",
        "add",
        "big",
        "--master",
        "repo1",
        "--replicas",
        &long.join(","),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("255 bytes"), "{}", stderr(&out));
    let big = "x".repeat(250);
    let mut args = vec!["host", "add", "fat", "--addr", "10.7.0.2"];
    let props: Vec<String> = (0..20).map(|i| format!("p{i}={big}")).collect();
    for p in &props {
        args.push("--prop");
        args.push(p);
    }
    let out = d.cli(&args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at most"), "{}", stderr(&out));
    // The feed takes any serial without tripping over it.
    let (code, v) = d.curl("GET", "/v1/feed?since=18446744073709551615", &[], None);
    assert_eq!(code, 200, "{v}");
}

/// Keys that must never reach the store: an off-curve string, the all-zero
/// string, the identity, and the identity spelled as `p + 1` (non-canonical).
fn bad_keys() -> Vec<(&'static str, [u8; 32])> {
    let off_curve = (0u8..=255)
        .map(|i| [i; 32])
        .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
        .expect("some 32-byte string is not a point");
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut p_plus_1 = [0xffu8; 32];
    p_plus_1[0] = 0xee;
    p_plus_1[31] = 0x7f;
    vec![
        ("off-curve", off_curve),
        ("all-zero", [0u8; 32]),
        ("identity", identity),
        ("non-canonical", p_plus_1),
    ]
}

fn openssh_line(raw: &[u8; 32]) -> String {
    use base64::Engine;
    let mut blob = Vec::new();
    for part in [&b"ssh-ed25519"[..], &raw[..]] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!(
        "ssh-ed25519 {} evil@example",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

#[test]
fn keys_that_are_not_sound_curve_points_are_refused_in_every_form_and_the_store_stays_loadable() {
    use base64::Engine;
    let mut d = Directory::demo();
    let url = |d: &Directory, p: &str| format!("{}{p}", d.server_url());
    let serial_before = d.dig(Z, "SOA", &[]).data("SOA");
    for (what, raw) in bad_keys() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        for form in [b64.clone(), format!("ed25519:{b64}"), openssh_line(&raw)] {
            // The admin API.
            let body =
                serde_json::json!({"name": "evil", "addrs": ["10.9.9.9"], "key": form}).to_string();
            let h = signed_headers(
                &d.admin_key,
                "POST",
                &url(&d, "/v1/hosts"),
                body.as_bytes(),
                unix_now(),
            );
            let (code, v) = d.curl("POST", "/v1/hosts", &h, Some(body.as_bytes()));
            assert!(
                (400..500).contains(&code),
                "{what} key {form:?} was accepted: {code} {v}"
            );
            assert!(
                v["error"].as_str().unwrap_or_default().contains("key"),
                "{what}: {v}"
            );
            // The CLI.
            let out = d.cli(&[
                "host", "add", "evil", "--addr", "10.9.9.9", "--pubkey", &form,
            ]);
            assert!(
                !out.status.success(),
                "{what} key {form:?} was accepted by the CLI"
            );
            let err = stderr(&out);
            assert!(
                err.lines()
                    .next()
                    .unwrap_or_default()
                    .contains("not a valid ed25519")
                    || err.lines().next().unwrap_or_default().contains("weak"),
                "{err}"
            );
        }
        // A zone file that names it.
        let zone = switchboard_tests::demo_zone(&d.admin_pub)
            + &format!("evil.node 60 IN A 10.9.9.9\nevil.node 60 IN TXT \"key=ed25519:{b64}\"\n");
        let path = d.dir.path().join("evil.zone");
        std::fs::write(&path, zone).expect("write zone");
        let out = d.cli(&["zone", "import", path.to_str().expect("utf-8 path")]);
        assert!(
            !out.status.success(),
            "a zone with the {what} key was imported"
        );
    }
    assert_eq!(
        d.dig(Z, "SOA", &[]).data("SOA"),
        serial_before,
        "nothing changed"
    );
    assert_eq!(d.dig(&n("evil.node"), "A", &[]).status, "NXDOMAIN");
    // The state still loads, and an export of it imports.
    d.stop();
    d.start();
    let out = d.cli_ok(&["zone", "export", Z]);
    let path = d.dir.path().join("export.zone");
    std::fs::write(&path, out).expect("write export");
    d.cli_ok(&["zone", "import", path.to_str().expect("utf-8 path")]);
}

#[test]
fn key_files_are_ones_openssl_reads_and_openssl_keys_sign_changes() {
    use base64::Engine;
    use std::process::Command;
    use switchboard_tests::{bin, run};
    let d = Directory::demo();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Both binaries write RFC 8410 documents that OpenSSL 3 reads, with the
    // public key the CLI reports.
    for binary in ["switchboard-directory", "switchboard-sidecar"] {
        let path = tmp.path().join(format!("{binary}.pem"));
        let out = run(Command::new(bin(binary))
            .arg("keygen")
            .arg("--out")
            .arg(&path));
        assert!(out.status.success(), "{binary} keygen: {}", stderr(&out));
        let out = run(Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&path));
        assert!(
            out.status.success(),
            "openssl cannot read {binary}'s key: {}",
            stderr(&out)
        );
        // The DER SubjectPublicKeyInfo ends with the 32 raw bytes.
        let raw = &out.stdout[out.stdout.len() - 32..];
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let pem = std::fs::read_to_string(&path).expect("read key");
        let key =
            <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(
                &pem,
            )
            .expect("our own key reads back");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes()),
            b64
        );
    }
    // A key OpenSSL made signs changes once its public half is an admin key.
    let theirs = tmp.path().join("openssl.pem");
    let out = run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&theirs));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&theirs));
    let b64 =
        base64::engine::general_purpose::STANDARD.encode(&out.stdout[out.stdout.len() - 32..]);
    d.cli_ok(&["admin", "add", "ossl", "--pubkey", &b64]);
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = d.cli_with_key(Some(&theirs), &["host", "disable", "db1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("readable by others"),
        "{}",
        stderr(&out)
    );
    // A private key others may read still works, with a warning as ssh gives.
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = d.cli_with_key(Some(&theirs), &["host", "enable", "db1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("readable by others than its owner"),
        "no warning for a 0644 key: {}",
        stderr(&out)
    );
}

fn available(d: &Directory, host: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "host", "show", host])).expect("json");
    v["available"].clone()
}

#[test]
fn a_change_signed_for_another_directory_is_refused() {
    let d = Directory::demo();
    let path = "/v1/hosts/db2/disable";
    let other = "other-directory.example:8053";
    // Signed for another directory, and sent here with that Host: the signature
    // itself is good, only the authority is not this directory's.
    let mut h = signed_headers(
        &d.admin_key,
        "POST",
        &format!("http://{other}{path}"),
        b"",
        unix_now(),
    );
    h.push(("Host".to_string(), other.to_string()));
    let (code, body) = d.curl("POST", path, &h, None);
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("wrong-authority")),
        "{body}"
    );
    let error = body["error"].as_str().unwrap_or_default();
    let here = d.http.to_string();
    assert!(
        error.contains(other) && error.contains(&here),
        "the error names what was signed and what is accepted: {error}"
    );
    assert_eq!(body["signed_authority"], other, "{body}");
    let port = d.http.port();
    assert_eq!(
        body["accepted"],
        serde_json::json!([here, format!("localhost:{port}")]),
        "{body}"
    );
    assert_eq!(available(&d, "db2"), true);
}

#[test]
fn public_names_are_the_authorities_changes_must_be_signed_for() {
    let d = Directory::with_zone(
        switchboard_tests::demo_zone,
        &["--public-name", "Directory.Cluster.Example"],
    );
    let path = "/v1/hosts/db2/disable";
    // The name it was given is accepted (case aside; no port is the default port).
    let name = "directory.cluster.example";
    let mut h = signed_headers(
        &d.admin_key,
        "POST",
        &format!("http://{name}{path}"),
        b"",
        unix_now(),
    );
    h.push(("Host".to_string(), name.to_string()));
    let (code, body) = d.curl("POST", path, &h, None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(available(&d, "db2"), false);
    // Its listening address is no longer among them: the CLI, pointed at the
    // address, is told which names to use.
    let out = d.cli(&["host", "enable", "db2"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(name) && err.contains("[HTTP 401]"),
        "the CLI's error names the accepted authority: {err}"
    );
    assert_eq!(available(&d, "db2"), false);
}

#[test]
fn a_captured_change_replayed_after_a_restart_is_refused() {
    let mut d = Directory::demo();
    let path = "/v1/hosts/db2/disable";
    let url = format!("{}{path}", d.server_url());
    for (how, restart) in [
        ("a clean restart", Directory::stop as fn(&mut Directory)),
        ("a restart after kill -9", Directory::kill9),
    ] {
        // Someone on the path keeps a copy of an admin's change...
        let captured = signed_headers(&d.admin_key, "POST", &url, b"", unix_now());
        let (code, body) = d.curl("POST", path, &captured, None);
        assert_eq!(code, 200, "{body}");
        d.cli_ok(&["host", "enable", "db2"]);
        // ...and sends it again once the directory has restarted, well within
        // the signature's 60 s.
        restart(&mut d);
        d.start();
        let (code, body) = d.curl("POST", path, &captured, None);
        assert_eq!(
            (code, body["reason"].as_str()),
            (401, Some("stale-signature")),
            "{how}: {body}"
        );
        assert_eq!(available(&d, "db2"), true, "{how}: the replay disabled db2");
        // A change signed now is taken at once.
        d.cli_ok(&["host", "disable", "db1"]);
        d.cli_ok(&["host", "enable", "db1"]);
    }
}
