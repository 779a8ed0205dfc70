//! Who may use a repository over SSH. The sidecar does not know users; the web
//! application does, and it is asked two questions:
//!
//! - by `authorized-keys FPR` (sshd's `AuthorizedKeysCommand ... %f`): which user
//!   holds the key with fingerprint FPR? `GET /switchboard/auth/ssh-key?fingerprint=FPR`
//!   answers `{"user": "alice", "public_key": "ssh-ed25519 AAAA..."}` (or 404), and the
//!   sidecar prints one authorized_keys line whose forced command is `ssh-exec ...
//!   --user alice`. The key's fingerprint is checked against FPR: a mismatch, an
//!   unknown key or an unsafe user name prints nothing, and sshd refuses the key.
//! - by `ssh-exec --user USER`, before a git session is served or tunnelled: may
//!   USER read or write REPO? `GET /switchboard/auth/git?repository=R&access=read|write&user=USER`,
//!   the question git over HTTP asks (`inbound::user`), with the user named by the
//!   sidecar instead of carried in credentials.
//!
//! Both go to the local `--web-backend`, or, on a host without one, to a
//! `conduit.service` host over the signed cluster channel, whose cluster listener
//! passes them to its own web backend.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::directory::answers::Peer;
use crate::identity::{self, Identity};
use crate::outbound::forward::Forwarder;
use crate::outbound::spool::Spooled;
use crate::route::{Access, Router};
use crate::sidecar::{Common, Sidecar};

/// How long the web application may take to answer one question.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: usize = 64 << 10;

/// Why a question to the web application got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no web backend here and no conduit host to ask: {0}")]
    NoConduit(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {} s", ASK_TIMEOUT.as_secs())]
    Timeout,
}

/// Why an offered key is not admitted (printed to sshd's log, never to the client).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0:?} is not an OpenSSH SHA256 fingerprint (SHA256: and 43 base64 characters)")]
    BadFingerprint(String),
    #[error("the web application knows no user with key {0}")]
    Unknown(String),
    #[error("the web application's answer for {fpr} is not usable: {why}")]
    BadAnswer { fpr: String, why: String },
    #[error("the web application returned a key whose fingerprint is {got}, not {fpr}")]
    Mismatch { fpr: String, got: String },
    #[error("cannot ask the web application about key {fpr}: {source}")]
    Ask { fpr: String, source: AskError },
    #[error("cannot write the forced command: {0}")]
    Command(String),
}

/// Why `ssh-exec --user` refuses a git session.
#[derive(Debug, thiserror::Error)]
pub enum UseError {
    #[error("user {user} may not {access} {repo} (the web application said {status}: {said})")]
    Refused {
        user: String,
        access: &'static str,
        repo: String,
        status: u16,
        said: String,
    },
    #[error("cannot ask the web application whether {user} may {access} {repo}: {source}")]
    Ask {
        user: String,
        access: &'static str,
        repo: String,
        source: AskError,
    },
}

/// Checks a user name for `--user`: 1 to 64 characters, letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit. Anything else could mean something
/// to a shell, an URL or sshd, and is refused.
pub fn parse_user(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a user name this sidecar passes on (1-64 letters, digits, '.', '_', '-', starting with a letter or digit)"
        ))
    }
}

/// Whether a user's request path names the web application's questions about
/// users (`/switchboard/auth/...`, however spelled): the user listener refuses
/// those, so that only the sidecar asks them, and the web application may trust
/// the `user` it names.
pub fn is_auth_path(path: &str) -> bool {
    const AUTH: &[u8] = b"switchboard/auth";
    if path.contains('%') {
        return crate::route::percent_decode(path)
            .to_ascii_lowercase()
            .contains("switchboard/auth");
    }
    // Nothing to decode (every request but a few): no copies.
    path.as_bytes()
        .windows(AUTH.len())
        .any(|w| w.eq_ignore_ascii_case(AUTH))
}

/// Where the web application is asked.
enum Via<'a> {
    Local(&'a Uri),
    Peer(Peer),
}

