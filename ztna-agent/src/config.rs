//! The agent's TOML configuration: parsing and validation.
//!
//! Everything here is pure: a file is read, parsed and checked before anything touches the kernel, and
//! every problem is reported at once with the file, the line, the key and what to do about it:
//!
//! ```text
//! lab.toml:14:14: apps[1].services[0] "tcp/70000": port 70000 exceeds 65535; use a port between 1 and 65535
//! ```
//!
//! The format (grants are static for now; the control plane will add sessions next to them):
//!
//! ```toml
//! instance = "lab"              # pins live under /sys/fs/bpf/ztna/lab/
//! mode = "enforce"              # enforce | monitor
//! grants_capacity = 65536       # grants the grant table admits
//! sweep_interval = "10s"        # how often expired grants are removed from the map
//!
//! [events]                      # sampled deny / would-deny events, per CPU
//! rate_per_sec = 100
//! burst = 100
//!
//! [[interfaces]]
//! name = "eth1"
//! attach = "auto"               # auto | driver | generic
//!
//! [[apps]]
//! name = "web"
//! prefixes = ["10.0.100.0/24", "fd00:100::/64"]
//! services = ["tcp/80", "tcp/8000-8010", "icmp", "icmpv6"]
//! mode = "inherit"              # inherit | enforce | monitor
//!
//! [[grants]]
//! source = "10.0.1.2"
//! app = "web"
//! ttl = "1h"                    # or an integer number of seconds
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;
use ztna_common::{
    maps::{PROTECTED_CAPACITY, SERVICES_CAPACITY},
    service::{APP_MODE_ENFORCE, APP_MODE_INHERIT, APP_MODE_MONITOR},
};

use crate::{
    compile::{self, CompileError},
    dataplane::{AttachMode, Mode},
};

/// Largest grant map the agent will ask for (about 2 GiB of kernel memory at 120 bytes per grant).
pub const MAX_GRANTS_CAPACITY: u32 = 1 << 24;
/// Default grant map size.
pub const DEFAULT_GRANTS_CAPACITY: u32 = 65_536;
/// Default interval between grant sweeps.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const MAX_INTERFACE_NAME: usize = 15;
/// Longest instance name (it names a directory under bpffs).
const MAX_INSTANCE_NAME: usize = 64;
/// Longest static grant: ten years.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// IP protocol numbers the configuration names.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("failed to read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}", .problems.iter().map(|p| format!("{file}{p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when the problem has a place in the file.
    pub location: Option<(usize, usize)>,
    /// The key, e.g. `apps[1].services[0]`.
    pub key: String,
    /// What is wrong and how to fix it (includes the offending value).
    pub message: String,
}

impl fmt::Display for Problem {
    /// Formats as `:line:column: key: message`, to follow the file name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {} {}", self.key, self.message)
    }
}

/// Per-app enforcement mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppMode {
    /// Follow the global mode.
    #[default]
    Inherit,
    /// Enforce even when the gateway is in monitor mode.
    Enforce,
    /// Pass and report would-drops even when the gateway enforces.
    Monitor,
}

impl AppMode {
    /// The `ztna_common::service::APP_MODE_*` value.
    pub const fn raw(self) -> u32 {
        match self {
            Self::Inherit => APP_MODE_INHERIT,
            Self::Enforce => APP_MODE_ENFORCE,
            Self::Monitor => APP_MODE_MONITOR,
        }
    }
}

/// One service of an app: a protocol and, for TCP and UDP, a port range.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// IP protocol number; [`PROTO_ANY`] for every protocol.
    pub proto: u8,
    /// Destination ports; `None` for every port (and for protocols without ports).
    pub ports: Option<RangeInclusive<u16>>,
}

impl Service {
    /// Whether two services claim a common (protocol, port).
    pub fn overlaps(&self, other: &Self) -> bool {
        let proto =
            self.proto == PROTO_ANY || other.proto == PROTO_ANY || self.proto == other.proto;
        let ports = match (&self.ports, &other.ports) {
            (Some(a), Some(b)) => a.start() <= b.end() && b.start() <= a.end(),
            _ => true,
        };
        proto && ports
    }

