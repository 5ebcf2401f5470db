//! Access policy: which identities, on which devices, in which context, reach which apps.
//!
//! Default deny: an app is reachable only through a rule that names it and whose every condition holds.
//! [`Policy::parse`] reads the TOML file and reports every problem at once with its line
//! ([`parse`]); [`evaluate`] is a pure function of the policy and a [`Request`] that answers with the
//! granted apps (and the rule that granted each) and, for every refused app, each rule considered and
//! every check that failed, by stable name ([`Check::code`]). [`check`](check::check) is the library
//! half of `ztna-agent policy check FILE`.
//!
//! The file:
//!
//! ```toml
//! [[apps]]
//! name = "web"
//! prefixes = ["10.0.100.0/24", "fd00:100::/64"]
//! services = ["tcp/443", "tcp/8000-8010", "icmp"]
//! mode = "enforce"                  # enforce | monitor | inherit (the gateway's mode; default)
//!
//! [[posture]]
//! name = "corp-laptop"
//! os = ["macos", "windows", "linux"]
//! min_os_version = { macos = "14.4", windows = "10.0.22631" }
//! min_kernel_version = "6.1"        # Linux devices
//! disk_encryption = true
//! firewall = true
//! screen_lock = true
//! required_processes = ["falcon-sensor"]
//! max_patch_age = "30d"
//! min_client_version = "1.4.0"
//! max_report_age = "5m"             # default 5m
//! max_signal_age = { security_processes = "10m" }
//!
//! [[rules]]
//! name = "engineers-web"
//! apps = ["web"]
//! max_session = "8h"
//! who = { groups = ["engineering"] }
//! device = { posture = "corp-laptop", certificate = true }
//! context = { source = ["10.0.0.0/8"], mfa = { amr = ["otp", "hwk"] } }
//!
//! [[rules]]
//! name = "dba-weekdays"
//! apps = ["db"]
//! [rules.who]
//! users = ["alice@example.com"]
//! claims = { "realm_access.roles" = "db-admin" }
//! [rules.context]
//! time = [{ days = ["mon-fri"], from = "08:00", to = "18:00", tz = "Europe/Berlin" }]
//! mfa = { amr = ["hwk"], max_auth_age = "1h" }
//! ```
//!
//! Within a rule every condition that is written must hold: `who.users` (the subject, or the email
//! without regard to case), `who.groups` (any one of them), `who.claims` (each claim, any of the listed
//! values), `device.certificate`, `device.posture`, `context.source` (any prefix), `context.time` (any
//! window) and `context.mfa`. Rules for one app are tried in file order and the first that passes
//! grants it.

pub mod check;
mod parse;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, fmt, net::IpAddr, time::Duration};

use ipnet::IpNet;
use jiff::{Timestamp, tz::TimeZone};
pub use parse::{PolicyError, PolicyErrors};
use serde_json::Value;

use crate::{
    config::App,
    identity::{ClaimPath, Identity, MfaFailure, MfaRequirement, quote},
    posture::{self, PostureCheck, PostureProfile, PostureReport, PostureResult},
};

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// How the file was named, for messages.
    pub file: String,
    /// Protected apps, in file order (the order gives their ids when compiled for the data plane).
    pub apps: Vec<App>,
    pub posture: Vec<PostureProfile>,
    pub rules: Vec<Rule>,
    /// Things that are allowed but probably not meant (an app no rule grants), for `policy check`.
    pub warnings: Vec<PolicyError>,
}

impl Policy {
    /// Parses and validates `text`; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Self, PolicyErrors> {
        parse::parse(text, file)
    }

    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    pub fn posture_profile(&self, name: &str) -> Option<&PostureProfile> {
        self.posture.iter().find(|p| p.name == name)
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// One rule: who may reach which apps, from which device, in which context.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// 1-based line where the rule starts, for explanations.
    pub line: usize,
    /// Names of the apps the rule grants.
    pub apps: Vec<String>,
    pub who: Who,
    pub device: DeviceRequirement,
    pub context: Context,
    /// Longest session this rule grants; `None` leaves it to the agent's session maximum.
    pub max_session: Option<Duration>,
}

/// Whom a rule is for. Every non-empty condition must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Who {
    /// Explicitly every authenticated user (when nothing else is listed).
    pub authenticated: bool,
    /// Subjects or emails.
    pub users: Vec<String>,
    /// The user must be in at least one.
    pub groups: Vec<String>,
    pub claims: Vec<ClaimCondition>,
}

/// A claim that must have one of some values (for an array claim: contain one of them).
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimCondition {
    pub path: ClaimPath,
    pub any_of: Vec<Value>,
}

