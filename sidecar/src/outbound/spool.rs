//! Request bodies between hosts are signed with their digest (RFC 9530), which
//! needs the whole body before the first byte goes out, and checked before the
//! receiver acts on them. `Spooled` holds a body in memory up to a threshold and
//! on disk past it, hashing as it goes, so a pushed pack never sits in memory.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use sha2::{Digest, Sha256};
use switchboard_proto::sign::BodyHash;

use crate::body::BoxBody;

/// Bodies up to this size stay in memory.
pub const MEMORY_LIMIT: usize = 1 << 20;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the request body is larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error("reading the request body failed: {0}")]
    Read(String),
    #[error("spooling the request body to disk failed: {0}")]
    Disk(#[from] std::io::Error),
}

enum Data {
    Memory(Bytes),
    File(std::fs::File),
}

/// A whole body with its hash, in memory or in an unnamed temporary file.
pub struct Spooled {
    hash: BodyHash,
    data: Data,
}

impl Spooled {
    /// An empty body.
    pub fn empty() -> Self {
        Spooled {
            hash: BodyHash::of(b""),
            data: Data::Memory(Bytes::new()),
        }
    }

    /// A body already in memory.
    pub fn from_bytes(b: Bytes) -> Self {
        Spooled {
            hash: BodyHash::of(&b),
            data: Data::Memory(b),
        }
    }

    /// Reads `body` whole, up to `limit` bytes, spilling to `dir` past [`MEMORY_LIMIT`].
    pub async fn read<B>(body: B, limit: u64, dir: &Path) -> Result<Self, SpoolError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        let mut hasher = Sha256::new();
        let mut mem = BytesMut::new();
        let mut file: Option<std::fs::File> = None;
        let mut len: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| SpoolError::Read(e.to_string()))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            len += chunk.len() as u64;
            if len > limit {
                return Err(SpoolError::TooLarge(limit));
            }
            hasher.update(&chunk);
            match &mut file {
                Some(f) => f.write_all(&chunk)?,
                None if mem.len() + chunk.len() > MEMORY_LIMIT => {
                    let mut f = tempfile::tempfile_in(dir)?;
                    f.write_all(&mem)?;
                    f.write_all(&chunk)?;
                    mem.clear();
                    file = Some(f);
                }
                None => mem.extend_from_slice(&chunk),
            }
        }
        let hash = BodyHash {
            sha256: hasher.finalize().into(),
            len,
        };
        let data = match file {
            Some(mut f) => {
                f.flush()?;
                f.seek(SeekFrom::Start(0))?;
                Data::File(f)
            }
            None => Data::Memory(mem.freeze()),
        };
        Ok(Spooled { hash, data })
    }

    pub fn hash(&self) -> &BodyHash {
        &self.hash
    }

    /// The body, when it is small enough to be in memory.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.data {
            Data::Memory(b) => Some(b),
            Data::File(_) => None,
        }
    }

    /// The body as a stream, read from memory or disk in 64 KiB chunks.
    pub fn into_body(self) -> BoxBody {
        match self.data {
            Data::Memory(b) => http_body_util::Full::new(b).map_err(|e| match e {}).boxed(),
            Data::File(f) => crate::body::reader_body(tokio::fs::File::from_std(f)),
        }
    }
}
