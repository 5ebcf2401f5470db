//! Real traffic through the XDP program: a client namespace talks to a server namespace through a
//! gateway namespace whose client-facing interface carries the program, attached in-process with
//! [`Dataplane`]. Every scenario runs for IPv4 and IPv6, in driver and in generic mode.
//!
//! Root only (namespaces, XDP); each test says why it skips otherwise. Needs `ip` (iproute2) and
//! `ping` (iputils-ping).

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use ztna_agent::dataplane::{
    AttachMode, Dataplane, LoadOptions, Mode, Prefix, deadline_after, decode_address,
    monotonic_coarse_ns,
};
use ztna_common::{
    event::{EVENT_DENY, EVENT_WOULD_DENY, Event},
    service::{ServiceKey, ServiceValue},
    verdict::{DROP_EXPIRED, DROP_NO_GRANT, PASS_GRANT, WOULD_DROP_BASE, reason_name, stat_index},
};
use ztna_tests::netns::{
    ByteSink, EchoServer, Family, Lab, Probe, Writer, eventually, ping, tcp_echo, udp_echo,
};

const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
const APP_ID: u32 = 1;
/// How long a probe waits before calling the destination silent. One TCP SYN, one datagram.
const SILENT_AFTER: Duration = Duration::from_millis(800);
/// How long a probe may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// A lab with the program attached to the gateway's client-facing interface; the server's prefix is
/// protected and app 1 is TCP and UDP on the echo and sink ports plus ICMP echo.
struct Gate {
    // Drop order: the data plane (and its unpinned link) before the lab's namespaces.
    dataplane: Dataplane,
    echo: EchoServer,
    lab: Lab,
    family: Family,
}

impl Gate {
    fn new(family: Family, mode: AttachMode) -> Self {
        let lab = Lab::new().expect("build the namespace lab");
        let echo = EchoServer::start(&lab.server, ECHO_PORT).expect("start the echo server");
        let mut dataplane = Dataplane::load(&LoadOptions::default()).expect("load the XDP program");
        let (addr, len) = lab.server_prefix(family);
        dataplane
            .add_prefix(Prefix::new(addr, len).expect("prefix"), 1)
            .expect("protect the server prefix");
        let icmp = match family {
            Family::V4 => PROTO_ICMP,
            Family::V6 => PROTO_ICMPV6,
        };
        for (proto, port) in [
            (PROTO_TCP, ECHO_PORT),
            (PROTO_UDP, ECHO_PORT),
            (PROTO_TCP, SINK_PORT),
            (icmp, 0),
        ] {
            dataplane
                .add_service(
                    ServiceKey::new(1, proto, port),
                    ServiceValue {
                        app_id: APP_ID,
                        mode: 0,
                    },
                )
                .expect("add a service");
        }
        let interface = lab.clients[0].gateway_interface.clone();
        let used = lab
            .gateway
            .run(|| dataplane.attach(&interface, mode))
            .unwrap_or_else(|e| panic!("attach in {mode} mode to {interface}: {e}"));
        assert_eq!(used, mode, "attached in another mode than asked");
        Self {
            dataplane,
            echo,
            lab,
            family,
        }
    }

    fn client(&self) -> IpAddr {
        self.lab.clients[0].addr(self.family)
    }

    fn server(&self) -> IpAddr {
        self.lab.server_addr(self.family)
    }

    fn echo_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server(), self.echo.port)
    }

    /// TCP echo, UDP echo and ping from the client, at once.
    fn probe(&self, timeout: Duration) -> [(&'static str, Probe); 3] {
        let addr = self.echo_addr();
        let client = &self.lab.clients[0];
        let (tcp, udp) = client.ns.run(|| {
            thread::scope(|s| {
                let tcp = s.spawn(|| tcp_echo(addr, timeout));
                let udp = s.spawn(|| udp_echo(addr, timeout));
                (
                    tcp.join().expect("tcp probe"),
                    udp.join().expect("udp probe"),
                )
            })
        });
        let icmp = ping(&client.ns, self.server(), timeout);
        [("tcp", tcp), ("udp", udp), ("icmp", icmp)]
    }

    fn assert_all(&self, expected: &Probe, timeout: Duration, when: &str) {
        let results = self.probe(timeout);
        for (proto, result) in &results {
            assert_eq!(
                result,
                expected,
                "{when}: {proto} from {} to {}: expected {expected:?}, got {result:?} (all: {results:?})",
                self.client(),
                self.server()
            );
        }
    }

    fn stat(&self, index: u32) -> u64 {
        self.dataplane.stats().expect("read counters")[index as usize]
    }

    fn grant(&mut self, ttl: Duration) -> u64 {
        let deadline = deadline_after(ttl);
        self.dataplane
            .upsert_grant(self.client(), APP_ID, deadline)
            .expect("install a grant");
        deadline
    }
}

