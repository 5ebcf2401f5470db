//! Device posture: the report a client sends about its device, the profiles a policy requires, and the
//! pure evaluation of one against the other.
//!
//! Every failed check is named by a stable [`PostureCheck`] name and explained:
//!
//! ```text
//! report_age: report is 412 s old, profile allows 300 s
//! disk_encryption: disk is not encrypted
//! os_version: macos 14.2.1 is older than the required 14.4
//! ```
//!
//! A signal the profile requires and the report leaves out fails its check: a device cannot pass by
//! staying silent. Each signal may carry its own collection time (`signal_times`); a signal without
//! one is as old as the report.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
    time::Duration,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::seconds_between;

/// How far in the future a report or signal may be dated (device clocks drift) before it is refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Default largest age of a report.
pub const DEFAULT_MAX_REPORT_AGE: Duration = Duration::from_secs(300);
/// Most security processes a report may list.
pub const MAX_PROCESSES: usize = 512;
/// Longest string in a report.
pub const MAX_REPORT_STRING: usize = 256;

/// What a client reports about its device (JSON; timestamps in RFC 3339).
///
/// Every signal is optional: a client reports what its platform can tell. Fields this version does not
/// know are ignored, so that newer clients can add signals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostureReport {
    /// `linux`, `macos`, `windows`, ... (compared without regard to case).
    pub os: Option<String>,
    /// The OS release: `14.4.1` (macOS), `10.0.22631.3447` (Windows), `24.04` (Ubuntu).
    pub os_version: Option<String>,
    /// The kernel release, e.g. `6.8.0-45-generic`.
    pub kernel: Option<String>,
    pub disk_encrypted: Option<bool>,
    pub firewall_enabled: Option<bool>,
    pub screen_lock: Option<bool>,
    /// Names of the security processes found running (EDR, antivirus, ...).
    pub security_processes: Option<Vec<String>>,
    /// Days since the last OS update, as the device counted when collecting.
    pub patch_age_days: Option<u32>,
    /// When the last OS update was installed; preferred over `patch_age_days` when both are present.
    pub last_patch_at: Option<Timestamp>,
    /// Version of the ztna client (semver).
    pub client_version: Option<String>,
    /// When the report was put together.
    pub collected_at: Timestamp,
    /// When individual signals were collected, by signal name (see [`Signal`]), for signals collected
    /// earlier than the report.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signal_times: BTreeMap<String, Timestamp>,
}

/// Why a report cannot be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PostureReportError {
    #[error("the posture report is not valid: {0}")]
    Invalid(String),
    #[error("the posture report is too large: {0}")]
    TooLarge(String),
}

impl PostureReportError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_posture_report",
            Self::TooLarge(_) => "posture_report_too_large",
        }
    }
}

impl PostureReport {
    /// A report with nothing but its time.
    pub fn empty(collected_at: Timestamp) -> Self {
        Self {
            os: None,
            os_version: None,
            kernel: None,
            disk_encrypted: None,
            firewall_enabled: None,
            screen_lock: None,
            security_processes: None,
            patch_age_days: None,
            last_patch_at: None,
            client_version: None,
            collected_at,
            signal_times: BTreeMap::new(),
        }
    }

    /// Parses a JSON report and bounds its size.
    pub fn from_json(text: &str) -> Result<Self, PostureReportError> {
        let report: Self =
            serde_json::from_str(text).map_err(|e| PostureReportError::Invalid(e.to_string()))?;
        report.check_bounds()?;
        Ok(report)
    }

    fn check_bounds(&self) -> Result<(), PostureReportError> {
        let too_large = |what: String| Err(PostureReportError::TooLarge(what));
        let processes = self.security_processes.as_deref().unwrap_or_default();
        if processes.len() > MAX_PROCESSES {
            return too_large(format!(
                "{} security processes, at most {MAX_PROCESSES}",
                processes.len()
            ));
        }
        if self.signal_times.len() > Signal::ALL.len() {
            return too_large(format!("{} signal times", self.signal_times.len()));
        }
        let strings = [
            &self.os,
            &self.os_version,
            &self.kernel,
            &self.client_version,
        ]
        .into_iter()
        .flatten()
        .chain(processes)
        .chain(self.signal_times.keys());
        for text in strings {
            if text.len() > MAX_REPORT_STRING {
                return too_large(format!(
                    "a value of {} bytes, at most {MAX_REPORT_STRING}",
                    text.len()
                ));
            }
        }
        Ok(())
    }