/// Percent-encodes everything but letters and digits (a fingerprint has `+`, `/`, `:`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Sends `GET pq` to the web application; returns its status and (the start of) its body.
async fn ask(
    forwarder: &Forwarder,
    via: Via<'_>,
    pq: &str,
) -> Result<(StatusCode, Bytes), AskError> {
    let asked = async {
        let resp = match &via {
            Via::Local(base) => {
                let empty = http_body_util::Empty::<Bytes>::new()
                    .map_err(|e| match e {})
                    .boxed();
                forwarder
                    .local_with(base, Method::GET, pq, HeaderMap::new(), empty)
                    .await
            }
            Via::Peer(peer) => {
                let empty = Spooled::from_bytes(Bytes::new());
                forwarder
                    .send(peer, Method::GET, pq, &HeaderMap::new(), empty)
                    .await
            }
        }
        .map_err(|e| AskError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| AskError::Unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(ASK_TIMEOUT, asked).await {
        Ok(r) => r,
        Err(_) => Err(AskError::Timeout),
    }
}

/// The web application's reason, from a refusal's body: its JSON `error` (or
/// `message`), else its text; one line, at most 200 characters.
fn said(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["error", "message"]
                .iter()
                .find_map(|k| v[k].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let line: String = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if line.is_empty() {
        "no reason given".to_string()
    } else {
        line
    }
}

/// `ssh-exec --user USER`: asks the web application whether USER may read or
/// write `repo`; a 2xx admits, anything else refuses with its reason.
pub async fn authorize(
    sc: &Sidecar,
    user: &str,
    repo: &str,
    access: Access,
) -> Result<(), UseError> {
    let access = match access {
        Access::Read => "read",
        Access::Write => "write",
    };
    let pq = format!(
        "/switchboard/auth/git?repository={}&access={access}&user={}",
        encode(repo),
        encode(user)
    );
    let fail = |source| UseError::Ask {
        user: user.to_string(),
        access,
        repo: repo.to_string(),
        source,
    };
    let via = match &sc.web_backend {
        Some(base) => Via::Local(base),
        None => Via::Peer(
            sc.router
                .conduit()
                .await
                .map_err(|e| fail(AskError::NoConduit(e.to_string())))?,
        ),
    };
    let (status, body) = ask(&sc.forwarder, via, &pq).await.map_err(fail)?;
    if status.is_success() {
        tracing::debug!(
            user,
            repo,
            access,
            "the web application admits the SSH session"
        );
        return Ok(());
    }
    tracing::info!(
        user,
        repo,
        access,
        status = status.as_u16(),
        "the web application refuses the SSH session"
    );
    Err(UseError::Refused {
        user: user.to_string(),
        access,
        repo: repo.to_string(),
        status: status.as_u16(),
        said: said(&body),
    })
}

/// Checks an OpenSSH fingerprint as sshd's `%f` gives it: `SHA256:` and 43
/// characters of unpadded base64.
fn parse_fingerprint(fpr: &str) -> Result<&str, KeyError> {
    let ok = fpr.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/'))
    });
    if ok {
        Ok(fpr)
    } else {
        Err(KeyError::BadFingerprint(fpr.to_string()))
    }
}

/// A public key as authorized_keys wants it: `TYPE BASE64`, rebuilt from the
/// decoded blob (no comment, nothing the web application wrote verbatim), and
/// its OpenSSH fingerprint.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyLine {
    pub line: String,
    pub fingerprint: String,
}

