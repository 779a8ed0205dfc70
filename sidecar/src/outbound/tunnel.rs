//! SSH sessions carried to another host: `POST /ssh/VERB/REPO`, signed like every
//! cluster call, upgraded (HTTP/1.1 `101 Switching Protocols`) to a raw stream.
//!
//! Caller to callee: the session's stdin, as is; end of stdin is a half-close.
//! Callee to caller: frames of `[kind: u8][length: u32 big-endian][bytes]`,
//! kind 1 stdout, 2 stderr, 3 exit status (4 bytes, i32), which ends the session.

use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use switchboard_proto::sign::BodyHash;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::body::BoxBody;
use crate::directory::answers::Peer;
use crate::reply::{error, REASON};
use crate::repo::local::{self, LocalError};
use crate::route::{Access, GitVerb, Target};
use crate::sidecar::{Sidecar, TunnelSlot};

const PROTOCOL: &str = "switchboard-ssh";
/// How long a tunnelled session may go without a frame from the other host.
const IDLE: std::time::Duration = std::time::Duration::from_secs(600);
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const EXIT: u8 = 3;

async fn frame<W: AsyncWrite + Unpin>(w: &Mutex<W>, kind: u8, data: &[u8]) -> std::io::Result<()> {
    let mut w = w.lock().await;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(data.len() as u32).to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(data).await?;
    w.flush().await
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, w: Arc<Mutex<W>>, kind: u8) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if frame(&w, kind, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Callee side: after the call is verified, answer 101 and run `verb` on this
/// host's copy of `repo` over the upgraded connection.
pub async fn accept(
    sc: Arc<Sidecar>,
    verb: &str,
    repo: &str,
    on_upgrade: OnUpgrade,
    slot: TunnelSlot,
) -> Response<BoxBody> {
    let Some(verb) = GitVerb::from_program(verb) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad-command",
            format!("{verb:?} is not a git command served here"),
        );
    };
    let repo = match crate::route::repo_name(repo) {
        Ok(r) => r,
        Err(e) => return error(e.status(), e.reason(), e.to_string()),
    };
    let mut cmd = match local::command(&sc, verb, &repo).await {
        Ok(c) => c,
        Err(e @ LocalError::StaleReplica { .. }) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "stale-replica",
                e.to_string(),
            )
        }
        Err(e) => return error(StatusCode::FORBIDDEN, "refused", e.to_string()),
    };
    // Counted from before the answer: a drain that begins now waits for the session.
    let open = sc.shutdown.open();
    tokio::spawn(async move {
        // The peer's slot is held for as long as the session runs, and the
        // drain waits for it to end.
        let _slot = slot;
        let _open = open;
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::warn!(error = %e, "SSH tunnel upgrade failed");
                return;
            }
        };
        let (mut rd, wr) = tokio::io::split(io);
        let wr = Arc::new(Mutex::new(wr));
        let mut child = match cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let _ = frame(
                    &wr,
                    STDERR,
                    format!("switchboard: cannot run git: {e}\n").as_bytes(),
                )
                .await;
                let _ = frame(&wr, EXIT, &1i32.to_be_bytes()).await;
                return;
            }
        };
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return;
        };
        let input = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut rd, &mut stdin).await;
            let _ = stdin.shutdown().await;
        });
        let out = tokio::spawn(pump(stdout, wr.clone(), STDOUT));
        let err = tokio::spawn(pump(stderr, wr.clone(), STDERR));
        let _ = out.await;
        let _ = err.await;
        let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(1);
        input.abort();
        let _ = frame(&wr, EXIT, &code.to_be_bytes()).await;
        let _ = wr.lock().await.shutdown().await;
    });
    let mut r = Response::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(PROTOCOL));
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    r
}

/// Caller side: carry this process's stdin/stdout/stderr to `peer`; returns the
/// remote exit status. A replica that finds itself behind sends the read to the master.
pub async fn connect(sc: &Sidecar, peer: &Peer, verb: GitVerb, repo: &str) -> i32 {
    match open(sc, peer, verb, repo).await {
        Ok(code) => code,
        Err(Refused::Stale) => match sc.router.repo(repo, Access::Write).await {
            Ok(Target::Peer(master)) => open(sc, &master, verb, repo)
                .await
                .unwrap_or_else(|e| e.report()),
            Ok(Target::Local) => {
                eprintln!("switchboard: this host is the master of {repo} but was routed elsewhere; try again");
                1
            }
            Err(e) => {
                eprintln!("switchboard: {e}");
                1
            }
        },
        Err(e) => e.report(),
    }
}