    /// When `signal` was collected: its own time if the report gives one, else the report's.
    pub fn signal_time(&self, signal: Signal) -> Timestamp {
        self.signal_times
            .get(signal.name())
            .copied()
            .unwrap_or(self.collected_at)
    }
}

/// A signal of a report, named as in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    Os,
    OsVersion,
    Kernel,
    DiskEncrypted,
    FirewallEnabled,
    ScreenLock,
    SecurityProcesses,
    Patch,
    ClientVersion,
}

impl Signal {
    pub const ALL: [Self; 9] = [
        Self::Os,
        Self::OsVersion,
        Self::Kernel,
        Self::DiskEncrypted,
        Self::FirewallEnabled,
        Self::ScreenLock,
        Self::SecurityProcesses,
        Self::Patch,
        Self::ClientVersion,
    ];

    /// The name used in `signal_times` and in a profile's `max_signal_age`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Os => "os",
            Self::OsVersion => "os_version",
            Self::Kernel => "kernel",
            Self::DiskEncrypted => "disk_encrypted",
            Self::FirewallEnabled => "firewall_enabled",
            Self::ScreenLock => "screen_lock",
            Self::SecurityProcesses => "security_processes",
            Self::Patch => "patch",
            Self::ClientVersion => "client_version",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Every name, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A check of a posture profile; [`name`](Self::name) is stable (it appears as `posture:<name>` in
/// policy decisions and in the audit log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PostureCheck {
    ReportAge,
    Os,
    OsVersion,
    KernelVersion,
    DiskEncryption,
    Firewall,
    ScreenLock,
    SecurityProcesses,
    PatchAge,
    ClientVersion,
}

impl PostureCheck {
    pub const fn name(self) -> &'static str {
        match self {
            Self::ReportAge => "report_age",
            Self::Os => "os",
            Self::OsVersion => "os_version",
            Self::KernelVersion => "kernel_version",
            Self::DiskEncryption => "disk_encryption",
            Self::Firewall => "firewall",
            Self::ScreenLock => "screen_lock",
            Self::SecurityProcesses => "security_processes",
            Self::PatchAge => "patch_age",
            Self::ClientVersion => "client_version",
        }
    }

    /// The signal the check reads, whose age a profile may bound.
    pub const fn signal(self) -> Option<Signal> {
        match self {
            Self::ReportAge => None,
            Self::Os => Some(Signal::Os),
            Self::OsVersion => Some(Signal::OsVersion),
            Self::KernelVersion => Some(Signal::Kernel),
            Self::DiskEncryption => Some(Signal::DiskEncrypted),
            Self::Firewall => Some(Signal::FirewallEnabled),
            Self::ScreenLock => Some(Signal::ScreenLock),
            Self::SecurityProcesses => Some(Signal::SecurityProcesses),
            Self::PatchAge => Some(Signal::Patch),
            Self::ClientVersion => Some(Signal::ClientVersion),
        }
    }
}