impl ClaimCondition {
    fn holds(&self, identity: &Identity) -> bool {
        match identity.claim(&self.path) {
            None => false,
            Some(Value::Array(items)) => items.iter().any(|item| self.any_of.contains(item)),
            Some(value) => self.any_of.contains(value),
        }
    }
}

/// What a rule asks of the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceRequirement {
    /// Name of a posture profile the device must pass.
    pub posture: Option<String>,
    /// A device certificate must have been presented (mutual TLS).
    pub certificate: bool,
}

/// Where and when, and how strongly authenticated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    /// The source address must be in one of these.
    pub sources: Vec<IpNet>,
    /// The time must fall in one of these.
    pub time: Vec<TimeWindow>,
    pub mfa: Option<MfaRequirement>,
}

/// Days and a time of day in a time zone. A window whose end is before its start runs past midnight:
/// `days = ["fri"], from = "22:00", to = "06:00"` is Friday 22:00 to Saturday 06:00.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeWindow {
    /// Monday first.
    pub days: [bool; 7],
    /// Seconds after local midnight.
    pub from: u32,
    /// Seconds after local midnight; 86 400 for `24:00`.
    pub to: u32,
    pub time_zone: TimeZone,
    /// The IANA name, as written.
    pub time_zone_name: String,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TimeWindow {
    /// Whether `now` falls in the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        let local = now.to_zoned_datetime(self.time_zone.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let time = local.time();
        let second = u32::from(time.hour() as u8) * 3600
            + u32::from(time.minute() as u8) * 60
            + u32::from(time.second() as u8);
        if self.from < self.to {
            self.days[day] && (self.from..self.to).contains(&second)
        } else {
            let yesterday = (day + 6) % 7;
            (self.days[day] && second >= self.from) || (self.days[yesterday] && second < self.to)
        }
    }

    fn local_now(&self, now: Timestamp) -> String {
        let local = now.to_zoned_datetime(self.time_zone.clone());
        let day = DAY_NAMES[local.weekday().to_monday_zero_offset() as usize];
        format!(
            "{day} {:02}:{:02}",
            local.time().hour(),
            local.time().minute()
        )
    }
}

fn clock(second: u32) -> String {
    format!("{:02}:{:02}", second / 3600, second % 3600 / 60)
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = if self.days.iter().all(|d| *d) {
            "every day".to_owned()
        } else {
            let first = self.days.iter().position(|d| *d);
            let last = self.days.iter().rposition(|d| *d);
            match (first, last) {
                (Some(first), Some(last))
                    if last > first + 1 && self.days[first..=last].iter().all(|d| *d) =>
                {
                    format!("{}-{}", DAY_NAMES[first], DAY_NAMES[last])
                }
                _ => DAY_NAMES
                    .iter()
                    .zip(self.days)
                    .filter(|(_, on)| *on)
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(","),
            }
        };
        write!(
            f,
            "{days} {}-{} {}",
            clock(self.from),
            clock(self.to),
            self.time_zone_name
        )
    }
}

/// A device certificate the client presented over mutual TLS, already verified against the device CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// The device id the certificate names.
    pub id: String,
}

/// What is asked: everything the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub identity: &'a Identity,
    pub device: Option<&'a DeviceCertificate>,
    pub posture: Option<&'a PostureReport>,
    /// The source address the agent observed on the connection.
    pub source: IpAddr,
    pub now: Timestamp,
}

/// A check of a rule, with its stable name ([`code`](Self::code)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Check {
    UserNotAllowed,
    GroupMissing,
    ClaimMismatch,
    DeviceCertificateRequired,
    /// The rule needs posture and the client sent no report.
    PostureReportMissing,
    /// The rule names a profile the policy lacks (only for a policy built by hand: parsing refuses it).
    PostureProfileUndefined,
    Posture(PostureCheck),
    SourceNetwork,
    TimeWindow,
    MfaRequired,
    ReauthenticationRequired,
}

impl Check {
    pub const fn code(self) -> &'static str {
        match self {
            Self::UserNotAllowed => "user_not_allowed",
            Self::GroupMissing => "group_missing",
            Self::ClaimMismatch => "claim_mismatch",
            Self::DeviceCertificateRequired => "device_certificate_required",
            Self::PostureReportMissing => "posture:report_missing",
            Self::PostureProfileUndefined => "posture:profile_undefined",
            Self::Posture(check) => match check {
                PostureCheck::ReportAge => "posture:report_age",
                PostureCheck::Os => "posture:os",
                PostureCheck::OsVersion => "posture:os_version",
                PostureCheck::KernelVersion => "posture:kernel_version",
                PostureCheck::DiskEncryption => "posture:disk_encryption",
                PostureCheck::Firewall => "posture:firewall",
                PostureCheck::ScreenLock => "posture:screen_lock",
                PostureCheck::SecurityProcesses => "posture:security_processes",
                PostureCheck::PatchAge => "posture:patch_age",
                PostureCheck::ClientVersion => "posture:client_version",
            },
            Self::SourceNetwork => "source_network",
            Self::TimeWindow => "time_window",
            Self::MfaRequired => "mfa_required",
            Self::ReauthenticationRequired => "reauthentication_required",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A failed check and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckFailure {
    pub check: Check,
    pub message: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

/// An app the request may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub app: String,
    /// The rule that granted it.
    pub rule: String,
    pub max_session: Option<Duration>,
}

/// A rule considered for a refused app, and every check of it that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOutcome {
    pub rule: String,
    pub failures: Vec<CheckFailure>,
}

/// An app the request may not reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub app: String,
    /// The rules that name the app, in file order; empty when none does (default deny).
    pub rules: Vec<RuleOutcome>,
}

