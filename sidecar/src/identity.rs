//! Who this host is: its key, the key's fingerprint, and what the directory says
//! the fingerprint belongs to (`FPR.key.Z` TXT: `host=` `roles=` `key=`).

use std::path::Path;

use ed25519_dalek::SigningKey;
use switchboard_proto::keys::{self, KeyError};
use switchboard_proto::model::PublicKey;

use crate::directory::answers::{DirError, DirectoryClient};

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