impl fmt::Display for PostureCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An OS or kernel version: its leading numeric components (`14.4.1`, `10.0.22631.3447`,
/// `6.8.0-45-generic` as 6.8.0.45). Missing components count as zero, so `14.4` = `14.4.0`.
///
/// OS versions are not semver (Windows has four components, kernels carry ABI numbers and flavours),
/// so they are compared component by component; the client's own version is semver.
#[derive(Clone, Debug)]
pub struct OsVersion {
    text: String,
    components: Vec<u64>,
}

impl OsVersion {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for OsVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let mut components = Vec::new();
        for piece in text.split(['.', '-', '_', '+', ' ']) {
            let digits = piece.len() - piece.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let Ok(n) = piece[..digits].parse::<u64>() else {
                break;
            };
            components.push(n);
            if digits < piece.len() {
                break;
            }
        }
        if components.is_empty() {
            return Err(format!(
                "{text:?} is not a version; write numbers separated by dots, e.g. \"14.4\""
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            components,
        })
    }
}

impl Ord for OsVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.components.len().max(other.components.len());
        let at = |v: &Self, i: usize| v.components.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| at(self, i).cmp(&at(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for OsVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for OsVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OsVersion {}

impl fmt::Display for OsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a policy requires of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostureProfile {
    pub name: String,
    /// Accepted operating systems, lower case; empty accepts any.
    pub os: Vec<String>,
    /// Oldest accepted OS version, per OS (lower case). An OS without an entry has no minimum.
    pub min_os_version: BTreeMap<String, OsVersion>,
    /// Oldest accepted kernel, for Linux devices.
    pub min_kernel_version: Option<OsVersion>,
    pub disk_encryption: bool,
    pub firewall: bool,
    pub screen_lock: bool,
    /// Processes that must be running (names compared without regard to case).
    pub required_processes: Vec<String>,
    pub max_patch_age_days: Option<u32>,
    pub min_client_version: Option<semver::Version>,
    pub max_report_age: Duration,
    /// Largest age of individual signals, on top of the report's.
    pub max_signal_age: BTreeMap<Signal, Duration>,
}

impl PostureProfile {
    /// A profile that requires nothing but a report at most [`DEFAULT_MAX_REPORT_AGE`] old.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            os: Vec::new(),
            min_os_version: BTreeMap::new(),
            min_kernel_version: None,
            disk_encryption: false,
            firewall: false,
            screen_lock: false,
            required_processes: Vec::new(),
            max_patch_age_days: None,
            min_client_version: None,
            max_report_age: DEFAULT_MAX_REPORT_AGE,
            max_signal_age: BTreeMap::new(),
        }
    }

    /// The checks this profile makes besides the report's age, in evaluation order.
    pub fn checks(&self) -> Vec<PostureCheck> {
        let mut checks = Vec::new();
        let mut add = |on: bool, check| {
            if on {
                checks.push(check);
            }
        };
        add(!self.os.is_empty(), PostureCheck::Os);
        add(!self.min_os_version.is_empty(), PostureCheck::OsVersion);
        add(
            self.min_kernel_version.is_some(),
            PostureCheck::KernelVersion,
        );
        add(self.disk_encryption, PostureCheck::DiskEncryption);
        add(self.firewall, PostureCheck::Firewall);
        add(self.screen_lock, PostureCheck::ScreenLock);
        add(
            !self.required_processes.is_empty(),
            PostureCheck::SecurityProcesses,
        );
        add(self.max_patch_age_days.is_some(), PostureCheck::PatchAge);
        add(
            self.min_client_version.is_some(),
            PostureCheck::ClientVersion,
        );
        checks
    }

    /// The signals this profile reads (and so may bound the age of).
    pub fn signals(&self) -> BTreeSet<Signal> {
        let mut signals: BTreeSet<Signal> = self
            .checks()
            .into_iter()
            .filter_map(PostureCheck::signal)
            .collect();
        // The OS version and kernel checks need to know which OS it is.
        if signals.contains(&Signal::OsVersion) || signals.contains(&Signal::Kernel) {
            signals.insert(Signal::Os);
        }
        signals
    }
}

/// One failed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostureFailure {
    pub check: PostureCheck,
    /// What was found and what the profile wanted.
    pub message: String,
}

impl fmt::Display for PostureFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

/// The outcome of [`evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostureResult {
    pub profile: String,
    /// Every failed check, in the profile's order; empty when the device complies.
    pub failures: Vec<PostureFailure>,
}

impl PostureResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether `check` failed.
    pub fn failed(&self, check: PostureCheck) -> bool {
        self.failures.iter().any(|f| f.check == check)
    }
}

