//! Where the directory's admin API is, for the change feed, heartbeats, version
//! reports and repository calls, and which of its servers answer
//! (docs/sidecar.md, "Several directory servers").
//!
//! The endpoints are those `--directory-api` names, exactly; else those
//! `directory.service.Z SRV` lists (each directory server is a host of the zone
//! with a `directory` binding on its admin port: docs/operating.md), asked again
//! on every directory change and every `REFRESH`; else, when the zone lists
//! none, `http://IP:8053` for each `--directory`, the default before there was
//! a list.
//!
//! Each sidecar prefers one endpoint (picked by its process id, so that
//! sidecars spread over the servers; the write hook takes the first) and goes
//! on in list order, those not known to be down first. One that cannot be
//! reached (no connection, no answer in time) is marked down for `RETRY` and
//! the same call goes on to the next at once, so a call fails only when no
//! endpoint answers. An answer, a refusal included, is the answer: only
//! a call that reached no server is sent to another.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_proto::api::{ApiError, Client};
use switchboard_proto::schema;

use crate::directory::answers::DirectoryClient;

/// A server that could not be reached is tried first again after this.
const RETRY: Duration = Duration::from_secs(5);
/// How often the list from `directory.service.Z` is asked for when nothing changes.
pub const REFRESH: Duration = Duration::from_secs(30);
/// The admin port assumed when the zone lists no `directory` binding.
const DEFAULT_PORT: u16 = 8053;
/// The service each directory server's admin API is a binding of.
pub const SERVICE: &str = "directory";

/// One admin API endpoint and whether it answers.
pub struct Endpoint {
    pub url: String,
    pub client: Arc<Client>,
    down_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn up(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| now >= t)
    }
}

/// The admin API endpoints of the directory.
pub struct Apis {
    /// `--directory-api` was given: the list never changes.
    given: bool,
    /// Found through `directory.service.Z`; `None` for a fixed list.
    dir: Option<Arc<DirectoryClient>>,
    /// Used when the zone lists no directory server.
    fallback: Vec<String>,
    key: PathBuf,
    zone: String,
    endpoints: Mutex<Vec<Arc<Endpoint>>>,
    /// Which endpoint this process prefers (modulo their number).
    first: usize,
}

/// `http://ADDR:PORT`, with IPv6 in brackets.
fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

impl Apis {
    /// The endpoints `--directory-api` names (`given`), or, without any, those
    /// `directory.service.Z` lists, found through `dir` by `refresh`.
    pub fn new(
        given: &[String],
        dir: Arc<DirectoryClient>,
        key: &Path,
        zone: &str,
    ) -> Result<Self, ApiError> {
        let fallback = dir
            .servers()
            .map(|s| url_of(SocketAddr::new(s.ip(), DEFAULT_PORT)))
            .fold(Vec::new(), |mut v, u| {
                if !v.contains(&u) {
                    v.push(u);
                }
                v
            });
        let apis = Apis {
            given: !given.is_empty(),
            dir: Some(dir),
            fallback,
            key: key.to_path_buf(),
            zone: zone.to_string(),
            endpoints: Mutex::default(),
            first: std::process::id() as usize,
        };
        let urls = if given.is_empty() {
            apis.fallback.clone()
        } else {
            given.to_vec()
        };
        apis.set(&urls)?;
        Ok(apis)
    }

    /// Exactly the endpoints `urls` (the write hook's, from its environment).
    pub fn fixed(urls: &[String], key: &Path, zone: &str) -> Result<Self, ApiError> {
        if urls.is_empty() {
            return Err(ApiError::new("no directory admin API to call"));
        }
        let apis = Apis {
            given: true,
            dir: None,
            fallback: vec![],
            key: key.to_path_buf(),
            zone: zone.to_string(),
            endpoints: Mutex::default(),
            first: 0,
        };
        apis.set(urls)?;
        Ok(apis)
    }

    /// Makes `urls` the endpoints, keeping what is known of those already there.
    fn set(&self, urls: &[String]) -> Result<bool, ApiError> {
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if eps.iter().map(|e| &e.url).eq(urls.iter()) {
            return Ok(false);
        }
        let mut next = Vec::with_capacity(urls.len());
        for u in urls {
            let ep = match eps.iter().find(|e| &e.url == u) {
                Some(e) => e.clone(),
                None => Arc::new(Endpoint {
                    url: u.clone(),
                    client: Arc::new(Client::new(u, Some(&self.key), Some(self.zone.clone()))?),
                    down_until: Mutex::new(None),
                }),
            };
            next.push(ep);
        }
        *eps = next;
        Ok(true)
    }

