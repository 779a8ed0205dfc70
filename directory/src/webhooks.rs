//! Webhooks: every audit event is POSTed, as JSON, to each `serve --webhook URL`.
//!
//! Each webhook has its own task and its own place in the audit log (a cursor
//! in the store), so a slow or dead receiver holds up nobody else and never
//! the DNS answers. Events go out one at a time, in order; a delivery that
//! fails (no connection, timeout, any status but 2xx) is retried with backoff
//! (1 s doubling to 60 s) until it succeeds, and the cursor moves only after a
//! 2xx. The cursor is stored after each delivery, so a restart resumes where
//! the last run stopped: a receiver sees each event once, unless the directory
//! dies between the receiver's 2xx and the cursor's write, or the receiver
//! answers after the timeout; then that one event comes again with the same
//! id (`Switchboard-Event-Id`), for the receiver to dedupe.
//!
//! A webhook the store has no cursor for starts at the log's end: it gets what
//! happens from now on, not the history.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::events::Event;
use crate::state::Directory;

/// The longest one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A `serve --webhook URL` the directory cannot deliver to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    #[error("webhook {url:?} is not a URL: {reason}")]
    NotAUrl { url: String, reason: String },
    #[error("webhook {0:?}: https is not supported; use http:// to a local relay")]
    Https(String),
    #[error("webhook {0:?} must start with http://")]
    NotHttp(String),
    #[error("webhook {0:?} has no host")]
    NoHost(String),
}

/// Why one delivery failed; it is tried again.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
}

/// Why the audit log or a webhook's place in it could not be read or written.
#[derive(Debug, thiserror::Error)]
enum LogError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The blocking task that did the store work panicked or was cancelled.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A receiver of events.
#[derive(Debug, Clone)]
pub struct Webhook {
    uri: http::Uri,
    host: String,
    port: u16,
}

impl Webhook {
    /// Parses `http://HOST[:PORT]/PATH`. (Plain HTTP only: point it at a local
    /// relay for anything that needs TLS.)
    pub fn parse(url: &str) -> Result<Self, WebhookUrlError> {
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| WebhookUrlError::NotAUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(WebhookUrlError::Https(url.to_string())),
            _ => return Err(WebhookUrlError::NotHttp(url.to_string())),
        }
        let host = uri
            .host()
            .ok_or_else(|| WebhookUrlError::NoHost(url.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Webhook { uri, host, port })
    }

    /// The name of its place in the audit log.
    fn cursor_name(&self) -> String {
        format!("webhook {}", self.uri)
    }

    /// POSTs one event; Ok when the receiver answered 2xx.
    async fn post(&self, event: &Event) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(event)?;
        let attempt = async {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(DeliveryError::Connect)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let authority = self
                .uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or(&self.host);
            let req = http::Request::post(path)
                .header(http::header::HOST, authority)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "switchboard-directory webhook")
                .header("switchboard-event-id", event.id.to_string())
                .header(
                    "switchboard-event",
                    format!("{}.{}", event.kind, event.action),
                )
                .body(Full::new(Bytes::from(body)))?;
            let resp = sender.send_request(req).await?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(DeliveryError::Status(resp.status()))
            }
        };
        tokio::time::timeout(TIMEOUT, attempt)
            .await
            .unwrap_or(Err(DeliveryError::Timeout))
    }
}

/// Delivers every event to `hook` until `stop` turns true.
pub async fn deliver(
    dir: Arc<Directory>,
    hook: Webhook,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let name = hook.cursor_name();
    let mut events = dir.subscribe_events();
    let mut cursor = match blocking(&dir, {
        let name = name.clone();
        move |d| match d.cursor(&name)? {
            Some(c) => Ok(c),
            None => {
                let end = d.last_event_id();
                d.set_cursor(&name, end)?;
                Ok(end)
            }
        }
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(webhook = %hook.uri, error = %e, "cannot read the webhook's place in the audit log; not delivering");
            return;
        }
    };
    tracing::info!(webhook = %hook.uri, after = cursor, "delivering events");
    let duty = format!("webhook {name}");
    let mut leading = true;
    loop {
        // With a shared store one server delivers; another takes over where
        // the store's cursor says when it stops.
        let d = dir.clone();
        let duty2 = duty.clone();
        if !tokio::task::spawn_blocking(move || d.lead(&duty2))
            .await
            .unwrap_or(false)
        {
            leading = false;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.changed() => return,
            }
        }
        if !leading {
            leading = true;
            let name = name.clone();
            match blocking(&dir, move |d| d.cursor(&name)).await {
                Ok(Some(c)) => cursor = c,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(webhook = %hook.uri, error = %e, "cannot read the webhook's place in the audit log");
                    leading = false;
                    continue;
                }
            }
        }
        events.borrow_and_update();
        let batch = match blocking(&dir, move |d| d.events_after(cursor, 100)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(webhook = %hook.uri, error = %e, "cannot read the audit log");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = events.changed() => continue,
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                _ = stop.changed() => return,
            }
        }
        for event in batch {
            if event.id > cursor + 1 {
                tracing::warn!(webhook = %hook.uri, from = cursor + 1, to = event.id - 1,
                    "events left the audit log before they were delivered");
            }
            let mut backoff = Duration::from_secs(1);
            let mut failures = 0u32;
            loop {
                match hook.post(&event).await {
                    Ok(()) => break,
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(webhook = %hook.uri, id = event.id, attempts = failures,
                                retry_in_ms = backoff.as_millis() as u64, error = %e, "webhook delivery failed");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            if failures > 0 {
                tracing::info!(webhook = %hook.uri, id = event.id, attempts = failures + 1, "webhook delivered after retries");
            }
            cursor = event.id;
            let name = name.clone();
            if let Err(e) = blocking(&dir, move |d| d.set_cursor(&name, cursor)).await {
                tracing::warn!(webhook = %hook.uri, error = %e, "cannot store the webhook's place; a restart may send event {cursor} again");
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

/// Runs store work off the reactor.
async fn blocking<T: Send + 'static>(
    dir: &Arc<Directory>,
    f: impl FnOnce(&Directory) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, LogError> {
    let dir = dir.clone();
    Ok(tokio::task::spawn_blocking(move || f(&dir)).await??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_taken() {
        let w = Webhook::parse("http://127.0.0.1:9000/hook?x=1").expect("http");
        assert_eq!((w.host.as_str(), w.port), ("127.0.0.1", 9000));
        assert_eq!(
            Webhook::parse("http://[::1]/h").expect("v6").host.as_str(),
            "::1"
        );
        assert!(Webhook::parse("https://example.com/")
            .unwrap_err()
            .to_string()
            .contains("https is not supported"));
        assert!(Webhook::parse("ftp://x/").is_err());
        assert!(Webhook::parse("not a url").is_err());
    }
}
