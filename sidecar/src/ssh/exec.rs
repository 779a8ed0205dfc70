//! `ssh-exec`: what OpenSSH runs as a forced command (`ForceCommand`, or
//! `command=` in authorized_keys). It reads `SSH_ORIGINAL_COMMAND`, accepts only
//! git's three commands on one repository and `conduit METHOD`, and serves the
//! session here or carries it to the right host through the signed cluster
//! channel (`tunnel`), with the exit status passed back.

use std::process::Stdio;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use crate::inbound::user;
use crate::outbound::spool::Spooled;
use crate::outbound::tunnel;
use crate::route::{self, Access, Target};
use crate::server::{self, Common};
use crate::sidecar::{Sidecar, MAX_CONDUIT_BODY};

/// One of git's SSH commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitVerb {
    UploadPack,
    ReceivePack,
    UploadArchive,
}

impl GitVerb {
    /// The git subcommand (`git upload-pack` etc.).
    pub fn program(self) -> &'static str {
        match self {
            GitVerb::UploadPack => "upload-pack",
            GitVerb::ReceivePack => "receive-pack",
            GitVerb::UploadArchive => "upload-archive",
        }
    }

    pub fn from_program(s: &str) -> Option<Self> {
        match s {
            "upload-pack" => Some(GitVerb::UploadPack),
            "receive-pack" => Some(GitVerb::ReceivePack),
            "upload-archive" => Some(GitVerb::UploadArchive),
            _ => None,
        }
    }

    pub fn access(self) -> Access {
        match self {
            GitVerb::ReceivePack => Access::Write,
            _ => Access::Read,
        }
    }
}

/// What an SSH session asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshCommand {
    Git { verb: GitVerb, repo: String },
    Conduit { method: String },
}

/// Parses `SSH_ORIGINAL_COMMAND`: `git-upload-pack 'REPO'` (also `'/REPO'`,
/// `'REPO.git'`, `'/source/REPO.git'`), `git-receive-pack ...`,
/// `git-upload-archive ...`, or `conduit METHOD`. Anything else is refused.
pub fn parse(cmd: &str) -> Result<SshCommand, String> {
    let cmd = cmd.trim();
    let (word, arg) = cmd
        .split_once(' ')
        .map(|(w, a)| (w, a.trim()))
        .unwrap_or((cmd, ""));
    if word == "conduit" {
        let ok = !arg.is_empty()
            && arg.len() <= 128
            && arg.split('.').all(|part| {
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        if !ok {
            return Err(format!(
                "conduit needs one method name (letters, digits, '.', '_'), not {arg:?}"
            ));
        }
        return Ok(SshCommand::Conduit {
            method: arg.to_string(),
        });
    }
    let verb = match word {
        "git-upload-pack" => GitVerb::UploadPack,
        "git-receive-pack" => GitVerb::ReceivePack,
        "git-upload-archive" => GitVerb::UploadArchive,
        _ => {
            return Err(format!(
                "{word:?} is not served here: only git-upload-pack, git-receive-pack, git-upload-archive and conduit METHOD"
            ))
        }
    };
    let path = arg
        .strip_prefix('\'')
        .and_then(|a| a.strip_suffix('\''))
        .filter(|p| !p.contains('\''))
        .ok_or_else(|| {
            format!("the repository must be one quoted path, as git sends it ('REPO'), not {arg:?}")
        })?;
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_prefix("source/").unwrap_or(path);
    let repo = route::repo_name(path).map_err(|e| e.to_string())?;
    Ok(SshCommand::Git { verb, repo })
}

/// Runs one SSH session; returns the exit status.
pub async fn exec(common: Common) -> i32 {
    let Ok(original) = std::env::var("SSH_ORIGINAL_COMMAND") else {
        eprintln!(
            "switchboard: this account serves git and `conduit METHOD` only; there is no shell"
        );
        return 1;
    };
    let command = match parse(&original) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return 1;
        }
    };
    let sc = match server::build(&common, Default::default()).await {
        Ok(sc) => sc,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return 1;
        }
    };
    match command {
        SshCommand::Git { verb, repo } => git(&sc, verb, &repo).await,
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
            match local(sc, verb, repo).await {
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

/// A command for this host's copy, with the write hook on the master.
pub async fn local_command(
    sc: &Sidecar,
    verb: GitVerb,
    repo: &str,
) -> Result<tokio::process::Command, String> {
    let standing = sc
        .standing(repo, verb.access())
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no repository {repo} in the directory"))?;
    let is_master = standing.master == sc.me.host;
    if verb == GitVerb::ReceivePack && !is_master {
        return Err(format!(
            "{} is not the master of {repo} ({} is): writes go to the master",
            sc.me.host, standing.master
        ));
    }
    if !is_master && !standing.current {
        return Err(format!(
            "stale-replica: {}'s copy of {repo} is behind the master",
            sc.me.host
        ));
    }
    if !sc.repos.exists(repo) {
        sc.repos.create(repo).await.map_err(|e| e.to_string())?;
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(["-c", "safe.directory=*"]);
    if verb == GitVerb::ReceivePack {
        sc.hooks.apply(&mut cmd, repo);
    }
    cmd.arg(verb.program()).arg(sc.repos.path(repo));
    Ok(cmd)
}

async fn local(sc: &Sidecar, verb: GitVerb, repo: &str) -> Result<i32, String> {
    let mut cmd = local_command(sc, verb, repo).await?;
    let status = cmd
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_git_sends() {
        for arg in [
            "'r1'",
            "'/r1'",
            "'r1.git'",
            "'/r1.git'",
            "'/source/r1.git'",
            "'source/r1.git'",
        ] {
            assert_eq!(
                parse(&format!("git-upload-pack {arg}")),
                Ok(SshCommand::Git {
                    verb: GitVerb::UploadPack,
                    repo: "r1".into()
                }),
                "{arg}"
            );
        }
        assert_eq!(
            parse("git-receive-pack 'r2'"),
            Ok(SshCommand::Git {
                verb: GitVerb::ReceivePack,
                repo: "r2".into()
            })
        );
        assert_eq!(
            parse("conduit diffusion.querycommits"),
            Ok(SshCommand::Conduit {
                method: "diffusion.querycommits".into()
            })
        );
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            "bash",
            "git-upload-pack",
            "git-upload-pack r1",
            "git-upload-pack '../etc'",
            "git-upload-pack '/etc/passwd'",
            "git-upload-pack 'r1'; rm -rf /",
            "git-upload-pack 'a'\\''b'",
            "git-upload-pack '/source/../../r1.git'",
            "git-upload-pack 'a/b'",
            "scp -t /tmp",
            "conduit",
            "conduit a;b",
            "conduit $(id)",
            "conduit ..",
            "conduit .a",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
