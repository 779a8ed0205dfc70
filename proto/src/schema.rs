//! The names of Switchboard's DNS schema, in one place.
//!
//! Both the directory (which publishes these names) and the sidecar (which looks
//! them up) import these constants, so a rename happens once. See docs/dns-schema.md.

/// `HOST.node.Z`: a host's addresses and its TXT attributes.
pub const NODE: &str = "node";
/// `SVC.service.Z`: the derived, filtered answer for a service.
pub const SERVICE: &str = "service";
/// `_SVC._tcp.Z`: RFC 2782 / DNS-SD service type.
pub const TCP: &str = "_tcp";
/// `REPO.repo.Z`: a repository's TXT attributes.
pub const REPO: &str = "repo";
/// `DB.db.Z`: a database's TXT attributes; `write.DB.db.Z`, `read.DB.db.Z` its SRV/A answers.
pub const DB: &str = "db";
/// `FPR.key.Z`: fingerprint lookups.
pub const KEY: &str = "key";
/// `NAME._admin.Z`: admin keys.
pub const ADMIN: &str = "_admin";
/// `write.REPO.repo.Z`: the repository's master.
pub const WRITE: &str = "write";
/// `read.REPO.repo.Z`: hosts a reader may use.
pub const READ: &str = "read";
/// `_services._dns-sd._udp.Z`: DNS-SD service type enumeration (RFC 6763 §9).
pub const DNS_SD_SERVICES: [&str; 3] = ["_services", "_dns-sd", "_udp"];
/// The service whose bindings are the sidecars' cluster listeners.
pub const SWITCHBOARD_SERVICE: &str = "switchboard";

/// Role filters under `ROLE.SVC.service.Z`.
pub const ROLE_FILTERS: [&str; 4] = ["master", "replica", "readonly", "readwrite"];

/// Prefix of a key in TXT attributes: `key=ed25519:BASE64`.
pub const KEY_PREFIX: &str = "ed25519:";

/// TXT attribute keys (RFC 6763 §6: one `key=value` per string, keys lowercase).
pub mod txt {
    pub const ROLES: &str = "roles";
    pub const AVAILABLE: &str = "available";
    pub const KEY: &str = "key";
    pub const HEALTH: &str = "health";
    pub const ROLE: &str = "role";
    pub const READONLY: &str = "readonly";
    pub const WEIGHT: &str = "weight";
    pub const PRIORITY: &str = "priority";
    pub const MASTER: &str = "master";
    pub const REPLICAS: &str = "replicas";
    pub const MAX_LAG: &str = "max_lag";
    /// A database's `max_lag_s=N` (seconds).
    pub const MAX_LAG_S: &str = "max_lag_s";
    /// A database's `engine=mariadb`.
    pub const ENGINE: &str = "engine";
    /// A database's `port=N`.
    pub const PORT: &str = "port";
    /// A frozen repository's or database's `frozen=1` (with `frozen_message=TEXT`).
    pub const FROZEN: &str = "frozen";
    pub const FROZEN_MESSAGE: &str = "frozen_message";
    pub const VERSION: &str = "version";
    /// `version.HOST=N`: one host's version of a repository.
    pub const VERSION_OF: &str = "version.";
    pub const HOST: &str = "host";
    pub const LOST: &str = "lost";
    /// `auto_failover=1`: the directory promotes an up-to-date replica when the master is down.
    pub const AUTO_FAILOVER: &str = "auto_failover";
    /// A binding's health check: `tcp` or `http:STATUS:PATH`.
    pub const CHECK: &str = "check";
    pub const CHECK_INTERVAL: &str = "check_interval";
    pub const CHECK_TIMEOUT_MS: &str = "check_timeout_ms";
    pub const CHECK_FAILURES: &str = "check_failures";
    pub const CHECK_RECOVERIES: &str = "check_recoveries";
}

/// Default TTL of service, repo and read/write names.
pub const DEFAULT_SERVICE_TTL: u32 = 5;
/// Default TTL of node and key names.
pub const DEFAULT_NODE_TTL: u32 = 60;