    /// Number of map entries the service expands to.
    pub fn entry_count(&self) -> usize {
        match &self.ports {
            Some(range) => usize::from(range.end() - range.start()) + 1,
            None => 1,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            PROTO_ANY => "any",
            PROTO_ICMP => "icmp",
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            PROTO_ICMPV6 => "icmpv6",
            _ => "?",
        };
        match &self.ports {
            None => f.write_str(proto),
            Some(r) if r.start() == r.end() => write!(f, "{proto}/{}", r.start()),
            Some(r) => write!(f, "{proto}/{}-{}", r.start(), r.end()),
        }
    }
}

impl FromStr for Service {
    type Err = String;

    /// Parses `tcp/80`, `tcp/8000-8010`, `udp/53`, `tcp` (every port), `udp`, `icmp`, `icmpv6`, `any`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORMS: &str = "write tcp/PORT, tcp/FIRST-LAST, tcp, udp/PORT, udp/FIRST-LAST, udp, icmp, icmpv6 or any";
        let (proto_text, ports_text) = match text.split_once('/') {
            Some((proto, ports)) => (proto, Some(ports)),
            None => (text, None),
        };
        let proto = match proto_text.to_ascii_lowercase().as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "icmp" => PROTO_ICMP,
            "icmpv6" => PROTO_ICMPV6,
            "any" => PROTO_ANY,
            other => return Err(format!("unknown protocol {other:?}; {FORMS}")),
        };
        let Some(ports_text) = ports_text else {
            return Ok(Self { proto, ports: None });
        };
        if !matches!(proto, PROTO_TCP | PROTO_UDP) {
            return Err(format!(
                "{proto_text} has no ports; write {proto_text:?} alone"
            ));
        }
        let parse_port = |p: &str| -> Result<u16, String> {
            let p = p.trim();
            let n: u64 = p
                .parse()
                .map_err(|_| format!("port {p:?} is not a number; {FORMS}"))?;
            if n > 65_535 {
                return Err(format!(
                    "port {n} exceeds 65535; use a port between 1 and 65535"
                ));
            }
            if n == 0 {
                return Err(format!(
                    "port 0 is not a port; write {proto_text:?} alone for every port"
                ));
            }
            Ok(n as u16)
        };
        let (first, last) = match ports_text.split_once('-') {
            Some((a, b)) => (parse_port(a)?, parse_port(b)?),
            None => {
                let p = parse_port(ports_text)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!(
                "range {first}-{last} is backwards; write {proto_text}/{last}-{first}"
            ));
        }
        Ok(Self {
            proto,
            ports: Some(first..=last),
        })
    }
}

/// An interface to attach the XDP program to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub attach: AttachMode,
}

/// A protected application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub name: String,
    /// Destination prefixes, host bits clear.
    pub prefixes: Vec<IpNet>,
    pub services: Vec<Service>,
    pub mode: AppMode,
}

/// A grant installed from the configuration, without an identity behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticGrant {
    pub source: IpAddr,
    /// Name of an app in [`Config::apps`].
    pub app: String,
    /// Lifetime, counted from when the grant is first installed in the instance's pinned map.
    pub ttl: Duration,
}

