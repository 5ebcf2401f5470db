//! Policy tests: parsing with located errors, evaluation with named checks, and `policy check`.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use serde_json::json;

use super::{check::check, *};
use crate::{config::parse_prefix, posture::PostureReport};

const FIXTURE: &str = include_str!("../../tests/fixtures/policy.toml");

fn policy() -> Policy {
    Policy::parse(FIXTURE, "policy.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn t(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// Monday 2025-01-06, 10:00 in Berlin (UTC+1 in winter).
fn monday() -> Timestamp {
    t("2025-01-06T09:00:00Z")
}

fn errors(text: &str) -> Vec<String> {
    match Policy::parse(text, "policy.toml") {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.lines(),
    }
}

fn alice() -> Identity {
    let claims = json!({
        "sub": "u-alice",
        "email": "Alice@Example.com",
        "realm_access": {"roles": ["db-admin", "offline_access"]},
    });
    Identity {
        issuer: "https://idp.test".into(),
        subject: "u-alice".into(),
        email: Some("Alice@Example.com".into()),
        groups: vec!["engineering".into()],
        amr: vec!["pwd".into(), "hwk".into()],
        acr: None,
        auth_time: Some(t("2025-01-06T08:30:00Z")),
        issued_at: None,
        expires_at: t("2025-01-06T10:00:00Z"),
        claims: claims.as_object().unwrap().clone(),
    }
}

fn bob() -> Identity {
    Identity {
        subject: "u-bob".into(),
        email: Some("bob@example.com".into()),
        groups: vec!["sales".into()],
        claims: json!({"realm_access": {"roles": ["viewer"]}})
            .as_object()
            .unwrap()
            .clone(),
        ..alice()
    }
}

fn laptop(now: Timestamp) -> PostureReport {
    PostureReport {
        os: Some("macos".into()),
        os_version: Some("14.5".into()),
        kernel: Some("23.5.0".into()),
        disk_encrypted: Some(true),
        firewall_enabled: Some(true),
        screen_lock: Some(true),
        security_processes: Some(vec!["falcon-sensor".into()]),
        patch_age_days: Some(5),
        last_patch_at: None,
        client_version: Some("1.4.1".into()),
        collected_at: now,
        signal_times: BTreeMap::new(),
    }
}

struct Ask {
    identity: Identity,
    device: Option<DeviceCertificate>,
    posture: Option<PostureReport>,
    source: &'static str,
    now: Timestamp,
}

impl Ask {
    fn new(identity: Identity) -> Self {
        Self {
            identity,
            device: Some(DeviceCertificate {
                id: "dev-42".into(),
            }),
            posture: Some(laptop(monday())),
            source: "10.1.2.3",
            now: monday(),
        }
    }

    fn decide(&self, policy: &Policy) -> Decision {
        evaluate(
            policy,
            &Request {
                identity: &self.identity,
                device: self.device.as_ref(),
                posture: self.posture.as_ref(),
                source: self.source.parse().unwrap(),
                now: self.now,
            },
        )
    }
}

/// For each rule considered for `app`, the codes of its failed checks.
fn refused_codes(decision: &Decision, app: &str) -> Vec<(String, Vec<&'static str>)> {
    let refusal = decision
        .refusal(app)
        .unwrap_or_else(|| panic!("{app} was granted:\n{decision}"));
    refusal
        .rules
        .iter()
        .map(|r| {
            (
                r.rule.clone(),
                r.failures.iter().map(|f| f.check.code()).collect(),
            )
        })
        .collect()
}

fn granted_by<'d>(decision: &'d Decision, app: &str) -> &'d str {
    &decision
        .grant(app)
        .unwrap_or_else(|| panic!("{app} was refused:\n{decision}"))
        .rule
}

// --- parsing -------------------------------------------------------------------------------------

