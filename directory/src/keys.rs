//! Private keys on disk: write a new one, read one back.
//!
//! A key file is PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), written with mode 0600.

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
    #[error(
        "{path} is not an ed25519 private key in PKCS#8 PEM form (-----BEGIN PRIVATE KEY-----)"
    )]
    Format { path: String },
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

/// Reads a PKCS#8 PEM ed25519 private key.
pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|err| KeyError::Read {
        path: path.display().to_string(),
        err,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|_| KeyError::Format {
        path: path.display().to_string(),
    })
}
