//! Compiles apps into map entries, and diffs what the maps hold against what they should hold.
//!
//! Pure functions: no I/O, unit-tested here, applied by [`crate::agent`].
//!
//! The XDP program resolves a destination by longest-prefix match to one `net_id`, then looks up
//! (`net_id`, protocol, port). So every distinct prefix gets its own `net_id`, and each prefix carries
//! the services of *every* app whose prefixes cover it: a /32 of app B inside app A's /24 must still
//! open A's services on that address, or A would silently lose it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use ztna_common::{
    maps::{PROTECTED_CAPACITY, SERVICES_CAPACITY},
    service::{ServiceKey, ServiceValue},
};

use crate::config::App;

/// Why a set of apps cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileError {
    /// Two apps claim a common (address, protocol, port): `first` and `second` are (app index, service
    /// index), `prefix` the prefix where both apply.
    Conflict {
        prefix: IpNet,
        first: (usize, usize),
        second: (usize, usize),
    },
    /// More service entries than `SERVICES` holds.
    TooManyServices { entries: usize },
    /// More prefixes of one family than a `PROTECTED_*` trie holds.
    TooManyPrefixes { family: &'static str, count: usize },
}

/// An app as the maps know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEntry {
    /// Starts at 1, in configuration order.
    pub id: u32,
    pub name: String,
}

/// The map entries a configuration compiles to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub apps: Vec<AppEntry>,
    /// Every distinct prefix and its `net_id` (from 1, in order of first appearance).
    pub prefixes: BTreeMap<IpNet, u32>,
    pub services: BTreeMap<ServiceKey, ServiceValue>,
}

impl Plan {
    /// Name of app `id`, if any.
    pub fn app_name(&self, id: u32) -> Option<&str> {
        self.apps
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.name.as_str())
    }
}