/// Sampling budget of deny / would-deny events, per CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventBudget {
    pub rate_per_sec: u32,
    pub burst: u32,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// How the file was named (for messages).
    pub file: String,
    pub instance: String,
    pub mode: Mode,
    pub grants_capacity: u32,
    pub sweep_interval: Duration,
    pub events: EventBudget,
    pub interfaces: Vec<Interface>,
    pub apps: Vec<App>,
    pub grants: Vec<StaticGrant>,
    /// The map entries the apps compile to.
    pub plan: compile::Plan,
    /// Where each interface name is in the file, for errors found later (a missing interface).
    interface_locations: Vec<Option<(usize, usize)>>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates `text`; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        Validator {
            text,
            problems: Vec::new(),
        }
        .validate(file, raw)
    }

    /// A problem with interface `index`, e.g. that it does not exist, reported like a validation error.
    pub fn interface_problem(&self, index: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            problems: vec![Problem {
                location: self.interface_locations.get(index).copied().flatten(),
                key: format!(
                    "interfaces[{index}].name {:?}:",
                    self.interfaces[index].name
                ),
                message: message.into(),
            }],
        }
    }

    /// App id of `name` (ids start at 1, in the order of the file).
    pub fn app_id(&self, name: &str) -> Option<u32> {
        self.apps
            .iter()
            .position(|app| app.name == name)
            .map(|i| i as u32 + 1)
    }
}

// --- raw, as written -----------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    instance: Spanned<String>,
    mode: Option<Spanned<String>>,
    grants_capacity: Option<Spanned<i64>>,
    sweep_interval: Option<Spanned<RawDuration>>,
    events: Option<RawEvents>,
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    grants: Vec<RawGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    rate_per_sec: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    attach: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Spanned<String>,
    prefixes: Spanned<Vec<Spanned<String>>>,
    services: Spanned<Vec<Spanned<String>>>,
    mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    source: Spanned<String>,
    app: Spanned<String>,
    ttl: Spanned<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(i64),
    Text(String),
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Parses `90`, `90s`, `15m`, `1h`, `2d`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration; write a number with a unit: 500ms, 90s, 15m, 8h, 7d")
    })?;
    let seconds = |factor: u64| Duration::from_secs(n.saturating_mul(factor));
    Ok(match unit.trim() {
        "" | "s" => seconds(1),
        "ms" => Duration::from_millis(n),
        "m" | "min" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m, h or d"
            ));
        }
    })
}

