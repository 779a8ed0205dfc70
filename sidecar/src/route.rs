//! Classify a request: which repository it names (if any), and whether it reads
//! or writes — a smart-HTTP path, a Conduit call, or one of git's commands over
//! SSH. Then pick where it goes: this host, or a peer, from the directory's
//! `read.REPO`, `write.REPO` and `conduit.service` answers.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchboard_proto::model::validate_label;
use switchboard_proto::schema;

use crate::directory::answers::{DirError, DirectoryClient, Peer};

/// Reads may go to any up-to-date host; writes only to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One of git's three services, as an SSH session names it (`git-upload-pack`)
/// and a tunnelled one is asked for (`upload-pack`).
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

/// Where a request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Here: this host holds what the request needs.
    Local,
    /// Another host's cluster listener, signed.
    Peer(Peer),
}

/// A request that cannot be routed, with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("repository name {0:?} is not valid: use one DNS label (letters, digits, '-'), no '/' or '..'")]
    BadName(String),
    #[error(
        "{0}: info/refs takes one service, service=git-upload-pack or service=git-receive-pack"
    )]
    BadService(String),
    #[error("no repository {0} in the directory")]
    UnknownRepo(String),
    #[error("the master of {0} is unavailable: writes are refused until it is back or an admin promotes a replica (`repo promote`); reads still work")]
    NoMaster(String),
    #[error(transparent)]
    Refused(#[from] WriteRefusal),
    #[error("no up-to-date host of {0} is available for reads")]
    NoReader(String),
    #[error("no host provides conduit and this host has no web backend")]
    NoConduit,
    #[error("host {0} has no switchboard binding: its sidecar cannot be reached (`bind add {0} switchboard PORT`)")]
    NoClusterPort(String),
    #[error("{0}")]
    Directory(#[from] DirError),
}

impl RouteError {
    /// The HTTP status a user sees.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            RouteError::BadName(_) | RouteError::BadService(_) => S::BAD_REQUEST,
            RouteError::UnknownRepo(_) => S::NOT_FOUND,
            RouteError::Refused(w) => w.status(),
            RouteError::NoMaster(_)
            | RouteError::NoReader(_)
            | RouteError::NoConduit
            | RouteError::NoClusterPort(_) => S::SERVICE_UNAVAILABLE,
            RouteError::Directory(_) => S::BAD_GATEWAY,
        }
    }

    /// A stable code for JSON errors and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::BadName(_) => "bad-repository-name",
            RouteError::BadService(_) => "bad-git-service",
            RouteError::UnknownRepo(_) => "unknown-repository",
            RouteError::NoMaster(_) => "no-master",
            RouteError::Refused(w) => w.reason(),
            RouteError::NoReader(_) => "no-reader",
            RouteError::NoConduit => "no-conduit",
            RouteError::NoClusterPort(_) => "no-cluster-port",
            RouteError::Directory(_) => "directory-unreachable",
        }
    }
}

/// Why a repository takes no writes now (SPEC "Read-only when there is no
/// master", "Maintenance locks"). Each says, in one line a git client shows as
/// it is, which repository, why, and that reads still work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefusal {
    #[error("{repo} is frozen for maintenance: {message} (writes are refused until an admin runs `repo thaw {repo}`; reads still work)")]
    Frozen { repo: String, message: String },
    #[error("{repo} is read-only: its master {master} is unavailable (writes are refused until it is back or an admin promotes a replica with `repo promote`; reads still work)")]
    NoMaster { repo: String, master: String },
    #[error("{repo} is read-only: its zone file sets readonly=1 (reads still work)")]
    ReadOnly { repo: String },
}

