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
///
/// The document is RFC 8410's form, a PKCS#8 v1 `OneAsymmetricKey` holding
/// only the private key — what `openssl genpkey -algorithm ed25519` writes, and
/// what OpenSSL 3.0 reads (it refuses the v2 form with the public key attached).
pub fn write(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let werr = |err| KeyError::Write {
        path: path.display().to_string(),
        err,
    };
    let doc = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = doc
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
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

/// Reads an ed25519 private key: PKCS#8 PEM (RFC 8410's v1 form or the v2
/// form with the public key), or OpenSSH's own format. Warns, as ssh does,
/// when the file may be read by its group or by others.
pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
    let p = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| KeyError::Read { path: p(), err })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %p(),
                    mode = format!("{mode:04o}"),
                    "private key file is readable by others than its owner; chmod 600 it"
                );
            }
        }
    }
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

/// `keygen --out FILE` of both binaries: writes a new key and prints its
/// public half (JSON with `json`).
pub fn keygen(out: &Path, json: bool) -> Result<(), KeyError> {
    let key = generate();
    write(out, &key)?;
    let pk = public(&key);
    if json {
        println!(
            "{}",
            serde_json::json!({"file": out.display().to_string(), "public_key": pk.to_base64(), "fingerprint": pk.fingerprint()})
        );
    } else {
        println!("wrote {} (mode 0600)", out.display());
        println!("public key:  {}", pk.to_base64());
        println!("fingerprint: {}", pk.fingerprint());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_v1_form_it_writes_and_the_v2_form_older_builds_wrote() {
        let dir = std::env::temp_dir().join(format!("sb-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let key = generate();
        let v1 = dir.join("v1.pem");
        write(&v1, &key).expect("write");
        assert_eq!(read(&v1).expect("read v1").to_bytes(), key.to_bytes());
        let v2 = dir.join("v2.pem");
        let pem = key.to_pkcs8_pem(Default::default()).expect("v2 document");
        std::fs::write(&v2, pem.as_bytes()).expect("write v2");
        assert_eq!(read(&v2).expect("read v2").to_bytes(), key.to_bytes());
        assert!(
            write(&v1, &key).is_err(),
            "an existing key file is never overwritten"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