// --- validation ----------------------------------------------------------------------------------

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn at(&self, span: Range<usize>) -> Option<(usize, usize)> {
        Some(line_column(self.text, span.start))
    }

    fn problem(&mut self, span: Option<Range<usize>>, key: String, message: String) {
        let location = span.and_then(|s| self.at(s));
        self.problems.push(Problem {
            location,
            key,
            message,
        });
    }

    fn validate(mut self, file: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        let instance = raw.instance.get_ref().clone();
        let valid_instance = !instance.is_empty()
            && instance.len() <= MAX_INSTANCE_NAME
            && instance != "."
            && instance != ".."
            && instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_instance {
            self.problem(
                Some(raw.instance.span()),
                format!("instance {instance:?}:"),
                format!(
                    "use 1 to {MAX_INSTANCE_NAME} letters, digits, '-', '_' or '.' (it names the pin \
                     directory /sys/fs/bpf/ztna/<instance>)"
                ),
            );
        }

        let mode = match &raw.mode {
            None => Mode::Enforce,
            Some(m) => match m.get_ref().as_str() {
                "enforce" => Mode::Enforce,
                "monitor" => Mode::Monitor,
                other => {
                    self.problem(
                        Some(m.span()),
                        format!("mode {other:?}:"),
                        "expected \"enforce\" or \"monitor\"".into(),
                    );
                    Mode::Enforce
                }
            },
        };

        let grants_capacity = match &raw.grants_capacity {
            None => DEFAULT_GRANTS_CAPACITY,
            Some(c) => {
                let n = *c.get_ref();
                if n < 1 || n > i64::from(MAX_GRANTS_CAPACITY) {
                    self.problem(
                        Some(c.span()),
                        format!("grants_capacity {n}:"),
                        format!("use a size between 1 and {MAX_GRANTS_CAPACITY}"),
                    );
                    DEFAULT_GRANTS_CAPACITY
                } else {
                    n as u32
                }
            }
        };
        if raw.grants.len() as u64 > u64::from(grants_capacity) {
            self.problem(
                raw.grants_capacity.as_ref().map(|c| c.span()),
                format!("grants_capacity {grants_capacity}:"),
                format!(
                    "smaller than the {} static grants; raise it",
                    raw.grants.len()
                ),
            );
        }

        let sweep_interval = match &raw.sweep_interval {
            None => DEFAULT_SWEEP_INTERVAL,
            Some(d) => match self.duration(d, "sweep_interval") {
                Some(d) if d >= Duration::from_millis(100) => d,
                Some(d) => {
                    self.problem(
                        Some(raw.sweep_interval.as_ref().expect("present").span()),
                        "sweep_interval".into(),
                        format!("{d:?} is too short; use at least 100ms"),
                    );
                    DEFAULT_SWEEP_INTERVAL
                }
                None => DEFAULT_SWEEP_INTERVAL,
            },
        };

        let events = self.events(raw.events.as_ref());
        let (interfaces, interface_locations) = self.interfaces(&raw.interfaces);
        let apps = self.apps(&raw.apps);
        let grants = self.grants(&raw.grants, &apps);

        // Compile only what parsed: conflicts between apps are reported on top of syntax problems
        // only when the apps themselves are sound, so that one mistake does not echo.
        let mut plan = compile::Plan::default();
        if self.problems.is_empty() {
            match compile::compile(&apps) {
                Ok(p) => plan = p,
                Err(errors) => {
                    for error in errors {
                        self.compile_problem(&raw.apps, &apps, error);
                    }
                }
            }
        }

        if !self.problems.is_empty() {
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                problems: self.problems,
            });
        }
        Ok(Config {
            file: file.to_owned(),
            instance,
            mode,
            grants_capacity,
            sweep_interval,
            events,
            interfaces,
            apps,
            grants,
            plan,
            interface_locations,
        })
    }

    fn duration(&mut self, raw: &Spanned<RawDuration>, key: &str) -> Option<Duration> {
        match raw.get_ref() {
            RawDuration::Seconds(n) if *n >= 0 => Some(Duration::from_secs(*n as u64)),
            RawDuration::Seconds(n) => {
                self.problem(
                    Some(raw.span()),
                    format!("{key} {n}:"),
                    "a duration cannot be negative".into(),
                );
                None
            }
            RawDuration::Text(text) => match parse_duration(text) {
                Ok(d) => Some(d),
                Err(message) => {
                    self.problem(Some(raw.span()), format!("{key}:"), message);
                    None
                }
            },
        }
    }

    fn events(&mut self, raw: Option<&RawEvents>) -> EventBudget {
        let mut budget = EventBudget {
            rate_per_sec: 100,
            burst: 100,
        };
        let Some(raw) = raw else { return budget };
        for (key, value, slot) in [
            (
                "events.rate_per_sec",
                &raw.rate_per_sec,
                &mut budget.rate_per_sec,
            ),
            ("events.burst", &raw.burst, &mut budget.burst),
        ] {
            if let Some(v) = value {
                let n = *v.get_ref();
                match u32::try_from(n) {
                    Ok(n) => *slot = n,
                    Err(_) => self.problem(
                        Some(v.span()),
                        format!("{key} {n}:"),
                        format!("use a number between 0 and {}", u32::MAX),
                    ),
                }
            }
        }
        if budget.rate_per_sec > 0 && budget.burst == 0 {
            self.problem(
                raw.burst.as_ref().map(|b| b.span()),
                "events.burst 0:".into(),
                "a burst of 0 emits no event; set burst >= 1, or rate_per_sec = 0 to turn events off"
                    .into(),
            );
        }
        budget
    }

    fn interfaces(
        &mut self,
        raw: &[RawInterface],
    ) -> (Vec<Interface>, Vec<Option<(usize, usize)>>) {
        if raw.is_empty() {
            self.problem(
                None,
                "interfaces:".into(),
                "no interface to attach to; add [[interfaces]] with name = \"<client-facing \
                 interface>\""
                    .into(),
            );
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut locations = Vec::new();
        for (i, iface) in raw.iter().enumerate() {
            let name = iface.name.get_ref();
            let key = format!("interfaces[{i}].name {name:?}:");
            if name.is_empty()
                || name.len() > MAX_INTERFACE_NAME
                || name.chars().any(|c| c == '/' || c.is_whitespace())
            {
                self.problem(
                    Some(iface.name.span()),
                    key.clone(),
                    format!(
                        "an interface name has 1 to {MAX_INTERFACE_NAME} characters without '/' or \
                         spaces"
                    ),
                );
            } else if !seen.insert(name.clone()) {
                self.problem(
                    Some(iface.name.span()),
                    key.clone(),
                    "listed twice; remove one".into(),
                );
            }
            let attach = match &iface.attach {
                None => AttachMode::Auto,
                Some(a) => match a.get_ref().as_str() {
                    "auto" => AttachMode::Auto,
                    "driver" => AttachMode::Driver,
                    "generic" => AttachMode::Generic,
                    other => {
                        self.problem(
                            Some(a.span()),
                            format!("interfaces[{i}].attach {other:?}:"),
                            "expected \"auto\", \"driver\" or \"generic\"".into(),
                        );
                        AttachMode::Auto
                    }
                },
            };
            locations.push(self.at(iface.name.span()));
            out.push(Interface {
                name: name.clone(),
                attach,
            });
        }
        (out, locations)
    }

    fn apps(&mut self, raw: &[RawApp]) -> Vec<App> {
        let mut names = BTreeSet::new();
        let mut apps = Vec::new();
        for (i, app) in raw.iter().enumerate() {
            let name = app.name.get_ref().clone();
            if name.trim().is_empty() {
                self.problem(
                    Some(app.name.span()),
                    format!("apps[{i}].name:"),
                    "an app needs a name".into(),
                );
            } else if !names.insert(name.clone()) {
                self.problem(
                    Some(app.name.span()),
                    format!("apps[{i}].name {name:?}:"),
                    "another app has this name; app names must be unique".into(),
                );
            }

            if app.prefixes.get_ref().is_empty() {
                self.problem(
                    Some(app.prefixes.span()),
                    format!("apps[{i}].prefixes:"),
                    "empty; list the destination prefixes the app lives on, e.g. \
                     [\"10.0.100.0/24\"]"
                        .into(),
                );
            }
            let mut prefixes = Vec::new();
            for (j, prefix) in app.prefixes.get_ref().iter().enumerate() {
                let key = format!("apps[{i}].prefixes[{j}] {:?}:", prefix.get_ref());
                match parse_prefix(prefix.get_ref()) {
                    Ok(net) => prefixes.push(net),
                    Err(message) => self.problem(Some(prefix.span()), key, message),
                }
            }

            if app.services.get_ref().is_empty() {
                self.problem(
                    Some(app.services.span()),
                    format!("apps[{i}].services:"),
                    "empty; list what the app serves, e.g. [\"tcp/443\"], or [\"any\"]".into(),
                );
            }
            let mut services = Vec::new();
            for (j, service) in app.services.get_ref().iter().enumerate() {
                let key = format!("apps[{i}].services[{j}] {:?}:", service.get_ref());
                match service.get_ref().parse::<Service>() {
                    Ok(s) => services.push(s),
                    Err(message) => self.problem(Some(service.span()), key, message),
                }
            }

            let mode = match &app.mode {
                None => AppMode::Inherit,
                Some(m) => match m.get_ref().as_str() {
                    "inherit" => AppMode::Inherit,
                    "enforce" => AppMode::Enforce,
                    "monitor" => AppMode::Monitor,
                    other => {
                        self.problem(
                            Some(m.span()),
                            format!("apps[{i}].mode {other:?}:"),
                            "expected \"inherit\", \"enforce\" or \"monitor\"".into(),
                        );
                        AppMode::Inherit
                    }
                },
            };
            apps.push(App {
                name,
                prefixes,
                services,
                mode,
            });
        }
        apps
    }

    fn grants(&mut self, raw: &[RawGrant], apps: &[App]) -> Vec<StaticGrant> {
        let mut seen = BTreeMap::new();
        let mut grants = Vec::new();
        for (i, grant) in raw.iter().enumerate() {
            let source_text = grant.source.get_ref();
            let source = match source_text.trim().parse::<IpAddr>() {
                Ok(addr) => Some(addr.to_canonical()),
                Err(_) => {
                    let hint = if source_text.contains('/') {
                        "grants are per source address, not per prefix; list each address"
                    } else {
                        "expected an IPv4 or IPv6 address, e.g. \"10.0.1.2\" or \"fd00:1::2\""
                    };
                    self.problem(
                        Some(grant.source.span()),
                        format!("grants[{i}].source {source_text:?}:"),
                        hint.into(),
                    );
                    None
                }
            };
            let app = grant.app.get_ref();
            if !apps.iter().any(|a| &a.name == app) {
                let known: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
                self.problem(
                    Some(grant.app.span()),
                    format!("grants[{i}].app {app:?}:"),
                    format!(
                        "no app has this name; known apps: {}",
                        if known.is_empty() {
                            "none (add [[apps]])".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            let ttl = self.duration(&grant.ttl, &format!("grants[{i}].ttl"));
            if let Some(ttl) = ttl
                && (ttl.is_zero() || ttl > MAX_TTL)
            {
                self.problem(
                    Some(grant.ttl.span()),
                    format!("grants[{i}].ttl:"),
                    format!("{ttl:?} is out of range; use between 1s and 3650d"),
                );
            }
            if let Some(source) = source {
                if let Some(first) = seen.insert((source, app.clone()), i) {
                    self.problem(
                        Some(grant.source.span()),
                        format!("grants[{i}]:"),
                        format!("repeats grants[{first}] ({source} to {app:?}); remove one"),
                    );
                }
                grants.push(StaticGrant {
                    source,
                    app: app.clone(),
                    ttl: ttl.unwrap_or_default(),
                });
            }
        }
        grants
    }

    fn compile_problem(&mut self, raw: &[RawApp], apps: &[App], error: CompileError) {
        match error {
            CompileError::Conflict {
                prefix,
                first,
                second,
            } => {
                let (a, s) = second;
                let span = raw[a].services.get_ref()[s].span();
                self.problem(
                    Some(span),
                    format!("apps[{a}].services[{s}] {:?}:", apps[a].services[s].to_string()),
                    format!(
                        "app {:?} claims {} on {prefix}, which app {:?} (apps[{}].services[{}] \"{}\") \
                         already claims there; narrow the services or the prefixes of one of them",
                        apps[a].name,
                        apps[a].services[s],
                        apps[first.0].name,
                        first.0,
                        first.1,
                        apps[first.0].services[first.1],
                    ),
                );
            }
            CompileError::TooManyServices { entries } => self.problem(
                None,
                "apps:".into(),
                format!(
                    "the services expand to {entries} map entries (one per port and prefix), more than \
                     the {SERVICES_CAPACITY} the gateway holds; use whole-protocol services (\"tcp\") \
                     or fewer prefixes"
                ),
            ),
            CompileError::TooManyPrefixes { family, count } => self.problem(
                None,
                "apps:".into(),
                format!(
                    "{count} distinct {family} prefixes, more than the {PROTECTED_CAPACITY} the gateway \
                     holds; aggregate them"
                ),
            ),
        }
    }
}

/// Parses `10.0.0.0/24`, `fd00::/64`, or a bare address (a /32 or /128), refusing set host bits.
pub(crate) fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr.to_canonical()),
            Err(_) => {
                return Err(
                    "expected an IPv4 or IPv6 prefix such as \"10.0.100.0/24\" or \"fd00:100::/64\", \
                     with a length of at most 32 (IPv4) or 128 (IPv6)"
                        .into(),
                );
            }
        },
    };
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return Err(format!(
            "an IPv4-mapped prefix never matches: IPv4 traffic is matched by its IPv4 address; \
             write it as \"{v4}/{}\"",
            v6.prefix_len() - 96
        ));
    }
    if net.trunc() != net {
        return Err(format!(
            "host bits are set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
instance = "lab"
mode = "monitor"
grants_capacity = 1024
sweep_interval = "2s"

[events]
rate_per_sec = 10
burst = 20

[[interfaces]]
name = "eth1"
attach = "generic"

[[apps]]
name = "web"
prefixes = ["10.0.100.0/24", "fd00:100::/64"]
services = ["tcp/80", "tcp/8000-8010", "icmp"]

[[apps]]
name = "dns"
prefixes = ["10.0.100.53"]
services = ["udp/53"]
mode = "enforce"

[[grants]]
source = "10.0.1.2"
app = "web"
ttl = "1h"

[[grants]]
source = "fd00:1::2"
app = "dns"
ttl = 90
"#;

    fn problems(text: &str) -> String {
        match Config::parse("lab.toml", text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_a_full_configuration() {
        let config = Config::parse("lab.toml", GOOD).unwrap();
        assert_eq!(config.instance, "lab");
        assert_eq!(config.mode, Mode::Monitor);
        assert_eq!(config.grants_capacity, 1024);
        assert_eq!(config.sweep_interval, Duration::from_secs(2));
        assert_eq!(
            config.events,
            EventBudget {
                rate_per_sec: 10,
                burst: 20
            }
        );
        assert_eq!(
            config.interfaces,
            vec![Interface {
                name: "eth1".into(),
                attach: AttachMode::Generic
            }]
        );
        assert_eq!(config.apps.len(), 2);
        assert_eq!(
            config.apps[1].prefixes,
            vec!["10.0.100.53/32".parse().unwrap()]
        );
        assert_eq!(config.apps[1].mode, AppMode::Enforce);
        assert_eq!(config.app_id("web"), Some(1));
        assert_eq!(config.app_id("dns"), Some(2));
        assert_eq!(config.grants[1].ttl, Duration::from_secs(90));
        assert_eq!(
            config.grants[1].source,
            "fd00:1::2".parse::<IpAddr>().unwrap()
        );
        assert!(!config.plan.services.is_empty());
    }

    #[test]
    fn defaults_apply() {
        let config = Config::parse(
            "min.toml",
            "instance = \"x\"\n[[interfaces]]\nname = \"eth0\"\n",
        )
        .unwrap();
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.grants_capacity, DEFAULT_GRANTS_CAPACITY);
        assert_eq!(config.interfaces[0].attach, AttachMode::Auto);
        assert_eq!(config.sweep_interval, DEFAULT_SWEEP_INTERVAL);
    }

    #[test]
    fn port_out_of_range_names_file_line_key_and_fix() {
        let text = GOOD.replace("\"udp/53\"", "\"tcp/70000\"");
        let message = problems(&text);
        assert_eq!(
            message,
            "lab.toml:23:13: apps[1].services[0] \"tcp/70000\": port 70000 exceeds 65535; use a port \
             between 1 and 65535"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD
            .replace("\"10.0.1.2\"", "\"10.0.1.0/24\"")
            .replace("app = \"dns\"", "app = \"dnss\"")
            .replace("\"generic\"", "\"native\"");
        let message = problems(&text);
        assert!(
            message.contains("interfaces[0].attach \"native\": expected"),
            "{message}"
        );
        assert!(
            message.contains("grants[0].source \"10.0.1.0/24\": grants are per source"),
            "{message}"
        );
        assert!(
            message.contains("grants[1].app \"dnss\": no app has this name; known apps: web, dns"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 3, "{message}");
    }

    #[test]
    fn syntax_and_unknown_keys_are_located() {
        let message = problems("instance = \"x\"\nmodee = \"enforce\"\n");
        assert!(
            message.starts_with("lab.toml:2:1: unknown field `modee`"),
            "{message}"
        );
        let message = problems("instance = \"x\"\n[[interfaces]\n");
        assert!(message.starts_with("lab.toml:2:"), "{message}");
        let message = problems("mode = \"enforce\"\n");
        assert!(message.contains("missing field `instance`"), "{message}");
    }

    #[test]
    fn service_forms() {
        let s = |t: &str| t.parse::<Service>();
        assert_eq!(
            s("tcp/80").unwrap(),
            Service {
                proto: PROTO_TCP,
                ports: Some(80..=80)
            }
        );
        assert_eq!(s("udp/53").unwrap().to_string(), "udp/53");
        assert_eq!(s("tcp/8000-8010").unwrap().entry_count(), 11);
        assert_eq!(
            s("tcp").unwrap(),
            Service {
                proto: PROTO_TCP,
                ports: None
            }
        );
        assert_eq!(s("icmp").unwrap().proto, PROTO_ICMP);
        assert_eq!(s("icmpv6").unwrap().proto, PROTO_ICMPV6);
        assert_eq!(
            s("any").unwrap(),
            Service {
                proto: PROTO_ANY,
                ports: None
            }
        );
        assert!(s("tcp/0").unwrap_err().contains("write \"tcp\" alone"));
        assert!(
            s("tcp/90-80")
                .unwrap_err()
                .contains("backwards; write tcp/80-90")
        );
        assert!(s("icmp/8").unwrap_err().contains("has no ports"));
        assert!(s("sctp/9").unwrap_err().contains("unknown protocol"));
        assert!(s("tcp/http").unwrap_err().contains("not a number"));
    }

    #[test]
    fn overlapping_services() {
        let s = |t: &str| t.parse::<Service>().unwrap();
        assert!(s("tcp/80").overlaps(&s("tcp/70-90")));
        assert!(s("tcp").overlaps(&s("tcp/22")));
        assert!(s("any").overlaps(&s("icmp")));
        assert!(!s("tcp/80").overlaps(&s("udp/80")));
        assert!(!s("tcp/80").overlaps(&s("tcp/81-90")));
        assert!(!s("icmp").overlaps(&s("icmpv6")));
    }

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(
            parse_prefix("10.0.0.0/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert!(
            parse_prefix("10.0.0.5/24")
                .unwrap_err()
                .contains("did you mean \"10.0.0.0/24\"")
        );
        assert!(
            parse_prefix("10.0.0.0/33")
                .unwrap_err()
                .contains("at most 32")
        );
        assert!(
            parse_prefix("::ffff:10.0.0.0/120")
                .unwrap_err()
                .contains("\"10.0.0.0/24\"")
        );
        assert_eq!(parse_prefix("fd00::1").unwrap().prefix_len(), 128);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn conflicting_apps_are_reported_on_the_later_service() {
        let text = GOOD.replace("\"udp/53\"", "\"tcp/8005\"");
        let message = problems(&text);
        assert!(
            message.starts_with("lab.toml:23:13: apps[1].services[0] \"tcp/8005\": app \"dns\" claims tcp/8005 on 10.0.100.53/32, which app \"web\" (apps[0].services[1] \"tcp/8000-8010\") already claims there"),
            "{message}"
        );
    }

    #[test]
    fn other_checks() {
        assert!(problems(&GOOD.replace("\"lab\"", "\"../etc\"")).contains("instance \"../etc\""));
        assert!(
            problems(&GOOD.replace("\"eth1\"", "\"an-interface-name-too-long\""))
                .contains("1 to 15 characters")
        );
        assert!(problems(&GOOD.replace("ttl = 90", "ttl = \"0s\"")).contains("out of range"));
        assert!(problems(&GOOD.replace("burst = 20", "burst = 0")).contains("a burst of 0"));
        assert!(
            problems(&GOOD.replace("grants_capacity = 1024", "grants_capacity = 1"))
                .contains("smaller than the 2 static grants")
        );
        assert!(
            problems(&GOOD.replace("name = \"dns\"", "name = \"web\"")).contains("must be unique")
        );
        let twice = format!("{GOOD}\n[[grants]]\nsource = \"10.0.1.2\"\napp = \"web\"\nttl = 5\n");
        assert!(problems(&twice).contains("repeats grants[0]"));
        assert!(problems("instance = \"x\"\n").contains("interfaces: no interface to attach to"));
    }
}