impl WriteRefusal {
    /// What the directory's TXT for `repo` says about writes: `frozen=1` (with
    /// its message) or `readonly=1`, with `master_in_service` telling a master
    /// out of service from a repository read-only by configuration.
    pub fn from_txt(
        repo: &str,
        t: &std::collections::HashMap<String, String>,
        master_in_service: bool,
    ) -> Option<Self> {
        let get = |k: &str| t.get(k).map(String::as_str).unwrap_or("");
        if get(schema::txt::FROZEN) == "1" {
            return Some(WriteRefusal::Frozen {
                repo: repo.to_string(),
                message: get(schema::txt::FROZEN_MESSAGE).to_string(),
            });
        }
        if get(schema::txt::READONLY) != "1" {
            return None;
        }
        Some(if master_in_service {
            WriteRefusal::ReadOnly {
                repo: repo.to_string(),
            }
        } else {
            WriteRefusal::NoMaster {
                repo: repo.to_string(),
                master: get(schema::txt::MASTER).to_string(),
            }
        })
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            WriteRefusal::NoMaster { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::FORBIDDEN,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            WriteRefusal::Frozen { .. } => "frozen",
            WriteRefusal::NoMaster { .. } => "no-master",
            WriteRefusal::ReadOnly { .. } => "read-only",
        }
    }
}

/// Checks a repository name from a URL, an SSH command or a Conduit parameter.
pub fn repo_name(raw: &str) -> Result<String, RouteError> {
    let name = raw.strip_suffix(".git").unwrap_or(raw);
    validate_label("repository", name).map_err(|_| RouteError::BadName(raw.to_string()))?;
    Ok(name.to_string())
}

/// A git smart-HTTP request: `/source/REPO.git/REST?QUERY`, classified on the
/// decoded path and query, as the web server and `git http-backend` read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitPath {
    pub repo: String,
    /// `info/refs`, `git-upload-pack`, `git-receive-pack` or `git-upload-archive`.
    pub rest: &'static str,
    /// The query `git http-backend` is given: the service this request was
    /// classified by (`service=git-upload-pack` or `service=git-receive-pack`
    /// for `info/refs`), else empty. Never the client's own spelling of it.
    pub query: &'static str,
    pub access: Access,
}

/// Parses `/source/REPO.git/...`; `Ok(None)` if the path is not a git path at all.
/// The path is percent-decoded first (`git%2Dreceive-pack` is `git-receive-pack`),
/// and `info/refs` takes exactly one `service`, `git-upload-pack` or
/// `git-receive-pack` once decoded (or none, for dumb HTTP): anything else is refused.
pub fn git_path(path: &str, query: Option<&str>) -> Result<Option<GitPath>, RouteError> {
    // Almost every path has nothing encoded: decode only those that do.
    let decoded;
    let path = if path.contains('%') {
        decoded = percent_decode(path);
        decoded.as_str()
    } else {
        path
    };
    let Some(tail) = path.strip_prefix("/source/") else {
        return Ok(None);
    };
    let Some((repo, rest)) = tail.split_once(".git/") else {
        let raw = tail.split('/').next().unwrap_or(tail);
        return Err(RouteError::BadName(raw.to_string()));
    };
    let repo = repo_name(repo)?;
    let (rest, query, access) = match rest {
        "git-receive-pack" => ("git-receive-pack", "", Access::Write),
        "git-upload-pack" => ("git-upload-pack", "", Access::Read),
        "git-upload-archive" => ("git-upload-archive", "", Access::Read),
        "info/refs" => match info_refs_service(query)? {
            None => ("info/refs", "", Access::Read),
            Some(Access::Read) => ("info/refs", "service=git-upload-pack", Access::Read),
            Some(Access::Write) => ("info/refs", "service=git-receive-pack", Access::Write),
        },
        _ => return Ok(None),
    };
    Ok(Some(GitPath {
        repo,
        rest,
        query,
        access,
    }))
}

