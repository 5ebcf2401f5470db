//! The daemon: brings the data plane in line with a validated [`Config`], attaches it, and runs until
//! SIGTERM or SIGINT.
//!
//! One task (the one that calls [`run`]) owns the [`Dataplane`]; the other tasks send it [`Command`]s
//! over a channel (house rule: nothing else touches the maps). The event task only consumes the ring
//! buffer it was handed at start.
//!
//! Exiting leaves the pinned maps and links in place, so enforcement goes on without the agent and
//! grants still expire in the kernel; a restart takes them over. `teardown_on_exit` removes them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnet::IpNet;
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{debug, info, warn};
use ztna_common::{
    event::{EVENT_WOULD_DENY, Event},
    verdict::reason_name,
};

use crate::{
    compile::{self, DesiredGrant},
    config::{Config, ConfigError, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    dataplane::{
        Dataplane, DataplaneError, EventReader, LoadOptions, Prefix, decode_address,
        interface_index, monotonic_coarse_ns, remove_pins,
    },
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("failed to install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("failed to watch the event ring buffer: {0}")]
    Events(#[source] io::Error),
}

/// How to run beyond what the configuration says.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Root of the pin directories (`/sys/fs/bpf/ztna`).
    pub pin_root: PathBuf,
    /// Detach and remove every pin of the instance on SIGTERM/SIGINT instead of leaving the gateway
    /// enforcing.
    pub teardown_on_exit: bool,
}

/// Requests to the task that owns the data plane.
#[derive(Debug)]
pub enum Command {
    /// Remove expired and stale-epoch grants that no static grant of the configuration names.
    SweepGrants,
    /// Stop; `signal` names what asked for it.
    Shutdown { signal: &'static str },
}

/// What start found and changed; logged, and returned for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartSummary {
    pub reused_pins: bool,
    pub prefixes_written: usize,
    pub prefixes_removed: usize,
    pub services_written: usize,
    pub services_removed: usize,
    pub grants_installed: usize,
    pub grants_kept: usize,
    pub grants_removed: usize,
}

/// Checks what the configuration names on this host before anything is loaded: every interface must
/// exist in the agent's network namespace.
pub fn preflight(config: &Config) -> Result<(), ConfigError> {
    for (i, iface) in config.interfaces.iter().enumerate() {
        if interface_index(&iface.name).is_err() {
            return Err(config.interface_problem(
                i,
                "no such interface in the agent's network namespace; check `ip link` (or run the agent \
                 in the gateway's namespace)",
            ));
        }
    }
    Ok(())
}

/// Loads (or takes over) the instance, reconciles its maps with the configuration, installs missing
/// static grants and attaches to every interface.
pub fn start(
    config: &Config,
    options: &RunOptions,
) -> Result<(Dataplane, StartSummary), AgentError> {
    preflight(config)?;
    let mut dataplane = Dataplane::load(&LoadOptions {
        instance: Some(config.instance.clone()),
        pin_root: options.pin_root.clone(),
        grants_capacity: config.grants_capacity,
    })?;
    let mut summary = StartSummary {
        reused_pins: dataplane.reused_pins(),
        ..StartSummary::default()
    };

    // Maps first, attachment last: a fresh instance starts enforcing only with its policy in place,
    // and a restarted one keeps the old program on the pinned link until the maps are reconciled.
    let installed_prefixes: Vec<(IpNet, u32)> = dataplane
        .prefixes()?
        .into_iter()
        .filter_map(|(p, id)| IpNet::new(p.addr, p.len).ok().map(|net| (net, id)))
        .collect();
    let changes = compile::diff_maps(&config.plan, &installed_prefixes, &dataplane.services()?);
    for (key, value) in &changes.upsert_services {
        dataplane.add_service(*key, *value)?;
    }
    for (prefix, net_id) in &changes.upsert_prefixes {
        dataplane.add_prefix(to_prefix(prefix)?, *net_id)?;
    }
    for prefix in &changes.remove_prefixes {
        dataplane.remove_prefix(to_prefix(prefix)?)?;
    }
    for key in &changes.remove_services {
        dataplane.remove_service(*key)?;
    }
    summary.services_written = changes.upsert_services.len();
    summary.prefixes_written = changes.upsert_prefixes.len();
    summary.prefixes_removed = changes.remove_prefixes.len();
    summary.services_removed = changes.remove_services.len();

    dataplane.set_mode(config.mode)?;
    dataplane.set_event_budget(config.events.rate_per_sec, config.events.burst)?;

    let desired = desired_grants(config);
    let installed: Vec<(IpAddr, u32)> = dataplane
        .grants()?
        .into_iter()
        .map(|g| (g.source, g.app_id))
        .collect();
    let grant_changes = compile::diff_grants(&desired, &installed);
    for (source, app_id) in &grant_changes.remove {
        dataplane.remove_grant(*source, *app_id)?;
        info!(
            %source,
            app_id,
            app = config.plan.app_name(*app_id).unwrap_or("?"),
            "removed a grant the configuration no longer names"
        );
    }
    for grant in &grant_changes.install {
        let expires_at_ns = crate::dataplane::deadline_after(grant.ttl);
        dataplane.upsert_grant(grant.source, grant.app_id, expires_at_ns)?;
        info!(
            source = %grant.source,
            app = config.plan.app_name(grant.app_id).unwrap_or("?"),
            ttl_secs = grant.ttl.as_secs_f64(),
            "installed static grant"
        );
    }
    let now = monotonic_coarse_ns();
    for (source, app_id) in &grant_changes.keep {
        if let Some(grant) = dataplane.grant(*source, *app_id)? {
            let remaining = grant.expires_at_ns.saturating_sub(now) as f64 / 1e9;
            info!(
                source = %grant.source,
                app = config.plan.app_name(grant.app_id).unwrap_or("?"),
                expires_at_ns = grant.expires_at_ns,
                remaining_secs = remaining,
                packets = grant.packets,
                "kept pinned grant with its deadline"
            );
        }
    }
    summary.grants_installed = grant_changes.install.len();
    summary.grants_kept = grant_changes.keep.len();
    summary.grants_removed = grant_changes.remove.len();
    info!(
        instance = %config.instance,
        reused_pins = summary.reused_pins,
        prefixes_written = summary.prefixes_written,
        prefixes_removed = summary.prefixes_removed,
        services_written = summary.services_written,
        services_removed = summary.services_removed,
        grants_installed = summary.grants_installed,
        grants_kept = summary.grants_kept,
        grants_removed = summary.grants_removed,
        "state reconciled"
    );

    for iface in &config.interfaces {
        let used = dataplane.attach(&iface.name, iface.attach)?;
        debug!(interface = %iface.name, mode = %used, "attached");
    }
    Ok((dataplane, summary))
}

fn to_prefix(net: &IpNet) -> Result<Prefix, DataplaneError> {
    Prefix::new(net.addr(), net.prefix_len())
}

fn desired_grants(config: &Config) -> Vec<DesiredGrant> {
    config
        .grants
        .iter()
        .filter_map(|g| {
            config.app_id(&g.app).map(|app_id| DesiredGrant {
                source: g.source,
                app_id,
                ttl: g.ttl,
            })
        })
        .collect()
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config, options: RunOptions) -> Result<(), AgentError> {
    let (commands, mut inbox) = mpsc::channel::<Command>(16);
    // Handlers go in before the kernel is touched, so that a signal during start is not fatal.
    let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;

    let (mut dataplane, _summary) = start(&config, &options)?;

    {
        let commands = commands.clone();
        tokio::spawn(async move {
            let signal = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            let _ = commands.send(Command::Shutdown { signal }).await;
        });
    }
    {
        let commands = commands.clone();
        let interval = config.sweep_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if commands.send(Command::SweepGrants).await.is_err() {
                    break;
                }
            }
        });
    }
    if let Some(reader) = dataplane.take_events() {
        let names = EventNames::new(&config);
        // SAFETY: the ring buffer's fd is owned by `reader`, which the `AsyncFd` owns for its whole
        // life; `as_raw_fd` always returns that same open fd.
        let reader = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) }
            .map_err(|e| AgentError::Events(e.into()))?;
        tokio::spawn(log_events(reader, names));
    }
    drop(commands);

    info!(
        instance = %config.instance,
        interfaces = ?dataplane.attachments(),
        mode = ?config.mode,
        "agent running"
    );

    let static_grants: BTreeSet<(IpAddr, u32)> = desired_grants(&config)
        .into_iter()
        .map(|g| (g.source, g.app_id))
        .collect();
    let mut reported_expired = BTreeSet::new();
    let signal = loop {
        match inbox.recv().await {
            Some(Command::SweepGrants) => {
                if let Err(e) = sweep(
                    &mut dataplane,
                    &config,
                    &static_grants,
                    &mut reported_expired,
                ) {
                    warn!("grant sweep failed: {e}");
                }
            }
            Some(Command::Shutdown { signal }) => break signal,
            None => break "channel closed",
        }
    };

    let stats = dataplane.stats().unwrap_or_default();
    let counts: BTreeMap<&str, u64> = stats
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (reason_name(i as u32), *n))
        .collect();
    if options.teardown_on_exit {
        let dir = dataplane.pin_dir().map(Path::to_path_buf);
        dataplane.teardown()?;
        info!(
            %signal,
            pins = ?dir,
            ?counts,
            "detached and removed every pin of the instance (--teardown-on-exit)"
        );
    } else {
        info!(
            %signal,
            pins = ?dataplane.pin_dir(),
            ?counts,
            "exiting; the XDP program stays attached and keeps enforcing with the pinned grants, which \
             still expire in the kernel (run `ztna-agent teardown --instance {}` to remove it)",
            config.instance
        );
    }
    Ok(())
}