fn describe(event: &Event) -> String {
    format!(
        "kind {} reason {} proto {} {} -> {}:{} app {}",
        event.kind,
        reason_name(event.reason),
        event.proto,
        decode_address(event.src),
        decode_address(event.dst),
        u16::from_be(event.dport_be),
        event.app_id
    )
}

/// Without a grant, TCP, UDP and ICMP to the protected server are dropped, counted and reported;
/// with one, they pass.
fn default_drop_then_grant_passes(family: Family, mode: AttachMode) {
    let mut gate = Gate::new(family, mode);
    let mut events = gate.dataplane.take_events().expect("event reader");

    gate.assert_all(&Probe::Silent, SILENT_AFTER, "without a grant");
    let dropped = gate.stat(DROP_NO_GRANT);
    assert!(
        dropped >= 3,
        "expected >= 3 drop_no_grant, counted {dropped}"
    );
    let seen = events.drain();
    let tcp_deny = seen.iter().find(|e| {
        e.kind == EVENT_DENY
            && e.reason == DROP_NO_GRANT
            && e.proto == PROTO_TCP
            && decode_address(e.src) == gate.client()
            && decode_address(e.dst) == gate.server()
            && u16::from_be(e.dport_be) == ECHO_PORT
            && e.app_id == APP_ID
    });
    assert!(
        tcp_deny.is_some(),
        "no deny event for the TCP probe; events: {:#?}",
        seen.iter().map(describe).collect::<Vec<_>>()
    );

    gate.grant(Duration::from_secs(60));
    gate.assert_all(&Probe::Answered, ANSWER_WITHIN, "with a grant");
    assert!(gate.stat(PASS_GRANT) > 0, "no packet counted as pass_grant");
    let grant = gate
        .dataplane
        .grant(gate.client(), APP_ID)
        .expect("read grant")
        .expect("grant present");
    assert!(grant.packets > 0, "the grant counted no packet: {grant:?}");
}

/// A grant stops passing at its deadline with no action from user space: the kernel compares the
/// deadline on every packet.
fn grant_expires_in_the_kernel(family: Family, mode: AttachMode) {
    let mut gate = Gate::new(family, mode);
    let deadline = gate.grant(Duration::from_secs(3));
    gate.assert_all(&Probe::Answered, ANSWER_WITHIN, "before the deadline");
    assert!(
        monotonic_coarse_ns() < deadline,
        "the probes took longer than the grant's lifetime; the test cannot conclude"
    );

    while monotonic_coarse_ns() <= deadline + 50_000_000 {
        thread::sleep(Duration::from_millis(50));
    }
    let expired_before = gate.stat(DROP_EXPIRED);
    gate.assert_all(&Probe::Silent, SILENT_AFTER, "after the deadline");
    assert!(
        gate.stat(DROP_EXPIRED) >= expired_before + 3,
        "expected the probes to be counted as drop_expired"
    );
    // Nothing swept or removed it: the kernel alone turned it off.
    let grant = gate
        .dataplane
        .grant(gate.client(), APP_ID)
        .expect("read grant");
    assert_eq!(grant.map(|g| g.expires_at_ns), Some(deadline));
}

