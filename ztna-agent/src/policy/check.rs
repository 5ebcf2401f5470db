//! The library half of `ztna-agent policy check FILE`: validate a policy file and describe what it
//! grants, or list everything wrong with it.
//!
//! A valid file:
//!
//! ```text
//! policy.toml: ok: 2 apps, 1 posture profile, 2 rules; everything else is denied
//! app web: 10.0.100.0/24, fd00:100::/64; tcp/443, tcp/8000-8010; mode enforce
//! posture corp-laptop: os macos|windows; disk_encryption; firewall; report <= 300 s
//! rule engineers-web (line 30): grants web; who groups [engineering]; device certificate, posture corp-laptop; max session 28800 s
//! policy.toml:9:8: warning: app "legacy" is granted by no rule: nobody can reach it (default deny)
//! ```
//!
//! An invalid one: one `file:line:column: message` per problem, then `policy.toml: 2 errors`.

use std::fmt::Write as _;

use super::{Policy, Rule};
use crate::{config::AppMode, posture::PostureProfile};

/// What `policy check` prints, and whether the file is valid (the CLI exits non-zero when not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub ok: bool,
    pub output: String,
}

/// Checks the policy `text`, named `file` in messages.
pub fn check(text: &str, file: &str) -> CheckReport {
    match Policy::parse(text, file) {
        Ok(policy) => CheckReport {
            ok: true,
            output: describe(&policy),
        },
        Err(errors) => {
            let mut output = String::new();
            for line in errors.lines() {
                output.push_str(&line);
                output.push('\n');
            }
            let count = errors.errors.len();
            let _ = writeln!(output, "{file}: {}", plural(count, "error"));
            CheckReport { ok: false, output }
        }
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A summary of a valid policy, one line per app, profile and rule, then the warnings.
pub fn describe(policy: &Policy) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: ok: {}, {}, {}; everything else is denied",
        policy.file,
        plural(policy.apps.len(), "app"),
        plural(policy.posture.len(), "posture profile"),
        plural(policy.rules.len(), "rule"),
    );
    for app in &policy.apps {
        let prefixes: Vec<String> = app.prefixes.iter().map(ToString::to_string).collect();
        let services: Vec<String> = app.services.iter().map(ToString::to_string).collect();
        let mode = match app.mode {
            AppMode::Inherit => "inherit",
            AppMode::Enforce => "enforce",
            AppMode::Monitor => "monitor",
        };
        let _ = writeln!(
            out,
            "app {}: {}; {}; mode {mode}",
            app.name,
            prefixes.join(", "),
            services.join(", ")
        );
    }
    for profile in &policy.posture {
        let _ = writeln!(
            out,
            "posture {}: {}",
            profile.name,
            describe_profile(profile)
        );
    }
    for rule in &policy.rules {
        let _ = writeln!(
            out,
            "rule {} (line {}): {}",
            rule.name,
            rule.line,
            describe_rule(rule)
        );
    }
    for warning in &policy.warnings {
        let _ = writeln!(
            out,
            "{}:{}:{}: warning: {}",
            policy.file, warning.line, warning.column, warning.message
        );
    }
    out
}

fn describe_profile(profile: &PostureProfile) -> String {
    let mut parts = Vec::new();
    if !profile.os.is_empty() {
        parts.push(format!("os {}", profile.os.join("|")));
    }
    if !profile.min_os_version.is_empty() {
        let minimums: Vec<String> = profile
            .min_os_version
            .iter()
            .map(|(os, v)| format!("{os} >= {v}"))
            .collect();
        parts.push(minimums.join(", "));
    }
    if let Some(kernel) = &profile.min_kernel_version {
        parts.push(format!("linux kernel >= {kernel}"));
    }
    for (on, name) in [
        (profile.disk_encryption, "disk_encryption"),
        (profile.firewall, "firewall"),
        (profile.screen_lock, "screen_lock"),
    ] {
        if on {
            parts.push(name.to_owned());
        }
    }
    if !profile.required_processes.is_empty() {
        parts.push(format!("running {}", profile.required_processes.join(", ")));
    }
    if let Some(days) = profile.max_patch_age_days {
        parts.push(format!("patched <= {days} days ago"));
    }
    if let Some(version) = &profile.min_client_version {
        parts.push(format!("client >= {version}"));
    }
    parts.push(format!("report <= {} s", profile.max_report_age.as_secs()));
    for (signal, age) in &profile.max_signal_age {
        parts.push(format!("{signal} <= {} s", age.as_secs()));
    }
    parts.join("; ")
}

fn describe_rule(rule: &Rule) -> String {
    let mut parts = vec![format!("grants {}", rule.apps.join(", "))];

    let who = &rule.who;
    let mut whom = Vec::new();
    if who.authenticated {
        whom.push("every signed-in user".to_owned());
    }
    if !who.users.is_empty() {
        whom.push(format!("users [{}]", who.users.join(", ")));
    }
    if !who.groups.is_empty() {
        whom.push(format!("groups [{}]", who.groups.join(", ")));
    }
    for claim in &who.claims {
        let values: Vec<String> = claim.any_of.iter().map(ToString::to_string).collect();
        whom.push(format!("claim {} in [{}]", claim.path, values.join(", ")));
    }
    parts.push(format!("who {}", whom.join(" and ")));

    let mut device = Vec::new();
    if rule.device.certificate {
        device.push("certificate".to_owned());
    }
    if let Some(profile) = &rule.device.posture {
        device.push(format!("posture {profile}"));
    }
    if !device.is_empty() {
        parts.push(format!("device {}", device.join(", ")));
    }

    let context = &rule.context;
    let mut when = Vec::new();
    if !context.sources.is_empty() {
        let sources: Vec<String> = context.sources.iter().map(ToString::to_string).collect();
        when.push(format!("source {}", sources.join(", ")));
    }
    if !context.time.is_empty() {
        let windows: Vec<String> = context.time.iter().map(ToString::to_string).collect();
        when.push(format!("time {}", windows.join(" or ")));
    }
    if let Some(mfa) = &context.mfa {
        let mut mfa_parts = Vec::new();
        if !mfa.amr_any.is_empty() {
            mfa_parts.push(format!("amr {}", mfa.amr_any.join("|")));
        }
        if !mfa.acr_any.is_empty() {
            mfa_parts.push(format!("acr {}", mfa.acr_any.join("|")));
        }
        if let Some(age) = mfa.max_auth_age {
            mfa_parts.push(format!("login <= {} s ago", age.as_secs()));
        }
        when.push(format!("mfa {}", mfa_parts.join(", ")));
    }
    if !when.is_empty() {
        parts.push(format!("context {}", when.join(", ")));
    }
    if let Some(max) = rule.max_session {
        parts.push(format!("max session {} s", max.as_secs()));
    }
    parts.join("; ")
}