/// Removes grants that can no longer pass and that no static grant names. Expired static grants stay
/// in the map on purpose: a restart finds them and does not renew them.
fn sweep(
    dataplane: &mut Dataplane,
    config: &Config,
    static_grants: &BTreeSet<(IpAddr, u32)>,
    reported_expired: &mut BTreeSet<(IpAddr, u32)>,
) -> Result<(), DataplaneError> {
    let now = monotonic_coarse_ns();
    let epoch = dataplane.epoch()?;
    let mut removed = 0;
    for grant in dataplane.grants()? {
        let dead = grant.expires_at_ns <= now || grant.epoch != epoch;
        if !dead {
            continue;
        }
        let key = (grant.source, grant.app_id);
        if static_grants.contains(&key) {
            if reported_expired.insert(key) {
                info!(
                    source = %grant.source,
                    app = config.plan.app_name(grant.app_id).unwrap_or("?"),
                    "static grant expired in the kernel; it stays expired across restarts (remove \
                     the instance's pins with `ztna-agent teardown` to start afresh)"
                );
            }
            continue;
        }
        if dataplane.remove_grant(grant.source, grant.app_id)? {
            removed += 1;
        }
    }
    if removed > 0 {
        info!(removed, "swept dead grants");
    }
    debug!(stats = ?dataplane.stats()?, "counters");
    Ok(())
}

