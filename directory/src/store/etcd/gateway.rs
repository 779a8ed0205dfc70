//! etcd v3 through its gRPC-JSON gateway: HTTP/1.1 POSTs of JSON to
//! `/v3/kv/range`, `/v3/kv/txn`, `/v3/kv/deleterange`, `/v3/lease/*` and a
//! streaming `/v3/watch`, with keys and values in base64 (etcd's
//! `Documentation/dev-guide/api_grpc_gateway.md`). The hyper client the
//! directory already has is enough: no protobuf, no `protoc`, no gRPC stack
//! (docs/high-availability.md#a-shared-store-on-etcd says why).
//!
//! The store's trait is synchronous (it runs on blocking threads), so calls
//! go to a small runtime of the gateway's own and are waited for; a call tries
//! each endpoint in turn, starting with the one that answered last, and moves
//! on when one does not answer or answers "unavailable" (a member without a
//! leader). Every call the store makes is safe to send twice: puts of fixed
//! values, and transactions whose compare fails the second time (the store
//! then reads what the first one wrote).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::store::StoreError;

/// How long one request to one member may take before the next is tried.
const PER_TRY: Duration = Duration::from_secs(3);
/// How long a call keeps trying the members (an election takes about a second).
const PER_CALL: Duration = Duration::from_secs(12);

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Result<Vec<u8>, StoreError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| StoreError::Io(format!("etcd sent bad base64: {e}")))
}

/// The first key after every key that starts with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A stored key-value pair, decoded.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// etcd's int64s come as JSON strings; zero ones are left out.
pub fn int(v: &Value, field: &str) -> i64 {
    match v.get(field) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key-value pairs of a range response.
pub fn kvs(resp: &Value) -> Result<Vec<Kv>, StoreError> {
    let Some(list) = resp.get("kvs").and_then(Value::as_array) else {
        return Ok(vec![]);
    };
    list.iter()
        .map(|kv| {
            Ok(Kv {
                key: unb64(kv.get("key").and_then(Value::as_str).unwrap_or(""))?,
                value: unb64(kv.get("value").and_then(Value::as_str).unwrap_or(""))?,
                mod_revision: int(kv, "mod_revision"),
            })
        })
        .collect()
}

struct Inner {
    endpoints: Vec<String>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A client of one etcd cluster through its members' gateways.
pub struct Gateway {
    inner: Arc<Inner>,
    /// `None` only once dropped.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Not a blocking shutdown: the store may be dropped inside the server's runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Gateway {
    /// A client of the members at `endpoints` (`HOST:PORT`). Nothing is sent yet.
    pub fn new(endpoints: Vec<String>) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-gateway")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("cannot start the etcd client: {e}")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Gateway {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                http,
            }),
            rt: Some(rt),
        })
    }

    /// POSTs `body` to `path` and returns the JSON answer, trying each member
    /// in turn until one answers or `PER_CALL` is over.
    pub fn call(&self, path: &'static str, body: Value) -> Result<Value, StoreError> {
        let inner = self.inner.clone();
        self.block(async move { inner.call(path, body).await })
    }

    /// Runs `fut` on the gateway's runtime and waits for it (from any thread,
    /// inside another runtime or not).
    pub fn block<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv() {
            Ok(t) => t,
            // The runtime is only dropped with the gateway, which `&self` holds.
            Err(_) => unreachable!("the etcd client's runtime stopped while in use"),
        }
    }

    /// Spawns `fut` on the gateway's runtime.
    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime().spawn(fut);
    }

    fn runtime(&self) -> &tokio::runtime::Handle {
        match &self.rt {
            Some(rt) => rt.handle(),
            None => unreachable!("the etcd client's runtime is only taken when it is dropped"),
        }
    }

    /// A handle for tasks on the gateway's runtime.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle(self.inner.clone())
    }
}

/// The client, for tasks that run on its runtime (the watch, the lease's keepalive).
#[derive(Clone)]
pub struct GatewayHandle(Arc<Inner>);