/// Evaluates `report` against `profile` at `now`.
pub fn evaluate(profile: &PostureProfile, report: &PostureReport, now: Timestamp) -> PostureResult {
    let mut failures = Vec::new();
    let mut fail = |check, message: String| failures.push(PostureFailure { check, message });

    if let Some(message) = too_old(report.collected_at, profile.max_report_age, now, "report") {
        fail(PostureCheck::ReportAge, message);
    }

    let os = report.os.as_deref().map(str::to_ascii_lowercase);
    for check in profile.checks() {
        let outcome = match check {
            PostureCheck::ReportAge => Ok(()),
            PostureCheck::Os => check_os(profile, os.as_deref()),
            PostureCheck::OsVersion => check_os_version(profile, report, os.as_deref()),
            PostureCheck::KernelVersion => check_kernel(profile, report, os.as_deref()),
            PostureCheck::DiskEncryption => check_flag(
                report.disk_encrypted,
                "disk encryption",
                "disk is not encrypted",
            ),
            PostureCheck::Firewall => {
                check_flag(report.firewall_enabled, "firewall state", "firewall is off")
            }
            PostureCheck::ScreenLock => {
                check_flag(report.screen_lock, "screen lock", "screen lock is off")
            }
            PostureCheck::SecurityProcesses => check_processes(profile, report),
            PostureCheck::PatchAge => check_patch_age(profile, report, now),
            PostureCheck::ClientVersion => check_client_version(profile, report),
        };
        // A failing value says more than a stale one; a passing value must also be fresh.
        let outcome = outcome.and_then(|()| match check.signal() {
            Some(signal) => match profile.max_signal_age.get(&signal) {
                Some(max) => match too_old(report.signal_time(signal), *max, now, "signal") {
                    Some(message) => Err(format!("{signal} {message}")),
                    None => Ok(()),
                },
                None => Ok(()),
            },
            None => Ok(()),
        });
        if let Err(message) = outcome {
            fail(check, message);
        }
    }
    PostureResult {
        profile: profile.name.clone(),
        failures,
    }
}

/// Why something collected at `at` is too old (or dated in the future) at `now`, if it is.
fn too_old(at: Timestamp, max: Duration, now: Timestamp, what: &str) -> Option<String> {
    let ahead = seconds_between(now, at);
    if ahead > MAX_CLOCK_SKEW {
        return Some(format!(
            "{what} is dated {} s in the future; check the device's clock",
            ahead.as_secs()
        ));
    }
    let age = seconds_between(at, now);
    (age > max).then(|| {
        format!(
            "{what} is {} s old, profile allows {} s",
            age.as_secs(),
            max.as_secs()
        )
    })
}

fn check_os(profile: &PostureProfile, os: Option<&str>) -> Result<(), String> {
    match os {
        None => Err(format!(
            "the report does not say which OS the device runs; profile accepts {}",
            profile.os.join(", ")
        )),
        Some(os) if profile.os.iter().any(|o| o == os) => Ok(()),
        Some(os) => Err(format!(
            "{:?} is not one of {}",
            crate::identity::quote(os),
            profile.os.join(", ")
        )),
    }
}

fn check_os_version(
    profile: &PostureProfile,
    report: &PostureReport,
    os: Option<&str>,
) -> Result<(), String> {
    let Some(os) = os else {
        return Err(
            "the report does not say which OS the device runs, so its version cannot be \
                    checked"
                .into(),
        );
    };
    let Some(min) = profile.min_os_version.get(os) else {
        return Ok(());
    };
    let Some(text) = &report.os_version else {
        return Err(format!("not reported; profile needs {os} {min} or later"));
    };
    let version: OsVersion = text.parse()?;
    if version < *min {
        return Err(format!("{os} {version} is older than the required {min}"));
    }
    Ok(())
}