/// Parses `TYPE BASE64 [COMMENT]`: the blob must decode and name TYPE itself.
pub fn key_line(text: &str) -> Result<KeyLine, String> {
    let mut words = text.split_whitespace();
    let (Some(kind), Some(b64)) = (words.next(), words.next()) else {
        return Err("the public key is not \"TYPE BASE64 [COMMENT]\"".to_string());
    };
    if kind.is_empty()
        || kind.len() > 64
        || !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'@' | b'_'))
    {
        return Err(format!("{kind:?} is not a key type"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the key is not base64: {e}"))?;
    let named = blob
        .get(..4)
        .and_then(|n| n.try_into().ok())
        .map(|n: [u8; 4]| u32::from_be_bytes(n) as usize)
        .and_then(|n| blob.get(4..4usize.checked_add(n)?));
    if named != Some(kind.as_bytes()) {
        return Err(format!("the key's data does not say it is a {kind} key"));
    }
    Ok(KeyLine {
        line: format!(
            "{kind} {}",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        ),
        fingerprint: format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
        ),
    })
}

/// One word for `sh -c`, single-quoted; `"` escaped for the authorized_keys
/// option's own quoting (OpenSSH unescapes only `\"` there).
fn quote(word: &str) -> Result<String, String> {
    if word.chars().any(char::is_control) {
        return Err(format!("{word:?} has a control character"));
    }
    Ok(format!("'{}'", word.replace('\'', "'\\''")).replace('"', "\\\""))
}

/// The authorized_keys line for `user`'s key: `ssh-exec` with this process's
/// flags and `--user USER` as its forced command, no forwarding, no pty.
pub fn authorized_line(
    exe: &std::path::Path,
    c: &Common,
    user: &str,
    key: &KeyLine,
) -> Result<String, String> {
    let user = parse_user(user)?;
    let mut words: Vec<String> = vec![exe.to_string_lossy().into_owned(), "ssh-exec".into()];
    words.extend(["--key".into(), c.key.to_string_lossy().into_owned()]);
    for d in &c.directory {
        words.extend(["--directory".into(), d.to_string()]);
    }
    for a in &c.directory_api {
        words.extend(["--directory-api".into(), a.clone()]);
    }
    words.extend(["--zone".into(), c.zone.clone()]);
    words.extend(["--repos".into(), c.repos.to_string_lossy().into_owned()]);
    if let Some(w) = &c.web_backend {
        words.extend(["--web-backend".into(), w.to_string()]);
    }
    if c.sync_timeout != crate::repo::sync::DEFAULT_TIMEOUT {
        words.extend([
            "--sync-timeout".into(),
            c.sync_timeout.as_secs_f64().to_string(),
        ]);
    }
    if c.cluster_tls {
        words.push("--cluster-tls".into());
    }
    if c.cluster_auth == crate::session::ClusterAuth::Ed25519 {
        words.extend(["--cluster-auth".into(), "ed25519".into()]);
    }
    words.extend(["--user".into(), user]);
    let quoted = words
        .iter()
        .map(|w| quote(w))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!(
        "command=\"{}\",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty {}",
        quoted.join(" "),
        key.line
    ))
}