#[test]
fn the_example_policy_parses() {
    let policy = policy();
    assert_eq!(
        policy
            .apps
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["web", "db", "legacy"]
    );
    let web = policy.app("web").unwrap();
    assert_eq!(web.prefixes.len(), 2);
    assert_eq!(web.services[1].to_string(), "tcp/8000-8010");
    assert_eq!(web.mode, crate::config::AppMode::Enforce);
    assert_eq!(
        policy.app("db").unwrap().prefixes[0].to_string(),
        "10.0.200.10/32"
    );
    assert_eq!(
        policy.app("db").unwrap().mode,
        crate::config::AppMode::Inherit
    );

    let profile = policy.posture_profile("corp-laptop").unwrap();
    assert_eq!(profile.os, ["macos", "windows", "linux"]);
    assert_eq!(profile.min_os_version["windows"].as_str(), "10.0.22631");
    assert_eq!(profile.max_patch_age_days, Some(30));
    assert_eq!(profile.max_report_age, Duration::from_secs(300));
    assert_eq!(
        profile.max_signal_age[&crate::posture::Signal::SecurityProcesses],
        Duration::from_secs(600)
    );

    let rule = policy.rule("engineers-web").unwrap();
    assert_eq!(rule.line, 36, "the [[rules]] header");
    assert_eq!(rule.max_session, Some(Duration::from_secs(8 * 3600)));
    assert_eq!(rule.who.groups, ["engineering"]);
    assert!(rule.device.certificate);
    assert_eq!(rule.context.sources.len(), 2);
    let dba = policy.rule("dba-weekdays").unwrap();
    assert_eq!(dba.apps, ["db", "web"]);
    assert_eq!(dba.who.claims[0].path.as_str(), "realm_access.roles");
    assert_eq!(dba.who.claims[0].any_of, [json!("db-admin")]);
    assert_eq!(
        dba.context.time[0].to_string(),
        "mon-fri 08:00-18:00 Europe/Berlin"
    );
    assert_eq!(
        dba.context.mfa.as_ref().unwrap().max_auth_age,
        Some(Duration::from_secs(3600))
    );

    assert_eq!(policy.warnings.len(), 1);
    assert_eq!(policy.warnings[0].line, 17);
    assert_eq!(
        policy.warnings[0].message,
        "app \"legacy\" is granted by no rule: nobody can reach it (default deny)"
    );
}

#[test]
fn a_port_out_of_range_names_file_line_app_and_fix() {
    let text = FIXTURE.replace("\"tcp/5432\"", "\"tcp/70000-70010\"");
    assert_eq!(
        errors(&text),
        [
            "policy.toml:14:13: app \"db\": service \"tcp/70000-70010\": port 70000 exceeds 65535; use a port between 1 and 65535"
        ]
    );
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let text = FIXTURE
        .replace("description = \"intranet\"", "descripton = \"intranet\"")
        .replace("\"10.0.200.10\"", "\"10.0.200.10/24\"")
        .replace("max_patch_age_days = 30", "max_patch_age_days = \"30d\"")
        .replace("apps = [\"web\"]", "apps = [\"web\", \"wiki\"]")
        .replace("max_session = \"8h\"", "max_session = \"8 hours\"")
        .replace(
            "posture = \"corp-laptop\", certificate",
            "posture = \"corp\", certificate",
        )
        .replace("\"fd00::/8\"", "\"fd00::/129\"")
        .replace("to = \"18:00\"", "to = \"18:75\"")
        .replace("tz = \"Europe/Berlin\"", "tz = \"Europe/Berln\"");
    let found = errors(&text);
    let expected = [
        "policy.toml:6:1: app \"web\": unknown key \"descripton\"; expected name, description, prefixes, services, mode",
        "policy.toml:13:13: app \"db\": prefix \"10.0.200.10/24\": host bits are set; did you mean \"10.0.200.0/24\"?",
        "policy.toml:31:22: posture profile \"corp-laptop\": max_patch_age_days: expected a number of days, found string",
        "policy.toml:38:16: rule \"engineers-web\": app \"wiki\" is not defined; defined apps: web, db, legacy",
        "policy.toml:39:15: rule \"engineers-web\": max_session: unknown unit \"hours\" in \"8 hours\"; use ms, s, m, h or d",
        "policy.toml:41:22: rule \"engineers-web\": device.posture: profile \"corp\" is not defined; defined profiles: corp-laptop",
        "policy.toml:42:37: rule \"engineers-web\": context.source \"fd00::/129\": expected an IPv4 or IPv6 prefix such as \"10.0.100.0/24\" or \"fd00:100::/64\", with a length of at most 32 (IPv4) or 128 (IPv6)",
    ];
    assert_eq!(found[..expected.len()], expected, "{found:#?}");
    // The time window: both the clock and the zone, on the same line.
    let rest = &found[expected.len()..];
    assert_eq!(rest.len(), 2, "{found:#?}");
    assert!(
        rest[0].starts_with("policy.toml:57:")
            && rest[0].contains("context.time[0].to \"18:75\": out of range"),
        "{rest:#?}"
    );
    assert!(
        rest[1].starts_with("policy.toml:57:")
            && rest[1].contains("context.time[0].tz \"Europe/Berln\": unknown time zone"),
        "{rest:#?}"
    );
}