fn check_kernel(
    profile: &PostureProfile,
    report: &PostureReport,
    os: Option<&str>,
) -> Result<(), String> {
    let Some(min) = &profile.min_kernel_version else {
        return Ok(());
    };
    match os {
        Some("linux") => {}
        Some(_) => return Ok(()),
        None => {
            return Err(
                "the report does not say which OS the device runs, so its kernel cannot be checked"
                    .into(),
            );
        }
    }
    let Some(text) = &report.kernel else {
        return Err(format!("not reported; profile needs kernel {min} or later"));
    };
    let kernel: OsVersion = text.parse()?;
    if kernel < *min {
        return Err(format!("kernel {kernel} is older than the required {min}"));
    }
    Ok(())
}

fn check_flag(value: Option<bool>, what: &str, off: &str) -> Result<(), String> {
    match value {
        Some(true) => Ok(()),
        Some(false) => Err(off.to_owned()),
        None => Err(format!("{what} not reported")),
    }
}

fn check_processes(profile: &PostureProfile, report: &PostureReport) -> Result<(), String> {
    let Some(running) = &report.security_processes else {
        return Err(format!(
            "not reported; profile needs {} running",
            profile.required_processes.join(", ")
        ));
    };
    let missing: Vec<&str> = profile
        .required_processes
        .iter()
        .filter(|required| !running.iter().any(|r| r.eq_ignore_ascii_case(required)))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not running: {}", missing.join(", ")))
    }
}

fn check_patch_age(
    profile: &PostureProfile,
    report: &PostureReport,
    now: Timestamp,
) -> Result<(), String> {
    let Some(max) = profile.max_patch_age_days else {
        return Ok(());
    };
    let days = match (report.last_patch_at, report.patch_age_days) {
        (Some(at), _) => seconds_between(at, now).as_secs() / 86_400,
        (None, Some(days)) => u64::from(days),
        (None, None) => {
            return Err(format!(
                "not reported; profile needs a patch in the last {max} days"
            ));
        }
    };
    if days > u64::from(max) {
        return Err(format!(
            "last patch {days} days ago, profile allows {max} days"
        ));
    }
    Ok(())
}

