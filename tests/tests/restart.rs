//! The real `ztna-agent` binary in the gateway namespace of a lab: a crash (`kill -9`) changes
//! nothing for traffic, a restart takes over the pinned maps and grants without extending them, and
//! teardown removes everything.
//!
//! Root only (namespaces, XDP, bpffs). The agent binary is built on demand in the test's profile
//! (see `ztna_tests::netns::agent_binary`); `ZTNA_AGENT_BIN` points at another one.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    thread,
    time::Duration,
};

use ztna_agent::dataplane::{GrantEntry, pinned_grant as read_pinned_grant};
use ztna_common::maps;
use ztna_tests::netns::{
    ByteSink, EchoServer, Family, Lab, LabOptions, Probe, Writer, agent_binary, eventually,
    tcp_echo,
};

const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
const SILENT_AFTER: Duration = Duration::from_millis(800);

fn config(lab: &Lab, client_a: IpAddr) -> String {
    format!(
        r#"
instance = "{instance}"
mode = "enforce"
grants_capacity = 1024
sweep_interval = "1s"

[[interfaces]]
name = "c0"
attach = "generic"

[[interfaces]]
name = "c1"
attach = "driver"

[[apps]]
name = "lab-server"
prefixes = ["{v4}", "{v6}"]
services = ["tcp/{ECHO_PORT}-{SINK_PORT}", "udp/{ECHO_PORT}", "icmp", "icmpv6"]

[[grants]]
source = "{client_a}"
app = "lab-server"
ttl = "10m"
"#,
        instance = lab.instance,
        v4 = lab.server_cidr(Family::V4),
        v6 = lab.server_cidr(Family::V6),
    )
}

/// The grant of `source` for app 1, read straight from the pinned map.
fn pinned_grant(lab: &Lab, source: IpAddr) -> Option<GrantEntry> {
    read_pinned_grant(&lab.pin_dir(), source, 1).expect("read the pinned grant table")
}

fn probe_b(lab: &Lab, echo: SocketAddr) -> Probe {
    lab.clients[1].ns.run(|| tcp_echo(echo, SILENT_AFTER))
}

fn assert_flowing(sink: &ByteSink, when: &str) {
    let start = sink.received();
    assert!(
        eventually(Duration::from_secs(5), || sink.received()
            > start + (1 << 20)),
        "{when}: client A's stream is not flowing ({} bytes, was {start})",
        sink.received()
    );
}