/// The `service` an `info/refs` query names, decoded as git decodes it
/// (names and values, `%XX` and `+`): none, upload-pack (read) or receive-pack (write).
fn info_refs_service(query: Option<&str>) -> Result<Option<Access>, RouteError> {
    let mut service = None;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k) != "service" {
            continue;
        }
        if service.replace(form_decode(v)).is_some() {
            return Err(RouteError::BadService(
                "service is given more than once".into(),
            ));
        }
    }
    match service.as_deref() {
        None => Ok(None),
        Some("git-upload-pack") => Ok(Some(Access::Read)),
        Some("git-receive-pack") => Ok(Some(Access::Write)),
        Some(other) => Err(RouteError::BadService(format!(
            "service {other:?} is not a git service"
        ))),
    }
}

/// Conduit methods that change a repository. Everything else under `diffusion.` reads.
pub fn conduit_access(method: &str) -> Access {
    let last = method.rsplit('.').next().unwrap_or(method);
    let writes = [
        "edit", "create", "update", "delete", "remove", "push", "merge", "write", "set", "import",
    ];
    if writes.iter().any(|w| last.ends_with(w)) {
        Access::Write
    } else {
        Access::Read
    }
}

/// The repository a Conduit call names: `repository` as a form field, inside the
/// form field `params` (JSON), or in a JSON body. Only `diffusion.*` methods count.
pub fn conduit_repository(method: &str, content_type: Option<&str>, body: &[u8]) -> Option<String> {
    if !method.starts_with("diffusion.") {
        return None;
    }
    let from_json = |v: &serde_json::Value| {
        v.get("repository")
            .and_then(|r| r.as_str().map(str::to_string))
    };
    let is_json = content_type.is_some_and(|c| c.starts_with("application/json"));
    if is_json {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        return from_json(&v).or_else(|| v.get("params").and_then(from_json));
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut params_json = None;
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = form_decode(v);
        match form_decode(k).as_str() {
            "repository" => return Some(v),
            "params" => params_json = Some(v),
            _ => {}
        }
    }
    let v: serde_json::Value = serde_json::from_str(&params_json?).ok()?;
    from_json(&v)
}

/// Decodes one `application/x-www-form-urlencoded` component.
pub fn form_decode(s: &str) -> String {
    decode(s, true)
}

