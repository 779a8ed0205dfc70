//! A compiled view saved beside the store, so a restart need not rebuild it
//! (as NSD's `nsd.db` once did). It is trusted only when it was written by
//! this very binary (`stamp`: SHA-256 of the executable), for this zone at this
//! serial, with the same TTLs; the store drops it in the batch of any change
//! after it was written, so it never outlives the state it was built from.

use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

use super::alias::{chase, cname_owners};
use super::build::{admin_keys, apex};
use super::{finish, shard_of, Key, KeyEntry, KeyOwner, Node, ViewConfig, ZoneView, SHARDS};
use crate::model::Zone;

const MAGIC: &[u8; 8] = b"SBVIEW1\0";

/// SHA-256 of the running executable, or `None` if it cannot be read.
pub fn stamp() -> Option<[u8; 32]> {
    use sha2::Digest;
    let exe = std::env::current_exe().ok()?;
    let mut file = std::fs::File::open(exe).ok()?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hasher.finalize().into())
}

/// The view as bytes.
pub fn encode(zv: &ZoneView, cfg: ViewConfig, stamp: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 << 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(stamp);
    for n in [zv.serial, cfg.node_ttl, cfg.service_ttl] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&(zv.name_count() as u32).to_be_bytes());
    for (k, node) in zv.nodes() {
        out.push(k.len() as u8);
        out.extend_from_slice(k);
        out.extend_from_slice(&(node.sets.len() as u32).to_be_bytes());
        out.extend_from_slice(&node.sets);
        match node.key.as_deref() {
            None => out.push(0),
            Some(e) => {
                let (tag, name) = match &e.owner {
                    KeyOwner::Admin(n) => (1, n),
                    KeyOwner::Host(n) => (2, n),
                };
                out.push(tag);
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&e.key.0);
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The view of `zone` from `bytes`, or `None` if they are not a view of this
/// zone at its serial written by this binary with these TTLs (or are damaged).
pub fn decode(zone: &Zone, cfg: ViewConfig, stamp: &[u8; 32], bytes: &[u8]) -> Option<ZoneView> {
    let mut r = Reader(bytes);
    if r.take(8)? != MAGIC || r.take(32)? != stamp {
        return None;
    }
    if [r.u32()?, r.u32()?, r.u32()?] != [zone.serial, cfg.node_ttl, cfg.service_ttl] {
        return None;
    }
    let (origin, _, negative_soa) = apex(zone).ok()?;
    let count = r.u32()? as usize;
    let mut shards: Vec<FxHashMap<Key, Node>> = (0..SHARDS)
        .map(|_| FxHashMap::with_capacity_and_hasher(count / SHARDS + 1, FxBuildHasher))
        .collect();
    for _ in 0..count {
        let klen = r.u8()? as usize;
        let k: Key = r.take(klen)?.into();
        let slen = r.u32()? as usize;
        let sets: Box<[u8]> = r.take(slen)?.into();
        let key = match r.u8()? {
            0 => None,
            tag @ (1 | 2) => {
                let len = r.u16()? as usize;
                let name = std::str::from_utf8(r.take(len)?).ok()?.to_string();
                let raw: [u8; 32] = r.take(32)?.try_into().ok()?;
                let owner = if tag == 1 {
                    KeyOwner::Admin(name)
                } else {
                    KeyOwner::Host(name)
                };
                Some(Box::new(KeyEntry {
                    owner,
                    key: crate::model::PublicKey(raw),
                }))
            }
            _ => return None,
        };
        shards[shard_of(&k)].insert(k, Node { sets, key });
    }
    if !r.0.is_empty() {
        return None;
    }
    let cnames = cname_owners(&zone.meta.static_records());
    let aliases = chase(&mut shards, &origin, cnames);
    Some(finish(
        origin,
        zone.serial,
        negative_soa,
        shards.into_iter().map(Arc::new).collect(),
        Arc::new(admin_keys(zone)),
        Arc::new(aliases),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view;

    fn dump(zv: &view::ZoneView) -> Vec<String> {
        zv.canonical()
    }

    #[test]
    fn a_saved_view_loads_as_built_and_only_for_its_state() {
        let text = include_str!("../../../zones/cluster.example.zone");
        let mut zone =
            crate::zonefile::parse(text, "demo", Some("cluster.example.")).expect("demo zone");
        let cfg = ViewConfig::default();
        let built = view::build(&zone, cfg).expect("build");
        let stamp = [7u8; 32];
        let bytes = view::cache::encode(&built, cfg, &stamp);
        let loaded = view::cache::decode(&zone, cfg, &stamp, &bytes).expect("decodes");
        assert_eq!(dump(&loaded), dump(&built));
        assert!(loaded.key(&built_key_fingerprint(&zone)).is_some());
        // Another binary, other TTLs, another serial, damaged bytes: rebuild.
        assert!(view::cache::decode(&zone, cfg, &[8u8; 32], &bytes).is_none());
        let other = ViewConfig {
            node_ttl: cfg.node_ttl + 1,
            ..cfg
        };
        assert!(view::cache::decode(&zone, other, &stamp, &bytes).is_none());
        for cut in [0, 10, 60, bytes.len() / 2, bytes.len() - 1] {
            assert!(view::cache::decode(&zone, cfg, &stamp, &bytes[..cut]).is_none());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(view::cache::decode(&zone, cfg, &stamp, &longer).is_none());
        zone.serial += 1;
        assert!(view::cache::decode(&zone, cfg, &stamp, &bytes).is_none());
    }

    /// The fingerprint of some host key in the zone.
    fn built_key_fingerprint(zone: &Zone) -> String {
        zone.hosts
            .values()
            .find_map(|h| h.key)
            .expect("the demo zone has host keys")
            .fingerprint()
    }
}
