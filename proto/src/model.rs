//! The host-level model: hosts, bindings, repositories, databases and admin keys.
//!
//! These types are what the directory's store keeps, what the admin API speaks
//! (JSON) and what the sidecar reads back. Every value that comes from outside
//! passes through the `validate_*` functions here before it reaches the store.
//! (The zone that holds them is the directory's: `switchboard_directory::model`.)

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::schema;

/// A model error: what was wrong with a value, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// An ed25519 public key, 32 raw bytes; base64 (standard, padded) in JSON and TXT.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key as base64 of its 32 raw bytes.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The key fingerprint: lowercase unpadded base32 of SHA-256 of the raw key (52 chars).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0);
        data_encoding::BASE32_NOPAD
            .encode(&digest)
            .to_ascii_lowercase()
    }

    /// The one gate every public key from outside passes (base64, `ed25519:`,
    /// OpenSSH, the store, zone files): the 32 bytes must be the canonical
    /// encoding of a curve point that is not of small order. A weak key (the
    /// identity, all-zero, any small-order point) verifies forged signatures
    /// over many messages; a non-canonical encoding names the same point as
    /// another key while its fingerprint differs.
    pub fn from_bytes(raw: [u8; 32]) -> Result<Self, Invalid> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| {
            Invalid("the key is not a valid ed25519 public key (not a curve point)".into())
        })?;
        if key.to_edwards().compress().to_bytes() != raw {
            return invalid(
                "the key is not a valid ed25519 public key (not the canonical encoding of its point)",
            );
        }
        if key.is_weak() {
            return invalid("the key is a weak ed25519 public key (a small-order point); make a new one with keygen");
        }
        Ok(PublicKey(raw))
    }

    /// The key for signature checks, or an error if the bytes are not a curve
    /// point or are a weak key (a key from [`PublicKey::from_bytes`] is neither).
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, Invalid> {
        match ed25519_dalek::VerifyingKey::from_bytes(&self.0) {
            Ok(key) if !key.is_weak() => Ok(key),
            _ => invalid("the key is not a valid ed25519 public key"),
        }
    }
}

impl FromStr for PublicKey {
    type Err = Invalid;
    /// Accepts `BASE64` or `ed25519:BASE64` of the raw 32-byte key, or an OpenSSH
    /// public key line (`ssh-ed25519 AAAA... comment`, as in a `.pub` file).
    fn from_str(s: &str) -> Result<Self, Invalid> {
        if s.trim_start().starts_with("ssh-") {
            let k = ssh_key::PublicKey::from_openssh(s.trim())
                .map_err(|e| Invalid(format!("not an OpenSSH public key: {e}")))?;
            let Some(ed) = k.key_data().ed25519() else {
                return invalid(format!(
                    "{} keys are not supported; use ed25519",
                    k.algorithm()
                ));
            };
            return PublicKey::from_bytes(ed.0);
        }
        let b64 = s
            .trim()
            .strip_prefix(schema::KEY_PREFIX)
            .unwrap_or(s.trim());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
            .map_err(|_| Invalid(format!("key {s:?} is not base64")))?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| {
            Invalid("an ed25519 public key is 32 bytes (44 characters of base64)".into())
        })?;
        PublicKey::from_bytes(raw)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", schema::KEY_PREFIX, self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Health from checks: `passing|warning|critical|unknown` (docs/dns-schema.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Passing,
    Warning,
    Critical,
    #[default]
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Unknown => "unknown",
        }
    }
}

impl FromStr for Health {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "passing" => Ok(Health::Passing),
            "warning" => Ok(Health::Warning),
            "critical" => Ok(Health::Critical),
            "unknown" => Ok(Health::Unknown),
            _ => invalid(format!(
                "health {s:?} is not one of passing, warning, critical, unknown"
            )),
        }
    }
}

/// A binding's role in a replicated service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Replica => "replica",
        }
    }
}

impl FromStr for Role {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "master" => Ok(Role::Master),
            "replica" => Ok(Role::Replica),
            _ => invalid(format!("role {s:?} is not master or replica")),
        }
    }
}

fn yes() -> bool {
    true
}

/// A machine of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    #[serde(default)]
    pub addrs: Vec<IpAddr>,
    #[serde(default)]
    pub key: Option<PublicKey>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The admin's in-service switch.
    #[serde(default = "yes")]
    pub available: bool,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub props: Props,
}

