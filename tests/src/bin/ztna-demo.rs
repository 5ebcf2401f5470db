//! `cargo xtask demo`: a narrated lab on this machine.
//!
//! A client, a gateway and a server in network namespaces; the real `ztna-agent` runs on the gateway
//! with an embedded configuration. The server runs a web app (TCP) and a name service (UDP). The demo
//! shows the client blocked, then allowed by static grants, then an open connection cut when its grant
//! expires in the kernel, then a revoke, and a summary. Everything is removed on exit and on Ctrl-C,
//! so it can run again at once.
//!
//! What it shows is the data plane: grants here come from the configuration file. Who gets a grant
//! (OIDC identity, device posture) is the control plane's job, which comes later.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use ztna_tests::netns::{
    Agent, ByteSink, EchoServer, Family, Lab, Probe, Writer, tcp_echo, udp_echo,
};

const WEB_PORT: u16 = 8080;
const UPLOAD_PORT: u16 = 8081;
const DNS_PORT: u16 = 5353;
const WEB_TTL_SECS: u64 = 12;

/// Set by the SIGINT/SIGTERM handler; the demo checks it between steps.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Why the demo stopped early.
enum Stop {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    Failed(String),
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

type Step<T = ()> = Result<T, Stop>;

/// Sleeps `duration` unless interrupted.
fn pause(duration: Duration) -> Step {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if STOP.load(Ordering::SeqCst) {
            return Err(Stop::Interrupted);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn config(lab: &Lab, grants: &str) -> String {
    format!(
        r#"# Embedded demo configuration (the agent validates it before touching the kernel).
instance = "{instance}"
mode = "enforce"
sweep_interval = "2s"

[events]
rate_per_sec = 5
burst = 5

[[interfaces]]
name = "c0"
attach = "auto"

[[apps]]
name = "web"
prefixes = ["{v4}", "{v6}"]
services = ["tcp/{WEB_PORT}-{UPLOAD_PORT}"]

[[apps]]
name = "dns"
prefixes = ["{v4}", "{v6}"]
services = ["udp/{DNS_PORT}"]
{grants}"#,
        instance = lab.instance,
        v4 = lab.server_cidr(Family::V4),
        v6 = lab.server_cidr(Family::V6),
    )
}

fn grant(source: &str, app: &str, ttl: &str) -> String {
    format!("\n[[grants]]\nsource = \"{source}\"\napp = \"{app}\"\nttl = \"{ttl}\"\n")
}

fn say(text: &str) {
    println!("\n{}", style(BOLD, &format!("== {text}")));
}

fn note(text: &str) {
    println!("   {text}");
}

fn verdict(probe: &Probe) -> String {
    match probe {
        Probe::Answered => format!("{} (answered)", style(GREEN, "allowed")),
        Probe::Silent => format!(
            "{} (no answer: dropped at the gateway)",
            style(RED, "blocked")
        ),
        Probe::Failed(why) => format!("{} ({why})", style(YELLOW, "failed")),
    }
}

struct Demo {
    lab: Lab,
    agent: Option<Agent>,
    /// Agent log lines already shown.
    shown: usize,
    summary: Vec<String>,
}

impl Demo {
    fn web(&self) -> Probe {
        let addr = SocketAddr::new(self.lab.server_addr(Family::V4), WEB_PORT);
        self.lab.clients[0]
            .ns
            .run(move || tcp_echo(addr, Duration::from_millis(800)))
    }

    fn dns(&self) -> Probe {
        let addr = SocketAddr::new(self.lab.server_addr(Family::V6), DNS_PORT);
        self.lab.clients[0]
            .ns
            .run(move || udp_echo(addr, Duration::from_millis(800)))
    }

    fn probe_both(&mut self, step: &str) -> Step<(Probe, Probe)> {
        let client = &self.lab.clients[0];
        let web = self.web();
        note(&format!(
            "client {} -> web  {}:{WEB_PORT}/tcp   : {}",
            client.v4,
            self.lab.server_v4,
            verdict(&web)
        ));
        let dns = self.dns();
        note(&format!(
            "client {} -> dns  [{}]:{DNS_PORT}/udp : {}",
            client.v6,
            self.lab.server_v6,
            verdict(&dns)
        ));
        self.summary.push(format!(
            "{step:<28} web {:<8} dns {}",
            short(&web),
            short(&dns)
        ));
        self.show_agent_log();
        if STOP.load(Ordering::SeqCst) {
            return Err(Stop::Interrupted);
        }
        Ok((web, dns))
    }

    /// Starts (or restarts) the agent with `grants` added to the embedded configuration.
    fn start_agent(&mut self, grants: &str) -> Step {
        if let Some(agent) = self.agent.take() {
            agent
                .terminate(Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
        }
        let text = config(&self.lab, grants);
        let path = self
            .lab
            .write_file("demo.toml", &text)
            .map_err(|e| e.to_string())?;
        let agent = self
            .lab
            .start_agent(&path, &[])
            .map_err(|e| e.to_string())?;
        self.shown = 0;
        self.agent = Some(agent);
        self.show_agent_log();
        Ok(())
    }

    /// Prints the agent's new log lines that tell the story (grants, reconciliation, events),
    /// collapsing repeats.
    fn show_agent_log(&mut self) {
        thread::sleep(Duration::from_millis(200));
        let Some(agent) = &self.agent else { return };
        let logs = agent.logs();
        let mut lines: Vec<(String, usize)> = Vec::new();
        for line in &logs[self.shown.min(logs.len())..] {
            let Some(message) = json_field(line, "message") else {
                continue;
            };
            let interesting = ["grant", "state reconciled", "deny", "attached", "took over"]
                .iter()
                .any(|word| message.contains(word));
            if !interesting {
                continue;
            }
            let detail = if message.contains("grant") && json_field(line, "source").is_some() {
                format!(
                    "{message}: {} -> app {}",
                    json_field(line, "source").unwrap_or_default(),
                    json_field(line, "app").unwrap_or_default()
                )
            } else if message == "state reconciled" {
                format!(
                    "{message} (reused pins: {}, grants installed {}, kept {}, removed {})",
                    json_raw(line, "reused_pins").unwrap_or_default(),
                    json_raw(line, "grants_installed").unwrap_or_default(),
                    json_raw(line, "grants_kept").unwrap_or_default(),
                    json_raw(line, "grants_removed").unwrap_or_default(),
                )
            } else if message.starts_with("deny") {
                // Ports differ per connection attempt; the story is in the rest.
                message.clone()
            } else {
                message
            };
            match lines.iter_mut().find(|(d, _)| *d == detail) {
                Some((_, count)) => *count += 1,
                None => lines.push((detail, 1)),
            }
        }
        for (detail, count) in lines {
            let repeat = if count > 1 {
                format!(" (x{count})")
            } else {
                String::new()
            };
            println!("   {}", style(DIM, &format!("agent: {detail}{repeat}")));
        }
        self.shown = logs.len();
    }
}

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";

/// `text` in an ANSI style when stdout is a terminal.
fn style(code: &str, text: &str) -> String {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

fn short(probe: &Probe) -> &'static str {
    match probe {
        Probe::Answered => "allowed",
        Probe::Silent => "blocked",
        Probe::Failed(_) => "failed",
    }
}

/// The string value of `"key":"..."` in a JSON log line (enough for tracing's flat JSON lines).
fn json_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push(' '),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A non-string value (`true`, `3`) of `"key":value` in a JSON log line.
fn json_raw(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    Some(
        line[start..]
            .chars()
            .take_while(|c| *c != ',' && *c != '}')
            .collect(),
    )
}

fn run(demo: &mut Demo) -> Step {
    let client = demo.lab.clients[0].v4.to_string();
    let client6 = demo.lab.clients[0].v6.to_string();

    say("1. The gateway enforces, nobody holds a grant");
    note(
        "Apps: web = tcp/8080-8081, dns = udp/5353, both on the server's subnets 10.0.100.0/24 and fd00:100::/64.",
    );
    demo.start_agent("")?;
    if demo.probe_both("1. no grant")?.0 == Probe::Answered {
        return Err(Stop::Failed("the web app answered without a grant".into()));
    }
    note(
        "Both are dropped by XDP on the gateway's client-facing interface; the server never sees a packet.",
    );

    say("2. Static grants for the client: web for 12 s, dns for 1 h");
    note(
        "(Static grants come from the configuration. The control plane will issue them after checking identity and device.)",
    );
    let grants = format!(
        "{}{}",
        grant(&client, "web", &format!("{WEB_TTL_SECS}s")),
        grant(&client6, "dns", "1h")
    );
    demo.start_agent(&grants)?;
    let granted_at = Instant::now();
    demo.probe_both("2. granted")?;

    say("3. An upload is running when the web grant's deadline passes");
    let sink = ByteSink::start(&demo.lab.server, UPLOAD_PORT).map_err(|e| e.to_string())?;
    let writer = Writer::start(
        &demo.lab.clients[0].ns,
        SocketAddr::new(demo.lab.server_addr(Family::V4), UPLOAD_PORT),
    )
    .map_err(|e| format!("upload connection: {e}"))?;
    let mut last = sink.received();
    let mut stalled_for = 0;
    let mut seconds = 0;
    while stalled_for < 3 && seconds < WEB_TTL_SECS + 8 {
        pause(Duration::from_secs(1))?;
        seconds += 1;
        let now = sink.received();
        let rate = (now - last) as f64 / (1 << 20) as f64;
        let left = WEB_TTL_SECS as i64 - granted_at.elapsed().as_secs() as i64;
        note(&format!(
            "t+{:>2}s  server received {rate:>8.1} MiB this second ({}){}",
            granted_at.elapsed().as_secs(),
            if left > 0 {
                format!("grant expires in {left}s")
            } else {
                "grant expired".to_owned()
            },
            if writer.error().is_none() {
                ", client still sending"
            } else {
                ""
            }
        ));
        stalled_for = if now == last { stalled_for + 1 } else { 0 };
        last = now;
    }
    note(
        "The kernel compared the grant's deadline on every packet: the open connection stopped at the",
    );
    note("deadline with no action from the agent, and would have stopped with the agent gone.");
    drop(writer);
    drop(sink);
    demo.show_agent_log();
    demo.probe_both("3. web grant expired")?;

    say("4. Revoke: the dns grant is removed from the configuration and the agent restarted");
    demo.start_agent(&grant(&client, "web", &format!("{WEB_TTL_SECS}s")))?;
    note(
        "The web grant stays expired: a restart keeps a pinned grant's deadline, it never extends access.",
    );
    demo.probe_both("4. dns revoked")?;
    Ok(())
}

fn main() -> ExitCode {
    if !ztna_tests::root::is_root() {
        eprintln!(
            "ztna-demo builds network namespaces and attaches XDP: run it as root (sudo cargo xtask demo)"
        );
        return ExitCode::FAILURE;
    }
    install_signal_handlers();
    println!(
        "ztna demo: an XDP zero-trust gateway between a client and a server, on this machine."
    );
    let lab = match Lab::new() {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("error: could not build the namespace lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    note(&format!(
        "namespaces {}, {}, {}; agent instance {}",
        lab.clients[0].ns.name(),
        lab.gateway.name(),
        lab.server.name(),
        lab.instance
    ));
    let servers = (
        EchoServer::start(&lab.server, WEB_PORT),
        EchoServer::start(&lab.server, DNS_PORT),
    );
    let (Ok(_web), Ok(_dns)) = servers else {
        eprintln!("error: could not start the demo servers");
        return ExitCode::FAILURE;
    };
    let mut demo = Demo {
        lab,
        agent: None,
        shown: 0,
        summary: Vec::new(),
    };
    let outcome = run(&mut demo);
    if let Some(agent) = demo.agent.take() {
        let _ = agent.terminate(Duration::from_secs(10));
    }
    let code = match outcome {
        Ok(()) => {
            say("Summary");
            for line in &demo.summary {
                note(line);
            }
            note(
                "Default deny, grants per (source, app), deadlines enforced in the kernel, revocation by",
            );
            note(
                "removing the grant. Identity-based grants (OIDC, device posture) arrive with the control plane.",
            );
            ExitCode::SUCCESS
        }
        Err(Stop::Interrupted) => {
            println!("\ninterrupted");
            ExitCode::from(130)
        }
        Err(Stop::Failed(_)) if STOP.load(Ordering::SeqCst) => {
            println!("\ninterrupted");
            ExitCode::from(130)
        }
        Err(Stop::Failed(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    say("Cleaning up: agent pins, namespaces, temporary files");
    drop(demo);
    code
}