impl Refusal {
    /// Every failed check's code, over all rules considered; `no_rule` when no rule names the app.
    pub fn codes(&self) -> Vec<&'static str> {
        if self.rules.is_empty() {
            return vec!["no_rule"];
        }
        let mut codes: Vec<&'static str> = Vec::new();
        for failure in self.rules.iter().flat_map(|r| &r.failures) {
            if !codes.contains(&failure.check.code()) {
                codes.push(failure.check.code());
            }
        }
        codes
    }
}

/// The answer to a [`Request`]: every app of the policy is either granted or refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub granted: Vec<Grant>,
    pub refused: Vec<Refusal>,
}

impl Decision {
    pub fn grant(&self, app: &str) -> Option<&Grant> {
        self.granted.iter().find(|g| g.app == app)
    }

    pub fn refusal(&self, app: &str) -> Option<&Refusal> {
        self.refused.iter().find(|r| r.app == app)
    }

    /// The shortest maximum session among the granted apps' rules, if any rule sets one.
    pub fn session_limit(&self) -> Option<Duration> {
        self.granted.iter().filter_map(|g| g.max_session).min()
    }
}

impl fmt::Display for Decision {
    /// One line per app:
    ///
    /// ```text
    /// granted web by rule engineers-web (max session 28800 s)
    /// refused db: rule dba-weekdays: time_window: it is sat 10:15 in Europe/Berlin, outside mon-fri 08:00-18:00 Europe/Berlin
    /// refused legacy: no rule grants it (default deny)
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for grant in &self.granted {
            write!(f, "granted {} by rule {}", grant.app, grant.rule)?;
            if let Some(max) = grant.max_session {
                write!(f, " (max session {} s)", max.as_secs())?;
            }
            writeln!(f)?;
        }
        for refusal in &self.refused {
            write!(f, "refused {}: ", refusal.app)?;
            if refusal.rules.is_empty() {
                writeln!(f, "no rule grants it (default deny)")?;
                continue;
            }
            let rules: Vec<String> = refusal
                .rules
                .iter()
                .map(|outcome| {
                    let failures: Vec<String> =
                        outcome.failures.iter().map(ToString::to_string).collect();
                    format!("rule {}: {}", outcome.rule, failures.join("; "))
                })
                .collect();
            writeln!(f, "{}", rules.join(" | "))?;
        }
        Ok(())
    }
}

/// Decides which apps `request` may reach.
pub fn evaluate(policy: &Policy, request: &Request<'_>) -> Decision {
    let mut evaluator = Evaluator {
        policy,
        request,
        source: request.source.to_canonical(),
        posture: HashMap::new(),
        rules: vec![None; policy.rules.len()],
    };
    let mut decision = Decision::default();
    for app in &policy.apps {
        let mut considered = Vec::new();
        let mut granted = None;
        for (index, rule) in policy.rules.iter().enumerate() {
            if !rule.apps.contains(&app.name) {
                continue;
            }
            let failures = evaluator.rule(index);
            if failures.is_empty() {
                granted = Some(Grant {
                    app: app.name.clone(),
                    rule: rule.name.clone(),
                    max_session: rule.max_session,
                });
                break;
            }
            considered.push(RuleOutcome {
                rule: rule.name.clone(),
                failures: failures.to_vec(),
            });
        }
        match granted {
            Some(grant) => decision.granted.push(grant),
            None => decision.refused.push(Refusal {
                app: app.name.clone(),
                rules: considered,
            }),
        }
    }
    decision
}

/// Evaluates each rule and each posture profile at most once per request.
struct Evaluator<'p, 'r> {
    policy: &'p Policy,
    request: &'r Request<'r>,
    source: IpAddr,
    posture: HashMap<&'p str, PostureResult>,
    rules: Vec<Option<Vec<CheckFailure>>>,
}

