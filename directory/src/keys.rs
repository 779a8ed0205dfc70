//! Private keys on disk: write a new one, read one back.
//!
//! A key file is PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), written with mode 0600.
//! An OpenSSH ed25519 private key (`ssh-keygen -t ed25519`, such as the machine's own
//! `/etc/ssh/ssh_host_ed25519_key`) is read as it is, so a host can be known by the key
//! its sshd already has.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

use crate::model::PublicKey;

/// A key file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("cannot write key file {path}: {err}")]
    Write { path: String, err: std::io::Error },
    #[error("{path} is not an ed25519 private key: use PKCS#8 PEM (`keygen --out`) or an OpenSSH ed25519 key (`ssh-keygen -t ed25519`)")]
    Format { path: String },
    #[error("{path} is an OpenSSH key of another type ({kind}); Switchboard keys are ed25519")]
    NotEd25519 { path: String, kind: String },
    #[error(
        "{path} is encrypted with a passphrase; give Switchboard an unencrypted key (mode 0600)"
    )]
    Encrypted { path: String },
}

/// Makes a fresh key.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The public half, in the model's form.
pub fn public(key: &SigningKey) -> PublicKey {
    PublicKey(key.verifying_key().to_bytes())
}

/// Writes `key` to `path` as PKCS#8 PEM, mode 0600, refusing to overwrite a file.
pub fn write(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let werr = |err| KeyError::Write {
        path: path.display().to_string(),
        err,
    };
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(werr)?;
    f.write_all(pem.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(())
}

/// Reads an ed25519 private key: PKCS#8 PEM, or OpenSSH's own format.
pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
    let p = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| KeyError::Read { path: p(), err })?;
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let key =
            ssh_key::PrivateKey::from_openssh(&text).map_err(|_| KeyError::Format { path: p() })?;
        if key.is_encrypted() {
            return Err(KeyError::Encrypted { path: p() });
        }
        let Some(pair) = key.key_data().ed25519() else {
            return Err(KeyError::NotEd25519 {
                path: p(),
                kind: key.algorithm().to_string(),
            });
        };
        return Ok(SigningKey::from_bytes(&pair.private.to_bytes()));
    }
    SigningKey::from_pkcs8_pem(&text).map_err(|_| KeyError::Format { path: p() })
}
