//! Who this host is: its key, the key's fingerprint, and what the directory says
//! the fingerprint belongs to (`FPR.key.Z` TXT: `host=` `roles=` `key=`). Kept
//! apart from transport: the listeners and clients only use what this says.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use switchboard_proto::keys::{self, KeyError};
use switchboard_proto::model::PublicKey;

use crate::directory::answers::{DirError, DirectoryClient};
use crate::metrics::Metrics;

/// This host's key.
pub struct Identity {
    pub key: SigningKey,
    pub public: PublicKey,
    pub fingerprint: String,
}

impl Identity {
    /// Loads a PKCS#8 PEM or OpenSSH ed25519 private key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let key = keys::read(path)?;
        let public = keys::public(&key);
        Ok(Identity {
            fingerprint: public.fingerprint(),
            public,
            key,
        })
    }
}

/// What the directory says a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub host: String,
    pub roles: Vec<String>,
    pub key: PublicKey,
}

impl KeyInfo {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Looks a fingerprint up in the directory. `Ok(None)`: nobody has that key.
pub async fn lookup(dir: &DirectoryClient, fingerprint: &str) -> Result<Option<KeyInfo>, DirError> {
    // Nobody's key has another form: no need to ask.
    if !switchboard_proto::sign::is_fingerprint(fingerprint) {
        return Ok(None);
    }
    let Some(attrs) = dir
        .txt(&format!("{fingerprint}.{}", switchboard_proto::schema::KEY))
        .await?
    else {
        return Ok(None);
    };
    let host = attrs
        .get(switchboard_proto::schema::txt::HOST)
        .cloned()
        .unwrap_or_default();
    let roles = attrs
        .get(switchboard_proto::schema::txt::ROLES)
        .map(|r| {
            r.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let Some(key) = attrs
        .get(switchboard_proto::schema::txt::KEY)
        .and_then(|k| k.parse::<PublicKey>().ok())
    else {
        return Ok(None);
    };
    if key.fingerprint() != fingerprint || host.is_empty() {
        return Ok(None);
    }
    Ok(Some(KeyInfo { host, roles, key }))
}

/// Why this host could not learn who it is.
#[derive(Debug, thiserror::Error)]
pub enum WhoAmIError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Zone(DirError),
    #[error("cannot ask the directory who this key is: {0}")]
    Lookup(DirError),
    #[error("key {fingerprint} (public key {public}) is not known to the directory at {directory} for zone {zone}: register it with `switchboard-directory host add HOST --addr IP --pubkey {public} --roles ...`; routing nothing")]
    Unknown {
        fingerprint: String,
        public: String,
        /// The servers asked, comma-separated.
        directory: String,
        zone: String,
    },
}

/// Loads the key at `key` and asks the directory at `directories` (any of
/// them) who it belongs to; with the directory client it asked through, for
/// everything after.
pub async fn who_am_i(
    key: &Path,
    directories: &[SocketAddr],
    zone: &str,
    metrics: Arc<Metrics>,
) -> Result<(Identity, KeyInfo, Arc<DirectoryClient>), WhoAmIError> {
    let id = Identity::load(key)?;
    let dir =
        Arc::new(DirectoryClient::new(directories, zone, metrics).map_err(WhoAmIError::Zone)?);
    let me = lookup(&dir, &id.fingerprint)
        .await
        .map_err(WhoAmIError::Lookup)?
        .ok_or_else(|| WhoAmIError::Unknown {
            fingerprint: id.fingerprint.clone(),
            public: id.public.to_base64(),
            directory: directories
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            zone: zone.to_string(),
        })?;
    Ok((id, me, dir))
}