fn check_client_version(profile: &PostureProfile, report: &PostureReport) -> Result<(), String> {
    let Some(min) = &profile.min_client_version else {
        return Ok(());
    };
    let Some(text) = &report.client_version else {
        return Err(format!("not reported; profile needs client {min} or later"));
    };
    let version = semver::Version::parse(text.trim()).map_err(|_| {
        format!(
            "{:?} is not a version (semver)",
            crate::identity::quote(text)
        )
    })?;
    if version < *min {
        return Err(format!(
            "client {version} is older than the required {min}; update the ztna client"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_735_689_600;

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_second(NOW + offset).unwrap()
    }

    fn v(text: &str) -> OsVersion {
        text.parse().unwrap()
    }

    /// A compliant macOS laptop, reported 10 s ago.
    fn report() -> PostureReport {
        PostureReport {
            os: Some("macOS".into()),
            os_version: Some("14.4.1".into()),
            kernel: Some("23.4.0".into()),
            disk_encrypted: Some(true),
            firewall_enabled: Some(true),
            screen_lock: Some(true),
            security_processes: Some(vec!["Falcon-Sensor".into(), "osqueryd".into()]),
            patch_age_days: Some(3),
            last_patch_at: None,
            client_version: Some("1.4.2".into()),
            collected_at: at(-10),
            signal_times: BTreeMap::new(),
        }
    }

    fn strict() -> PostureProfile {
        PostureProfile {
            os: vec!["macos".into(), "windows".into(), "linux".into()],
            min_os_version: [
                ("macos".into(), v("14.4")),
                ("windows".into(), v("10.0.22631")),
            ]
            .into(),
            min_kernel_version: Some(v("6.1")),
            disk_encryption: true,
            firewall: true,
            screen_lock: true,
            required_processes: vec!["falcon-sensor".into(), "osqueryd".into()],
            max_patch_age_days: Some(30),
            min_client_version: Some(semver::Version::new(1, 4, 0)),
            ..PostureProfile::new("corp-laptop")
        }
    }

    fn failures(result: &PostureResult) -> Vec<String> {
        result.failures.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_compliant_device_passes() {
        let result = evaluate(&strict(), &report(), at(0));
        assert!(result.passed(), "{:?}", failures(&result));
        assert_eq!(result.profile, "corp-laptop");
    }

    #[test]
    fn every_failure_is_named_and_explained() {
        let bad = PostureReport {
            os_version: Some("14.2.1".into()),
            disk_encrypted: Some(false),
            firewall_enabled: Some(false),
            screen_lock: None,
            security_processes: Some(vec!["osqueryd".into()]),
            patch_age_days: Some(45),
            client_version: Some("1.3.9".into()),
            collected_at: at(-412),
            ..report()
        };
        let result = evaluate(&strict(), &bad, at(0));
        assert_eq!(
            failures(&result),
            [
                "report_age: report is 412 s old, profile allows 300 s",
                "os_version: macos 14.2.1 is older than the required 14.4",
                "disk_encryption: disk is not encrypted",
                "firewall: firewall is off",
                "screen_lock: screen lock not reported",
                "security_processes: not running: falcon-sensor",
                "patch_age: last patch 45 days ago, profile allows 30 days",
                "client_version: client 1.3.9 is older than the required 1.4.0; update the ztna client",
            ]
        );
        assert!(result.failed(PostureCheck::Firewall));
        assert!(!result.failed(PostureCheck::Os));
    }

    #[test]
    fn silence_fails_every_required_check() {
        let result = evaluate(&strict(), &PostureReport::empty(at(0)), at(0));
        let names: Vec<&str> = result.failures.iter().map(|f| f.check.name()).collect();
        assert_eq!(
            names,
            [
                "os",
                "os_version",
                "kernel_version",
                "disk_encryption",
                "firewall",
                "screen_lock",
                "security_processes",
                "patch_age",
                "client_version"
            ]
        );
        assert!(
            failures(&result)[0].starts_with("os: the report does not say which OS"),
            "{:?}",
            failures(&result)
        );
        // A profile that asks for nothing only bounds the report's age.
        assert!(
            evaluate(
                &PostureProfile::new("any"),
                &PostureReport::empty(at(-300)),
                at(0)
            )
            .passed()
        );
        assert!(
            !evaluate(
                &PostureProfile::new("any"),
                &PostureReport::empty(at(-301)),
                at(0)
            )
            .passed()
        );
    }

    #[test]
    fn os_and_versions() {
        let profile = strict();
        let freebsd = PostureReport {
            os: Some("FreeBSD".into()),
            ..report()
        };
        assert_eq!(
            failures(&evaluate(&profile, &freebsd, at(0))),
            ["os: \"freebsd\" is not one of macos, windows, linux"]
        );

        let windows = |version: &str| PostureReport {
            os: Some("windows".into()),
            os_version: Some(version.into()),
            ..report()
        };
        assert!(evaluate(&profile, &windows("10.0.22631.3447"), at(0)).passed());
        assert!(evaluate(&profile, &windows("10.0.26100"), at(0)).passed());
        assert_eq!(
            failures(&evaluate(&profile, &windows("10.0.19045.4529"), at(0))),
            ["os_version: windows 10.0.19045.4529 is older than the required 10.0.22631"]
        );
        assert_eq!(
            failures(&evaluate(&profile, &windows("Windows 11"), at(0))),
            [
                "os_version: \"Windows 11\" is not a version; write numbers separated by dots, e.g. \"14.4\""
            ]
        );

        // Linux has no minimum OS version here, but a minimum kernel.
        let linux = |kernel: &str| PostureReport {
            os: Some("linux".into()),
            os_version: Some("24.04".into()),
            kernel: Some(kernel.into()),
            ..report()
        };
        assert!(evaluate(&profile, &linux("6.8.0-45-generic"), at(0)).passed());
        assert_eq!(
            failures(&evaluate(&profile, &linux("5.15.0-119-generic"), at(0))),
            ["kernel_version: kernel 5.15.0-119-generic is older than the required 6.1"]
        );
    }

    #[test]
    fn version_comparison_is_numeric() {
        assert!(v("14.10") > v("14.9"), "not lexicographic");
        assert!(v("14.4") == v("14.4.0"));
        assert!(v("14.4.1") > v("14.4"));
        assert!(v("10.0.22631.3447") > v("10.0.22631"));
        assert!(v("6.8.0-45-generic") > v("6.8.0-40-generic"));
        assert!(v("6.8.0-45-generic") < v("6.9"));
        assert!(v("1.2.3rc1") == v("1.2.3"));
        assert!(v("14.4.1 (23E224)") == v("14.4.1"));
        assert_eq!(v("6.8.0-45-generic").as_str(), "6.8.0-45-generic");
        assert!("".parse::<OsVersion>().is_err());
        assert!("Sonoma".parse::<OsVersion>().is_err());
    }

    #[test]
    fn processes_match_without_regard_to_case() {
        let profile = PostureProfile {
            required_processes: vec!["MsMpEng.exe".into()],
            ..PostureProfile::new("p")
        };
        let running = |names: &[&str]| PostureReport {
            security_processes: Some(names.iter().map(|n| n.to_string()).collect()),
            ..report()
        };
        assert!(evaluate(&profile, &running(&["msmpeng.exe"]), at(0)).passed());
        assert_eq!(
            failures(&evaluate(&profile, &running(&["msmpeng"]), at(0))),
            ["security_processes: not running: MsMpEng.exe"]
        );
        let silent = PostureReport {
            security_processes: None,
            ..report()
        };
        assert_eq!(
            failures(&evaluate(&profile, &silent, at(0))),
            ["security_processes: not reported; profile needs MsMpEng.exe running"]
        );
    }

    #[test]
    fn patch_age_prefers_the_patch_date() {
        let profile = PostureProfile {
            max_patch_age_days: Some(30),
            ..PostureProfile::new("p")
        };
        let patched = |days_ago: i64| PostureReport {
            last_patch_at: Some(at(-days_ago * 86_400)),
            patch_age_days: Some(0),
            ..report()
        };
        assert!(evaluate(&profile, &patched(30), at(0)).passed());
        assert_eq!(
            failures(&evaluate(&profile, &patched(31), at(0))),
            ["patch_age: last patch 31 days ago, profile allows 30 days"]
        );
    }

    #[test]
    fn client_version_is_semver() {
        let profile = PostureProfile {
            min_client_version: Some(semver::Version::new(1, 4, 0)),
            ..PostureProfile::new("p")
        };
        let client = |version: &str| PostureReport {
            client_version: Some(version.into()),
            ..report()
        };
        assert!(evaluate(&profile, &client("1.4.0"), at(0)).passed());
        assert!(evaluate(&profile, &client("1.10.0"), at(0)).passed());
        assert!(
            !evaluate(&profile, &client("1.4.0-rc.1"), at(0)).passed(),
            "a pre-release comes before"
        );
        assert_eq!(
            failures(&evaluate(&profile, &client("latest"), at(0))),
            ["client_version: \"latest\" is not a version (semver)"]
        );
    }

    #[test]
    fn signals_have_their_own_maximum_age() {
        let profile = PostureProfile {
            disk_encryption: true,
            required_processes: vec!["osqueryd".into()],
            max_signal_age: [
                (Signal::DiskEncrypted, Duration::from_secs(3600)),
                (Signal::SecurityProcesses, Duration::from_secs(60)),
            ]
            .into(),
            ..PostureProfile::new("p")
        };
        let mut fresh = report();
        fresh
            .signal_times
            .insert("disk_encrypted".into(), at(-3600));
        assert!(evaluate(&profile, &fresh, at(0)).passed());

        let mut stale = report();
        stale
            .signal_times
            .insert("disk_encrypted".into(), at(-4000));
        stale.collected_at = at(-61);
        assert_eq!(
            failures(&evaluate(&profile, &stale, at(0))),
            [
                "disk_encryption: disk_encrypted signal is 4000 s old, profile allows 3600 s",
                // No time of its own: as old as the report.
                "security_processes: security_processes signal is 61 s old, profile allows 60 s",
            ]
        );

        // A failing value is reported as such, not as stale.
        let mut off = stale.clone();
        off.disk_encrypted = Some(false);
        assert_eq!(
            failures(&evaluate(&profile, &off, at(0)))[0],
            "disk_encryption: disk is not encrypted"
        );
    }

    #[test]
    fn reports_from_the_future_are_refused() {
        let profile = PostureProfile {
            firewall: true,
            max_signal_age: [(Signal::FirewallEnabled, Duration::from_secs(600))].into(),
            ..PostureProfile::new("p")
        };
        let mut ahead = report();
        ahead.collected_at = at(60);
        assert!(
            evaluate(&profile, &ahead, at(0)).passed(),
            "within the skew"
        );
        ahead.collected_at = at(120);
        assert_eq!(
            failures(&evaluate(&profile, &ahead, at(0))),
            [
                "report_age: report is dated 120 s in the future; check the device's clock",
                "firewall: firewall_enabled signal is dated 120 s in the future; check the device's clock",
            ]
        );
    }

    #[test]
    fn reports_parse_from_json() {
        let json = r#"{
            "os": "linux", "os_version": "24.04", "kernel": "6.8.0-45-generic",
            "disk_encrypted": true, "firewall_enabled": false, "screen_lock": true,
            "security_processes": ["osqueryd"], "patch_age_days": 2, "client_version": "1.4.0",
            "collected_at": "2025-01-01T00:00:00Z",
            "signal_times": {"disk_encrypted": "2024-12-31T23:00:00Z"},
            "battery": "a signal from a newer client"
        }"#;
        let report = PostureReport::from_json(json).unwrap();
        assert_eq!(report.collected_at, at(0));
        assert_eq!(report.firewall_enabled, Some(false));
        assert_eq!(report.signal_time(Signal::DiskEncrypted), at(-3600));
        assert_eq!(report.signal_time(Signal::Kernel), at(0));
        assert_eq!(
            PostureReport::from_json(&serde_json::to_string(&report).unwrap()).unwrap(),
            report
        );

        let error = PostureReport::from_json(r#"{"os": "linux"}"#).unwrap_err();
        assert_eq!(error.code(), "invalid_posture_report");
        assert!(error.to_string().contains("collected_at"), "{error}");
        assert!(PostureReport::from_json(r#"{"collected_at": "yesterday"}"#).is_err());
        assert!(
            PostureReport::from_json(
                r#"{"collected_at": "2025-01-01T00:00:00Z", "disk_encrypted": "yes"}"#
            )
            .is_err()
        );

        let many = serde_json::json!({
            "collected_at": "2025-01-01T00:00:00Z",
            "security_processes": vec!["p"; MAX_PROCESSES + 1],
        });
        assert_eq!(
            PostureReport::from_json(&many.to_string())
                .unwrap_err()
                .code(),
            "posture_report_too_large"
        );
        let long =
            serde_json::json!({"collected_at": "2025-01-01T00:00:00Z", "os": "x".repeat(300)});
        assert!(PostureReport::from_json(&long.to_string()).is_err());
    }

    #[test]
    fn names_are_stable() {
        for signal in Signal::ALL {
            assert_eq!(Signal::from_name(signal.name()), Some(signal));
        }
        assert_eq!(Signal::from_name("disk_encryption"), None);
        assert_eq!(PostureCheck::DiskEncryption.to_string(), "disk_encryption");
        assert_eq!(
            PostureCheck::DiskEncryption.signal(),
            Some(Signal::DiskEncrypted)
        );
        assert_eq!(
            strict()
                .signals()
                .into_iter()
                .map(Signal::name)
                .collect::<Vec<_>>(),
            [
                "os",
                "os_version",
                "kernel",
                "disk_encrypted",
                "firewall_enabled",
                "screen_lock",
                "security_processes",
                "patch",
                "client_version"
            ]
        );
    }
}
