//! Reading the policy file: every problem at once, each located by line and column.
//!
//! The file is parsed into `toml`'s spanned document tree and walked by hand rather than through
//! `serde(deny_unknown_fields)`: serde stops at the first unknown key or wrong type, while an operator
//! fixing a policy wants the whole list.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    ops::Range,
    time::Duration,
};

use jiff::tz::TimeZone;
use serde_json::Value as Json;
use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::{ClaimCondition, Context, DeviceRequirement, Policy, Rule, TimeWindow, Who};
use crate::{
    compile::{self, CompileError},
    config::{App, AppMode, Service, line_column, parse_duration, parse_prefix},
    identity::{ClaimPath, MfaRequirement},
    posture::{OsVersion, PostureProfile, Signal},
};

/// Longest session a rule may grant.
pub const MAX_SESSION: Duration = Duration::from_secs(30 * 86_400);
/// Longest report age a profile may allow.
pub const MAX_REPORT_AGE: Duration = Duration::from_secs(86_400);

/// One problem (or warning) in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// What is wrong, with the offending value, and what to do.
    pub message: String,
}

/// Everything wrong with a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors {
    pub file: String,
    /// In file order.
    pub errors: Vec<PolicyError>,
}

impl PolicyErrors {
    /// `file:line:column: message`, one per error.
    pub fn lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|e| format!("{}:{}:{}: {}", self.file, e.line, e.column, e.message))
            .collect()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for PolicyErrors {}

type Value<'i> = Spanned<DeValue<'i>>;

const APP_KEYS: &[&str] = &["name", "description", "prefixes", "services", "mode"];
const POSTURE_KEYS: &[&str] = &[
    "name",
    "description",
    "os",
    "min_os_version",
    "min_kernel_version",
    "disk_encryption",
    "firewall",
    "screen_lock",
    "required_processes",
    "max_patch_age_days",
    "min_client_version",
    "max_report_age",
    "max_signal_age",
];
const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "apps",
    "who",
    "device",
    "context",
    "max_session",
];
const WHO_KEYS: &[&str] = &["users", "groups", "claims", "authenticated"];
const DEVICE_KEYS: &[&str] = &["posture", "certificate"];
const CONTEXT_KEYS: &[&str] = &["source", "time", "mfa"];
const WINDOW_KEYS: &[&str] = &["days", "from", "to", "tz"];
const MFA_KEYS: &[&str] = &["amr", "acr", "max_auth_age"];

pub(super) fn parse(text: &str, file: &str) -> Result<Policy, PolicyErrors> {
    let mut reader = Reader {
        text,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for error in syntax {
            let at = error.span().map_or(0, |s| s.start);
            reader.error_at(at, error.message().trim().to_owned());
        }
        return Err(reader.finish_errors(file));
    }
    let root = root.get_ref();
    reader.known_keys(root, &["apps", "posture", "rules"], "policy");

    let (apps, service_spans) = reader.apps(root.get("apps"));
    let posture = reader.profiles(root.get("posture"));
    let rules = reader.rules(root.get("rules"), &apps, &posture);

    // Conflicts between apps are looked for only among sound apps, so that one mistake does not echo.
    if reader.errors.is_empty()
        && let Err(conflicts) = compile::compile(&apps)
    {
        for conflict in conflicts {
            reader.compile_problem(conflict, &apps, &service_spans, root.get("apps"));
        }
    }
    if !reader.errors.is_empty() {
        return Err(reader.finish_errors(file));
    }
    reader.unused(root, &apps, &posture, &rules);
    let mut warnings = std::mem::take(&mut reader.warnings);
    warnings.sort_by_key(|w| (w.line, w.column));
    Ok(Policy {
        file: file.to_owned(),
        apps,
        posture,
        rules,
        warnings,
    })
}

struct Reader<'t> {
    text: &'t str,
    errors: Vec<PolicyError>,
    warnings: Vec<PolicyError>,
}

