//! `ssh-exec`: what OpenSSH runs as a forced command (`ForceCommand`, or
//! `command=` in authorized_keys). It reads `SSH_ORIGINAL_COMMAND`, accepts what
//! `ssh::command` accepts (git's three commands on one repository and `conduit
//! METHOD`), and serves the session here or carries it to the right host
//! through the signed cluster channel (`outbound::tunnel`), with the exit status
//! passed back.

use std::process::Stdio;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use crate::inbound::user;
use crate::outbound::spool::Spooled;
use crate::outbound::tunnel;
use crate::repo::local::{self, LocalError};
use crate::route::{GitVerb, Target};
use crate::sidecar::{Common, Sidecar, MAX_CONDUIT_BODY};
use crate::ssh::command::SshCommand;
use crate::ssh::users;

/// Runs one SSH session; returns the exit status. With `user` (`--user`, set by
/// `authorized-keys`), the web application is asked first whether that user may
/// read or write the repository (`ssh::users`).
pub async fn exec(common: Common, user: Option<String>) -> i32 {
    let Ok(original) = std::env::var("SSH_ORIGINAL_COMMAND") else {
        eprintln!(
            "switchboard: this account serves git and `conduit METHOD` only; there is no shell"
        );
        return 1;
    };
    let command = match SshCommand::parse(&original) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return 1;
        }
    };
    // One SSH session makes one or two calls to other hosts (a tunnel, a sync
    // request) and ends: a signature each costs less than a session handshake
    // (two signatures, two checks, an X25519 exchange, a round trip).
    let common = Common {
        cluster_auth: crate::session::ClusterAuth::Ed25519,
        ..common
    };
    let sc = match Sidecar::build(&common, Default::default(), Default::default()).await {
        Ok(sc) => sc,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return 1;
        }
    };
    match command {
        SshCommand::Git { verb, repo } => {
            if let Some(user) = &user {
                if let Err(e) = users::authorize(&sc, user, &repo, verb.access()).await {
                    eprintln!("switchboard: {e}");
                    return 1;
                }
            }
            git(&sc, verb, &repo).await
        }
        SshCommand::Conduit { method } => conduit(&sc, &method).await,
    }
}

async fn git(sc: &Sidecar, verb: GitVerb, repo: &str) -> i32 {
    let target = match sc.target(repo, verb.access()).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return 1;
        }
    };
    match target {
        Target::Local => {
            tracing::debug!(repo, verb = verb.program(), "serving over SSH here");
            match serve_here(sc, verb, repo).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("switchboard: {e}");
                    1
                }
            }
        }
        Target::Peer(peer) => tunnel::connect(sc, &peer, verb, repo).await,
    }
}

/// Why a session for this host's copy did not run.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Refused(#[from] LocalError),
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
}

/// Runs the session on this host's copy, on this process's stdin and stdout.
async fn serve_here(sc: &Sidecar, verb: GitVerb, repo: &str) -> Result<i32, SessionError> {
    let mut cmd = local::command(sc, verb, repo).await?;
    let status = cmd
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .await
        .map_err(SessionError::Spawn)?;
    Ok(status.code().unwrap_or(1))
}

/// `conduit METHOD`: JSON parameters on stdin, the JSON result on stdout.
async fn conduit(sc: &Sidecar, method: &str) -> i32 {
    let mut input = Vec::new();
    let mut stdin = tokio::io::stdin().take(MAX_CONDUIT_BODY + 1);
    if let Err(e) = stdin.read_to_end(&mut input).await {
        eprintln!("switchboard: cannot read the parameters on stdin: {e}");
        return 1;
    }
    if input.len() as u64 > MAX_CONDUIT_BODY {
        eprintln!("switchboard: the parameters are larger than {MAX_CONDUIT_BODY} bytes");
        return 1;
    }
    if !input.iter().all(u8::is_ascii_whitespace)
        && serde_json::from_slice::<serde_json::Value>(&input).is_err()
    {
        eprintln!("switchboard: the parameters on stdin are not JSON");
        return 1;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let resp = user::route_conduit(
        sc,
        method,
        &headers,
        Spooled::from_bytes(Bytes::from(input)),
    )
    .await;
    let status = resp.status();
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            eprintln!("switchboard: reading the answer failed: {e}");
            return 1;
        }
    };
    if status.is_success() {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(&body);
        if !body.ends_with(b"\n") {
            let _ = out.write_all(b"\n");
        }
        0
    } else {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        eprintln!(
            "switchboard: conduit {method}: {msg} [HTTP {}]",
            status.as_u16()
        );
        1
    }
}