/// Asks the web application who holds key `fpr` and builds its line.
async fn lookup_key(c: &Common, fpr: &str) -> Result<String, KeyError> {
    let fpr = parse_fingerprint(fpr)?;
    let ask_err = |source| KeyError::Ask {
        fpr: fpr.to_string(),
        source,
    };
    let pq = format!("/switchboard/auth/ssh-key?fingerprint={}", encode(fpr));
    let (status, body) = match &c.web_backend {
        Some(base) => {
            let id = Identity::load(&c.key)
                .map_err(|e| ask_err(AskError::Unreachable(e.to_string())))?;
            let forwarder = Forwarder::new(std::sync::Arc::new(id));
            ask(&forwarder, Via::Local(base), &pq).await
        }
        None => {
            let (id, me, dir) =
                identity::who_am_i(&c.key, &c.directory, &c.zone, Default::default())
                    .await
                    .map_err(|e| ask_err(AskError::NoConduit(e.to_string())))?;
            let router = Router::new(dir, me.host);
            let peer = router
                .conduit()
                .await
                .map_err(|e| ask_err(AskError::NoConduit(e.to_string())))?;
            let forwarder = Forwarder::new(std::sync::Arc::new(id));
            ask(&forwarder, Via::Peer(peer), &pq).await
        }
    }
    .map_err(ask_err)?;
    let bad = |why: String| KeyError::BadAnswer {
        fpr: fpr.to_string(),
        why,
    };
    if status == StatusCode::NOT_FOUND {
        return Err(KeyError::Unknown(fpr.to_string()));
    }
    if !status.is_success() {
        return Err(bad(format!("HTTP {}: {}", status.as_u16(), said(&body))));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let (Some(user), Some(public)) = (v["user"].as_str(), v["public_key"].as_str()) else {
        return Err(bad("it needs \"user\" and \"public_key\" strings".into()));
    };
    let key = key_line(public).map_err(bad)?;
    if key.fingerprint != fpr {
        return Err(KeyError::Mismatch {
            fpr: fpr.to_string(),
            got: key.fingerprint,
        });
    }
    let exe = std::env::current_exe().map_err(|e| KeyError::Command(e.to_string()))?;
    authorized_line(&exe, c, user, &key).map_err(|e| bad(format!("user {user:?}: {e}")))
}

/// `authorized-keys FPR`: prints the line for the key, or nothing (sshd then
/// refuses the key) with the reason on stderr, for sshd's log. Exits 0 either
/// way: a failing command is only noise in sshd's log.
pub async fn authorized_keys(c: Common, fpr: &str) -> i32 {
    match lookup_key(&c, fpr).await {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("switchboard-sidecar authorized-keys: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAIQ1yFOdhTefo3RrzlO3u4WjxDxvgGhap/WQ/QPQeqU test@example";

    #[test]
    fn users_are_a_conservative_charset() {
        for good in ["alice", "bob.smith", "a_b-c", "0x"] {
            assert!(parse_user(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "a\"b",
            "a'b",
            "a;b",
            "a\nb",
            "ä",
            &"x".repeat(65),
        ] {
            assert!(parse_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_are_checked() {
        let k = key_line(KEY).expect("a key");
        // As `ssh-keygen -lf` prints it.
        assert_eq!(
            k.fingerprint,
            "SHA256:XnJs4S7aUiJHUHxSAvoxEk2lNjIyz4Ps4j9rZXDZ0s4"
        );
        assert!(parse_fingerprint(&k.fingerprint).is_ok());
        assert_eq!(k.line, KEY.rsplit_once(' ').expect("comment").0);
        for bad in [
            "",
            "SHA256:",
            "MD5:aa",
            "SHA256:a b",
            &format!("{}x", k.fingerprint),
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad:?}");
        }
        // The blob must name the type it is given as.
        assert!(key_line(&KEY.replace("ssh-ed25519", "ssh-rsa")).is_err());
        assert!(key_line("ssh-ed25519 !!!").is_err());
        assert!(key_line("ssh-ed25519").is_err());
        assert!(key_line("ssh-ed25519 AAAA").is_err());
    }

    #[test]
    fn the_forced_command_is_quoted() {
        let c = Common {
            key: "/etc/it's \"here\"/key".into(),
            directory: vec!["127.0.0.1:53".parse().expect("addr")],
            directory_api: vec![],
            zone: "cluster.example.".into(),
            repos: "/var/repo".into(),
            web_backend: None,
            sync_timeout: crate::repo::sync::DEFAULT_TIMEOUT,
            cluster_tls: false,
            cluster_auth: Default::default(),
        };
        let k = key_line(KEY).expect("a key");
        let line =
            authorized_line(std::path::Path::new("/bin/sb"), &c, "alice", &k).expect("a line");
        assert_eq!(
            line,
            format!(
                "command=\"'/bin/sb' 'ssh-exec' '--key' '/etc/it'\\''s \\\"here\\\"/key' '--directory' '127.0.0.1:53' '--zone' 'cluster.example.' '--repos' '/var/repo' '--user' 'alice'\",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty {}",
                k.line
            )
        );
        assert!(authorized_line(std::path::Path::new("/bin/sb"), &c, "al ice", &k).is_err());
        let c = Common {
            repos: "/var/re\npo".into(),
            ..c
        };
        assert!(authorized_line(std::path::Path::new("/bin/sb"), &c, "alice", &k).is_err());
    }

    #[test]
    fn reasons_are_one_short_line() {
        assert_eq!(said(br#"{"error":"no\nway"}"#), "no way");
        assert_eq!(said(b"plain\r\ntext\x07"), "plain text");
        assert_eq!(said(b""), "no reason given");
        assert_eq!(said(&[b'x'; 500]).len(), 200);
    }

    #[test]
    fn auth_paths_are_found_with_or_without_escapes() {
        for (path, auth) in [
            ("/switchboard/auth/keys", true),
            ("/SwitchBoard/Auth", true),
            ("/x/switchboard/authx", true),
            ("/switchboard%2Fauth", true),
            ("/switchboard/%61uth", true),
            ("/%53witchboard/auth", true),
            ("/switchboard/aut", false),
            ("/api/diffusion.querycommits", false),
            ("/switchboard%2", false),
            ("", false),
        ] {
            assert_eq!(is_auth_path(path), auth, "{path}");
        }
    }
}