enum Refused {
    Stale,
    Other(String),
}

impl Refused {
    fn report(self) -> i32 {
        match self {
            Refused::Stale => eprintln!("switchboard: no up-to-date copy answered"),
            Refused::Other(m) => eprintln!("switchboard: {m}"),
        }
        1
    }
}

/// Sends the upgrade request on a new connection over `io`.
async fn upgrade_on<I>(
    io: I,
    req: Request<Empty<Bytes>>,
) -> hyper::Result<Response<hyper::body::Incoming>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await
}

async fn open(sc: &Sidecar, peer: &Peer, verb: GitVerb, repo: &str) -> Result<i32, Refused> {
    let other =
        |e: &dyn std::fmt::Display| Refused::Other(format!("{} ({}): {e}", peer.host, peer.addr));
    let uri: Uri = format!("http://{}/ssh/{}/{repo}", peer.addr, verb.program())
        .parse()
        .map_err(|e| other(&e))?;
    // Signed as every call to another host (`Forwarder::sign`); a session the
    // peer no longer knows is dropped and the tunnel asked for once more.
    let mut session = sc.forwarder.session_for(peer).await;
    let mut retried = false;
    let resp = loop {
        let mut headers = HeaderMap::new();
        headers.insert(
            HOST,
            HeaderValue::from_str(&peer.addr.to_string()).map_err(|e| other(&e))?,
        );
        headers.insert(UPGRADE, HeaderValue::from_static(PROTOCOL));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        sc.forwarder
            .sign(
                session.as_deref(),
                &Method::POST,
                &uri,
                &mut headers,
                &BodyHash::of(b""),
            )
            .map_err(|e| other(&e))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .body(Empty::<Bytes>::new())
            .map_err(|e| other(&e))?;
        *req.headers_mut() = headers;
        let addr = peer.addr.to_string();
        let stream = crate::outbound::pool::connect(&addr)
            .await
            .map_err(|e| other(&e))?;
        // The same channel as every cluster call: TLS pinned to the peer's key
        // with `--cluster-tls`.
        let resp = match sc.forwarder.client().tls() {
            None => upgrade_on(stream, req).await,
            Some(tls) => {
                let stream = tls
                    .connect(&peer.host, &addr, stream)
                    .await
                    .map_err(|e| Refused::Other(e.to_string()))?;
                upgrade_on(stream, req).await
            }
        }
        .map_err(|e| other(&e))?;
        if let (false, Some(s), StatusCode::UNAUTHORIZED) = (retried, &session, resp.status()) {
            if sc.forwarder.session_refused(
                peer,
                s,
                resp.headers().get(REASON).map(|v| v.as_bytes()),
            ) {
                retried = true;
                session = sc.forwarder.session_for(peer).await;
                continue;
            }
        }
        break resp;
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let stale = resp
            .headers()
            .get(REASON)
            .is_some_and(|v| v == "stale-replica");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if stale {
            return Err(Refused::Stale);
        }
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(Refused::Other(format!(
            "{} refused the session: {msg} [HTTP {}]",
            peer.host,
            status.as_u16()
        )));
    }
    let io = hyper::upgrade::on(resp).await.map_err(|e| other(&e))?;
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(io));
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await;
        let _ = wr.shutdown().await;
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let mut head = [0u8; 5];
        // A peer that vanishes without closing would otherwise hold the session forever.
        let read = tokio::time::timeout(IDLE, rd.read_exact(&mut head)).await;
        if !matches!(read, Ok(Ok(_))) {
            return Err(Refused::Other(format!(
                "{} closed the session without an exit status, or sent nothing for {} s",
                peer.host,
                IDLE.as_secs()
            )));
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > 1 << 20 {
            return Err(Refused::Other(format!(
                "{} sent a malformed frame",
                peer.host
            )));
        }
        let mut data = vec![0u8; len];
        if rd.read_exact(&mut data).await.is_err() {
            return Err(Refused::Other(format!(
                "{} closed the session mid-frame",
                peer.host
            )));
        }
        match head[0] {
            STDOUT => {
                let _ = stdout.write_all(&data).await;
                let _ = stdout.flush().await;
            }
            STDERR => {
                let _ = stderr.write_all(&data).await;
                let _ = stderr.flush().await;
            }
            EXIT if len == 4 => {
                return Ok(i32::from_be_bytes([data[0], data[1], data[2], data[3]]))
            }
            _ => {
                return Err(Refused::Other(format!(
                    "{} sent a malformed frame",
                    peer.host
                )))
            }
        }
    }
}