impl Host {
    /// Whether the host may appear in service, write and read answers.
    pub fn in_service(&self) -> bool {
        self.available && self.health != Health::Critical
    }
}

/// Free-form `key=value` attributes of a host or binding, sorted by key.
///
/// A sorted vector rather than a `BTreeMap`: hosts usually carry one or two, and
/// a map's first node alone costs half a kilobyte per host at 100k hosts. In
/// JSON it is an object, as a map would be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(Vec<(String, String)>);

impl Props {
    /// Sets `key` (replacing its old value), keeping the keys sorted.
    pub fn insert(&mut self, key: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Gives back spare capacity (see the directory's `Zone::shrink`).
    pub fn shrink(&mut self) {
        self.0.shrink_to_fit();
        for (k, v) in &mut self.0 {
            k.shrink_to_fit();
            v.shrink_to_fit();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Props {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut p = Props::default();
        for (k, v) in iter {
            p.insert(k, v);
        }
        p.0.shrink_to_fit();
        p
    }
}

impl Serialize for Props {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Props {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Ok(Props(map.into_iter().collect()))
    }
}

/// A host providing a service on a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub host: String,
    pub service: String,
    pub port: u16,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub weight: u16,
    /// Overrides the SRV priority derived from the role.
    #[serde(default)]
    pub priority: Option<u16>,
    #[serde(default = "yes")]
    pub available: bool,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub props: Props,
    /// The directory's check of this binding, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

/// How the directory checks a binding: what to probe, how often, and how many
/// results in a row move its health (so one lost probe does not flap DNS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub probe: Probe,
    /// Seconds between probes.
    #[serde(default = "Check::default_interval")]
    pub interval: u32,
    /// How long one probe may take, in milliseconds.
    #[serde(default = "Check::default_timeout_ms")]
    pub timeout_ms: u32,
    /// Failed probes in a row before the binding turns `critical`.
    #[serde(default = "Check::default_failures")]
    pub failures: u32,
    /// Passed probes in a row before a `critical` binding turns `passing`.
    #[serde(default = "Check::default_recoveries")]
    pub recoveries: u32,
}

/// What one probe does, against the binding's host address and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Probe {
    /// A TCP connection opens.
    Tcp,
    /// `GET path` answers with `status`.
    Http { path: String, status: u16 },
    /// The host's sidecar sent a signed heartbeat within the last interval
    /// (plus the timeout): the host is up and its sidecar routes.
    Heartbeat,
}

impl Check {
    fn default_interval() -> u32 {
        10
    }
    fn default_timeout_ms() -> u32 {
        2000
    }
    fn default_failures() -> u32 {
        3
    }
    fn default_recoveries() -> u32 {
        2
    }

    /// A check with the default timing.
    pub fn new(probe: Probe) -> Self {
        Check {
            probe,
            interval: Self::default_interval(),
            timeout_ms: Self::default_timeout_ms(),
            failures: Self::default_failures(),
            recoveries: Self::default_recoveries(),
        }
    }

    /// The `check=` value: `tcp`, `http:STATUS:PATH` or `heartbeat`.
    pub fn probe_text(&self) -> String {
        self.probe.to_txt()
    }

    /// The TXT attributes of this check, as `key=value` strings.
    pub fn txt(&self) -> Vec<String> {
        use schema::txt;
        vec![
            format!("{}={}", txt::CHECK, self.probe_text()),
            format!("{}={}", txt::CHECK_INTERVAL, self.interval),
            format!("{}={}", txt::CHECK_TIMEOUT_MS, self.timeout_ms),
            format!("{}={}", txt::CHECK_FAILURES, self.failures),
            format!("{}={}", txt::CHECK_RECOVERIES, self.recoveries),
        ]
    }

    /// Sets one `check*` attribute from TXT; `false` if `key` is not one.
    pub fn set(check: &mut Option<Check>, key: &str, value: &str) -> Result<bool, Invalid> {
        use schema::txt;
        let number = |v: &str| -> Result<u32, Invalid> {
            v.parse()
                .map_err(|_| Invalid(format!("{key}={v:?} is not a number")))
        };
        let known = [
            txt::CHECK,
            txt::CHECK_INTERVAL,
            txt::CHECK_TIMEOUT_MS,
            txt::CHECK_FAILURES,
            txt::CHECK_RECOVERIES,
        ];
        if !known.contains(&key) {
            return Ok(false);
        }
        let c = check.get_or_insert_with(|| Check::new(Probe::Tcp));
        match key {
            txt::CHECK => c.probe = value.parse()?,
            txt::CHECK_INTERVAL => c.interval = number(value)?,
            txt::CHECK_TIMEOUT_MS => c.timeout_ms = number(value)?,
            txt::CHECK_FAILURES => c.failures = number(value)?,
            txt::CHECK_RECOVERIES => c.recoveries = number(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Probe {
    /// The `check=` value: `tcp`, `http:STATUS:PATH` or `heartbeat`.
    pub fn to_txt(&self) -> String {
        match self {
            Probe::Tcp => "tcp".into(),
            Probe::Http { path, status } => format!("http:{status}:{path}"),
            Probe::Heartbeat => "heartbeat".into(),
        }
    }
}

impl FromStr for Probe {
    type Err = Invalid;
    /// `tcp`, `heartbeat`, or `http:STATUS:PATH` (`http` alone is `http:200:/`).
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "tcp" => return Ok(Probe::Tcp),
            "heartbeat" => return Ok(Probe::Heartbeat),
            "http" => {
                return Ok(Probe::Http {
                    path: "/".into(),
                    status: 200,
                })
            }
            _ => {}
        }
        let Some(rest) = s.strip_prefix("http:") else {
            return invalid(format!(
                "check {s:?} is not tcp, heartbeat or http:STATUS:PATH (e.g. http:200:/healthz)"
            ));
        };
        let (status, path) = rest.split_once(':').unwrap_or((rest, "/"));
        let status = status
            .parse()
            .map_err(|_| Invalid(format!("check {s:?}: {status:?} is not an HTTP status")))?;
        Ok(Probe::Http {
            path: path.to_string(),
            status,
        })
    }
}

fn validate_check(c: &Check) -> Result<(), Invalid> {
    if !(1..=3600).contains(&c.interval) {
        return invalid("check_interval must be 1 to 3600 seconds");
    }
    if !(50..=60_000).contains(&c.timeout_ms) {
        return invalid("check_timeout_ms must be 50 to 60000");
    }
    if !(1..=100).contains(&c.failures) || !(1..=100).contains(&c.recoveries) {
        return invalid("check_failures and check_recoveries must be 1 to 100");
    }
    if let Probe::Http { path, status } = &c.probe {
        if !(100..=599).contains(status) {
            return invalid(format!("check status {status} is not an HTTP status"));
        }
        let ok = path.starts_with('/')
            && path.len() <= 200
            && path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !ok {
            return invalid(format!(
                "check path {path:?} must start with / and hold no spaces, quotes or backslashes (200 characters at most)"
            ));
        }
    }
    Ok(())
}

impl Binding {
    /// SRV priority: explicit, else masters and role-less 0, replicas 10 (docs/dns-schema.md).
    pub fn srv_priority(&self) -> u16 {
        self.priority.unwrap_or(match self.role {
            Some(Role::Replica) => 10,
            _ => 0,
        })
    }
}

/// Versions that a forced promotion may have lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    pub old_master: String,
    pub new_master: String,
    /// First version that may be lost (the new master's version + 1).
    pub from: u64,
    /// Last version that may be lost (the old master's version).
    pub to: u64,
    /// Unix time of the promotion.
    pub at: u64,
}

impl Loss {
    /// `OLD>NEW:FROM-TO@AT`, the TXT form used by zone export.
    pub fn to_txt(&self) -> String {
        format!(
            "{}>{}:{}-{}@{}",
            self.old_master, self.new_master, self.from, self.to, self.at
        )
    }

    pub fn from_txt(s: &str) -> Result<Self, Invalid> {
        let err = || Invalid(format!("lost={s:?} is not OLD>NEW:FROM-TO@UNIXTIME"));
        let (old, rest) = s.split_once('>').ok_or_else(err)?;
        let (new, rest) = rest.split_once(':').ok_or_else(err)?;
        let (range, at) = rest.split_once('@').ok_or_else(err)?;
        let (from, to) = range.split_once('-').ok_or_else(err)?;
        Ok(Loss {
            old_master: old.to_string(),
            new_master: new.to_string(),
            from: from.parse().map_err(|_| err())?,
            to: to.parse().map_err(|_| err())?,
            at: at.parse().map_err(|_| err())?,
        })
    }
}

/// A replicated repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    pub name: String,
    pub master: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Writes applied, per host.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    #[serde(default)]
    pub max_lag: u64,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub lost: Vec<Loss>,
    /// Opt-in: when the master is out of service, the directory promotes a
    /// replica that has every version (never one that would lose any).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_failover: bool,
    /// Set by `repo freeze` (a maintenance lock): the admin's message; writes
    /// are refused with it, reads go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
}

impl Repo {
    /// Drops versions of 0: "no version" is written one way only, so two
    /// repositories in the same state compare equal (and round-trip).
    pub fn canonicalize(&mut self) {
        self.versions.retain(|_, v| *v != 0);
    }

    pub fn version_of(&self, host: &str) -> u64 {
        self.versions.get(host).copied().unwrap_or(0)
    }

    /// The master's version: what readers must be within `max_lag` of.
    pub fn master_version(&self) -> u64 {
        self.version_of(&self.master)
    }

    /// Master first, then replicas.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.master.as_str()).chain(self.replicas.iter().map(String::as_str))
    }

    pub fn has_host(&self, host: &str) -> bool {
        self.hosts().any(|h| h == host)
    }

    /// Whether `host` is close enough to the master to serve reads.
    /// A host *ahead* of the master (an old master after a forced promotion) has
    /// history the master lacks: it does not read until it is resynchronised.
    pub fn is_current(&self, host: &str) -> bool {
        let (v, m) = (self.version_of(host), self.master_version());
        v <= m && v.saturating_add(self.max_lag) >= m
    }
}

/// The default port of a database (MariaDB's).
pub const DEFAULT_DB_PORT: u16 = 3306;
/// The default `max_lag_s` of a database: a replica further behind leaves `read.`.
pub const DEFAULT_DB_MAX_LAG_S: u64 = 10;

fn default_db_port() -> u16 {
    DEFAULT_DB_PORT
}

fn default_db_max_lag_s() -> u64 {
    DEFAULT_DB_MAX_LAG_S
}

/// A database cluster (MariaDB with GTID replication; SPEC "Databases",
/// docs/dns-schema.md): who is master, who replicates, and the positions each
/// host's sidecar last reported. `read.` and `write.` answers derive from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    pub master: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    #[serde(default = "default_db_port")]
    pub port: u16,
    /// Seconds a replica may be behind and still serve reads.
    #[serde(default = "default_db_max_lag_s")]
    pub max_lag_s: u64,
    /// Set by `db freeze`: the admin's message; writes are refused with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
    /// Each host's last reported replication position (never exported: a
    /// report, not configuration).
    #[serde(default)]
    pub positions: BTreeMap<String, DbPosition>,
    /// What forced promotions may have lost.
    #[serde(default)]
    pub lost: Vec<DbLoss>,
}