impl Reader<'_> {
    fn locate(&self, offset: usize, message: String) -> PolicyError {
        let (line, column) = line_column(self.text, offset);
        PolicyError {
            line,
            column,
            message,
        }
    }

    fn error_at(&mut self, offset: usize, message: String) {
        let error = self.locate(offset, message);
        self.errors.push(error);
    }

    fn error(&mut self, span: Range<usize>, message: String) {
        self.error_at(span.start, message);
    }

    fn warn(&mut self, span: Range<usize>, message: String) {
        let warning = self.locate(span.start, message);
        self.warnings.push(warning);
    }

    fn finish_errors(&mut self, file: &str) -> PolicyErrors {
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        PolicyErrors {
            file: file.to_owned(),
            errors,
        }
    }

    // --- typed access ----------------------------------------------------------------------------

    fn known_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], what: &str) {
        for key in table.keys() {
            let name: &str = key.get_ref();
            if !allowed.contains(&name) {
                self.error(
                    key.span(),
                    format!(
                        "{what}: unknown key {name:?}; expected {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn wrong_type(&mut self, value: &Value<'_>, what: &str, expected: &str) {
        self.error(
            value.span(),
            format!(
                "{what}: expected {expected}, found {}",
                value.get_ref().type_str()
            ),
        );
    }

    fn string(&mut self, value: &Value<'_>, what: &str) -> Option<String> {
        match value.get_ref().as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.wrong_type(value, what, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, value: Option<&Value<'_>>, what: &str) -> bool {
        let Some(value) = value else { return false };
        match value.get_ref().as_bool() {
            Some(b) => b,
            None => {
                self.wrong_type(value, what, "true or false");
                false
            }
        }
    }

    fn table<'a, 'i>(&mut self, value: &'a Value<'i>, what: &str) -> Option<&'a DeTable<'i>> {
        let table = value.get_ref().as_table();
        if table.is_none() {
            self.wrong_type(value, what, "a table");
        }
        table
    }

    fn array<'a, 'i>(&mut self, value: &'a Value<'i>, what: &str) -> &'a [Value<'i>] {
        match value.get_ref().as_array() {
            Some(items) => items,
            None => {
                self.wrong_type(value, what, "an array");
                &[]
            }
        }
    }

    /// An array of strings, each with its span.
    fn strings(&mut self, value: Option<&Value<'_>>, what: &str) -> Vec<(String, Range<usize>)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in self.array(value, what) {
            if let Some(s) = self.string(item, what) {
                out.push((s, item.span()));
            }
        }
        out
    }

    /// The strings of `table`'s list `key`, which must be present and not empty: either problem is
    /// reported as `{what}: missing key "{key}"; {hint}` or `{what}: {key} is empty; {hint}`.
    fn required_strings(
        &mut self,
        table: &DeTable<'_>,
        span: &Range<usize>,
        key: &str,
        what: &str,
        hint: &str,
    ) -> Vec<(String, Range<usize>)> {
        let Some(value) = table.get(key) else {
            self.error(
                span.clone(),
                format!("{what}: missing key \"{key}\"; {hint}"),
            );
            return Vec::new();
        };
        let items = self.strings(Some(value), &format!("{what}: {key}"));
        if items.is_empty() && value.get_ref().is_array() {
            self.error(value.span(), format!("{what}: {key} is empty; {hint}"));
        }
        items
    }

    /// A duration: an integer number of seconds, or text such as "90s", "15m", "8h", "7d".
    fn duration(&mut self, value: &Value<'_>, what: &str) -> Option<Duration> {
        match value.get_ref() {
            DeValue::Integer(n) => match u64::from_str_radix(n.as_str(), n.radix()) {
                Ok(seconds) => Some(Duration::from_secs(seconds)),
                Err(_) => {
                    self.error(
                        value.span(),
                        format!("{what}: {n} is not a duration; a duration cannot be negative"),
                    );
                    None
                }
            },
            DeValue::String(text) => match parse_duration(text) {
                Ok(d) => Some(d),
                Err(message) => {
                    self.error(value.span(), format!("{what}: {message}"));
                    None
                }
            },
            _ => {
                self.wrong_type(value, what, "a duration such as \"8h\"");
                None
            }
        }
    }

    fn bounded_duration(
        &mut self,
        value: Option<&Value<'_>>,
        what: &str,
        max: Duration,
    ) -> Option<Duration> {
        let value = value?;
        let duration = self.duration(value, what)?;
        if duration.is_zero() || duration > max {
            self.error(
                value.span(),
                format!(
                    "{what}: {} s is out of range; use between 1s and {} s",
                    duration.as_secs(),
                    max.as_secs()
                ),
            );
            return None;
        }
        Some(duration)
    }

    /// The tables of an array of tables (`[[apps]]`).
    fn tables<'a, 'i>(
        &mut self,
        value: Option<&'a Value<'i>>,
        what: &str,
    ) -> Vec<(&'a DeTable<'i>, Range<usize>)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in self.array(value, what).iter().enumerate() {
            if let Some(table) = self.table(item, &format!("{what}[{i}]")) {
                out.push((table, item.span()));
            }
        }
        out
    }

    /// The `name` of an app, profile or rule, and how to call it in messages.
    fn name(
        &mut self,
        table: &DeTable<'_>,
        span: &Range<usize>,
        kind: &str,
        index: usize,
        plural: &str,
    ) -> (Option<(String, Range<usize>)>, String) {
        let fallback = format!("{plural}[{index}]");
        let Some(value) = table.get("name") else {
            self.error(
                span.clone(),
                format!("{fallback}: missing key \"name\"; every {kind} needs a name"),
            );
            return (None, fallback);
        };
        match self.string(value, &format!("{fallback}.name")) {
            Some(name) if name.trim().is_empty() => {
                self.error(value.span(), format!("{fallback}: the name is empty"));
                (None, fallback)
            }
            Some(name) => {
                let what = format!("{kind} {name:?}");
                (Some((name, value.span())), what)
            }
            None => (None, fallback),
        }
    }

    fn unique(
        &mut self,
        seen: &mut BTreeMap<String, usize>,
        name: &(String, Range<usize>),
        kind: &str,
    ) {
        let line = line_column(self.text, name.1.start).0;
        if let Some(first) = seen.insert(name.0.clone(), line) {
            self.error(
                name.1.clone(),
                format!(
                    "{kind} {:?} is already defined on line {first}; {kind} names must be unique",
                    name.0
                ),
            );
        }
    }

    // --- apps ------------------------------------------------------------------------------------

    fn apps(&mut self, value: Option<&Value<'_>>) -> (Vec<App>, Vec<Vec<Range<usize>>>) {
        let mut apps = Vec::new();
        let mut spans = Vec::new();
        let mut seen = BTreeMap::new();
        for (index, (table, span)) in self.tables(value, "apps").into_iter().enumerate() {
            let (name, what) = self.name(table, &span, "app", index, "apps");
            self.known_keys(table, APP_KEYS, &what);
            if let Some(name) = &name {
                self.unique(&mut seen, name, "app");
            }

            let mut prefixes = Vec::new();
            let items = self.required_strings(
                table,
                &span,
                "prefixes",
                &what,
                "list where the app lives, e.g. [\"10.0.100.0/24\"]",
            );
            for (text, item_span) in items {
                match parse_prefix(&text) {
                    Ok(net) => prefixes.push(net),
                    Err(message) => {
                        self.error(item_span, format!("{what}: prefix {text:?}: {message}"))
                    }
                }
            }

            let mut services = Vec::new();
            let mut service_spans = Vec::new();
            let items = self.required_strings(
                table,
                &span,
                "services",
                &what,
                "list what the app serves, e.g. [\"tcp/443\"], or [\"any\"]",
            );
            for (text, item_span) in items {
                match text.trim().parse::<Service>() {
                    Ok(service) => {
                        services.push(service);
                        service_spans.push(item_span);
                    }
                    Err(message) => {
                        self.error(item_span, format!("{what}: service {text:?}: {message}"))
                    }
                }
            }

            let mode = match table.get("mode") {
                None => AppMode::Inherit,
                Some(value) => match self.string(value, &format!("{what}: mode")).as_deref() {
                    None => AppMode::Inherit,
                    Some("inherit") => AppMode::Inherit,
                    Some("enforce") => AppMode::Enforce,
                    Some("monitor") => AppMode::Monitor,
                    Some(other) => {
                        self.error(
                            value.span(),
                            format!(
                                "{what}: mode {other:?}: expected \"enforce\", \"monitor\" or \
                                 \"inherit\""
                            ),
                        );
                        AppMode::Inherit
                    }
                },
            };
            if let Some(value) = table.get("description") {
                self.string(value, &format!("{what}: description"));
            }
            if let Some((name, _)) = name {
                apps.push(App {
                    name,
                    prefixes,
                    services,
                    mode,
                });
                spans.push(service_spans);
            }
        }
        (apps, spans)
    }

    fn compile_problem(
        &mut self,
        error: CompileError,
        apps: &[App],
        service_spans: &[Vec<Range<usize>>],
        apps_value: Option<&Value<'_>>,
    ) {
        let whole = apps_value.map_or(0..0, |v| v.span());
        match error {
            CompileError::Conflict {
                prefix,
                first,
                second,
            } => {
                let (a, s) = second;
                self.error(
                    service_spans[a][s].clone(),
                    format!(
                        "app {:?}: service \"{}\" on {prefix} is already claimed by app {:?} \
                         (service \"{}\"); a packet must belong to one app: narrow the services or \
                         the prefixes of one of them",
                        apps[a].name,
                        apps[a].services[s],
                        apps[first.0].name,
                        apps[first.0].services[first.1],
                    ),
                );
            }
            CompileError::TooManyServices { entries } => self.error(
                whole,
                format!(
                    "apps: the services expand to {entries} map entries (one per port and prefix), \
                     more than the gateway holds; use whole-protocol services (\"tcp\") or fewer \
                     prefixes"
                ),
            ),
            CompileError::TooManyPrefixes { family, count } => self.error(
                whole,
                format!(
                    "apps: {count} distinct {family} prefixes, more than the gateway holds; \
                     aggregate them"
                ),
            ),
        }
    }

    // --- posture profiles ------------------------------------------------------------------------

    fn profiles(&mut self, value: Option<&Value<'_>>) -> Vec<PostureProfile> {
        let mut profiles = Vec::new();
        let mut seen = BTreeMap::new();
        for (index, (table, span)) in self.tables(value, "posture").into_iter().enumerate() {
            let (name, what) = self.name(table, &span, "posture profile", index, "posture");
            self.known_keys(table, POSTURE_KEYS, &what);
            if let Some(name) = &name {
                self.unique(&mut seen, name, "posture profile");
            }
            let mut profile = PostureProfile::new(name.as_ref().map_or("", |n| &n.0));

            profile.os = self
                .strings(table.get("os"), &format!("{what}: os"))
                .into_iter()
                .map(|(os, _)| os.to_ascii_lowercase())
                .collect();
            if let Some(value) = table.get("min_os_version")
                && let Some(versions) = self.table(value, &format!("{what}: min_os_version"))
            {
                for (os, version) in versions.iter() {
                    let os_name = os.get_ref().to_ascii_lowercase();
                    let key = format!("{what}: min_os_version.{os_name}");
                    if !profile.os.is_empty() && !profile.os.contains(&os_name) {
                        self.error(
                            os.span(),
                            format!(
                                "{key}: {os_name:?} is not in os [{}]; add it there or remove this \
                                 minimum",
                                profile.os.join(", ")
                            ),
                        );
                    }
                    if let Some(text) = self.string(version, &key) {
                        match text.parse::<OsVersion>() {
                            Ok(v) => {
                                profile.min_os_version.insert(os_name, v);
                            }
                            Err(message) => self.error(version.span(), format!("{key}: {message}")),
                        }
                    }
                }
            }
            if let Some(value) = table.get("min_kernel_version") {
                let key = format!("{what}: min_kernel_version");
                if let Some(text) = self.string(value, &key) {
                    match text.parse::<OsVersion>() {
                        Ok(v) => profile.min_kernel_version = Some(v),
                        Err(message) => self.error(value.span(), format!("{key}: {message}")),
                    }
                }
            }
            profile.disk_encryption = self.boolean(
                table.get("disk_encryption"),
                &format!("{what}: disk_encryption"),
            );
            profile.firewall = self.boolean(table.get("firewall"), &format!("{what}: firewall"));
            profile.screen_lock =
                self.boolean(table.get("screen_lock"), &format!("{what}: screen_lock"));
            profile.required_processes = self
                .strings(
                    table.get("required_processes"),
                    &format!("{what}: required_processes"),
                )
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            if let Some(value) = table.get("max_patch_age_days") {
                let key = format!("{what}: max_patch_age_days");
                match value.get_ref() {
                    DeValue::Integer(n) => match u32::from_str_radix(n.as_str(), n.radix()) {
                        Ok(days) => profile.max_patch_age_days = Some(days),
                        Err(_) => self.error(
                            value.span(),
                            format!("{key}: {n} is out of range; use a number of days"),
                        ),
                    },
                    _ => self.wrong_type(value, &key, "a number of days"),
                }
            }
            if let Some(value) = table.get("min_client_version") {
                let key = format!("{what}: min_client_version");
                if let Some(text) = self.string(value, &key) {
                    match semver::Version::parse(text.trim()) {
                        Ok(v) => profile.min_client_version = Some(v),
                        Err(e) => self.error(
                            value.span(),
                            format!(
                                "{key}: {text:?} is not a version (semver, e.g. \"1.4.0\"): {e}"
                            ),
                        ),
                    }
                }
            }
            if let Some(age) = self.bounded_duration(
                table.get("max_report_age"),
                &format!("{what}: max_report_age"),
                MAX_REPORT_AGE,
            ) {
                profile.max_report_age = age;
            }
            if let Some(value) = table.get("max_signal_age")
                && let Some(ages) = self.table(value, &format!("{what}: max_signal_age"))
            {
                let read = profile.signals();
                for (signal_name, age) in ages.iter() {
                    let key = format!("{what}: max_signal_age.{}", signal_name.get_ref());
                    let Some(signal) = Signal::from_name(signal_name.get_ref()) else {
                        self.error(
                            signal_name.span(),
                            format!("{key}: unknown signal; signals are {}", Signal::names()),
                        );
                        continue;
                    };
                    if !read.contains(&signal) {
                        self.error(
                            signal_name.span(),
                            format!(
                                "{key}: the profile does not check {signal}; require it or remove \
                                 this limit"
                            ),
                        );
                    }
                    if let Some(age) = self.bounded_duration(Some(age), &key, MAX_REPORT_AGE) {
                        profile.max_signal_age.insert(signal, age);
                    }
                }
            }
            if let Some(value) = table.get("description") {
                self.string(value, &format!("{what}: description"));
            }
            if name.is_some() {
                profiles.push(profile);
            }
        }
        profiles
    }

    // --- rules -----------------------------------------------------------------------------------

    fn rules(
        &mut self,
        value: Option<&Value<'_>>,
        apps: &[App],
        profiles: &[PostureProfile],
    ) -> Vec<Rule> {
        let mut rules = Vec::new();
        let mut seen = BTreeMap::new();
        for (index, (table, span)) in self.tables(value, "rules").into_iter().enumerate() {
            let (name, what) = self.name(table, &span, "rule", index, "rules");
            self.known_keys(table, RULE_KEYS, &what);
            if let Some(name) = &name {
                self.unique(&mut seen, name, "rule");
            }

            let mut granted = Vec::new();
            let names =
                self.required_strings(table, &span, "apps", &what, "list the apps the rule grants");
            for (app, app_span) in names {
                if !apps.iter().any(|a| a.name == app) {
                    self.error(
                        app_span,
                        format!(
                            "{what}: app {app:?} is not defined; defined apps: {}",
                            list_or_none(apps.iter().map(|a| a.name.as_str()), "add [[apps]]")
                        ),
                    );
                } else if granted.contains(&app) {
                    self.error(app_span, format!("{what}: app {app:?} is listed twice"));
                } else {
                    granted.push(app);
                }
            }

            let who = match table.get("who") {
                None => {
                    self.error(
                        span.clone(),
                        format!(
                            "{what}: missing key \"who\"; name users, groups or claims, or write \
                             who = {{ authenticated = true }} to grant every signed-in user"
                        ),
                    );
                    Who::default()
                }
                Some(value) => self.who(value, &what),
            };
            let device = match table.get("device") {
                None => DeviceRequirement::default(),
                Some(value) => self.device(value, &what, profiles),
            };
            let context = match table.get("context") {
                None => Context::default(),
                Some(value) => self.context(value, &what),
            };
            let max_session = self.bounded_duration(
                table.get("max_session"),
                &format!("{what}: max_session"),
                MAX_SESSION,
            );
            if let Some(value) = table.get("description") {
                self.string(value, &format!("{what}: description"));
            }
            if let Some((name, _)) = name {
                rules.push(Rule {
                    name,
                    line: line_column(self.text, span.start).0,
                    apps: granted,
                    who,
                    device,
                    context,
                    max_session,
                });
            }
        }
        rules
    }

    fn who(&mut self, value: &Value<'_>, rule: &str) -> Who {
        let what = format!("{rule}: who");
        let Some(table) = self.table(value, &what) else {
            return Who::default();
        };
        self.known_keys(table, WHO_KEYS, &what);
        let strings = |reader: &mut Self, key: &str| -> Vec<String> {
            reader
                .strings(table.get(key), &format!("{what}.{key}"))
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        let users = strings(self, "users");
        let groups = strings(self, "groups");
        let authenticated =
            self.boolean(table.get("authenticated"), &format!("{what}.authenticated"));
        let mut claims = Vec::new();
        if let Some(value) = table.get("claims")
            && let Some(conditions) = self.table(value, &format!("{what}.claims"))
        {
            for (path, wanted) in conditions.iter() {
                let key = format!("{what}.claims.{:?}", path.get_ref());
                let path = match path.get_ref().parse::<ClaimPath>() {
                    Ok(p) => p,
                    Err(message) => {
                        self.error(path.span(), format!("{key}: {message}"));
                        continue;
                    }
                };
                let any_of: Vec<Json> = match wanted.get_ref() {
                    DeValue::Array(items) => items
                        .iter()
                        .filter_map(|i| self.claim_value(i, &key))
                        .collect(),
                    _ => self.claim_value(wanted, &key).into_iter().collect(),
                };
                if any_of.is_empty() {
                    self.error(wanted.span(), format!("{key}: list at least one value"));
                }
                claims.push(ClaimCondition { path, any_of });
            }
        }
        let who = Who {
            authenticated,
            users,
            groups,
            claims,
        };
        let names_someone =
            !who.users.is_empty() || !who.groups.is_empty() || !who.claims.is_empty();
        if !names_someone && !authenticated {
            self.error(
                value.span(),
                format!(
                    "{what} names nobody; list users, groups or claims, or write authenticated = \
                     true to grant every signed-in user"
                ),
            );
        }
        if names_someone && authenticated {
            self.error(
                value.span(),
                format!(
                    "{what}: authenticated = true grants every signed-in user, which contradicts \
                     the users, groups or claims listed; remove one"
                ),
            );
        }
        who
    }

    fn claim_value(&mut self, value: &Value<'_>, what: &str) -> Option<Json> {
        match value.get_ref() {
            DeValue::String(s) => Some(Json::String(s.to_string())),
            DeValue::Boolean(b) => Some(Json::Bool(*b)),
            DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
                Ok(n) => Some(Json::from(n)),
                Err(_) => {
                    self.error(value.span(), format!("{what}: {n} is out of range"));
                    None
                }
            },
            _ => {
                self.wrong_type(
                    value,
                    what,
                    "a string, integer or boolean (or an array of them)",
                );
                None
            }
        }
    }

    fn device(
        &mut self,
        value: &Value<'_>,
        rule: &str,
        profiles: &[PostureProfile],
    ) -> DeviceRequirement {
        let what = format!("{rule}: device");
        let Some(table) = self.table(value, &what) else {
            return DeviceRequirement::default();
        };
        self.known_keys(table, DEVICE_KEYS, &what);
        let certificate = self.boolean(table.get("certificate"), &format!("{what}.certificate"));
        let mut posture = None;
        if let Some(value) = table.get("posture")
            && let Some(name) = self.string(value, &format!("{what}.posture"))
        {
            if profiles.iter().any(|p| p.name == name) {
                posture = Some(name);
            } else {
                self.error(
                    value.span(),
                    format!(
                        "{what}.posture: profile {name:?} is not defined; defined profiles: {}",
                        list_or_none(profiles.iter().map(|p| p.name.as_str()), "add [[posture]]")
                    ),
                );
            }
        }
        DeviceRequirement {
            posture,
            certificate,
        }
    }

    fn context(&mut self, value: &Value<'_>, rule: &str) -> Context {
        let what = format!("{rule}: context");
        let Some(table) = self.table(value, &what) else {
            return Context::default();
        };
        self.known_keys(table, CONTEXT_KEYS, &what);
        let mut context = Context::default();
        let sources = self.strings(table.get("source"), &format!("{what}.source"));
        if sources.is_empty()
            && let Some(value) = table.get("source")
            && value.get_ref().is_array()
        {
            self.error(
                value.span(),
                format!("{what}.source is empty; it would match no source"),
            );
        }
        for (text, span) in sources {
            match parse_prefix(&text) {
                Ok(net) => context.sources.push(net),
                Err(message) => self.error(span, format!("{what}.source {text:?}: {message}")),
            }
        }
        for (index, (window, span)) in self
            .tables(table.get("time"), &format!("{what}.time"))
            .into_iter()
            .enumerate()
        {
            if let Some(window) = self.window(window, span, &format!("{what}.time[{index}]")) {
                context.time.push(window);
            }
        }
        if let Some(value) = table.get("mfa") {
            context.mfa = self.mfa(value, &format!("{what}.mfa"));
        }
        context
    }

    fn window(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        what: &str,
    ) -> Option<TimeWindow> {
        self.known_keys(table, WINDOW_KEYS, what);
        let mut days = [true; 7];
        if let Some(value) = table.get("days") {
            days = [false; 7];
            let items = self.strings(Some(value), &format!("{what}.days"));
            if items.is_empty() && value.get_ref().is_array() {
                self.error(
                    value.span(),
                    format!("{what}.days is empty; the window would never open"),
                );
            }
            for (text, item_span) in items {
                match parse_days(&text) {
                    Ok(set) => (0..7).for_each(|d| days[d] |= set[d]),
                    Err(message) => {
                        self.error(item_span, format!("{what}.days {text:?}: {message}"))
                    }
                }
            }
        }
        let mut clock = |key: &str, allow_24: bool| -> Option<u32> {
            let Some(value) = table.get(key) else {
                self.error(
                    span.clone(),
                    format!("{what}: missing key {key:?}; write a local time such as \"08:00\""),
                );
                return None;
            };
            let text = self.string(value, &format!("{what}.{key}"))?;
            match parse_clock(&text, allow_24) {
                Ok(second) => Some(second),
                Err(message) => {
                    self.error(value.span(), format!("{what}.{key} {text:?}: {message}"));
                    None
                }
            }
        };
        let from = clock("from", false);
        let to = clock("to", true);
        let time_zone = match table.get("tz") {
            None => {
                self.error(
                    span.clone(),
                    format!(
                        "{what}: missing key \"tz\"; name the time zone, e.g. tz = \"Europe/Berlin\" \
                         or tz = \"UTC\""
                    ),
                );
                None
            }
            Some(value) => {
                let name = self.string(value, &format!("{what}.tz"))?;
                match TimeZone::get(&name) {
                    Ok(tz) => Some((tz, name)),
                    Err(_) => {
                        self.error(
                            value.span(),
                            format!(
                                "{what}.tz {name:?}: unknown time zone; use an IANA name such as \
                                 \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
                            ),
                        );
                        None
                    }
                }
            }
        };
        let (from, to, (time_zone, time_zone_name)) = (from?, to?, time_zone?);
        if from == to {
            self.error(
                span,
                format!(
                    "{what}: from and to are both {}; for the whole day write from = \"00:00\", to = \
                     \"24:00\"",
                    super::clock(from)
                ),
            );
            return None;
        }
        Some(TimeWindow {
            days,
            from,
            to,
            time_zone,
            time_zone_name,
        })
    }

    fn mfa(&mut self, value: &Value<'_>, what: &str) -> Option<MfaRequirement> {
        let table = self.table(value, what)?;
        self.known_keys(table, MFA_KEYS, what);
        let strings = |reader: &mut Self, key: &str| -> Vec<String> {
            reader
                .strings(table.get(key), &format!("{what}.{key}"))
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        let requirement = MfaRequirement {
            amr_any: strings(self, "amr"),
            acr_any: strings(self, "acr"),
            max_auth_age: self.bounded_duration(
                table.get("max_auth_age"),
                &format!("{what}.max_auth_age"),
                MAX_SESSION,
            ),
        };
        if requirement == MfaRequirement::default() {
            self.error(
                value.span(),
                format!(
                    "{what} asks for nothing; list amr methods (e.g. amr = [\"otp\", \"hwk\"]), acr \
                     values, or a max_auth_age"
                ),
            );
        }
        Some(requirement)
    }

    // --- warnings --------------------------------------------------------------------------------

    fn unused(
        &mut self,
        root: &DeTable<'_>,
        apps: &[App],
        profiles: &[PostureProfile],
        rules: &[Rule],
    ) {
        let granted: BTreeSet<&str> = rules
            .iter()
            .flat_map(|r| r.apps.iter().map(String::as_str))
            .collect();
        let used: BTreeSet<&str> = rules
            .iter()
            .filter_map(|r| r.device.posture.as_deref())
            .collect();
        let names = |key: &str| -> Vec<(String, Range<usize>)> {
            let Some(items) = root.get(key).and_then(|v| v.get_ref().as_array()) else {
                return Vec::new();
            };
            items
                .iter()
                .filter_map(|item| item.get_ref().as_table()?.get("name"))
                .filter_map(|name| Some((name.get_ref().as_str()?.to_owned(), name.span())))
                .collect()
        };
        for (name, span) in names("apps") {
            if apps.iter().any(|a| a.name == name) && !granted.contains(name.as_str()) {
                self.warn(
                    span,
                    format!(
                        "app {name:?} is granted by no rule: nobody can reach it (default deny)"
                    ),
                );
            }
        }
        for (name, span) in names("posture") {
            if profiles.iter().any(|p| p.name == name) && !used.contains(name.as_str()) {
                self.warn(span, format!("posture profile {name:?} is used by no rule"));
            }
        }
    }
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a str>, hint: &str) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        format!("none ({hint})")
    } else {
        names.join(", ")
    }
}