/// Names for event fields: apps by id, interfaces by index.
struct EventNames {
    apps: BTreeMap<u32, String>,
    interfaces: BTreeMap<u32, String>,
}

impl EventNames {
    fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            apps: config
                .plan
                .apps
                .iter()
                .map(|a| (a.id, a.name.clone()))
                .collect(),
            interfaces: config
                .interfaces
                .iter()
                .filter_map(|i| {
                    interface_index(&i.name)
                        .ok()
                        .map(|idx| (idx, i.name.clone()))
                })
                .collect(),
        })
    }
}

async fn log_events(mut reader: AsyncFd<EventReader>, names: Arc<EventNames>) {
    loop {
        let mut guard = match reader.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!("event ring buffer failed, no more events will be logged: {e}");
                return;
            }
        };
        for event in guard.get_inner_mut().drain() {
            log_event(&event, &names);
        }
        guard.clear_ready();
    }
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        0 => "none",
        _ => "other",
    }
}

fn endpoint(addr: IpAddr, port_be: u16) -> String {
    let port = u16::from_be(port_be);
    match (addr, port) {
        (_, 0) => addr.to_string(),
        (IpAddr::V4(_), _) => format!("{addr}:{port}"),
        (IpAddr::V6(_), _) => format!("[{addr}]:{port}"),
    }
}

fn log_event(event: &Event, names: &EventNames) {
    let kind = if event.kind == EVENT_WOULD_DENY {
        "would_deny"
    } else {
        "deny"
    };
    let src = decode_address(event.src);
    let dst = decode_address(event.dst);
    let app = names.apps.get(&event.app_id).map_or("-", String::as_str);
    let interface = names
        .interfaces
        .get(&event.ifindex)
        .cloned()
        .unwrap_or_else(|| event.ifindex.to_string());
    let reason = reason_name(event.reason);
    let proto = proto_name(event.proto);
    info!(
        target: "ztna::event",
        kind,
        reason,
        proto,
        src = %src,
        sport = u16::from_be(event.sport_be),
        dst = %dst,
        dport = u16::from_be(event.dport_be),
        app,
        interface = %interface,
        len = event.pkt_len,
        "{kind} {reason}: {proto} {} -> {} app={app} on {interface}",
        endpoint(src, event.sport_be),
        endpoint(dst, event.dport_be),
    );
}

/// Detaches the instance and removes its pins (`ztna-agent teardown`). Returns false when nothing
/// was pinned. A running agent keeps its own link open until it exits.
pub fn teardown(pin_root: &Path, instance: &str) -> Result<bool, DataplaneError> {
    let dir = pin_root.join(instance);
    if !dir.exists() {
        return Ok(false);
    }
    remove_pins(&dir)?;
    Ok(true)
}