/// A database host's replication position, as its sidecar read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbPosition {
    /// `@@gtid_binlog_pos` on a master, `@@gtid_slave_pos` on a replica:
    /// `DOMAIN-SERVER-SEQ[,...]`, possibly empty.
    pub gtid: String,
    /// `Seconds_Behind_Master`; `None` when the server does not say (not replicating).
    #[serde(default)]
    pub seconds_behind: Option<u64>,
    /// Both replication threads running.
    #[serde(default)]
    pub replicating: bool,
    /// The server's `read_only`.
    #[serde(default)]
    pub read_only: bool,
    /// Unix seconds at which the directory took in this position (a report
    /// that repeats it is not written again).
    #[serde(default)]
    pub at: u64,
}

/// What a forced `db promote` may have lost: the old master's last reported
/// position and the new master's, when it was promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbLoss {
    pub old_master: String,
    pub new_master: String,
    pub old_gtid: String,
    pub new_gtid: String,
    /// Unix time of the promotion.
    pub at: u64,
}

impl DbLoss {
    /// `OLD>NEW:OLDGTID>NEWGTID@AT` (GTID lists use `;` for `,`), the TXT form of zone export.
    pub fn to_txt(&self) -> String {
        format!(
            "{}>{}:{}>{}@{}",
            self.old_master,
            self.new_master,
            self.old_gtid.replace(',', ";"),
            self.new_gtid.replace(',', ";"),
            self.at
        )
    }

