//! The web console, driven by a real headless Chromium: an admin signs in with
//! a link minted by the CLI, sees hosts, marks one unavailable (and `dig` sees
//! it leave), watches a page refresh itself on a change made elsewhere, and
//! promotes a stale replica only by accepting the loss shown. Every page reads
//! on a phone without sideways scrolling. Without a session, with a forged one,
//! without the form's CSRF token or from another origin, no change route
//! changes anything.
//!
//! `SWITCHBOARD_SCREENSHOTS=DIR` saves each page at desktop and phone width
//! (that is how docs/console/*.png are made).

use std::process::Command;

use serde_json::Value;
use switchboard_tests::webdriver::Browser;
use switchboard_tests::{run, stdout, Directory};

const Z: &str = "cluster.example.";

/// The hosts in a service's SRV answer.
fn srv_targets(d: &Directory, svc: &str) -> Vec<String> {
    d.dig(&format!("{svc}.service.{Z}"), "SRV", &[])
        .data("SRV")
        .iter()
        .filter_map(|r| r.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// A console login link from the CLI.
fn login_url(d: &Directory) -> String {
    let out = d.cli_ok(&["--json", "console", "--minutes", "30"]);
    let v: Value = serde_json::from_str(&out).expect("console --json");
    v["url"].as_str().expect("url").to_string()
}

/// `curl` a console route: (status, body).
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new("curl")
        .args(["-s", "-o"])
        .arg(dir.path().join("body"))
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url));
    let code = stdout(&out).trim().parse().unwrap_or(0);
    let body = std::fs::read_to_string(dir.path().join("body")).unwrap_or_default();
    (code, body)
}

fn serial(d: &Directory) -> u64 {
    let (_, v) = d.curl("GET", "/v1/status", &[], None);
    v["zones"][0]["serial"].as_u64().expect("serial")
}

fn no_sideways_scroll(b: &Browser) -> bool {
    b.script("return document.documentElement.scrollWidth <= window.innerWidth;")
        == Value::Bool(true)
}

