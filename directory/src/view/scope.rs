//! What a change touches: the groups of names (hosts, services, repositories,
//! databases, admin keys, the service index) a patch rebuilds.

use std::collections::BTreeSet;

use crate::model::Zone;
use crate::schema;

/// What a change touches: the groups of names to rebuild. `Scope::all()` is a
/// whole zone.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub(super) all: bool,
    pub hosts: BTreeSet<String>,
    pub services: BTreeSet<String>,
    pub repos: BTreeSet<String>,
    /// Databases: `DB.db`, `write.DB.db`, `read.DB.db`.
    pub dbs: BTreeSet<String>,
    pub admins: BTreeSet<String>,
    /// `_services._dns-sd._udp`: the list of service types.
    pub service_index: bool,
}

impl Scope {
    pub fn all() -> Self {
        Scope {
            all: true,
            ..Default::default()
        }
    }

    /// A host and everything that shows it: its bindings' services, its
    /// repositories and its databases.
    pub fn host(zone: &Zone, host: &str) -> Self {
        let mut s = Scope::default();
        s.hosts.insert(host.to_string());
        s.services
            .extend(zone.bindings_of(host).map(|b| b.service.clone()));
        s.repos.extend(
            zone.repos
                .values()
                .filter(|r| r.has_host(host))
                .map(|r| r.name.clone()),
        );
        s.dbs.extend(
            zone.dbs
                .values()
                .filter(|d| d.has_host(host))
                .map(|d| d.name.clone()),
        );
        s
    }

    /// A binding: its service, the type list, and (for the cluster listener) the
    /// repositories whose read/write answers carry its port.
    pub fn binding(zone: &Zone, host: &str, service: &str) -> Self {
        let mut s = Scope {
            service_index: true,
            ..Default::default()
        };
        s.services.insert(service.to_string());
        if service == schema::SWITCHBOARD_SERVICE {
            s.repos.extend(
                zone.repos
                    .values()
                    .filter(|r| r.has_host(host))
                    .map(|r| r.name.clone()),
            );
        }
        s
    }

    pub(super) fn has(set: &BTreeSet<String>, all: bool, x: &str) -> bool {
        all || set.contains(x)
    }
}