/// Decodes the `%XX` escapes of a URL path (a `+` stays a `+`).
pub fn percent_decode(s: &str) -> String {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Picks where a repository request goes.
pub struct Router {
    pub dir: std::sync::Arc<DirectoryClient>,
    pub host: String,
    next: AtomicUsize,
}

impl Router {
    pub fn new(dir: std::sync::Arc<DirectoryClient>, host: String) -> Self {
        Router {
            dir,
            host,
            next: AtomicUsize::new(0),
        }
    }

    /// Reads: this host if it is an up-to-date reader, else the readers in turn.
    /// Writes: the master.
    pub async fn repo(&self, repo: &str, access: Access) -> Result<Target, RouteError> {
        let label = match access {
            Access::Read => schema::READ,
            Access::Write => schema::WRITE,
        };
        let peers = self
            .dir
            .srv(&format!("{label}.{repo}.{}", schema::REPO))
            .await?
            .ok_or_else(|| RouteError::UnknownRepo(repo.to_string()))?;
        if peers.is_empty() {
            return Err(match access {
                Access::Read => RouteError::NoReader(repo.to_string()),
                Access::Write => RouteError::NoMaster(repo.to_string()),
            });
        }
        if peers.iter().any(|p| p.host == self.host) {
            return Ok(Target::Local);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % peers.len();
        let peer = peers[i].clone();
        if peer.addr.port() == 0 {
            return Err(RouteError::NoClusterPort(peer.host));
        }
        Ok(Target::Peer(peer))
    }

    /// A Conduit call that names no repository, on a host without a web backend:
    /// one of the `conduit.service` hosts, in turn.
    pub async fn conduit(&self) -> Result<Peer, RouteError> {
        let hosts = self
            .dir
            .srv(&format!("{}.{}", "conduit", schema::SERVICE))
            .await?
            .unwrap_or_default();
        let others: Vec<_> = hosts.iter().filter(|p| p.host != self.host).collect();
        if others.is_empty() {
            return Err(RouteError::NoConduit);
        }
        let pick = &others[self.next.fetch_add(1, Ordering::Relaxed) % others.len()];
        self.dir
            .cluster_endpoint(&pick.host)
            .await?
            .ok_or_else(|| RouteError::NoClusterPort(pick.host.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_paths() {
        let p = git_path("/source/r1.git/info/refs", Some("service=git-upload-pack"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.repo.as_str(), p.rest, p.access),
            ("r1", "info/refs", Access::Read)
        );
        let p = git_path("/source/r1.git/info/refs", Some("service=git-receive-pack"))
            .unwrap()
            .unwrap();
        assert_eq!(p.access, Access::Write);
        let p = git_path("/source/r1.git/git-receive-pack", None)
            .unwrap()
            .unwrap();
        assert_eq!(p.access, Access::Write);
        assert!(git_path("/source/../etc.git/info/refs", None).is_err());
        assert!(git_path("/source/a%2Fb.git/info/refs", None).is_err());
        assert!(git_path("/source/r1.git/objects/info/packs", None)
            .unwrap()
            .is_none());
        assert!(git_path("/other", None).unwrap().is_none());
    }

    #[test]
    fn git_paths_are_classified_decoded() {
        let access = |path: &str, query: Option<&str>| {
            git_path(path, query)
                .map(|gp| gp.map(|gp| (gp.rest, gp.query, gp.access)))
                .map_err(|e| e.reason())
        };
        let write = Ok(Some((
            "info/refs",
            "service=git-receive-pack",
            Access::Write,
        )));
        let info = "/source/r1.git/info/refs";
        assert_eq!(access(info, Some("service=git%2Dreceive-pack")), write);
        assert_eq!(access(info, Some("serv%69ce=git%2dreceive%2Dpack")), write);
        assert_eq!(access(info, Some("x=1&service=git-receive-pack")), write);
        assert_eq!(
            access(info, Some("service=git-upload-pack")),
            Ok(Some(("info/refs", "service=git-upload-pack", Access::Read)))
        );
        assert_eq!(
            access(info, None),
            Ok(Some(("info/refs", "", Access::Read)))
        );
        assert_eq!(
            access("/source/r1.git/git%2Dreceive-pack", None),
            Ok(Some(("git-receive-pack", "", Access::Write)))
        );
        assert_eq!(
            access(
                "/%73ource/r1.git/info%2Frefs",
                Some("service=git-receive-pack")
            ),
            write
        );
        for bad in [
            "service=git-upload-archive",
            "service=",
            "service",
            "service=git-receive-pack+",
            "service=GIT-RECEIVE-PACK",
            "service=git-receive-pack%00",
            "service=git-upload-pack&service=git-receive-pack",
        ] {
            assert_eq!(access(info, Some(bad)), Err("bad-git-service"), "{bad}");
        }
        assert_eq!(percent_decode("a+b%2"), "a+b%2");
    }

    #[test]
    fn conduit_params() {
        assert_eq!(
            conduit_repository("diffusion.querycommits", None, b"repository=r1&x=1"),
            Some("r1".into())
        );
        assert_eq!(
            conduit_repository(
                "diffusion.querycommits",
                None,
                b"params=%7B%22repository%22%3A%22r2%22%7D&output=json"
            ),
            Some("r2".into())
        );
        assert_eq!(
            conduit_repository(
                "diffusion.x",
                Some("application/json"),
                br#"{"params":{"repository":"r3"}}"#
            ),
            Some("r3".into())
        );
        assert_eq!(
            conduit_repository("user.whoami", None, b"repository=r1"),
            None
        );
        assert_eq!(conduit_repository("diffusion.x", None, b"%zz=%"), None);
        assert_eq!(conduit_access("diffusion.querycommits"), Access::Read);
        assert_eq!(conduit_access("diffusion.repository.edit"), Access::Write);
        assert_eq!(conduit_access("diffusion.uri.create"), Access::Write);
        assert_eq!(conduit_access("diffusion.mergedcommitsquery"), Access::Read);
    }
}