    pub fn from_txt(s: &str) -> Result<Self, Invalid> {
        let err = || {
            Invalid(format!(
                "lost={s:?} is not OLD>NEW:OLDGTID>NEWGTID@UNIXTIME"
            ))
        };
        let (old, rest) = s.split_once('>').ok_or_else(err)?;
        let (new, rest) = rest.split_once(':').ok_or_else(err)?;
        let (range, at) = rest.rsplit_once('@').ok_or_else(err)?;
        let (og, ng) = range.split_once('>').ok_or_else(err)?;
        let (og, ng) = (og.replace(';', ","), ng.replace(';', ","));
        parse_gtid(&og)?;
        parse_gtid(&ng)?;
        Ok(DbLoss {
            old_master: old.to_string(),
            new_master: new.to_string(),
            old_gtid: og,
            new_gtid: ng,
            at: at.parse().map_err(|_| err())?,
        })
    }
}

/// A MariaDB GTID position (`D-S-N,D-S-N`) as sequence numbers per replication
/// domain (the server id does not order anything).
pub fn parse_gtid(s: &str) -> Result<BTreeMap<u32, u64>, Invalid> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = part.split('-');
        let (Some(d), Some(sv), Some(n), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return invalid(format!(
                "GTID position {s:?} is not DOMAIN-SERVER-SEQUENCE[,...] (e.g. 0-1-42)"
            ));
        };
        let (Ok(d), Ok(_), Ok(n)) = (d.parse::<u32>(), sv.parse::<u32>(), n.parse::<u64>()) else {
            return invalid(format!(
                "GTID position {s:?} is not DOMAIN-SERVER-SEQUENCE[,...] (e.g. 0-1-42)"
            ));
        };
        if out.insert(d, n).is_some() {
            return invalid(format!("GTID position {s:?} names domain {d} twice"));
        }
    }
    Ok(out)
}