#[test]
fn crash_and_restart_keep_enforcing_and_keep_grant_deadlines() {
    ztna_tests::require_root!("running the agent in network namespaces");
    let lab = Lab::with(&LabOptions { clients: 2 }).expect("build the namespace lab");
    let _echo = EchoServer::start(&lab.server, ECHO_PORT).expect("echo server");
    let sink = ByteSink::start(&lab.server, SINK_PORT).expect("sink");
    let client_a = lab.clients[0].addr(Family::V4);
    let server = lab.server_addr(Family::V4);
    let echo = SocketAddr::new(server, ECHO_PORT);
    let config_path = lab
        .write_file("gateway.toml", &config(&lab, client_a))
        .expect("write config");

    let mut agent = lab.start_agent(&config_path, &[]).expect("start the agent");
    let first_start = agent
        .wait_for_log("state reconciled", Duration::from_secs(1))
        .expect("start summary");
    assert!(
        first_start.contains(r#""reused_pins":false"#),
        "{first_start}"
    );
    assert!(
        first_start.contains(r#""grants_installed":1"#),
        "{first_start}"
    );

    assert_eq!(
        probe_b(&lab, echo),
        Probe::Silent,
        "client B got through without a grant"
    );
    let writer = Writer::start(&lab.clients[0].ns, SocketAddr::new(server, SINK_PORT))
        .expect("client A connects through the gateway");
    assert_flowing(&sink, "with the agent running");
    let granted = pinned_grant(&lab, client_a).expect("client A's grant is pinned");

    // A crash: no signal handler, no cleanup.
    agent.kill9().expect("kill -9 the agent");
    assert!(
        lab.pin_dir().join("link_c0").exists(),
        "the link pin went with the agent"
    );
    assert_flowing(&sink, "with the agent dead");
    assert_eq!(
        probe_b(&lab, echo),
        Probe::Silent,
        "client B got through with the agent dead"
    );
    assert_eq!(writer.error(), None);

    let mut agent = lab
        .start_agent(&config_path, &[])
        .expect("restart the agent");
    let restart = agent
        .wait_for_log("state reconciled", Duration::from_secs(1))
        .expect("restart summary");
    for expected in [
        r#""reused_pins":true"#,
        r#""grants_kept":1"#,
        r#""grants_installed":0"#,
        r#""grants_removed":0"#,
        r#""prefixes_written":0"#,
        r#""services_written":0"#,
    ] {
        assert!(
            restart.contains(expected),
            "expected {expected} in {restart}"
        );
    }
    assert!(
        agent
            .logs()
            .iter()
            .any(|l| l.contains("took over pinned XDP link on c0")),
        "the restarted agent did not take over the pinned link:\n{}",
        agent.logs().join("\n")
    );
    let kept = pinned_grant(&lab, client_a).expect("client A's grant survived the restart");
    assert_eq!(
        kept.expires_at_ns, granted.expires_at_ns,
        "the restart moved client A's deadline"
    );
    assert_flowing(&sink, "after the restart");
    let counted = pinned_grant(&lab, client_a).expect("grant");
    assert!(
        counted.bytes > granted.bytes,
        "the grant's counters restarted or stopped: {granted:?} then {counted:?}"
    );
    assert_eq!(
        probe_b(&lab, echo),
        Probe::Silent,
        "client B got through after the restart"
    );

    // A clean stop leaves the gateway enforcing too.
    let status = agent.terminate(Duration::from_secs(10)).expect("SIGTERM");
    assert!(status.success(), "the agent exited with {status}");
    assert!(lab.pin_dir().join(maps::GRANTS).exists());
    assert_eq!(
        probe_b(&lab, echo),
        Probe::Silent,
        "client B got through after SIGTERM"
    );
    assert_flowing(&sink, "after SIGTERM");

    // Teardown detaches: the server is no longer protected, so B gets through.
    let output = Command::new(agent_binary().expect("agent binary"))
        .args(["teardown", "--instance", &lab.instance])
        .output()
        .expect("run ztna-agent teardown");
    assert!(
        output.status.success(),
        "teardown failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !lab.pin_dir().exists(),
        "teardown left {}",
        lab.pin_dir().display()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = probe_b(&lab, echo);
    while last != Probe::Answered && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        last = probe_b(&lab, echo);
    }
    assert_eq!(
        last,
        Probe::Answered,
        "client B still blocked after teardown"
    );
}

#[test]
fn teardown_on_exit_removes_everything() {
    ztna_tests::require_root!("running the agent in network namespaces");
    let lab = Lab::with(&LabOptions { clients: 2 }).expect("build the namespace lab");
    let _echo = EchoServer::start(&lab.server, ECHO_PORT).expect("echo server");
    let echo = SocketAddr::new(lab.server_addr(Family::V6), ECHO_PORT);
    let config_path = lab
        .write_file(
            "gateway.toml",
            &config(&lab, lab.clients[0].addr(Family::V4)),
        )
        .expect("write config");
    let agent = lab
        .start_agent(&config_path, &["--teardown-on-exit"])
        .expect("start the agent");
    assert_eq!(
        probe_b(&lab, echo),
        Probe::Silent,
        "client B got through over IPv6"
    );
    let status = agent.terminate(Duration::from_secs(10)).expect("SIGTERM");
    assert!(status.success(), "the agent exited with {status}");
    assert!(!lab.pin_dir().exists(), "pins left behind");
    assert!(
        eventually(Duration::from_secs(5), || probe_b(&lab, echo)
            == Probe::Answered),
        "client B still blocked after the agent tore down"
    );
}

#[test]
fn invalid_configuration_is_refused_before_the_kernel() {
    ztna_tests::require_root!("running the agent in network namespaces");
    let lab = Lab::new().expect("build the namespace lab");
    let bad = config(&lab, lab.clients[0].addr(Family::V4)).replace("udp/7000", "udp/70000");
    let path = lab.write_file("bad.toml", &bad).expect("write config");
    let output = lab
        .gateway
        .command(agent_binary().expect("agent binary"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "{}:18:30: apps[0].services[1] \"udp/70000\": port 70000 exceeds 65535",
        path.display()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(
        !lab.pin_dir().exists(),
        "the agent touched bpffs with an invalid configuration"
    );

    // A missing interface is found before anything is loaded, too.
    let missing = config(&lab, lab.clients[0].addr(Family::V4)).replace("\"c1\"", "\"c9\"");
    let path = lab
        .write_file("missing.toml", &missing)
        .expect("write config");
    let output = lab
        .gateway
        .command(agent_binary().expect("agent binary"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("interfaces[1].name \"c9\": no such interface"),
        "{stderr}"
    );
    assert!(!lab.pin_dir().exists());
}