#[test]
fn an_admin_marks_a_host_unavailable_from_the_browser_and_dns_follows() {
    let d = Directory::demo();
    let b = Browser::start(1280, 900);
    let base = d.server_url();

    // Anyone may look; nobody signed in sees a change button.
    b.goto(&format!("{base}/ui/hosts"));
    b.wait("the hosts page", |b| b.find("#host-web1").is_some());
    assert!(
        b.find("#host-web1 form button").is_none(),
        "a change button without a session"
    );
    assert!(srv_targets(&d, "conduit")
        .iter()
        .any(|t| t.starts_with("web1.")));

    // The CLI signs for a one-time link; the browser trades it for a session.
    let url = login_url(&d);
    b.goto(&url);
    b.wait("the console after sign-in", |b| {
        b.current_url().contains("/ui/hosts") && b.find("#host-web1 form button").is_some()
    });
    let who = b.text_of(".who").unwrap_or_default();
    assert!(who.contains("Signed in as demo"), "{who}");
    // The link works once.
    b.goto(&url);
    b.wait("the used link refused", |b| {
        b.text_of(".flash.error")
            .is_some_and(|t| t.contains("unknown, used or expired"))
    });
    b.goto(&format!("{base}/ui/hosts"));
    b.wait("the hosts page again", |b| {
        b.find("#host-web1 form button").is_some()
    });

    // A change made elsewhere shows up without a reload.
    b.script("window.__sameDocument = true; return null;");
    d.cli_ok(&["host", "disable", "db2"]);
    b.wait("db2 unavailable on the open page", |b| {
        b.find("#host-db2[data-available=false]").is_some()
    });
    assert_eq!(
        b.script("return window.__sameDocument === true;"),
        Value::Bool(true),
        "the page reloaded"
    );

    // Mark web1 unavailable from the page.
    assert_eq!(
        b.text_of("#host-web1 form button").as_deref(),
        Some("Mark unavailable")
    );
    b.click_css("#host-web1 form button");
    b.wait("the confirmation", |b| {
        b.text_of(".flash.ok")
            .is_some_and(|t| t == "web1 marked unavailable")
    });
    assert!(b.find("#host-web1[data-available=false]").is_some());
    d.wait_for("web1 to leave conduit.service", || {
        !srv_targets(&d, "conduit")
            .iter()
            .any(|t| t.starts_with("web1."))
    });
    let events = d.cli_ok(&["events", "--last", "1"]);
    assert!(
        events.contains("host web1 disable available->unavailable  by admin demo (console)"),
        "{events}"
    );

    // phabricator's repo3 is at 41, the master at 42: promoting it needs the loss accepted.
    b.goto(&format!("{base}/ui/repos"));
    b.wait("the repositories page", |b| {
        b.find("#repo-phabricator").is_some()
    });
    // The warning is in the page (inside a closed <details>) before it is opened.
    let warning = b.script(
        "return document.querySelector('#repo-phabricator li[data-host=repo3] .warning').textContent;",
    );
    assert!(
        warning
            .as_str()
            .unwrap_or("")
            .contains("loses versions 42..=42"),
        "{warning}"
    );
    b.click_css("#repo-phabricator li[data-host=repo3] summary");
    // The browser will not send the form until the loss is accepted.
    let force = "#repo-phabricator li[data-host=repo3] button.danger";
    let serial_before = serial(&d);
    b.click_css(force);
    assert_eq!(
        b.script("return document.querySelector('#repo-phabricator li[data-host=repo3] form').checkValidity();"),
        Value::Bool(false),
        "the form is sendable without accepting the loss"
    );
    assert_eq!(serial(&d), serial_before, "sent without accepting the loss");
    b.click_css("#repo-phabricator li[data-host=repo3] input[name=force]");
    b.click_css(force);
    b.wait("the promotion", |b| {
        b.text_of(".flash.ok")
            .is_some_and(|t| t == "repo3 is now the master of phabricator")
    });
    let shown = d.cli_ok(&["--json", "repo", "show", "phabricator"]);
    let v: Value = serde_json::from_str(&shown).expect("repo show --json");
    assert_eq!(v["master"], "repo3", "{v}");
    assert_eq!(v["lost"][0]["from"], 42, "{v}");

    // Phone width: every page fits without sideways scrolling.
    let phone = Browser::phone(390, 844);
    phone.goto(&login_url(&d));
    phone.wait("the phone's session", |b| b.find(".who").is_some());
    let shots = std::env::var_os("SWITCHBOARD_SCREENSHOTS").map(std::path::PathBuf::from);
    for page in ["services", "hosts", "repos", "dbs", "events"] {
        for (name, browser) in [("desktop", &b), ("phone", &phone)] {
            browser.goto(&format!("{base}/ui/{page}"));
            browser.wait(page, |b| b.find("main h1").is_some());
            assert!(
                no_sideways_scroll(browser),
                "{page} scrolls sideways at {name} width"
            );
            if let Some(dir) = &shots {
                std::fs::create_dir_all(dir).expect("screenshot dir");
                std::fs::write(dir.join(format!("{page}-{name}.png")), browser.screenshot())
                    .expect("write screenshot");
            }
        }
    }
}

