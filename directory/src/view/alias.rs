//! Alias sets: a CNAME's owner answers for its chain's end (RFC 1034 §4.3.2),
//! so the fast path answers an alias with one lookup. For each type the
//! chain's end holds, the owner holds an alias set of the CNAMEs then that
//! end's records; the owners are kept by their chain's end (`Aliases`), and
//! rebuilt when that end changes.

use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustc_hash::FxHashMap;

use super::{decode, key_of, shard_of, Aliases, Key, Node, CNAME};
use crate::wire;

/// How many CNAMEs an answer follows; a longer chain is answered with the
/// CNAMEs so far, as a loop is.
const MAX_CHAIN: usize = 8;

/// The owners of the CNAMEs among `statics` (CNAMEs are static records only).
pub(super) fn cname_owners(statics: &[Record]) -> Vec<Key> {
    let mut owners: Vec<Key> = statics
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .filter_map(|r| key_of(&r.name))
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

/// Gives each CNAME owner among `owners` its alias sets (see `aliased`) in
/// `shards`, and returns the owners by the end of their chain.
pub(super) fn chase(
    shards: &mut [FxHashMap<Key, Node>],
    origin: &Name,
    owners: Vec<Key>,
) -> Aliases {
    let origin = key_of(origin).unwrap_or_default();
    let mut aliases = Aliases::default();
    let mut rebuilt = Vec::with_capacity(owners.len());
    for owner in owners {
        let at = |k: &[u8]| shards[shard_of(k)].get(k);
        let Some((node, end)) = aliased(&owner, &origin, at) else {
            continue;
        };
        if let Some(end) = end {
            aliases.entry(end).or_default().push(owner.clone());
        }
        rebuilt.push((owner, node));
    }
    for (k, node) in rebuilt {
        shards[shard_of(&k)].insert(k, node);
    }
    aliases
}

/// The node at the CNAME owner `owner` with its alias sets rebuilt from the
/// nodes `at` finds, and the in-zone name its chain ends at (`None` when it
/// leaves the zone, loops or runs past `MAX_CHAIN`). An authoritative answer
/// follows a CNAME within its zone (RFC 1034 §4.3.2): for each type the chain's
/// end holds, an alias set of the CNAMEs then that end's records (and their
/// additionals); for a chain of several CNAMEs, an alias CNAME set of them all,
/// the answer for any other type.
pub(super) fn aliased<'a>(
    owner: &[u8],
    origin: &[u8],
    at: impl Fn(&[u8]) -> Option<&'a Node>,
) -> Option<(Node, Option<Key>)> {
    let node = at(owner)?;
    let mut chain: Vec<Record> = Vec::new();
    let mut seen: Vec<Key> = Vec::new();
    let mut cur: Key = owner.into();
    let end = loop {
        let cname = at(&cur)
            .and_then(|n| n.decode(&cur, CNAME))
            .and_then(|(answers, _)| answers.into_iter().next());
        let Some(cname) = cname else {
            break Some(cur);
        };
        let RData::CNAME(target) = &cname.data else {
            break None;
        };
        let next = wire::wire_name(&target.0);
        chain.push(cname);
        seen.push(cur);
        match next {
            Some(k) if within(&k, origin) && !seen.contains(&k) && chain.len() < MAX_CHAIN => {
                cur = k
            }
            _ => break None,
        }
    };
    let owner_name = chain.first()?.name.clone();
    let mut sets = wire::retain_sets(&node.sets, |s| !s.alias);
    if let Some((end_key, end_node)) = end.as_deref().and_then(|k| Some((k, at(k)?))) {
        for s in end_node.sets().filter(|s| !s.alias) {
            if node.set(s.rtype).is_some() {
                continue;
            }
            let (answers, additionals) = decode(&wire::message(end_key, &s));
            let records: Vec<Record> = chain.iter().cloned().chain(answers).collect();
            let t = RecordType::from(s.rtype);
            wire::encode_alias_set(&owner_name, t, &records, &additionals, &mut sets);
        }
    }
    if chain.len() > 1 {
        wire::encode_alias_set(&owner_name, RecordType::CNAME, &chain, &[], &mut sets);
    }
    let node = Node {
        sets: sets.into_boxed_slice(),
        key: node.key.clone(),
    };
    Some((node, end))
}

/// Whether the lowercase wire name `name` is `origin` or below it.
fn within(name: &[u8], origin: &[u8]) -> bool {
    let mut n = Some(name);
    while let Some(x) = n {
        if x == origin {
            return true;
        }
        n = wire_parent(x);
    }
    false
}

/// The parent of a lowercase wire name (its first label dropped), if it has one.
pub(super) fn wire_parent(name: &[u8]) -> Option<&[u8]> {
    let len = usize::from(*name.first()?);
    if len == 0 {
        return None;
    }
    name.get(1 + len..)
}