    /// Asks `directory.service.Z` for the endpoints again (nothing to do when
    /// `--directory-api` was given). A directory that does not answer leaves
    /// the list as it is; a zone that lists none gives the default.
    pub async fn refresh(&self) {
        let Some(dir) = self.dir.as_ref().filter(|_| !self.given) else {
            return;
        };
        let found = match dir.srv(&format!("{SERVICE}.{}", schema::SERVICE)).await {
            Ok(Some(peers)) => peers
                .iter()
                .filter(|p| p.addr.port() != 0)
                .map(|p| url_of(p.addr))
                .collect::<Vec<_>>(),
            Ok(None) => vec![],
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the directory's servers now; keeping the list");
                return;
            }
        };
        let urls = if found.is_empty() {
            self.fallback.clone()
        } else {
            // In one order whichever server answered, so the preferred one stays.
            let mut found = found;
            found.sort();
            found.dedup();
            found
        };
        match self.set(&urls) {
            Ok(true) => tracing::info!(api = %urls.join(" "), "directory admin API endpoints"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the zone lists a directory server this sidecar cannot call")
            }
        }
    }

    /// Refreshes on every directory change and every `REFRESH`, forever.
    pub async fn keep_fresh(self: Arc<Self>) {
        if self.given {
            return;
        }
        let Some(mut changed) = self.dir.as_ref().map(|d| d.subscribe()) else {
            return;
        };
        loop {
            self.refresh().await;
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep(REFRESH) => {}
            }
        }
    }

    /// Whether there is more than one endpoint now.
    pub fn several(&self) -> bool {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            > 1
    }

    /// The endpoint URLs now, in order.
    pub fn urls(&self) -> Vec<String> {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| e.url.clone())
            .collect()
    }

    /// Every endpoint, in list order from the one this process prefers: those
    /// not known to be down first, then the others.
    fn in_turn(&self) -> Vec<Arc<Endpoint>> {
        let eps = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let n = eps.len().max(1);
        let start = self.first % n;
        let now = Instant::now();
        let (mut up, down): (Vec<_>, Vec<_>) = (0..eps.len())
            .map(|i| eps[(start + i) % n].clone())
            .partition(|e| e.up(now));
        up.extend(down);
        up
    }

    /// The endpoint whose change feed to follow: `current` while it is listed
    /// and not known to be down, else the next one up (else the next one).
    pub fn feed(&self, current: Option<&str>) -> Option<Arc<Endpoint>> {
        let now = Instant::now();
        if let Some(cur) = current {
            let eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = eps.iter().find(|e| e.url == cur && e.up(now)) {
                return Some(e.clone());
            }
        }
        self.in_turn().into_iter().next()
    }

    /// Whether `ep` is not known to be down.
    pub fn is_up(&self, ep: &Endpoint) -> bool {
        ep.up(Instant::now())
    }

    /// Notes that `ep` could not be reached.
    pub fn mark_down(&self, ep: &Endpoint, reason: &str) {
        let mut d = ep.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            tracing::warn!(api = %ep.url, reason, "directory admin API not reachable; using the others");
        }
        *d = Some(Instant::now() + RETRY);
    }

    /// Notes that `ep` answered.
    pub fn mark_up(&self, ep: &Endpoint) {
        let mut d = ep.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if d.take().is_some() {
            tracing::info!(api = %ep.url, "directory admin API reachable again");
        }
    }

    /// Makes one call, `f` with an endpoint's client, on the first endpoint
    /// that can be reached (`in_turn`); its answer, or the last failure.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ApiError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut last = ApiError::new("no directory admin API to call");
        for ep in self.in_turn() {
            match f(ep.client.clone()).await {
                Err(e) if e.status.is_none() => {
                    self.mark_down(&ep, &e.msg);
                    last = e;
                }
                answer => {
                    self.mark_up(&ep);
                    return answer;
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PathBuf {
        let p = std::env::temp_dir().join(format!("sb-apis-test-{}.pem", std::process::id()));
        if !p.exists() {
            switchboard_proto::keys::write(&p, &switchboard_proto::keys::generate()).unwrap();
        }
        p
    }

    fn order(a: &Apis) -> Vec<String> {
        a.in_turn().iter().map(|e| e.url.clone()).collect()
    }

    #[test]
    fn endpoints_down_go_last_and_the_feed_stays_while_it_can() {
        let (one, two) = (
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".to_string(),
        );
        let k = key();
        let a = Apis::fixed(&[one.clone(), two.clone()], &k, "z.").unwrap();
        assert_eq!(order(&a), [one.clone(), two.clone()]);
        assert!(a.several());
        let first = a.in_turn()[0].clone();
        a.mark_down(&first, "test");
        assert_eq!(order(&a), [two.clone(), one.clone()]);
        assert_eq!(a.feed(Some(&one)).unwrap().url, two);
        assert_eq!(a.feed(Some(&two)).unwrap().url, two);
        // A new list keeps what is known of the endpoints it keeps.
        let three = "http://[::1]:3".to_string();
        assert!(a.set(&[one.clone(), three.clone()]).unwrap());
        assert!(!a.set(&[one.clone(), three.clone()]).unwrap());
        assert_eq!(order(&a), [three.clone(), one.clone()]);
        a.mark_up(&first);
        assert_eq!(order(&a), [one, three]);
        assert!(Apis::fixed(&[], &k, "z.").is_err());
        assert!(Apis::fixed(&["ftp://x".into()], &k, "z.").is_err());
        let _ = std::fs::remove_file(k);
    }
}