impl<'p> Evaluator<'p, '_> {
    fn rule(&mut self, index: usize) -> &[CheckFailure] {
        if self.rules[index].is_none() {
            let failures = self.evaluate_rule(&self.policy.rules[index]);
            self.rules[index] = Some(failures);
        }
        self.rules[index].as_deref().unwrap_or_default()
    }

    fn evaluate_rule(&mut self, rule: &'p Rule) -> Vec<CheckFailure> {
        let mut failures = Vec::new();
        self.who(&rule.who, &mut failures);
        self.device(&rule.device, &mut failures);
        self.context(&rule.context, &mut failures);
        failures
    }

    fn who(&self, who: &Who, failures: &mut Vec<CheckFailure>) {
        let identity = self.request.identity;
        if !who.users.is_empty() && !who.users.iter().any(|u| user_matches(u, identity)) {
            failures.push(failure(
                Check::UserNotAllowed,
                format!("{} is not one of the rule's users", describe_user(identity)),
            ));
        }
        if !who.groups.is_empty() && !identity.groups.iter().any(|g| who.groups.contains(g)) {
            failures.push(failure(
                Check::GroupMissing,
                format!(
                    "the user is in [{}], the rule needs one of [{}]",
                    identity
                        .groups
                        .iter()
                        .map(|g| quote(g))
                        .collect::<Vec<_>>()
                        .join(", "),
                    who.groups.join(", ")
                ),
            ));
        }
        for condition in &who.claims {
            if condition.holds(identity) {
                continue;
            }
            let found = identity
                .claim(&condition.path)
                .map_or("absent".to_owned(), |v| quote(&v.to_string()));
            let wanted: Vec<String> = condition.any_of.iter().map(Value::to_string).collect();
            let wanted = match wanted.as_slice() {
                [one] => one.clone(),
                _ => format!("one of [{}]", wanted.join(", ")),
            };
            failures.push(failure(
                Check::ClaimMismatch,
                format!(
                    "claim {} is {found}, the rule needs {wanted}",
                    condition.path
                ),
            ));
        }
    }

    fn device(&mut self, device: &'p DeviceRequirement, failures: &mut Vec<CheckFailure>) {
        if device.certificate && self.request.device.is_none() {
            failures.push(failure(
                Check::DeviceCertificateRequired,
                "no device certificate was presented; connect with the device's certificate".into(),
            ));
        }
        let Some(name) = &device.posture else {
            return;
        };
        let Some(report) = self.request.posture else {
            failures.push(failure(
                Check::PostureReportMissing,
                format!("profile {name} needs a posture report and none was sent"),
            ));
            return;
        };
        let Some(profile) = self.policy.posture_profile(name) else {
            // Parsing refuses rules that name undefined profiles; stay closed all the same.
            failures.push(failure(
                Check::PostureProfileUndefined,
                format!("profile {name} is not defined in the policy"),
            ));
            return;
        };
        let now = self.request.now;
        let result = self
            .posture
            .entry(name.as_str())
            .or_insert_with(|| posture::evaluate(profile, report, now));
        for posture_failure in &result.failures {
            failures.push(failure(
                Check::Posture(posture_failure.check),
                format!("{} (profile {name})", posture_failure.message),
            ));
        }
    }

    fn context(&self, context: &Context, failures: &mut Vec<CheckFailure>) {
        let now = self.request.now;
        if !context.sources.is_empty()
            && !context.sources.iter().any(|net| net.contains(&self.source))
        {
            failures.push(failure(
                Check::SourceNetwork,
                format!(
                    "source {} is not in {}",
                    self.source,
                    context
                        .sources
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if !context.time.is_empty() && !context.time.iter().any(|w| w.contains(now)) {
            let window = &context.time[0];
            failures.push(failure(
                Check::TimeWindow,
                format!(
                    "it is {} in {}, outside {}",
                    window.local_now(now),
                    window.time_zone_name,
                    context
                        .time
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if let Some(mfa) = &context.mfa {
            for mfa_failure in mfa.check(self.request.identity, now) {
                let check = match mfa_failure {
                    MfaFailure::Amr { .. } | MfaFailure::Acr { .. } => Check::MfaRequired,
                    MfaFailure::AuthTimeMissing | MfaFailure::AuthTooOld { .. } => {
                        Check::ReauthenticationRequired
                    }
                };
                failures.push(failure(check, mfa_failure.to_string()));
            }
        }
    }
}

fn failure(check: Check, message: String) -> CheckFailure {
    CheckFailure { check, message }
}

fn user_matches(user: &str, identity: &Identity) -> bool {
    user == identity.subject
        || identity
            .email
            .as_deref()
            .is_some_and(|email| email.eq_ignore_ascii_case(user))
}

fn describe_user(identity: &Identity) -> String {
    match &identity.email {
        Some(email) => format!("{} ({})", quote(email), quote(&identity.subject)),
        None => quote(&identity.subject),
    }
}