/// Whether position `have` lacks transactions of `want`: some domain of `want`
/// has a higher sequence number than `have` holds. Unparsable counts as behind.
pub fn gtid_behind(have: &str, want: &str) -> bool {
    let (Ok(h), Ok(w)) = (parse_gtid(have), parse_gtid(want)) else {
        return true;
    };
    w.iter().any(|(d, n)| h.get(d).copied().unwrap_or(0) < *n)
}

impl Database {
    /// Master first, then replicas.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.master.as_str()).chain(self.replicas.iter().map(String::as_str))
    }

    pub fn has_host(&self, host: &str) -> bool {
        self.hosts().any(|h| h == host)
    }

    /// The master's last reported GTID position ("" when it has not reported).
    pub fn master_gtid(&self) -> &str {
        self.positions
            .get(&self.master)
            .map_or("", |p| p.gtid.as_str())
    }

    /// Why replica `host` may not serve reads, by its last report: not
    /// reported, not replicating, more than `max_lag_s` behind, or missing
    /// what the master had reported more than `max_lag_s` before it.
    pub fn lag_of(&self, host: &str) -> Option<String> {
        let Some(p) = self.positions.get(host) else {
            return Some(format!("{host} has not reported its position"));
        };
        if !p.replicating {
            return Some(format!("{host} is not replicating"));
        }
        match p.seconds_behind {
            None => return Some(format!("{host} does not say how far behind it is")),
            Some(s) if s > self.max_lag_s => {
                return Some(format!(
                    "{host} is {s} s behind its master (max_lag_s {})",
                    self.max_lag_s
                ))
            }
            Some(_) => {}
        }
        if let Some(m) = self.positions.get(&self.master) {
            if p.at > m.at.saturating_add(self.max_lag_s) && gtid_behind(&p.gtid, &m.gtid) {
                return Some(format!(
                    "{host} at {} lacks the master's position {}, reported more than {} s before",
                    p.gtid, m.gtid, self.max_lag_s
                ));
            }
        }
        None
    }

    /// Whether the master's reported position is ahead of `host`'s.
    pub fn behind_master(&self, host: &str) -> bool {
        let have = self.positions.get(host).map_or("", |p| p.gtid.as_str());
        gtid_behind(have, self.master_gtid())
    }
}

/// A host's replication position of one database, as its sidecar reports it
/// in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbPositionReport {
    pub db: String,
    pub gtid: String,
    #[serde(default)]
    pub seconds_behind: Option<u64>,
    #[serde(default)]
    pub replicating: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// A key allowed to change the zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminKey {
    pub name: String,
    pub key: PublicKey,
}

