//! A view patched, not rebuilt: the names of a `Scope` rebuilt from the zone
//! after a change (and those it no longer has removed), the apex SOA at the
//! new serial, alias sets whose chain ends there rebuilt, and only the touched
//! shards copied, so a change costs the same in a small zone and a large one.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::rr::{Name, RecordType};
use rustc_hash::FxHashMap;

use super::alias::{aliased, wire_parent};
use super::build::{add_ancestors, admin_keys, apex, build, build_names};
use super::scope::Scope;
use super::{finish, key_of, shard_of, Key, Node, ViewConfig, ViewError, ZoneView, SHARDS};
use crate::model::Zone;
use crate::schema;
use crate::wire;

/// The names `scope` covers in `zone` now: call before changing the model, and
/// hand the result to `patch` after.
pub fn names_of(zone: &Zone, cfg: ViewConfig, scope: &Scope) -> Result<Vec<Name>, ViewError> {
    let (origin, _, _) = apex(zone)?;
    Ok(build_names(zone, cfg, &origin, scope).into_keys().collect())
}

/// A copy of `old` with the names of `scope` rebuilt from `after` (and those in
/// `gone` that `after` no longer has, removed), the apex SOA at the new serial,
/// and only the touched shards copied.
pub fn patch(
    old: &ZoneView,
    gone: Vec<Name>,
    after: &Zone,
    scope: &Scope,
    cfg: ViewConfig,
) -> Result<ZoneView, ViewError> {
    let (origin, soa, negative_soa) = apex(after)?;
    // A change to a host that is a name server of the zone changes the glue
    // at the apex: rebuild (rare; the patch below keeps the apex's NS set).
    let ns_host = after.meta.ns.iter().any(|ns| {
        scope.hosts.iter().any(|h| {
            let node = format!("{h}.{}.{}", schema::NODE, after.meta.origin);
            ns.trim_end_matches('.')
                .eq_ignore_ascii_case(node.trim_end_matches('.'))
        })
    });
    if scope.all || ns_host {
        return build(after, cfg);
    }
    let mut fresh = build_names(after, cfg, &origin, scope);
    add_ancestors(&mut fresh, &origin, |n| {
        key_of(n).is_some_and(|k| old.node(&k).is_some())
    });
    // The apex keeps its NS and static records; only the SOA moves.
    let mut apex_node = key_of(&origin)
        .and_then(|k| old.node(&k).cloned())
        .unwrap_or_default();
    let mut sets = wire::retain_sets(&apex_node.sets, |s| s.rtype != u16::from(RecordType::SOA));
    wire::encode_set(&origin, RecordType::SOA, &[soa], &[], &mut sets);
    apex_node.sets = sets.into_boxed_slice();
    let mut touched: HashMap<usize, FxHashMap<Key, Node>> = HashMap::new();
    fn shard<'a>(
        touched: &'a mut HashMap<usize, FxHashMap<Key, Node>>,
        old: &ZoneView,
        i: usize,
    ) -> &'a mut FxHashMap<Key, Node> {
        touched.entry(i).or_insert_with(|| (*old.shards[i]).clone())
    }
    let mut removed: Vec<Key> = Vec::new();
    for name in gone {
        if !fresh.contains_key(&name) {
            if let Some(k) = key_of(&name) {
                shard(&mut touched, old, shard_of(&k)).remove(&k);
                removed.push(k);
            }
        }
    }
    let fresh_keys: rustc_hash::FxHashSet<Key> = fresh.keys().filter_map(key_of).collect();
    for (name, node) in fresh {
        let node = node.encode(&name);
        if let Some(k) = key_of(&name) {
            shard(&mut touched, old, shard_of(&k)).insert(k, node);
        }
    }
    if let Some(k) = key_of(&origin) {
        shard(&mut touched, old, shard_of(&k)).insert(k, apex_node);
    }
    // An empty non-terminal whose last descendant went is no name any more
    // (NXDOMAIN, as in a rebuilt view, not NODATA).
    let origin_len = key_of(&origin).map_or(0, |k| k.len());
    let mut orphans: rustc_hash::FxHashSet<Key> = Default::default();
    for k in &removed {
        let mut a: &[u8] = k;
        while let Some(parent) = wire_parent(a).filter(|p| p.len() > origin_len) {
            let i = shard_of(parent);
            let node = match touched.get(&i) {
                Some(m) => m.get(parent),
                None => old.shards[i].get(parent),
            };
            if node.is_some_and(Node::is_empty) && !fresh_keys.contains(parent) {
                orphans.insert(parent.into());
            }
            a = parent;
        }
    }
    if !orphans.is_empty() {
        // One pass over every name: which of them still has a descendant.
        let mut kept: rustc_hash::FxHashSet<Key> = Default::default();
        for i in 0..SHARDS {
            let keys: Vec<&Key> = match touched.get(&i) {
                Some(m) => m.keys().collect(),
                None => old.shards[i].keys().collect(),
            };
            for k in keys {
                let mut a: &[u8] = k;
                while let Some(parent) = wire_parent(a).filter(|p| p.len() > origin_len) {
                    if orphans.contains(parent) {
                        kept.insert(parent.into());
                    }
                    a = parent;
                }
            }
        }
        for k in orphans.difference(&kept) {
            shard(&mut touched, old, shard_of(k)).remove(k);
        }
    }
    // Alias sets whose chain ends at a name this change rebuilt or removed (or
    // at the apex, whose SOA moved).
    let origin_key = key_of(&origin).unwrap_or_default();
    let owners: rustc_hash::FxHashSet<&Key> = if old.aliases.is_empty() {
        Default::default()
    } else {
        fresh_keys
            .iter()
            .chain(&removed)
            .chain(&orphans)
            .chain(std::iter::once(&origin_key))
            .filter_map(|k| old.aliases.get(k))
            .flatten()
            .collect()
    };
    if !owners.is_empty() {
        let rebuilt: Vec<(Key, Node)> = {
            let at = |k: &[u8]| {
                let i = shard_of(k);
                match touched.get(&i) {
                    Some(m) => m.get(k),
                    None => old.shards[i].get(k),
                }
            };
            owners
                .iter()
                .filter_map(|&o| aliased(o, &origin_key, at).map(|(n, _)| (o.clone(), n)))
                .collect()
        };
        for (k, node) in rebuilt {
            shard(&mut touched, old, shard_of(&k)).insert(k, node);
        }
    }
    let mut shards = old.shards.clone();
    for (i, map) in touched {
        shards[i] = Arc::new(map);
    }
    let admins = if scope.all || !scope.admins.is_empty() {
        Arc::new(admin_keys(after))
    } else {
        old.admin_keys.clone()
    };
    Ok(finish(
        origin,
        after.serial,
        negative_soa,
        shards,
        admins,
        old.aliases.clone(),
    ))
}