#[test]
fn no_change_route_changes_anything_without_a_signature_or_a_session() {
    let d = Directory::demo();
    let base = d.server_url();
    let before = serial(&d);
    let body = r#"{"name":"x","addrs":["10.9.9.9"],"host":"web1","service":"x","port":1,"master":"web1","version":99,"health":"critical","key":"AAAA"}"#;
    // Every change route of the API, unsigned: refused before anything is read.
    let api = [
        ("POST", "/v1/hosts"),
        ("DELETE", "/v1/hosts/web1"),
        ("POST", "/v1/hosts/web1/disable"),
        ("POST", "/v1/hosts/web1/enable"),
        ("PUT", "/v1/hosts/web1/health"),
        ("POST", "/v1/hosts/web1/heartbeat"),
        ("POST", "/v1/bindings"),
        ("DELETE", "/v1/bindings/web1/http"),
        ("POST", "/v1/repos"),
        ("DELETE", "/v1/repos/phabricator"),
        ("POST", "/v1/repos/phabricator/promote"),
        ("PUT", "/v1/repos/phabricator/versions/repo1"),
        ("POST", "/v1/repos/phabricator/lease"),
        ("DELETE", "/v1/repos/phabricator/lease/abc"),
        ("PUT", "/v1/zones/cluster.example."),
        ("POST", "/v1/admins"),
        ("DELETE", "/v1/admins/demo"),
        ("POST", "/v1/sessions"),
    ];
    for (method, path) in api {
        for m in [method, "POST"] {
            let (code, v) = d.curl(m, path, &[], Some(body.as_bytes()));
            assert!(
                code == 401 || (code == 405 && m != method),
                "{m} {path} unsigned: {code} {v}"
            );
            if code == 401 {
                assert_eq!(v["reason"], "no-signature", "{m} {path}: {v}");
            }
        }
    }
    // Every change route of the console: no session, a forged one.
    let console = [
        "/ui/hosts/web1/disable",
        "/ui/hosts/web1/enable",
        "/ui/repos/phabricator/promote",
    ];
    for path in console {
        let url = format!("{base}{path}");
        let form = "host=repo2&force=yes&csrf=x";
        let (code, page) = curl(&url, &["--data", form]);
        assert_eq!(code, 401, "{path} without a session: {page}");
        assert!(page.contains("Sign in first"), "{page}");
        let (code, _) = curl(&url, &["--data", form, "-H", "Cookie: sb_session=forged"]);
        assert_eq!(code, 401, "{path} with a forged session");
    }
    let (code, page) = curl(&format!("{base}/ui/login"), &["--data", "code=guess"]);
    assert_eq!(code, 401, "a guessed login code: {page}");

    // A real session, but a form without its CSRF token, or from another site.
    let url = login_url(&d);
    let code = url.split("#code=").nth(1).expect("code");
    let jar = tempfile::tempdir().expect("tempdir");
    let jar = jar.path().join("cookies");
    let jar = jar.to_str().expect("path");
    let (status, _) = curl(
        &format!("{base}/ui/login"),
        &["-c", jar, "--data", &format!("code={code}")],
    );
    assert_eq!(status, 303);
    let (_, hosts) = curl(&format!("{base}/ui/hosts"), &["-b", jar]);
    let csrf = hosts
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token in the signed-in page")
        .to_string();
    for path in console {
        let url = format!("{base}{path}");
        let (code, _) = curl(&url, &["-b", jar, "--data", "host=repo2"]);
        assert_eq!(code, 403, "{path} without the CSRF token");
        let (code, _) = curl(
            &url,
            &[
                "-b",
                jar,
                "--data",
                &format!("host=repo2&csrf={csrf}"),
                "-H",
                "Origin: http://evil.example",
            ],
        );
        assert_eq!(code, 403, "{path} from another origin");
    }
    assert_eq!(serial(&d), before, "something changed");

    // The same session and token do change things, with the CLI's refusals:
    // repo3 is behind, so promoting it without force is refused and changes nothing.
    let promote = format!("{base}/ui/repos/phabricator/promote");
    let (code, page) = curl(
        &promote,
        &["-b", jar, "--data", &format!("host=repo3&csrf={csrf}")],
    );
    assert_eq!(code, 409, "{page}");
    assert!(page.contains("would lose versions 42..=42"), "{page}");
    assert_eq!(serial(&d), before);
    let (code, _) = curl(
        &format!("{base}/ui/hosts/web2/disable"),
        &["-b", jar, "--data", &format!("csrf={csrf}")],
    );
    assert_eq!(code, 303);
    assert_eq!(serial(&d), before + 1);
}

/// A heartbeat from `host`'s sidecar, signed with its own key, reporting its
/// position of database `main`.
fn db_report(d: &Directory, host: &str, key: &std::path::Path, gtid: &str, replica: bool) {
    let body = serde_json::json!({"databases": [{
        "db": "main", "gtid": gtid, "seconds_behind": replica.then_some(0),
        "replicating": replica, "read_only": replica,
    }]})
    .to_string()
    .into_bytes();
    let path = format!("/v1/hosts/{host}/heartbeat");
    let url = format!("{}{path}", d.server_url());
    let headers =
        switchboard_tests::signed_headers(key, "POST", &url, &body, switchboard_tests::unix_now());
    let (code, v) = d.curl("POST", &path, &headers, Some(&body));
    assert_eq!(code, 200, "{v}");
}