/// Removing the grant of a flow that is mid-transfer stops it at once: the receiver gets no more
/// bytes while the sender keeps writing. Restoring the grant lets the same connection resume,
/// which shows the stream was cut by the gateway and not broken.
fn revoke_cuts_an_established_stream(family: Family, mode: AttachMode) {
    let mut gate = Gate::new(family, mode);
    let sink = ByteSink::start(&gate.lab.server, SINK_PORT).expect("start the sink");
    gate.grant(Duration::from_secs(120));
    let writer = Writer::start(
        &gate.lab.clients[0].ns,
        SocketAddr::new(gate.server(), SINK_PORT),
    )
    .expect("connect to the sink through the gateway");
    assert!(
        eventually(Duration::from_secs(10), || sink.received() > 4 << 20),
        "the stream did not get going: {} bytes received",
        sink.received()
    );

    let drops_before = gate.stat(DROP_NO_GRANT);
    assert!(
        gate.dataplane
            .remove_grant(gate.client(), APP_ID)
            .expect("remove grant")
    );
    // Let what was already past the gateway arrive.
    thread::sleep(Duration::from_millis(500));
    let (received, attempts) = (sink.received(), writer.attempts());
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sink.received(),
        received,
        "bytes still arrived after the grant was revoked"
    );
    assert!(
        writer.attempts() > attempts,
        "the sender stopped trying; the test cannot tell a cut from an idle stream"
    );
    assert_eq!(writer.error(), None, "the sender's connection failed");
    assert!(
        gate.stat(DROP_NO_GRANT) > drops_before,
        "the retransmissions were not counted as drop_no_grant"
    );

    gate.grant(Duration::from_secs(120));
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || sink.received()
            > received + (1 << 20)),
        "the stream did not resume once the grant was back"
    );
    eprintln!(
        "stream resumed {:?} after the grant returned",
        started.elapsed()
    );
}

/// In monitor mode nothing is dropped: packets without a grant pass and are reported as would-deny.
fn monitor_mode_passes_and_reports(family: Family, mode: AttachMode) {
    let mut gate = Gate::new(family, mode);
    let mut events = gate.dataplane.take_events().expect("event reader");
    gate.dataplane
        .set_mode(Mode::Monitor)
        .expect("set monitor mode");

    gate.assert_all(&Probe::Answered, ANSWER_WITHIN, "monitor mode, no grant");
    let would_drop = gate.stat(stat_index(DROP_NO_GRANT, true));
    assert_eq!(
        stat_index(DROP_NO_GRANT, true),
        WOULD_DROP_BASE + DROP_NO_GRANT
    );
    assert!(would_drop >= 3, "counted {would_drop} would-drops");
    assert_eq!(
        gate.stat(DROP_NO_GRANT),
        0,
        "monitor mode counted a real drop"
    );

    let seen = events.drain();
    for proto in [PROTO_TCP, PROTO_UDP] {
        assert!(
            seen.iter().any(|e| e.kind == EVENT_WOULD_DENY
                && e.reason == DROP_NO_GRANT
                && e.proto == proto
                && decode_address(e.src) == gate.client()
                && decode_address(e.dst) == gate.server()
                && u16::from_be(e.dport_be) == ECHO_PORT),
            "no would-deny event for protocol {proto}; events: {:#?}",
            seen.iter().map(describe).collect::<Vec<_>>()
        );
    }
    assert!(
        seen.iter().all(|e| e.kind == EVENT_WOULD_DENY),
        "a deny event in monitor mode: {:#?}",
        seen.iter().map(describe).collect::<Vec<_>>()
    );
}

/// One test per (scenario, family, attach mode); each skips with its reason when not root.
macro_rules! matrix {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                use super::*;

                fn run(family: Family, mode: AttachMode) {
                    ztna_tests::require_root!("sending traffic through namespaces and XDP");
                    super::$scenario(family, mode);
                }

                #[test]
                fn ipv4_driver() {
                    run(Family::V4, AttachMode::Driver);
                }

                #[test]
                fn ipv4_generic() {
                    run(Family::V4, AttachMode::Generic);
                }

                #[test]
                fn ipv6_driver() {
                    run(Family::V6, AttachMode::Driver);
                }

                #[test]
                fn ipv6_generic() {
                    run(Family::V6, AttachMode::Generic);
                }
            }
        )*
    };
}

matrix!(
    default_drop_then_grant_passes,
    grant_expires_in_the_kernel,
    revoke_cuts_an_established_stream,
    monitor_mode_passes_and_reports,
);