/// `mon`..`sun`, a range such as `mon-fri` (ranges may wrap: `fri-mon`), `weekdays`, `weekend`.
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let day = |name: &str| {
        let name = name.trim();
        (0..7)
            .find(|&d| name == super::DAY_NAMES[d] || name == FULL[d])
            .ok_or_else(|| {
                format!(
                    "unknown day {name:?}; use mon, tue, wed, thu, fri, sat, sun, a range such as \
                     \"mon-fri\", \"weekdays\" or \"weekend\""
                )
            })
    };
    let mut days = [false; 7];
    match text.trim().to_ascii_lowercase().as_str() {
        "weekdays" => days[..5].fill(true),
        "weekend" => days[5..].fill(true),
        other => match other.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (day(first)?, day(last)?);
                let mut d = first;
                loop {
                    days[d] = true;
                    if d == last {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(other)?] = true,
        },
    }
    Ok(days)
}

/// `HH:MM` (or `HH:MM:SS`) as seconds after midnight; `24:00` only where `allow_24`.
fn parse_clock(text: &str, allow_24: bool) -> Result<u32, String> {
    const FORM: &str = "write a 24-hour local time such as \"08:00\" or \"17:30\"";
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty() || p.len() > 2) {
        return Err(FORM.into());
    }
    let numbers: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
    let Some(numbers) = numbers else {
        return Err(FORM.into());
    };
    let (hour, minute, second) = (numbers[0], numbers[1], numbers.get(2).copied().unwrap_or(0));
    if hour == 24 && minute == 0 && second == 0 {
        return if allow_24 {
            Ok(86_400)
        } else {
            Err("24:00 is the end of the day; a window starts at \"00:00\"".into())
        };
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!("out of range; {FORM}"));
    }
    Ok(hour * 3600 + minute * 60 + second)
}