/// A DNS label as the model uses it: 1–63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn validate_label(what: &str, s: &str) -> Result<(), Invalid> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "{what} {s:?} is not a DNS label: use 1-63 lowercase letters, digits and '-', not at either end"
        ))
    }
}

/// Names the schema itself uses below a zone, which a host, service or repository may not take.
const RESERVED: [&str; 4] = [schema::WRITE, schema::READ, "services", "dns-sd"];

/// The most a host's or binding's properties may add to its TXT record, so that
/// the record stays well inside a DNS message.
const MAX_PROPS_BYTES: usize = 2048;

/// One TXT string holds at most 255 bytes (RFC 1035 §3.3).
fn txt_string(what: &str, key: &str, value: &str) -> Result<(), Invalid> {
    if key.len() + 1 + value.len() > 255 {
        return invalid(format!(
            "{what}: {key}=... is longer than the 255 bytes a TXT string holds"
        ));
    }
    Ok(())
}

fn validate_props(props: &Props, reserved: &[&str]) -> Result<(), Invalid> {
    let total: usize = props.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if total > MAX_PROPS_BYTES {
        return invalid(format!(
            "properties take {total} bytes; at most {MAX_PROPS_BYTES} fit in a TXT record"
        ));
    }
    for (k, v) in props.iter() {
        let key_ok = !k.is_empty()
            && k.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if !key_ok {
            return invalid(format!(
                "property key {k:?} must be lowercase letters, digits, '-', '_' or '.' (RFC 6763 §6.4)"
            ));
        }
        if reserved.contains(&k.as_str()) {
            return invalid(format!(
                "property {k:?} is an attribute of its own; set it with its own field"
            ));
        }
        if k.len() + 1 + v.len() > 255 {
            return invalid(format!(
                "property {k}=... is longer than the 255 bytes a TXT string holds"
            ));
        }
        if v.chars().any(|c| c.is_control()) {
            return invalid(format!("property {k} has a control character in its value"));
        }
    }
    Ok(())
}

/// TXT keys a host's properties may not use.
pub const HOST_ATTRS: [&str; 4] = [
    schema::txt::ROLES,
    schema::txt::AVAILABLE,
    schema::txt::KEY,
    schema::txt::HEALTH,
];

/// TXT keys a binding's properties may not use.
pub const BINDING_ATTRS: [&str; 11] = [
    schema::txt::ROLE,
    schema::txt::READONLY,
    schema::txt::AVAILABLE,
    schema::txt::HEALTH,
    schema::txt::WEIGHT,
    schema::txt::PRIORITY,
    schema::txt::CHECK,
    schema::txt::CHECK_INTERVAL,
    schema::txt::CHECK_TIMEOUT_MS,
    schema::txt::CHECK_FAILURES,
    schema::txt::CHECK_RECOVERIES,
];

pub fn validate_host(h: &Host) -> Result<(), Invalid> {
    validate_label("host name", &h.name)?;
    if RESERVED.contains(&h.name.as_str()) {
        return invalid(format!("host name {:?} is reserved by the schema", h.name));
    }
    for r in &h.roles {
        validate_label("role", r)?;
    }
    txt_string("roles", schema::txt::ROLES, &h.roles.join(","))?;
    validate_props(&h.props, &HOST_ATTRS)
}

pub fn validate_binding(b: &Binding) -> Result<(), Invalid> {
    validate_label("host name", &b.host)?;
    validate_label("service name", &b.service)?;
    if RESERVED.contains(&b.service.as_str()) || schema::ROLE_FILTERS.contains(&b.service.as_str())
    {
        return invalid(format!(
            "service name {:?} is reserved by the schema",
            b.service
        ));
    }
    if let Some(c) = &b.check {
        validate_check(c)?;
    }
    validate_props(&b.props, &BINDING_ATTRS)
}

/// A freeze message (`repo freeze`, `db freeze`): what every refused writer reads.
fn validate_freeze_message(m: Option<&str>) -> Result<(), Invalid> {
    match m {
        Some(m) if m.is_empty() || m.len() > 200 || m.chars().any(|c| c.is_control()) => invalid(
            "a freeze message must be 1-200 characters without control characters".to_string(),
        ),
        _ => Ok(()),
    }
}