#[test]
fn syntax_errors_are_located() {
    let found = errors("[[apps]]\nname = \"web\"\nprefixes = [\"10.0.0.0/8\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("policy.toml:3:"), "{found:?}");
    let found = errors("[[rules]\n");
    assert!(found[0].starts_with("policy.toml:1:"), "{found:?}");
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let text = r#"
aps = []

[[apps]]
name = "web"
prefixes = ["10.0.0.0/24"]
services = ["tcp/443"]
port = 443

[[rules]]
name = "r"
apps = ["web"]
who = { group = ["eng"] }
device = { cert = true }
context = { sources = ["10.0.0.0/8"], mfa = { amr = ["otp"], level = 2 }, time = [{ from = "08:00", to = "09:00", tz = "UTC", zone = "UTC" }] }
"#;
    let found = errors(text);
    let unknown: Vec<&str> = found
        .iter()
        .filter_map(|e| e.split("unknown key ").nth(1))
        .map(|rest| rest.split(';').next().unwrap())
        .collect();
    assert_eq!(
        unknown,
        [
            "\"aps\"",
            "\"port\"",
            "\"group\"",
            "\"cert\"",
            "\"sources\"",
            "\"level\"",
            "\"zone\""
        ],
        "{found:#?}"
    );
    assert!(
        found.iter().any(|e| e.contains("who names nobody")),
        "{found:#?}"
    );
}

#[test]
fn references_and_names_are_checked() {
    let text = r#"
[[apps]]
name = "web"
prefixes = ["10.0.0.0/24"]
services = ["tcp/443"]

[[apps]]
name = "web"
prefixes = ["10.0.1.0/24"]
services = ["tcp/443"]

[[posture]]
name = "p"
os = ["linux"]
min_os_version = { windows = "10.0" }
max_signal_age = { disk_encrypted = "1h", battery = "1h" }

[[rules]]
name = "r"
apps = ["web", "web"]
who = { authenticated = true, users = ["alice"] }

[[rules]]
name = "r"
apps = []
who = { users = ["bob"] }
device = { posture = "q" }

[[rules]]
name = "no-who"
apps = ["web"]
"#;
    let found = errors(text);
    for expected in [
        "policy.toml:8:8: app \"web\" is already defined on line 3; app names must be unique",
        "policy.toml:15:20: posture profile \"p\": min_os_version.windows: \"windows\" is not in os [linux]; add it there or remove this minimum",
        "policy.toml:16:20: posture profile \"p\": max_signal_age.disk_encrypted: the profile does not check disk_encrypted; require it or remove this limit",
        "policy.toml:16:43: posture profile \"p\": max_signal_age.battery: unknown signal; signals are os, os_version, kernel, disk_encrypted, firewall_enabled, screen_lock, security_processes, patch, client_version",
        "policy.toml:20:16: rule \"r\": app \"web\" is listed twice",
        "policy.toml:21:7: rule \"r\": who: authenticated = true grants every signed-in user, which contradicts the users, groups or claims listed; remove one",
        "policy.toml:24:8: rule \"r\" is already defined on line 19; rule names must be unique",
        "policy.toml:25:8: rule \"r\": apps is empty; list the apps the rule grants",
        "policy.toml:27:22: rule \"r\": device.posture: profile \"q\" is not defined; defined profiles: p",
        "policy.toml:29:1: rule \"no-who\": missing key \"who\"; name users, groups or claims, or write who = { authenticated = true } to grant every signed-in user",
    ] {
        assert!(
            found.contains(&expected.to_owned()),
            "missing {expected}\nin {found:#?}"
        );
    }
    assert_eq!(found.len(), 10, "{found:#?}");
}

#[test]
fn overlapping_apps_are_refused() {
    let text = r#"
[[apps]]
name = "web"
prefixes = ["10.0.0.0/24"]
services = ["tcp/8000-8010"]

[[apps]]
name = "admin"
prefixes = ["10.0.0.5"]
services = ["udp/53", "tcp/8005"]

[[rules]]
name = "r"
apps = ["web", "admin"]
who = { authenticated = true }
"#;
    assert_eq!(
        errors(text),
        [
            "policy.toml:10:23: app \"admin\": service \"tcp/8005\" on 10.0.0.5/32 is already claimed by app \"web\" (service \"tcp/8000-8010\"); a packet must belong to one app: narrow the services or the prefixes of one of them"
        ]
    );
}

#[test]
fn wrong_types_are_named() {
    let text = r#"
apps = "web"

[[rules]]
name = "r"
apps = "web"
who = ["alice"]
max_session = true
"#;
    assert_eq!(
        errors(text),
        [
            "policy.toml:2:8: apps: expected an array, found string",
            "policy.toml:6:8: rule \"r\": apps: expected an array, found string",
            "policy.toml:7:7: rule \"r\": who: expected a table, found array",
            "policy.toml:8:15: rule \"r\": max_session: expected a duration such as \"8h\", found boolean",
        ]
    );
}

#[test]
fn an_empty_policy_denies_everything() {
    let policy = Policy::parse("# nothing yet\n", "empty.toml").unwrap();
    assert!(policy.apps.is_empty() && policy.rules.is_empty());
    let decision = Ask::new(alice()).decide(&policy);
    assert_eq!(decision, Decision::default());
}

#[test]
fn prefixes_days_and_clocks() {
    assert_eq!(parse_prefix("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
    assert_eq!(
        parse_prefix("::ffff:10.0.0.1").unwrap().to_string(),
        "10.0.0.1/32"
    );
    assert!(
        parse_prefix("::ffff:10.0.0.0/120")
            .unwrap_err()
            .contains("\"10.0.0.0/24\"")
    );
    let window = |days: &str| {
        let text = format!(
            "[[apps]]\nname = \"a\"\nprefixes = [\"10.0.0.0/8\"]\nservices = [\"any\"]\n[[rules]]\nname = \"r\"\napps = [\"a\"]\nwho = {{ authenticated = true }}\ncontext = {{ time = [{{ days = {days}, from = \"00:00\", to = \"24:00\", tz = \"UTC\" }}] }}\n"
        );
        Policy::parse(&text, "p.toml").map(|p| p.rules[0].context.time[0].to_string())
    };
    assert_eq!(window("[\"mon-fri\"]").unwrap(), "mon-fri 00:00-24:00 UTC");
    assert_eq!(window("[\"weekend\"]").unwrap(), "sat,sun 00:00-24:00 UTC");
    assert_eq!(
        window("[\"fri-mon\"]").unwrap(),
        "mon,fri,sat,sun 00:00-24:00 UTC"
    );
    assert_eq!(
        window("[\"monday\", \"wed\"]").unwrap(),
        "mon,wed 00:00-24:00 UTC"
    );
    assert_eq!(
        window("[\"weekdays\", \"weekend\"]").unwrap(),
        "every day 00:00-24:00 UTC"
    );
    assert!(
        window("[\"mo\"]")
            .unwrap_err()
            .to_string()
            .contains("unknown day \"mo\"")
    );
    assert!(window("[]").unwrap_err().to_string().contains("never open"));
}

// --- evaluation ----------------------------------------------------------------------------------

#[test]
fn a_compliant_engineer_gets_her_apps_and_nothing_else() {
    let decision = Ask::new(alice()).decide(&policy());
    assert_eq!(granted_by(&decision, "web"), "engineers-web");
    assert_eq!(
        decision.grant("web").unwrap().max_session,
        Some(Duration::from_secs(8 * 3600))
    );
    assert_eq!(granted_by(&decision, "db"), "dba-weekdays");
    assert_eq!(decision.session_limit(), Some(Duration::from_secs(3600)));
    // Default deny: no rule names legacy.
    let legacy = decision.refusal("legacy").unwrap();
    assert!(legacy.rules.is_empty());
    assert_eq!(legacy.codes(), ["no_rule"]);
}

#[test]
fn the_wrong_user_is_refused_with_every_rule_and_check_named() {
    let decision = Ask::new(bob()).decide(&policy());
    assert!(decision.granted.is_empty(), "{decision}");
    assert_eq!(
        refused_codes(&decision, "web"),
        [
            ("engineers-web".to_owned(), vec!["group_missing"]),
            (
                "dba-weekdays".to_owned(),
                vec!["user_not_allowed", "claim_mismatch"]
            ),
        ]
    );
    let web = decision.refusal("web").unwrap();
    assert_eq!(
        web.rules[0].failures[0].to_string(),
        "group_missing: the user is in [sales], the rule needs one of [engineering]"
    );
    assert_eq!(
        web.rules[1].failures[0].to_string(),
        "user_not_allowed: bob@example.com (u-bob) is not one of the rule's users"
    );
    assert_eq!(
        web.rules[1].failures[1].to_string(),
        "claim_mismatch: claim realm_access.roles is [\"viewer\"], the rule needs \"db-admin\""
    );
    assert_eq!(
        web.codes(),
        ["group_missing", "user_not_allowed", "claim_mismatch"]
    );
}

#[test]
fn users_match_the_subject_or_the_email_without_case() {
    let mut policy = policy();
    policy.rules[1].who.users = vec!["u-alice".into()];
    assert_eq!(
        granted_by(&Ask::new(alice()).decide(&policy), "db"),
        "dba-weekdays"
    );
    policy.rules[1].who.users = vec!["ALICE@example.COM".into()];
    assert_eq!(
        granted_by(&Ask::new(alice()).decide(&policy), "db"),
        "dba-weekdays"
    );
    policy.rules[1].who.users = vec!["alice".into()];
    assert_eq!(
        refused_codes(&Ask::new(alice()).decide(&policy), "db")[0].1,
        ["user_not_allowed"]
    );
}

#[test]
fn a_missing_device_certificate_falls_through_to_the_next_rule() {
    let mut ask = Ask::new(alice());
    ask.device = None;
    let decision = ask.decide(&policy());
    // engineers-web needs a certificate; dba-weekdays does not and grants web too.
    assert_eq!(granted_by(&decision, "web"), "dba-weekdays");
    assert_eq!(
        decision.grant("web").unwrap().max_session,
        Some(Duration::from_secs(3600))
    );

    let mut policy = policy();
    policy.rules[1].apps = vec!["db".into()];
    let decision = ask.decide(&policy);
    assert_eq!(
        refused_codes(&decision, "web"),
        [(
            "engineers-web".to_owned(),
            vec!["device_certificate_required"]
        )]
    );
}

#[test]
fn failing_posture_is_named_per_check() {
    let mut ask = Ask::new(alice());
    let mut report = laptop(monday());
    report.disk_encrypted = Some(false);
    report.security_processes = Some(Vec::new());
    ask.posture = Some(report);
    let decision = ask.decide(&policy());
    assert!(decision.granted.is_empty(), "{decision}");
    let web = decision.refusal("web").unwrap();
    assert_eq!(
        refused_codes(&decision, "web")[0].1,
        ["posture:disk_encryption", "posture:security_processes"]
    );
    assert_eq!(
        web.rules[0].failures[0].to_string(),
        "posture:disk_encryption: disk is not encrypted (profile corp-laptop)"
    );

    // A stale report fails report_age.
    ask.posture = Some(laptop(t("2025-01-06T08:54:00Z")));
    let decision = ask.decide(&policy());
    assert_eq!(refused_codes(&decision, "db")[0].1, ["posture:report_age"]);

    // No report at all.
    ask.posture = None;
    let decision = ask.decide(&policy());
    assert_eq!(
        refused_codes(&decision, "db")[0].1,
        ["posture:report_missing"]
    );
}

#[test]
fn the_source_network_is_the_observed_address() {
    let mut ask = Ask::new(alice());
    ask.source = "192.0.2.7";
    // dba-weekdays has no source condition and grants web as well.
    let decision = ask.decide(&policy());
    assert_eq!(granted_by(&decision, "web"), "dba-weekdays");
    assert_eq!(granted_by(&decision, "db"), "dba-weekdays");

    let mut policy = policy();
    policy.rules[1].apps = vec!["db".into()];
    let decision = ask.decide(&policy);
    assert_eq!(
        decision.refusal("web").unwrap().rules[0].failures[0].to_string(),
        "source_network: source 192.0.2.7 is not in 10.0.0.0/8, fd00::/8"
    );
    ask.source = "::ffff:10.9.9.9";
    assert_eq!(granted_by(&ask.decide(&policy), "web"), "engineers-web");
    ask.source = "fd00:1::2";
    assert_eq!(granted_by(&ask.decide(&policy), "web"), "engineers-web");
    ask.source = "fe80::1";
    assert!(ask.decide(&policy).grant("web").is_none());
}

#[test]
fn time_windows_follow_the_local_clock() {
    let mut ask = Ask::new(alice());
    // Saturday.
    ask.now = t("2025-01-11T09:00:00Z");
    ask.posture = Some(laptop(ask.now));
    let decision = ask.decide(&policy());
    assert_eq!(
        decision.refusal("db").unwrap().rules[0].failures[0].to_string(),
        "time_window: it is sat 10:00 in Europe/Berlin, outside mon-fri 08:00-18:00 Europe/Berlin"
    );

    // 06:30 UTC on a Monday: 07:30 in Berlin in winter (closed), 08:30 in summer (open).
    let mut at = |now: &str| {
        ask.now = t(now);
        ask.posture = Some(laptop(ask.now));
        ask.identity.auth_time = Some(ask.now);
        ask.decide(&policy()).grant("db").is_some()
    };
    assert!(!at("2025-01-06T06:30:00Z"));
    assert!(at("2025-07-07T06:30:00Z"));
    // The end is exclusive: 18:00 Berlin is 17:00 UTC in winter.
    assert!(at("2025-01-06T16:59:59Z"));
    assert!(!at("2025-01-06T17:00:00Z"));
}

#[test]
fn overnight_windows_run_past_midnight() {
    let text = r#"
[[apps]]
name = "batch"
prefixes = ["10.0.0.0/24"]
services = ["tcp/22"]

[[rules]]
name = "night-shift"
apps = ["batch"]
who = { authenticated = true }
context = { time = [{ days = ["fri"], from = "22:00", to = "06:00", tz = "UTC" }] }
"#;
    let policy = Policy::parse(text, "night.toml").unwrap();
    let open = |now: &str| {
        let mut ask = Ask::new(alice());
        ask.now = t(now);
        ask.decide(&policy).grant("batch").is_some()
    };
    assert!(open("2025-01-10T22:00:00Z"), "friday 22:00");
    assert!(open("2025-01-10T23:59:00Z"), "friday night");
    assert!(open("2025-01-11T05:59:59Z"), "saturday early morning");
    assert!(!open("2025-01-11T06:00:00Z"), "saturday 06:00");
    assert!(!open("2025-01-11T23:00:00Z"), "saturday night");
    assert!(
        !open("2025-01-10T05:00:00Z"),
        "friday early morning belongs to thursday"
    );
    assert!(!open("2025-01-09T23:00:00Z"), "thursday night");
}

#[test]
fn mfa_strength_and_age_are_checked() {
    let mut ask = Ask::new(alice());
    ask.identity.amr = vec!["pwd".into()];
    ask.identity.auth_time = Some(t("2025-01-06T07:59:59Z"));
    let decision = ask.decide(&policy());
    assert_eq!(
        refused_codes(&decision, "db")[0].1,
        ["mfa_required", "reauthentication_required"]
    );
    assert_eq!(
        decision.refusal("db").unwrap().rules[0].failures[1].to_string(),
        "reauthentication_required: the login is 3601 s old, the rule allows 3600 s; sign in again"
    );
    // An OTP login passes engineers-web (otp|hwk|mfa) but not dba-weekdays (hwk only).
    ask.identity.amr = vec!["otp".into()];
    ask.identity.auth_time = Some(monday());
    let decision = ask.decide(&policy());
    assert_eq!(granted_by(&decision, "web"), "engineers-web");
    assert_eq!(refused_codes(&decision, "db")[0].1, ["mfa_required"]);
}

#[test]
fn claim_conditions_match_scalars_and_arrays() {
    let text = r#"
[[apps]]
name = "a"
prefixes = ["10.0.0.0/24"]
services = ["any"]

[[rules]]
name = "r"
apps = ["a"]
who = { claims = { department = ["eng", "sre"], "org.level" = 3, contractor = false } }
"#;
    let policy = Policy::parse(text, "claims.toml").unwrap();
    let decide = |claims: serde_json::Value| {
        let mut identity = alice();
        identity.claims = claims.as_object().unwrap().clone();
        let decision = Ask::new(identity).decide(&policy);
        decision.grant("a").is_some()
    };
    assert!(decide(
        json!({"department": "sre", "org": {"level": 3}, "contractor": false})
    ));
    assert!(decide(
        json!({"department": ["hr", "eng"], "org": {"level": 3}, "contractor": false})
    ));
    assert!(!decide(
        json!({"department": "hr", "org": {"level": 3}, "contractor": false})
    ));
    assert!(!decide(
        json!({"department": "eng", "org": {"level": "3"}, "contractor": false})
    ));
    assert!(!decide(json!({"department": "eng", "org": {"level": 3}})));
}

#[test]
fn decisions_print_one_line_per_app() {
    let decision = Ask::new(bob()).decide(&policy());
    let text = decision.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("refused web: rule engineers-web: group_missing: "),
        "{text}"
    );
    assert!(
        lines[0].contains(" | rule dba-weekdays: user_not_allowed: "),
        "{text}"
    );
    assert_eq!(lines[2], "refused legacy: no rule grants it (default deny)");
    let granted = Ask::new(alice()).decide(&policy()).to_string();
    assert!(
        granted.starts_with("granted web by rule engineers-web (max session 28800 s)\n"),
        "{granted}"
    );
}

#[test]
fn each_rule_and_profile_is_evaluated_once_per_request() {
    // Two rules grant the same apps: the second rule's outcome must be the same for both apps.
    let decision = Ask::new(bob()).decide(&policy());
    let web = decision.refusal("web").unwrap();
    let db = decision.refusal("db").unwrap();
    assert_eq!(web.rules[1], db.rules[0]);
}

// --- policy check --------------------------------------------------------------------------------

#[test]
fn policy_check_describes_a_valid_file() {
    let report = check(FIXTURE, "policy.toml");
    assert!(report.ok);
    assert_eq!(
        report.output,
        "policy.toml: ok: 3 apps, 1 posture profile, 2 rules; everything else is denied
app web: 10.0.100.0/24, fd00:100::/64; tcp/443, tcp/8000-8010; mode enforce
app db: 10.0.200.10/32; tcp/5432; mode inherit
app legacy: 10.0.250.0/24; tcp/23; mode monitor
posture corp-laptop: os macos|windows|linux; macos >= 14.4, windows >= 10.0.22631; linux kernel >= 6.1; disk_encryption; firewall; screen_lock; running falcon-sensor; patched <= 30 days ago; client >= 1.4.0; report <= 300 s; security_processes <= 600 s
rule engineers-web (line 36): grants web; who groups [engineering]; device certificate, posture corp-laptop; context source 10.0.0.0/8, fd00::/8, mfa amr otp|hwk|mfa; max session 28800 s
rule dba-weekdays (line 44): grants db, web; who users [alice@example.com] and claim realm_access.roles in [\"db-admin\"]; device posture corp-laptop; context time mon-fri 08:00-18:00 Europe/Berlin, mfa amr hwk, login <= 3600 s ago; max session 3600 s
policy.toml:17:8: warning: app \"legacy\" is granted by no rule: nobody can reach it (default deny)
"
    );
}

#[test]
fn policy_check_lists_every_error() {
    let text = FIXTURE
        .replace("\"tcp/5432\"", "\"tcp/70000-70010\"")
        .replace("apps = [\"db\", \"web\"]", "apps = [\"db\", \"wbe\"]");
    let report = check(&text, "policy.toml");
    assert!(!report.ok);
    assert_eq!(
        report.output,
        "policy.toml:14:13: app \"db\": service \"tcp/70000-70010\": port 70000 exceeds 65535; use a port between 1 and 65535
policy.toml:46:15: rule \"dba-weekdays\": app \"wbe\" is not defined; defined apps: web, db, legacy
policy.toml: 2 errors
"
    );
}
