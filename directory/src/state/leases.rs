//! Write leases: one write to a repository at a time, cluster-wide, held by
//! its master for a short while. In memory: a restart ends every lease, and
//! a writer takes a new one. With a shared store (etcd) they live in the
//! store instead, so that every directory server sees the same lease.

use super::{ApplyError, Directory};

/// The right to write one repository for a short while, held by its master.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: String,
    pub token: String,
    pub expires: std::time::Instant,
}

/// The longest a write lease may be asked for.
pub const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

impl Directory {
    /// Grants `host` the write lease of `repo` for `ttl`, if `host` is the master,
    /// in service, and nobody holds an unexpired lease. Returns the lease token.
    pub fn acquire_lease(
        &self,
        origin: &str,
        repo: &str,
        host: &str,
        ttl: std::time::Duration,
    ) -> Result<String, ApplyError> {
        let master_ok = self
            .read(origin, |z| {
                let r = z.repos.get(repo).ok_or_else(|| {
                    ApplyError::NotFound(format!("no repository {repo} in {origin}"))
                })?;
                if r.master != host {
                    return Err(ApplyError::Conflict(format!(
                        "{host} is not the master of {repo} ({} is): only the master writes",
                        r.master
                    )));
                }
                if let Some(m) = &r.frozen {
                    return Err(ApplyError::Conflict(format!(
                        "{repo} is frozen for maintenance: {m} (writes are refused until an admin thaws it; reads still work)"
                    )));
                }
                if r.readonly {
                    return Err(ApplyError::Conflict(format!(
                        "{repo} is read-only (set in its zone file); reads still work"
                    )));
                }
                match z.hosts.get(host) {
                    Some(h) if h.in_service() => Ok(()),
                    _ => Err(ApplyError::Conflict(format!(
                        "{host} is not in service: writes to {repo} wait for it or for a promotion"
                    ))),
                }
            })
            .ok_or_else(|| ApplyError::NotFound(format!("no zone {origin}")))?;
        master_ok?;
        let token = data_encoding::HEXLOWER.encode(&rand::random::<[u8; 16]>());
        if self.store.shares_leases() {
            let ttl = ttl.min(MAX_LEASE);
            let lease = crate::store::StoredLease {
                holder: host.to_string(),
                token: token.clone(),
                expires_ms: crate::time::unix_ms() + ttl.as_millis() as u64,
            };
            return match self.store.take_lease(origin, repo, &lease)? {
                Ok(()) => Ok(token),
                Err(held) => Err(ApplyError::Conflict(format!(
                    "the write lease of {repo} is held by {} for {} ms more",
                    held.holder,
                    held.expires_ms.saturating_sub(crate::time::unix_ms())
                ))),
            };
        }
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let key = (origin.to_string(), repo.to_string());
        if let Some(l) = leases.get(&key).filter(|l| l.expires > now) {
            return Err(ApplyError::Conflict(format!(
                "the write lease of {repo} is held by {} for {} ms more",
                l.holder,
                (l.expires - now).as_millis()
            )));
        }
        leases.insert(
            key,
            Lease {
                holder: host.to_string(),
                token: token.clone(),
                expires: now + ttl.min(MAX_LEASE),
            },
        );
        Ok(token)
    }

    /// Gives a lease back (a no-op if it already expired or was taken over).
    pub fn release_lease(&self, origin: &str, repo: &str, token: &str) {
        if self.store.shares_leases() {
            if let Err(e) = self.store.release_lease(origin, repo, token) {
                tracing::warn!(zone = origin, repo, error = %e, "cannot end a write lease in the store; it ends when it expires");
            }
            return;
        }
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let key = (origin.to_string(), repo.to_string());
        if leases.get(&key).is_some_and(|l| l.token == token) {
            leases.remove(&key);
        }
    }

    /// Who holds the lease of `repo` now, if anyone.
    pub fn lease_holder(&self, origin: &str, repo: &str) -> Option<String> {
        if self.store.shares_leases() {
            return match self.store.lease(origin, repo) {
                Ok(held) => held
                    .filter(|l| l.expires_ms > crate::time::unix_ms())
                    .map(|l| l.holder),
                // Unknown: as good as held, so nothing writes around it.
                Err(e) => Some(format!("an unknown host (the store cannot be read: {e})")),
            };
        }
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(&(origin.to_string(), repo.to_string()))
            .filter(|l| l.expires > std::time::Instant::now())
            .map(|l| l.holder.clone())
    }

    pub(super) fn lease_valid(
        &self,
        origin: &str,
        repo: &str,
        host: &str,
        token: Option<&str>,
    ) -> bool {
        if self.store.shares_leases() {
            return self
                .store
                .lease(origin, repo)
                .ok()
                .flatten()
                .is_some_and(|l| {
                    Some(l.token.as_str()) == token
                        && l.holder == host
                        && l.expires_ms > crate::time::unix_ms()
                });
        }
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(&(origin.to_string(), repo.to_string()))
            .is_some_and(|l| {
                Some(l.token.as_str()) == token
                    && l.holder == host
                    && l.expires > std::time::Instant::now()
            })
    }
}