pub fn validate_repo(r: &Repo) -> Result<(), Invalid> {
    validate_label("repository name", &r.name)?;
    if RESERVED.contains(&r.name.as_str()) {
        return invalid(format!(
            "repository name {:?} is reserved by the schema",
            r.name
        ));
    }
    validate_label("host name", &r.master)?;
    for h in &r.replicas {
        validate_label("host name", h)?;
        if *h == r.master {
            return invalid(format!(
                "host {h} is the master of {}; it cannot also be a replica",
                r.name
            ));
        }
    }
    txt_string("replicas", schema::txt::REPLICAS, &r.replicas.join(","))?;
    let mut seen = std::collections::BTreeSet::new();
    for h in &r.replicas {
        if !seen.insert(h) {
            return invalid(format!("replica {h} is listed twice"));
        }
    }
    for h in r.versions.keys() {
        if !r.has_host(h) {
            return invalid(format!(
                "version given for {h}, which is not a host of {}",
                r.name
            ));
        }
    }
    validate_freeze_message(r.frozen.as_deref())
}

pub fn validate_database(d: &Database) -> Result<(), Invalid> {
    validate_label("database name", &d.name)?;
    if RESERVED.contains(&d.name.as_str()) {
        return invalid(format!(
            "database name {:?} is reserved by the schema",
            d.name
        ));
    }
    validate_label("host name", &d.master)?;
    let mut seen = std::collections::BTreeSet::new();
    for h in &d.replicas {
        validate_label("host name", h)?;
        if *h == d.master {
            return invalid(format!(
                "host {h} is the master of {}; it cannot also be a replica",
                d.name
            ));
        }
        if !seen.insert(h) {
            return invalid(format!("replica {h} is listed twice"));
        }
    }
    txt_string("replicas", schema::txt::REPLICAS, &d.replicas.join(","))?;
    if d.port == 0 {
        return invalid(
            "database port 0 is not a port: give 1-65535 (MariaDB's is 3306)".to_string(),
        );
    }
    validate_freeze_message(d.frozen.as_deref())?;
    for (h, p) in &d.positions {
        if !d.has_host(h) {
            return invalid(format!(
                "position given for {h}, which is not a host of {}",
                d.name
            ));
        }
        parse_gtid(&p.gtid)?;
    }
    Ok(())
}