/// Compiles `apps` into prefixes and service entries, or every conflict found.
pub fn compile(apps: &[App]) -> Result<Plan, Vec<CompileError>> {
    let mut plan = Plan {
        apps: apps
            .iter()
            .enumerate()
            .map(|(i, app)| AppEntry {
                id: i as u32 + 1,
                name: app.name.clone(),
            })
            .collect(),
        ..Plan::default()
    };
    // Prefixes in order of first appearance, so that ids are stable for an unchanged file.
    let mut ordered: Vec<IpNet> = Vec::new();
    for app in apps {
        for prefix in &app.prefixes {
            let prefix = prefix.trunc();
            if let std::collections::btree_map::Entry::Vacant(slot) = plan.prefixes.entry(prefix) {
                slot.insert(ordered.len() as u32 + 1);
                ordered.push(prefix);
            }
        }
    }
    let mut errors = Vec::new();
    for (family, count) in [
        (
            "IPv4",
            ordered.iter().filter(|p| matches!(p, IpNet::V4(_))).count(),
        ),
        (
            "IPv6",
            ordered.iter().filter(|p| matches!(p, IpNet::V6(_))).count(),
        ),
    ] {
        if count > PROTECTED_CAPACITY as usize {
            errors.push(CompileError::TooManyPrefixes { family, count });
        }
    }

    let mut reported = BTreeSet::new();
    let mut entries = 0usize;
    for prefix in &ordered {
        let net_id = plan.prefixes[prefix];
        let covering: Vec<usize> = apps
            .iter()
            .enumerate()
            .filter(|(_, app)| app.prefixes.iter().any(|p| p.contains(prefix)))
            .map(|(i, _)| i)
            .collect();
        // Two different apps must not claim a common (protocol, port) on the same addresses: the
        // packet could belong to only one of them, and which one would be an accident of map order.
        for (x, &a) in covering.iter().enumerate() {
            for &b in &covering[x + 1..] {
                for (sa, service_a) in apps[a].services.iter().enumerate() {
                    for (sb, service_b) in apps[b].services.iter().enumerate() {
                        if service_a.overlaps(service_b) && reported.insert((a, sa, b, sb)) {
                            errors.push(CompileError::Conflict {
                                prefix: *prefix,
                                first: (a, sa),
                                second: (b, sb),
                            });
                        }
                    }
                }
            }
        }
        for &a in &covering {
            let app = &apps[a];
            let value = ServiceValue {
                app_id: a as u32 + 1,
                mode: app.mode.raw(),
            };
            for service in &app.services {
                entries += service.entry_count();
                match &service.ports {
                    None => {
                        plan.services
                            .insert(ServiceKey::new(net_id, service.proto, 0), value);
                    }
                    Some(ports) => {
                        for port in ports.clone() {
                            plan.services
                                .insert(ServiceKey::new(net_id, service.proto, port), value);
                        }
                    }
                }
            }
            if entries > SERVICES_CAPACITY as usize {
                // Stop expanding: the configuration is refused anyway.
                errors.push(CompileError::TooManyServices { entries });
                return Err(errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

/// What to change in the maps to make them match a [`Plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapChanges {
    /// Services to write (missing or different), before prefixes so that a new prefix finds its
    /// services in place.
    pub upsert_services: Vec<(ServiceKey, ServiceValue)>,
    /// Prefixes to write (missing or with another `net_id`).
    pub upsert_prefixes: Vec<(IpNet, u32)>,
    /// Prefixes the plan no longer names.
    pub remove_prefixes: Vec<IpNet>,
    /// Services the plan no longer names, removed last.
    pub remove_services: Vec<ServiceKey>,
}

impl MapChanges {
    pub fn is_empty(&self) -> bool {
        self.upsert_services.is_empty()
            && self.upsert_prefixes.is_empty()
            && self.remove_prefixes.is_empty()
            && self.remove_services.is_empty()
    }
}

/// The changes that turn the `installed` prefixes and services into the plan's.
pub fn diff_maps(
    plan: &Plan,
    installed_prefixes: &[(IpNet, u32)],
    installed_services: &[(ServiceKey, ServiceValue)],
) -> MapChanges {
    let prefixes: BTreeMap<IpNet, u32> = installed_prefixes
        .iter()
        .map(|(p, id)| (p.trunc(), *id))
        .collect();
    let services: BTreeMap<ServiceKey, ServiceValue> = installed_services.iter().copied().collect();
    MapChanges {
        upsert_services: plan
            .services
            .iter()
            .filter(|(key, value)| services.get(key) != Some(value))
            .map(|(k, v)| (*k, *v))
            .collect(),
        upsert_prefixes: plan
            .prefixes
            .iter()
            .filter(|(prefix, id)| prefixes.get(prefix) != Some(id))
            .map(|(p, id)| (*p, *id))
            .collect(),
        remove_prefixes: prefixes
            .keys()
            .filter(|p| !plan.prefixes.contains_key(p))
            .copied()
            .collect(),
        remove_services: services
            .keys()
            .filter(|k| !plan.services.contains_key(k))
            .copied()
            .collect(),
    }
}

/// A grant the configuration asks for, resolved to an app id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DesiredGrant {
    pub source: IpAddr,
    pub app_id: u32,
    pub ttl: Duration,
}

/// What to do with grants at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantChanges {
    /// Grants to install with a fresh deadline (`ttl` from now).
    pub install: Vec<DesiredGrant>,
    /// Grants already in the map: they keep their deadline and counters, even when expired, so that
    /// a restart never extends access.
    pub keep: Vec<(IpAddr, u32)>,
    /// Grants in the map that the configuration no longer names.
    pub remove: Vec<(IpAddr, u32)>,
}

/// Reconciles the configured static grants with the grants found in the map.
pub fn diff_grants(desired: &[DesiredGrant], installed: &[(IpAddr, u32)]) -> GrantChanges {
    let installed: BTreeSet<(IpAddr, u32)> = installed
        .iter()
        .map(|(a, id)| (a.to_canonical(), *id))
        .collect();
    let wanted: BTreeSet<(IpAddr, u32)> = desired
        .iter()
        .map(|g| (g.source.to_canonical(), g.app_id))
        .collect();
    GrantChanges {
        install: desired
            .iter()
            .filter(|g| !installed.contains(&(g.source.to_canonical(), g.app_id)))
            .copied()
            .collect(),
        keep: installed.intersection(&wanted).copied().collect(),
        remove: installed.difference(&wanted).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppMode, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Service};

    fn app(name: &str, prefixes: &[&str], services: &[&str]) -> App {
        App {
            name: name.into(),
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            services: services
                .iter()
                .map(|s| s.parse::<Service>().unwrap())
                .collect(),
            mode: AppMode::Inherit,
        }
    }

    fn net(p: &str) -> IpNet {
        p.parse().unwrap()
    }

    fn value(app_id: u32) -> ServiceValue {
        ServiceValue { app_id, mode: 0 }
    }

    #[test]
    fn app_ids_and_net_ids_follow_file_order() {
        let plan = compile(&[
            app("web", &["10.0.0.0/24", "fd00::/64"], &["tcp/80"]),
            app("dns", &["10.0.1.0/24", "10.0.0.0/24"], &["udp/53"]),
        ])
        .unwrap();
        assert_eq!(
            plan.apps,
            vec![
                AppEntry {
                    id: 1,
                    name: "web".into()
                },
                AppEntry {
                    id: 2,
                    name: "dns".into()
                }
            ]
        );
        assert_eq!(plan.prefixes[&net("10.0.0.0/24")], 1);
        assert_eq!(plan.prefixes[&net("fd00::/64")], 2);
        assert_eq!(plan.prefixes[&net("10.0.1.0/24")], 3);
        // A prefix shared by two apps carries both apps' services.
        assert_eq!(plan.services[&ServiceKey::new(1, PROTO_TCP, 80)], value(1));
        assert_eq!(plan.services[&ServiceKey::new(1, PROTO_UDP, 53)], value(2));
        assert_eq!(plan.services[&ServiceKey::new(2, PROTO_TCP, 80)], value(1));
        assert_eq!(plan.services.len(), 4);
        assert_eq!(plan.app_name(2), Some("dns"));
    }

    #[test]
    fn a_narrower_prefix_keeps_the_services_of_the_covering_app() {
        let plan = compile(&[
            app("intranet", &["10.0.0.0/24"], &["tcp/443"]),
            app("ssh", &["10.0.0.7/32"], &["tcp/22"]),
        ])
        .unwrap();
        let host = plan.prefixes[&net("10.0.0.7/32")];
        assert_eq!(
            plan.services[&ServiceKey::new(host, PROTO_TCP, 22)],
            value(2)
        );
        assert_eq!(
            plan.services[&ServiceKey::new(host, PROTO_TCP, 443)],
            value(1),
            "10.0.0.7:443 must stay app intranet's"
        );
        let subnet = plan.prefixes[&net("10.0.0.0/24")];
        assert!(
            !plan
                .services
                .contains_key(&ServiceKey::new(subnet, PROTO_TCP, 22))
        );
    }

    #[test]
    fn families_do_not_cover_each_other() {
        let plan = compile(&[
            app("all4", &["0.0.0.0/0"], &["tcp/1"]),
            app("six", &["fd00::/8"], &["tcp/1"]),
        ])
        .unwrap();
        assert_eq!(plan.services.len(), 2);
    }

    #[test]
    fn port_ranges_expand_and_wildcards_do_not() {
        let plan = compile(&[app(
            "a",
            &["10.0.0.0/8"],
            &["tcp/8000-8002", "udp", "icmp", "any"],
        )])
        .unwrap();
        let keys: BTreeSet<ServiceKey> = plan.services.keys().copied().collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                ServiceKey::new(1, PROTO_ANY, 0),
                ServiceKey::new(1, PROTO_ICMP, 0),
                ServiceKey::new(1, PROTO_TCP, 8000),
                ServiceKey::new(1, PROTO_TCP, 8001),
                ServiceKey::new(1, PROTO_TCP, 8002),
                ServiceKey::new(1, PROTO_UDP, 0),
            ])
        );
    }

    #[test]
    fn per_app_mode_is_carried() {
        let mut monitored = app("m", &["10.0.0.0/8"], &["tcp/80"]);
        monitored.mode = AppMode::Monitor;
        let plan = compile(&[monitored]).unwrap();
        assert_eq!(
            plan.services[&ServiceKey::new(1, PROTO_TCP, 80)].mode,
            ztna_common::service::APP_MODE_MONITOR
        );
    }

    #[test]
    fn overlapping_claims_conflict() {
        // Same port on a nested prefix.
        let errors = compile(&[
            app("a", &["10.0.0.0/24"], &["udp/53", "tcp/80"]),
            app("b", &["10.0.0.7/32"], &["tcp/70-90"]),
        ])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![CompileError::Conflict {
                prefix: net("10.0.0.7/32"),
                first: (0, 1),
                second: (1, 0)
            }]
        );
        // A wildcard protocol against a port, on the same prefix.
        assert!(
            compile(&[
                app("a", &["fd00::/64"], &["any"]),
                app("b", &["fd00::/64"], &["icmpv6"]),
            ])
            .is_err()
        );
        // Disjoint prefixes or disjoint ports do not conflict.
        assert!(
            compile(&[
                app("a", &["10.0.0.0/25"], &["tcp/80"]),
                app("b", &["10.0.0.128/25"], &["tcp/80"]),
                app("c", &["10.0.0.0/24"], &["tcp/81", "udp/80"]),
            ])
            .is_ok()
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let prefixes: Vec<String> = (0..20).map(|i| format!("10.{i}.0.0/16")).collect();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let errors = compile(&[app("big", &prefixes, &["tcp/1-65535"])]).unwrap_err();
        assert!(matches!(errors[0], CompileError::TooManyServices { .. }));
    }

    #[test]
    fn diff_installs_missing_and_removes_stale_entries() {
        let plan = compile(&[app("a", &["10.0.0.0/24", "10.0.1.0/24"], &["tcp/80"])]).unwrap();
        let installed_prefixes = vec![
            (net("10.0.0.0/24"), 1),
            (net("10.0.1.0/24"), 7),
            (net("10.9.0.0/16"), 3),
        ];
        let installed_services = vec![
            (ServiceKey::new(1, PROTO_TCP, 80), value(1)),
            (ServiceKey::new(2, PROTO_TCP, 80), value(5)),
            (ServiceKey::new(3, PROTO_TCP, 22), value(2)),
        ];
        let changes = diff_maps(&plan, &installed_prefixes, &installed_services);
        assert_eq!(
            changes,
            MapChanges {
                upsert_services: vec![(ServiceKey::new(2, PROTO_TCP, 80), value(1))],
                upsert_prefixes: vec![(net("10.0.1.0/24"), 2)],
                remove_prefixes: vec![net("10.9.0.0/16")],
                remove_services: vec![ServiceKey::new(3, PROTO_TCP, 22)],
            }
        );
        let in_place: Vec<(IpNet, u32)> = plan.prefixes.iter().map(|(p, i)| (*p, *i)).collect();
        let in_place_services: Vec<_> = plan.services.iter().map(|(k, v)| (*k, *v)).collect();
        assert!(diff_maps(&plan, &in_place, &in_place_services).is_empty());
    }

    #[test]
    fn existing_grants_keep_their_deadline() {
        let a: IpAddr = "10.0.1.2".parse().unwrap();
        let b: IpAddr = "fd00:1::2".parse().unwrap();
        let c: IpAddr = "10.0.3.2".parse().unwrap();
        let ttl = Duration::from_secs(60);
        let desired = [
            DesiredGrant {
                source: a,
                app_id: 1,
                ttl,
            },
            DesiredGrant {
                source: b,
                app_id: 1,
                ttl,
            },
        ];
        // `a` arrives as IPv4-mapped from the map; it is the same grant.
        let mapped = IpAddr::V6(
            "10.0.1.2"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped(),
        );
        let changes = diff_grants(&desired, &[(mapped, 1), (c, 1), (a, 2)]);
        assert_eq!(changes.install, vec![desired[1]]);
        assert_eq!(changes.keep, vec![(a, 1)]);
        assert_eq!(changes.remove, vec![(a, 2), (c, 1)]);
    }
}
