//! The bare repositories under `--repos` and the git commands run on them:
//! `git http-backend` (the CGI that implements smart HTTP, protocol v0 and v2)
//! with request and response bodies piped through, never held whole; a new
//! empty repository; a fetch of every ref from another host's copy.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::body::BoxBody;
use crate::repo::hook::Hooks;

/// A smart-HTTP request for one repository: `/REPO.git/REST?QUERY`.
pub struct GitRequest<'a> {
    pub repo: &'a str,
    pub rest: &'a str,
    pub method: &'a Method,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
}

/// The bare repositories under `--repos`, one `REPO.git` each.
pub struct Repos {
    root: PathBuf,
}

/// Why a local git request failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git http-backend failed: {0}")]
    Backend(String),
    #[error("cannot create {path}: {reason}")]
    Create { path: String, reason: String },
}

impl Repos {
    pub fn new(root: PathBuf) -> Self {
        Repos { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `repo` lives (the name is already validated as one DNS label).
    pub fn path(&self, repo: &str) -> PathBuf {
        self.root.join(format!("{repo}.git"))
    }

    pub fn exists(&self, repo: &str) -> bool {
        self.path(repo).join("HEAD").is_file()
    }

    /// Creates an empty bare repository (this host is its master and lacks it).
    pub async fn create(&self, repo: &str) -> Result<(), GitError> {
        let path = self.path(repo);
        let out = tokio::process::Command::new("git")
            // HEAD names `main`, the branch git's own default is moving to, so a
            // clone over protocol v2 (which follows HEAD) checks it out.
            .args(["init", "--quiet", "--bare", "--initial-branch=main"])
            .arg(&path)
            .output()
            .await
            .map_err(GitError::Spawn)?;
        if !out.status.success() {
            return Err(GitError::Create {
                path: path.display().to_string(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        tracing::info!(repo, path = %path.display(), "created empty repository (this host is its master)");
        Ok(())
    }

    /// Brings `repo` up to date with `url` (another host's copy, through the
    /// loopback signing proxy, which wants the `header` line `NAME: TOKEN`): every
    /// ref, pruned, and the same `HEAD`. The header goes through git's environment, never its
    /// command line or FETCH_HEAD, where other local users could read it.
    pub async fn sync_from(&self, repo: &str, url: &str, header: &str) -> Result<(), GitError> {
        if !self.exists(repo) {
            self.create(repo).await?;
        }
        let path = self.path(repo);
        let git = |args: Vec<String>| {
            let path = path.clone();
            let header = header.to_string();
            async move {
                let out = tokio::process::Command::new("git")
                    .args([
                        "-c",
                        "safe.directory=*",
                        "-c",
                        "http.lowSpeedLimit=1000",
                        "-c",
                        "http.lowSpeedTime=30",
                        "--git-dir",
                    ])
                    .arg(&path)
                    .args(&args)
                    .env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                    .env("GIT_CONFIG_VALUE_0", &header)
                    .env("GIT_TERMINAL_PROMPT", "0")
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .map_err(GitError::Spawn)?;
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    Err(GitError::Backend(format!(
                        "git {}: {}",
                        args.first().cloned().unwrap_or_default(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )))
                }
            }
        };
        git(vec![
            "fetch".into(),
            "--quiet".into(),
            "--prune".into(),
            "--no-write-fetch-head".into(),
            url.into(),
            "+refs/*:refs/*".into(),
        ])
        .await?;
        let symref = git(vec![
            "ls-remote".into(),
            "--symref".into(),
            url.into(),
            "HEAD".into(),
        ])
        .await?;
        if let Some(target) = symref
            .lines()
            .find_map(|l| l.strip_prefix("ref: "))
            .and_then(|l| l.split_whitespace().next())
        {
            git(vec!["symbolic-ref".into(), "HEAD".into(), target.into()]).await?;
        }
        Ok(())
    }

    /// Runs `git http-backend` for `/REPO.git/REST?QUERY`, streaming `body` in and the answer out.
    pub async fn http_backend(
        &self,
        req: GitRequest<'_>,
        body: BoxBody,
        write_hooks: Option<&Hooks>,
    ) -> Result<Response<BoxBody>, GitError> {
        let GitRequest {
            repo,
            rest,
            method,
            query,
            headers,
        } = req;
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let mut cmd = tokio::process::Command::new("git");
        cmd.args([
            "-c",
            "http.receivepack=true",
            "-c",
            "http.uploadarch=true",
            "-c",
            "safe.directory=*",
        ]);
        if let Some(h) = write_hooks {
            // `-c` reaches the receive-pack that http-backend starts (GIT_CONFIG_PARAMETERS).
            h.apply(&mut cmd, repo);
        }
        cmd.arg("http-backend")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("PATH_INFO", format!("/{repo}.git/{rest}"))
            .env("QUERY_STRING", query)
            .env("REQUEST_METHOD", method.as_str())
            .env("CONTENT_TYPE", header("content-type"))
            .env("REMOTE_USER", "switchboard")
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (env, name) in [
            ("GIT_PROTOCOL", "git-protocol"),
            ("HTTP_CONTENT_ENCODING", "content-encoding"),
        ] {
            let v = header(name);
            if !v.is_empty() {
                cmd.env(env, v);
            }
        }
        let mut child = cmd.spawn().map_err(GitError::Spawn)?;
        let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(GitError::Backend("no pipes".into()));
        };
        tokio::spawn(async move {
            let mut body = std::pin::pin!(body);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    if stdin.write_all(&data).await.is_err() {
                        break;
                    }
                }
            }
            let _ = stdin.shutdown().await;
        });
        let repo_owned = repo.to_string();
        tokio::spawn(async move {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            let status = child.wait().await;
            let err = err.trim();
            if !err.is_empty() || !status.as_ref().is_ok_and(|s| s.success()) {
                tracing::warn!(repo = %repo_owned, status = ?status.ok(), stderr = err, "git http-backend");
            }
        });

        // CGI headers, then the body.
        let mut reader = BufReader::new(stdout);
        let mut head = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            let n = reader
                .read(&mut byte)
                .await
                .map_err(|e| GitError::Backend(e.to_string()))?;
            if n == 0 {
                break;
            }
            head.push(byte[0]);
            if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
                break;
            }
            if head.len() > 64 * 1024 {
                return Err(GitError::Backend("CGI header too long".into()));
            }
        }
        let mut resp = Response::builder().status(StatusCode::OK);
        for line in String::from_utf8_lossy(&head).lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("status") {
                let code = v
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse::<u16>().ok())
                    .unwrap_or(500);
                resp = resp.status(code);
            } else if let (Ok(name), Ok(val)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v),
            ) {
                resp = resp.header(name, val);
            }
        }
        resp.body(crate::body::reader_body(reader))
            .map_err(|e| GitError::Backend(e.to_string()))
    }
}