pub fn validate_admin(a: &AdminKey) -> Result<(), Invalid> {
    validate_label("admin name", &a.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(validate_label("x", "web1").is_ok());
        assert!(validate_label("x", "Web1").is_err());
        assert!(validate_label("x", "-a").is_err());
        assert!(validate_label("x", "a.b").is_err());
        assert!(validate_label("x", "..").is_err());
        assert!(validate_label("x", "").is_err());
        assert!(validate_label("x", &"a".repeat(64)).is_err());
    }

    #[test]
    fn key_round_trip_and_fingerprint_length() {
        let k = PublicKey([7u8; 32]);
        // Not every 32-byte string is a point, so make a real one.
        let sk = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        let k = PublicKey(sk.verifying_key().to_bytes())
            .to_string()
            .parse::<PublicKey>()
            .unwrap_or(k);
        assert_eq!(k.fingerprint().len(), 52);
        assert!("ed25519:AAAA".parse::<PublicKey>().is_err());
    }

    /// `p + k` (p = 2^255 - 19) as a little-endian field encoding: the
    /// non-canonical spelling of the y-coordinate `k`.
    fn above_p(k: u8) -> [u8; 32] {
        let mut b = [0xffu8; 32];
        b[0] = 0xed + k;
        b[31] = 0x7f;
        b
    }

    fn openssh_line(raw: &[u8; 32]) -> String {
        let mut blob = Vec::new();
        for part in [&b"ssh-ed25519"[..], &raw[..]] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        format!(
            "ssh-ed25519 {} test",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    #[test]
    fn every_form_of_a_key_refuses_weak_non_canonical_and_off_curve_keys() {
        let good = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32])
            .verifying_key()
            .to_bytes();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // A y-coordinate that is on no point: the first one found, for the test.
        let off_curve = (0u8..=255)
            .map(|i| [i; 32])
            .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
            .expect("some 32-byte string is not a point");
        // Spellings of y >= p that decompress to a point of large order.
        let non_canonical: Vec<[u8; 32]> = (2..19)
            .map(above_p)
            .filter(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_ok_and(|k| !k.is_weak()))
            .collect();
        assert!(
            !non_canonical.is_empty(),
            "no non-canonical point found to test"
        );
        let mut bad = vec![[0u8; 32], identity, off_curve, above_p(1)];
        bad.extend(non_canonical);
        for raw in bad {
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            for form in [b64.clone(), format!("ed25519:{b64}"), openssh_line(&raw)] {
                assert!(form.parse::<PublicKey>().is_err(), "{form} was accepted");
            }
            assert!(PublicKey::from_bytes(raw).is_err());
            assert!(serde_json::from_value::<PublicKey>(serde_json::json!(b64)).is_err());
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(good);
        for form in [b64.clone(), format!("ed25519:{b64}"), openssh_line(&good)] {
            assert_eq!(form.parse::<PublicKey>(), Ok(PublicKey(good)), "{form}");
        }
    }

    #[test]
    fn gtid_positions_compare_per_domain() {
        assert_eq!(
            parse_gtid("0-1-42, 1-2-7").unwrap(),
            BTreeMap::from([(0, 42), (1, 7)])
        );
        assert_eq!(parse_gtid("").unwrap(), BTreeMap::new());
        for bad in ["0-1", "a-1-2", "0-1-2-3", "0-1-2,0-2-3", "-1-2"] {
            assert!(parse_gtid(bad).is_err(), "{bad}");
        }
        assert!(!gtid_behind("0-1-42", "0-1-42"));
        assert!(
            !gtid_behind("0-2-43", "0-1-42"),
            "the server id orders nothing"
        );
        assert!(gtid_behind("0-1-41", "0-1-42"));
        assert!(gtid_behind("0-1-50", "0-1-42,1-1-1"), "a domain it lacks");
        assert!(!gtid_behind("0-1-1", ""));
        let l = DbLoss {
            old_master: "a".into(),
            new_master: "b".into(),
            old_gtid: "0-1-9,1-1-3".into(),
            new_gtid: "0-1-7".into(),
            at: 99,
        };
        assert_eq!(DbLoss::from_txt(&l.to_txt()).unwrap(), l);
        assert!(DbLoss::from_txt("a>b:x>y@1").is_err());
    }

    #[test]
    fn a_replica_lags_when_stopped_behind_or_missing_what_the_master_had() {
        let pos = |gtid: &str, behind: Option<u64>, replicating: bool, at: u64| DbPosition {
            gtid: gtid.into(),
            seconds_behind: behind,
            replicating,
            read_only: replicating,
            at,
        };
        let mut d = Database {
            name: "main".into(),
            master: "m".into(),
            replicas: vec!["r".into()],
            port: DEFAULT_DB_PORT,
            max_lag_s: 10,
            frozen: None,
            positions: BTreeMap::new(),
            lost: vec![],
        };
        assert!(d.lag_of("r").is_some(), "never reported");
        d.positions
            .insert("m".into(), pos("0-1-100", None, false, 1000));
        d.positions
            .insert("r".into(), pos("0-1-100", Some(0), true, 1000));
        assert_eq!(d.lag_of("r"), None);
        d.positions
            .insert("r".into(), pos("0-1-100", Some(11), true, 1000));
        assert!(d.lag_of("r").is_some(), "behind max_lag_s");
        d.positions
            .insert("r".into(), pos("0-1-100", Some(0), false, 1000));
        assert!(d.lag_of("r").is_some(), "not replicating");
        // Behind a position the master reported a moment ago: in flight, fine.
        d.positions
            .insert("r".into(), pos("0-1-90", Some(0), true, 1005));
        assert_eq!(d.lag_of("r"), None);
        assert!(d.behind_master("r"));
        // Still without it more than max_lag_s later: lagging.
        d.positions
            .insert("r".into(), pos("0-1-90", Some(0), true, 1011));
        assert!(d.lag_of("r").is_some());
        assert!(validate_database(&d).is_ok());
        d.replicas.push("m".into());
        assert!(validate_database(&d).is_err());
    }

    #[test]
    fn loss_txt_round_trip() {
        let l = Loss {
            old_master: "a".into(),
            new_master: "b".into(),
            from: 4,
            to: 5,
            at: 99,
        };
        assert_eq!(Loss::from_txt(&l.to_txt()).unwrap(), l);
        assert!(Loss::from_txt("junk").is_err());
    }
}