impl GatewayHandle {
    /// Opens a streaming call (a watch, a keepalive) on the first member that
    /// takes it: the response body, read as it comes.
    pub async fn stream(
        &self,
        path: &'static str,
        body: Value,
    ) -> Result<hyper::body::Incoming, StoreError> {
        let inner = &self.0;
        let n = inner.endpoints.len();
        let start = inner.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let at = (start + i) % n;
            let req = inner.request(at, path, &body)?;
            match tokio::time::timeout(PER_TRY, inner.http.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    inner.current.store(at, Ordering::Relaxed);
                    return Ok(resp.into_body());
                }
                Ok(Ok(resp)) => last = format!("{}: HTTP {}", inner.endpoints[at], resp.status()),
                Ok(Err(e)) => last = format!("{}: {e}", inner.endpoints[at]),
                Err(_) => last = format!("{}: no answer in {PER_TRY:?}", inner.endpoints[at]),
            }
        }
        Err(StoreError::Io(format!(
            "no etcd member took {path}: {last}"
        )))
    }
}

/// Whether a failed answer may succeed on another member (or later).
fn retryable(status: hyper::StatusCode, body: &[u8]) -> bool {
    if status.is_server_error() || status == hyper::StatusCode::TOO_MANY_REQUESTS {
        return true;
    }
    let text = String::from_utf8_lossy(body);
    [
        "leader changed",
        "no leader",
        "timed out",
        "unavailable",
        "too many requests",
    ]
    .iter()
    .any(|s| text.contains(s))
}

impl Inner {
    fn request(
        &self,
        at: usize,
        path: &str,
        body: &Value,
    ) -> Result<hyper::Request<Full<Bytes>>, StoreError> {
        let bytes = serde_json::to_vec(body).map_err(|e| StoreError::Io(e.to_string()))?;
        hyper::Request::post(format!("http://{}{path}", self.endpoints[at]))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| StoreError::Io(format!("bad etcd endpoint {}: {e}", self.endpoints[at])))
    }

    async fn call(&self, path: &'static str, body: Value) -> Result<Value, StoreError> {
        let n = self.endpoints.len();
        let deadline = Instant::now() + PER_CALL;
        let mut last = String::new();
        let mut pause = Duration::from_millis(20);
        loop {
            let start = self.current.load(Ordering::Relaxed);
            for i in 0..n {
                let at = (start + i) % n;
                let req = self.request(at, path, &body)?;
                let answer = tokio::time::timeout(PER_TRY, async {
                    let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    Ok::<_, String>((status, body))
                })
                .await;
                match answer {
                    Ok(Ok((status, bytes))) if status.is_success() => {
                        self.current.store(at, Ordering::Relaxed);
                        return serde_json::from_slice(&bytes).map_err(|e| {
                            StoreError::Io(format!("etcd answered {path} with bad JSON: {e}"))
                        });
                    }
                    Ok(Ok((status, bytes))) if !retryable(status, &bytes) => {
                        return Err(StoreError::Io(format!(
                            "etcd refused {path} ({status}): {}",
                            String::from_utf8_lossy(&bytes)
                        )));
                    }
                    Ok(Ok((status, bytes))) => {
                        last = format!(
                            "{}: {status} {}",
                            self.endpoints[at],
                            String::from_utf8_lossy(&bytes)
                        )
                    }
                    Ok(Err(e)) => last = format!("{}: {e}", self.endpoints[at]),
                    Err(_) => last = format!("{}: no answer in {PER_TRY:?}", self.endpoints[at]),
                }
            }
            if Instant::now() + pause > deadline {
                return Err(StoreError::Io(format!(
                    "no etcd member answered {path} (tried {}): {last}; is a quorum of the cluster up?",
                    self.endpoints.join(",")
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// A `request_put` of a transaction.
pub fn put(key: &[u8], value: &[u8]) -> Value {
    json!({"request_put": {"key": b64(key), "value": b64(value)}})
}

/// A `request_delete_range` of every key in `[from, to)`, or of `from` alone.
pub fn delete(from: &[u8], to: Option<&[u8]>) -> Value {
    match to {
        Some(to) => json!({"request_delete_range": {"key": b64(from), "range_end": b64(to)}}),
        None => json!({"request_delete_range": {"key": b64(from)}}),
    }
}

/// A `request_range` of one key.
pub fn get(key: &[u8]) -> Value {
    json!({"request_range": {"key": b64(key)}})
}