#[test]
fn the_databases_page_shows_positions_and_promotes_only_with_the_loss_accepted() {
    let d = Directory::with_zone(switchboard_tests::minimal_zone, &[]);
    let keys: Vec<std::path::PathBuf> = (1..=3)
        .map(|i| {
            let name = format!("db{i}");
            let (key, pubkey, _) = switchboard_tests::keygen(d.dir.path(), &name);
            d.cli_ok(&[
                "host",
                "add",
                &name,
                "--addr",
                "127.0.0.1",
                "--pubkey",
                &pubkey,
                "--roles",
                "db",
            ]);
            key
        })
        .collect();
    d.cli_ok(&[
        "db",
        "add",
        "main",
        "--master",
        "db1",
        "--replicas",
        "db2,db3",
    ]);
    db_report(&d, "db1", &keys[0], "0-1-100", false);
    db_report(&d, "db2", &keys[1], "0-1-90", true);
    db_report(&d, "db3", &keys[2], "0-1-100", true);
    let b = Browser::start(1280, 900);
    b.goto(&login_url(&d));
    b.wait("the session", |b| b.find(".who").is_some());
    b.goto(&format!("{}/ui/dbs", d.server_url()));
    b.wait("the databases page", |b| b.find("#db-main").is_some());
    let row = b.text_of("#db-main li[data-host=db3]").unwrap_or_default();
    assert!(
        row.contains("0-1-100") && row.contains("serves reads"),
        "{row}"
    );
    // db3 has all the master reported: a plain promote button.
    b.click_css("#db-main li[data-host=db3] button.primary");
    b.wait("the promotion", |b| {
        b.text_of(".flash.ok")
            .is_some_and(|t| t == "db3 is now the master of database main")
    });
    // db2 is behind db3: its promotion needs the loss accepted.
    let warning = b.script(
        "return document.querySelector('#db-main li[data-host=db2] .warning').textContent;",
    );
    assert!(
        warning.as_str().unwrap_or("").contains("0-1-90"),
        "{warning}"
    );
    b.click_css("#db-main li[data-host=db2] summary");
    let force = "#db-main li[data-host=db2] button.danger";
    let serial_before = serial(&d);
    b.click_css(force);
    assert_eq!(serial(&d), serial_before, "sent without accepting the loss");
    b.click_css("#db-main li[data-host=db2] input[name=force]");
    b.click_css(force);
    b.wait("the forced promotion", |b| {
        b.text_of(".flash.ok")
            .is_some_and(|t| t == "db2 is now the master of database main")
    });
    let v: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "db", "show", "main"])).expect("db show");
    assert_eq!(v["master"], "db2", "{v}");
    assert_eq!(v["lost"][0]["old_gtid"], "0-1-100", "{v}");
    let text = b.text_of("#db-main").unwrap_or_default();
    assert!(text.contains("may be lost"), "{text}");
}

#[test]
fn an_admin_freezes_and_thaws_a_repository_from_the_browser() {
    let d = Directory::demo();
    let b = Browser::start(1280, 900);
    let base = d.server_url();
    b.goto(&login_url(&d));
    b.wait("the session", |b| b.find(".who").is_some());
    b.goto(&format!("{base}/ui/repos"));
    b.wait("the repositories page", |b| {
        b.find("#repo-phabricator details.freeze").is_some()
    });
    // The form is not sent without a message.
    b.click_css("#repo-phabricator details.freeze summary");
    let serial_before = serial(&d);
    b.click_css("#repo-phabricator details.freeze button.danger");
    assert_eq!(
        serial(&d),
        serial_before,
        "a freeze without a message was sent"
    );
    b.script(
        "document.querySelector('#repo-phabricator details.freeze input[name=message]').value = 'disk swap until 14:00'; return null;",
    );
    b.click_css("#repo-phabricator details.freeze button.danger");
    b.wait("the freeze", |b| {
        b.text_of(".flash.ok")
            .is_some_and(|t| t == "phabricator is frozen: writes are refused")
    });
    let v: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "repo", "show", "phabricator"])).expect("json");
    assert_eq!(v["frozen"], "disk swap until 14:00", "{v}");
    let txt = d
        .dig("phabricator.repo.cluster.example.", "TXT", &[])
        .data("TXT")
        .join(" ");
    assert!(
        txt.contains("frozen=1") && txt.contains("readonly=1"),
        "{txt}"
    );
    let card = b.text_of("#repo-phabricator h2").unwrap_or_default();
    assert!(card.contains("frozen: disk swap until 14:00"), "{card}");
    let events = d.cli_ok(&["events", "--last", "1"]);
    assert!(
        events.contains("repo phabricator freeze writable->frozen  by admin demo (console)"),
        "{events}"
    );
    // Thaw.
    b.click_css("#repo-phabricator form.freeze button");
    b.wait("the thaw", |b| {
        b.text_of(".flash.ok")
            .is_some_and(|t| t == "phabricator takes writes again")
    });
    let v: Value =
        serde_json::from_str(&d.cli_ok(&["--json", "repo", "show", "phabricator"])).expect("json");
    assert!(v.get("frozen").is_none_or(Value::is_null), "{v}");
}
