//! The verdict table: hand-built frames through `BPF_PROG_TEST_RUN`, each with the XDP action and
//! the one `STATS` slot it must move. Every verdict reason in `ztna_common::verdict` is named by at
//! least one case; grant counters, deny and would-deny events and the event token bucket are checked
//! by the test functions after the table.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use ztna_agent::dataplane::{
    Dataplane, EventReader, LoadOptions, Mode, Prefix, deadline_after, monotonic_coarse_ns,
};
use ztna_common::{
    event::{EVENT_DENY, EVENT_WOULD_DENY, Event},
    net::v4_mapped,
    service::{APP_MODE_ENFORCE, APP_MODE_INHERIT, APP_MODE_MONITOR, ServiceKey, ServiceValue},
    verdict::{
        DROP_BAD_L3, DROP_BAD_L4, DROP_EXPIRED, DROP_EXT_HEADERS, DROP_FRAGMENT, DROP_NO_GRANT,
        DROP_NO_SERVICE, DROP_STALE_EPOCH, DROP_TRUNCATED_L2, DROP_TRUNCATED_L3, DROP_TRUNCATED_L4,
        DROP_VLAN_DEPTH, EVENTS_LOST, EVENTS_SUPPRESSED, PASS_GRANT, PASS_NEIGHBOR_DISCOVERY,
        PASS_NOT_IP, PASS_NOT_PROTECTED, REASON_COUNT, is_pass, reason_name, stat_index,
    },
};
use ztna_tests::{
    packet::{Ext, Frame, Icmp, Ipv4, Ipv6, TPID_8021AD, TPID_8021Q, TPID_QINQ, Tcp, Udp, proto},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

// --- the policy every test function loads ---------------------------------------------------------

/// Hosts on the protected networks.
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);
const ANY_PORT_HOST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);
const ANY_PROTO_HOST: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 5);
const PILOT_HOST: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 5);
const CRITICAL_HOST: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 5);
/// Destinations nobody protects.
const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, 1);

/// Holds grants for most apps (not for HTTPS).
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
/// Holds no grant at all.
const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const STRANGER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x99);
/// Holds an SSH grant whose deadline has passed.
const EXPIRED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
/// Holds an SSH grant written under the epoch before the current one.
const STALE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);

const NET_MAIN: u32 = 1;
const NET_ANY_PORT: u32 = 2;
const NET_ANY_PROTO: u32 = 3;
const NET_PILOT: u32 = 4;
const NET_CRITICAL: u32 = 5;

const APP_SSH: u32 = 1;
const APP_HTTPS: u32 = 2;
const APP_DNS: u32 = 3;
const APP_PING: u32 = 4;
const APP_PING6: u32 = 5;
/// TCP on any port of `NET_ANY_PORT`.
const APP_ANY_PORT: u32 = 6;
/// Any protocol on `NET_ANY_PROTO`.
const APP_ANY_PROTO: u32 = 7;
/// In monitor mode on its own (`APP_MODE_MONITOR`).
const APP_PILOT: u32 = 8;
/// Enforced even when the gateway is in monitor mode (`APP_MODE_ENFORCE`).
const APP_CRITICAL: u32 = 9;

const CLIENT_PORT: u16 = 40_000;

fn load_fixture() -> Dataplane {
    let mut dataplane = Dataplane::load(&LoadOptions::default()).expect("load the XDP program");
    let prefixes: [(IpAddr, u8, u32); 6] = [
        (Ipv4Addr::new(10, 1, 0, 0).into(), 16, NET_MAIN),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0).into(),
            48,
            NET_MAIN,
        ),
        (Ipv4Addr::new(10, 2, 0, 0).into(), 16, NET_ANY_PORT),
        (Ipv4Addr::new(10, 3, 0, 0).into(), 16, NET_ANY_PROTO),
        (Ipv4Addr::new(10, 4, 0, 0).into(), 16, NET_PILOT),
        (Ipv4Addr::new(10, 5, 0, 0).into(), 16, NET_CRITICAL),
    ];
    for (addr, len, net_id) in prefixes {
        let prefix = Prefix::new(addr, len).expect("valid prefix");
        dataplane.add_prefix(prefix, net_id).expect("add prefix");
    }
    let services = [
        (NET_MAIN, proto::TCP, 22, APP_SSH, APP_MODE_INHERIT),
        (NET_MAIN, proto::TCP, 443, APP_HTTPS, APP_MODE_INHERIT),
        (NET_MAIN, proto::UDP, 53, APP_DNS, APP_MODE_INHERIT),
        (NET_MAIN, proto::ICMP, 0, APP_PING, APP_MODE_INHERIT),
        (NET_MAIN, proto::ICMPV6, 0, APP_PING6, APP_MODE_INHERIT),
        (NET_ANY_PORT, proto::TCP, 0, APP_ANY_PORT, APP_MODE_INHERIT),
        (NET_ANY_PROTO, 0, 0, APP_ANY_PROTO, APP_MODE_INHERIT),
        (NET_PILOT, proto::TCP, 80, APP_PILOT, APP_MODE_MONITOR),
        (NET_CRITICAL, proto::TCP, 80, APP_CRITICAL, APP_MODE_ENFORCE),
    ];
    for (net_id, proto, port, app_id, mode) in services {
        dataplane
            .add_service(
                ServiceKey::new(net_id, proto, port),
                ServiceValue { app_id, mode },
            )
            .expect("add service");
    }

    // The stale grant is written first, under the epoch that the bump below retires.
    dataplane
        .upsert_grant(
            STALE_V4.into(),
            APP_SSH,
            deadline_after(Duration::from_secs(3600)),
        )
        .expect("stale grant");
    dataplane.bump_epoch().expect("bump epoch");

    let live = deadline_after(Duration::from_secs(3600));
    let client_apps = [
        APP_SSH,
        APP_DNS,
        APP_PING,
        APP_ANY_PORT,
        APP_ANY_PROTO,
        APP_PILOT,
        APP_CRITICAL,
    ];
    for app_id in client_apps {
        dataplane
            .upsert_grant(CLIENT_V4.into(), app_id, live)
            .expect("grant");
    }
    for app_id in [APP_SSH, APP_PING6] {
        dataplane
            .upsert_grant(CLIENT_V6.into(), app_id, live)
            .expect("grant");
    }
    let past = monotonic_coarse_ns() - 1_000_000_000;
    dataplane
        .upsert_grant(EXPIRED_V4.into(), APP_SSH, past)
        .expect("expired grant");
    dataplane
}

// --- frames ----------------------------------------------------------------------------------

fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4 {
    Ipv4::new(src, dst)
}

fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6 {
    Ipv6::new(src, dst)
}

fn tcp(dport: u16) -> Tcp {
    Tcp::new(CLIENT_PORT, dport)
}

/// TCP SYN over IPv4.
fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Frame {
    Frame::new().ipv4(v4(src, dst)).tcp(tcp(dport))
}

/// TCP SYN over IPv6.
fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Frame {
    Frame::new().ipv6(v6(src, dst)).tcp(tcp(dport))
}

/// The granted client's SSH SYN.
fn ssh4() -> Frame {
    tcp4(CLIENT_V4, SERVER_V4, 22)
}

fn ssh6() -> Frame {
    tcp6(CLIENT_V6, SERVER_V6, 22)
}

/// `ssh6` with extension headers before the TCP header.
fn ssh6_with(exts: impl IntoIterator<Item = Ext>) -> Frame {
    let ipv6 = exts.into_iter().fold(v6(CLIENT_V6, SERVER_V6), Ipv6::ext);
    Frame::new().ipv6(ipv6).tcp(tcp(22))
}

/// An ICMPv6 message from `src` to the protected server.
fn icmp6(src: Ipv6Addr, hop_limit: u8, icmp: Icmp) -> Frame {
    Frame::new()
        .ipv6(v6(src, SERVER_V6).hop_limit(hop_limit))
        .icmpv6(icmp)
}

// --- the table -------------------------------------------------------------------------------

/// What a case must do: the XDP action follows from the variant, the `STATS` slot from the reason.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `XDP_PASS`, counted at the pass reason.
    Pass(u32),
    /// `XDP_DROP`, counted at the drop reason.
    Drop(u32),
    /// Monitor mode: `XDP_PASS`, counted at the would-drop slot of the drop reason.
    WouldDrop(u32),
}

impl Expect {
    fn action(self) -> u32 {
        match self {
            Self::Pass(_) | Self::WouldDrop(_) => XDP_PASS,
            Self::Drop(_) => XDP_DROP,
        }
    }

    fn reason(self) -> u32 {
        match self {
            Self::Pass(reason) | Self::Drop(reason) | Self::WouldDrop(reason) => reason,
        }
    }

    fn slot(self) -> usize {
        stat_index(self.reason(), matches!(self, Self::WouldDrop(_))) as usize
    }
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    /// Global mode while the case runs.
    mode: Mode,
    expect: Expect,
}

fn case(name: &'static str, frame: Frame, expect: Expect) -> Case {
    Case {
        name,
        frame: frame.build(),
        mode: Mode::Enforce,
        expect,
    }
}

fn monitor_case(name: &'static str, frame: Frame, expect: Expect) -> Case {
    Case {
        mode: Mode::Monitor,
        ..case(name, frame, expect)
    }
}

fn cases() -> Vec<Case> {
    use Expect::{Drop, Pass, WouldDrop};

    // Offsets of the untagged layers.
    const L3: usize = 14;
    const V4_L4: usize = L3 + 20;
    const V6_L4: usize = L3 + 40;
    let seven_exts = [
        Ext::hop_by_hop(),
        Ext::destination_options(),
        Ext::routing(),
        Ext::fragment(0, true, 7),
        Ext::auth(3),
        Ext::raw(135, 0),
        Ext::destination_options(),
    ];

    vec![
        // L2: Ethernet and VLAN tags.
        case(
            "Ethernet header without a network header",
            ssh4().truncate(L3),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "802.1Q tag cut short",
            ssh4().vlan(TPID_8021Q, 10).truncate(L3 + 2),
            Drop(DROP_TRUNCATED_L2),
        ),
        case(
            "inner QinQ tag cut short",
            ssh4()
                .vlan(TPID_8021AD, 10)
                .vlan(TPID_8021Q, 20)
                .truncate(L3 + 6),
            Drop(DROP_TRUNCATED_L2),
        ),
        case(
            "802.1Q-tagged SSH with a grant",
            ssh4().vlan(TPID_8021Q, 10),
            Pass(PASS_GRANT),
        ),
        case(
            "QinQ (802.1ad + 802.1Q) SSH with a grant",
            ssh4().vlan(TPID_8021AD, 100).vlan(TPID_8021Q, 200),
            Pass(PASS_GRANT),
        ),
        case(
            "QinQ (0x9100 + 802.1Q) SSH with a grant",
            ssh4().vlan(TPID_QINQ, 100).vlan(TPID_8021Q, 200),
            Pass(PASS_GRANT),
        ),
        case(
            "QinQ-tagged SSH over IPv6 with a grant",
            ssh6().vlan(TPID_8021AD, 100).vlan(TPID_8021Q, 200),
            Pass(PASS_GRANT),
        ),
        case(
            "three VLAN tags",
            ssh4()
                .vlan(TPID_8021AD, 1)
                .vlan(TPID_8021Q, 2)
                .vlan(TPID_8021Q, 3),
            Drop(DROP_VLAN_DEPTH),
        ),
        case(
            "three VLAN tags to an unprotected destination (L2 is judged first)",
            tcp4(CLIENT_V4, OUTSIDE_V4, 22)
                .vlan(TPID_QINQ, 1)
                .vlan(TPID_8021AD, 2)
                .vlan(TPID_8021Q, 3),
            Drop(DROP_VLAN_DEPTH),
        ),
        case(
            "ARP request for a protected address",
            Frame::arp_request(CLIENT_V4, SERVER_V4),
            Pass(PASS_NOT_IP),
        ),
        case(
            "QinQ-tagged ARP request",
            Frame::arp_request(CLIENT_V4, SERVER_V4)
                .vlan(TPID_8021AD, 1)
                .vlan(TPID_8021Q, 2),
            Pass(PASS_NOT_IP),
        ),
        // IPv4 header.
        case(
            "IPv4 header cut short (19 bytes)",
            ssh4().truncate(L3 + 19),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "IPv4 IHL 4",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).ihl(4)),
            Drop(DROP_BAD_L3),
        ),
        case(
            "IPv4 IHL 4 to an unprotected destination (header errors drop anywhere)",
            tcp4(CLIENT_V4, OUTSIDE_V4, 22).ipv4(v4(CLIENT_V4, OUTSIDE_V4).ihl(4)),
            Drop(DROP_BAD_L3),
        ),
        case(
            "version 6 in an IPv4 frame",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).version(6)),
            Drop(DROP_BAD_L3),
        ),
        case(
            "IPv4 total length shorter than its header",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).total_len(19)),
            Drop(DROP_BAD_L3),
        ),
        case(
            "IPv4 total length beyond the frame",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).total_len(1000)),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "IPv4 total length past what XDP can check, to a protected host",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).total_len(65_500)),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "IPv4 total length past what XDP can check (a GRO-merged packet), not protected",
            tcp4(CLIENT_V4, OUTSIDE_V4, 22).ipv4(v4(CLIENT_V4, OUTSIDE_V4).total_len(65_500)),
            Pass(PASS_NOT_PROTECTED),
        ),
        case(
            "IPv4 options cut short (IHL 15, frame ends inside the options)",
            ssh4()
                .ipv4(v4(CLIENT_V4, SERVER_V4).options(&[1; 40]))
                .truncate(L3 + 30),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "IPv4 with a router alert option (IHL 6), SSH with a grant",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).options(&[148, 4, 0, 0])),
            Pass(PASS_GRANT),
        ),
        case(
            "IPv4 with 40 bytes of options (IHL 15), SSH with a grant",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).options(&[1; 40])),
            Pass(PASS_GRANT),
        ),
        case(
            "IPv4 to an unprotected destination",
            tcp4(STRANGER_V4, OUTSIDE_V4, 22),
            Pass(PASS_NOT_PROTECTED),
        ),
        case(
            "IPv4 non-first fragment to an unprotected destination",
            tcp4(STRANGER_V4, OUTSIDE_V4, 22).ipv4(v4(STRANGER_V4, OUTSIDE_V4).fragment(185, true)),
            Pass(PASS_NOT_PROTECTED),
        ),
        case(
            "IPv4 non-first fragment from the granted client",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).fragment(185, true)),
            Drop(DROP_FRAGMENT),
        ),
        case(
            "IPv4 last fragment (offset, no MF)",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).fragment(1, false)),
            Drop(DROP_FRAGMENT),
        ),
        case(
            "IPv4 first fragment (MF, offset 0), SSH with a grant",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).fragment(0, true)),
            Pass(PASS_GRANT),
        ),
        case(
            "IPv4 first fragment from a stranger",
            tcp4(STRANGER_V4, SERVER_V4, 22).ipv4(v4(STRANGER_V4, SERVER_V4).fragment(0, true)),
            Drop(DROP_NO_GRANT),
        ),
        // IPv4 transport headers and services.
        case(
            "TCP header cut short (19 bytes)",
            ssh4().cut_transport(19),
            Drop(DROP_TRUNCATED_L4),
        ),
        case(
            "TCP data offset 4",
            ssh4().tcp(tcp(22).data_offset(4)),
            Drop(DROP_BAD_L4),
        ),
        case(
            "UDP header cut short (7 bytes)",
            Frame::new()
                .ipv4(v4(CLIENT_V4, SERVER_V4))
                .udp(Udp::new(CLIENT_PORT, 53))
                .cut_transport(7),
            Drop(DROP_TRUNCATED_L4),
        ),
        case(
            "ICMP header cut short (7 bytes)",
            Frame::new()
                .ipv4(v4(CLIENT_V4, SERVER_V4))
                .icmp(Icmp::echo_request(1, 1))
                .cut_transport(7),
            Drop(DROP_TRUNCATED_L4),
        ),
        case(
            "frame cut inside the TCP header (IPv4 total length now too long)",
            ssh4().truncate(V4_L4 + 10),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "TCP header past the IPv4 total length (in the Ethernet padding)",
            ssh4().ipv4(v4(CLIENT_V4, SERVER_V4).total_len(20)),
            Drop(DROP_TRUNCATED_L4),
        ),
        case(
            "DNS over UDP with a grant",
            Frame::new()
                .ipv4(v4(CLIENT_V4, SERVER_V4))
                .udp(Udp::new(CLIENT_PORT, 53))
                .payload(&[0; 12]),
            Pass(PASS_GRANT),
        ),
        case(
            "ICMP echo with a grant (ICMP service)",
            Frame::new()
                .ipv4(v4(CLIENT_V4, SERVER_V4))
                .icmp(Icmp::echo_request(7, 1))
                .payload(b"ping"),
            Pass(PASS_GRANT),
        ),
        case(
            "ICMP echo from a stranger",
            Frame::new()
                .ipv4(v4(STRANGER_V4, SERVER_V4))
                .icmp(Icmp::echo_request(7, 1)),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "TCP port without a service",
            tcp4(CLIENT_V4, SERVER_V4, 23),
            Drop(DROP_NO_SERVICE),
        ),
        case(
            "UDP port without a service",
            Frame::new()
                .ipv4(v4(CLIENT_V4, SERVER_V4))
                .udp(Udp::new(CLIENT_PORT, 54)),
            Drop(DROP_NO_SERVICE),
        ),
        case(
            "GRE to a network without a GRE service",
            Frame::new()
                .ipv4(v4(CLIENT_V4, SERVER_V4).protocol(47))
                .payload(&[0; 8]),
            Drop(DROP_NO_SERVICE),
        ),
        case(
            "SSH from a stranger",
            tcp4(STRANGER_V4, SERVER_V4, 22),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "HTTPS from a client granted other apps only",
            tcp4(CLIENT_V4, SERVER_V4, 443),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "SSH with an expired grant",
            tcp4(EXPIRED_V4, SERVER_V4, 22),
            Drop(DROP_EXPIRED),
        ),
        case(
            "SSH with a grant from before bump_epoch",
            tcp4(STALE_V4, SERVER_V4, 22),
            Drop(DROP_STALE_EPOCH),
        ),
        case(
            "wildcard port: TCP 8080 with a grant",
            tcp4(CLIENT_V4, ANY_PORT_HOST, 8080),
            Pass(PASS_GRANT),
        ),
        case(
            "wildcard port: TCP 1 with a grant",
            tcp4(CLIENT_V4, ANY_PORT_HOST, 1),
            Pass(PASS_GRANT),
        ),
        case(
            "wildcard port covers TCP only, not UDP",
            Frame::new()
                .ipv4(v4(CLIENT_V4, ANY_PORT_HOST))
                .udp(Udp::new(CLIENT_PORT, 8080)),
            Drop(DROP_NO_SERVICE),
        ),
        case(
            "wildcard protocol: UDP 9999 with a grant",
            Frame::new()
                .ipv4(v4(CLIENT_V4, ANY_PROTO_HOST))
                .udp(Udp::new(CLIENT_PORT, 9999)),
            Pass(PASS_GRANT),
        ),
        case(
            "wildcard protocol: GRE with a grant",
            Frame::new()
                .ipv4(v4(CLIENT_V4, ANY_PROTO_HOST).protocol(47))
                .payload(&[0; 8]),
            Pass(PASS_GRANT),
        ),
        case(
            "wildcard protocol: TCP from a stranger",
            tcp4(STRANGER_V4, ANY_PROTO_HOST, 22),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "IPv4 protocol 58 dressed as a neighbour solicitation (TTL 255) is not ND",
            Frame::new()
                .ipv4(v4(STRANGER_V4, SERVER_V4).ttl(255))
                .icmpv6(Icmp::neighbor_solicitation(SERVER_V6)),
            Drop(DROP_NO_GRANT),
        ),
        // Monitor mode, global and per app.
        monitor_case(
            "global monitor: SSH from a stranger would drop",
            tcp4(STRANGER_V4, SERVER_V4, 22),
            WouldDrop(DROP_NO_GRANT),
        ),
        monitor_case(
            "global monitor: TCP port without a service would drop",
            tcp4(CLIENT_V4, SERVER_V4, 23),
            WouldDrop(DROP_NO_SERVICE),
        ),
        monitor_case(
            "global monitor: three VLAN tags would drop",
            ssh4()
                .vlan(TPID_8021AD, 1)
                .vlan(TPID_8021Q, 2)
                .vlan(TPID_8021Q, 3),
            WouldDrop(DROP_VLAN_DEPTH),
        ),
        monitor_case(
            "global monitor: SSH with a grant still counts as a grant",
            ssh4(),
            Pass(PASS_GRANT),
        ),
        monitor_case(
            "global monitor: unprotected destination",
            tcp4(STRANGER_V4, OUTSIDE_V4, 22),
            Pass(PASS_NOT_PROTECTED),
        ),
        case(
            "app in monitor mode: stranger would drop while the gateway enforces",
            tcp4(STRANGER_V4, PILOT_HOST, 80),
            WouldDrop(DROP_NO_GRANT),
        ),
        case(
            "app in monitor mode: client with a grant passes",
            tcp4(CLIENT_V4, PILOT_HOST, 80),
            Pass(PASS_GRANT),
        ),
        monitor_case(
            "app in enforce mode overrides global monitor",
            tcp4(STRANGER_V4, CRITICAL_HOST, 80),
            Drop(DROP_NO_GRANT),
        ),
        monitor_case(
            "app in enforce mode under global monitor: client with a grant passes",
            tcp4(CLIENT_V4, CRITICAL_HOST, 80),
            Pass(PASS_GRANT),
        ),
        // IPv6 header and extension headers.
        case(
            "IPv6 header cut short (39 bytes)",
            ssh6().truncate(L3 + 39),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "version 4 in an IPv6 frame",
            ssh6().ipv6(v6(CLIENT_V6, SERVER_V6).version(4)),
            Drop(DROP_BAD_L3),
        ),
        case(
            "IPv6 payload length beyond the frame",
            ssh6().ipv6(v6(CLIENT_V6, SERVER_V6).payload_len(1000)),
            Drop(DROP_TRUNCATED_L3),
        ),
        case("SSH over IPv6 with a grant", ssh6(), Pass(PASS_GRANT)),
        case(
            "SSH over IPv6 from a stranger",
            tcp6(STRANGER_V6, SERVER_V6, 22),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "IPv6 to an unprotected destination",
            tcp6(STRANGER_V6, OUTSIDE_V6, 22),
            Pass(PASS_NOT_PROTECTED),
        ),
        case(
            "IPv6 to an unprotected destination with a long chain and a non-first fragment",
            Frame::new()
                .ipv6(
                    seven_exts
                        .iter()
                        .cloned()
                        .chain([Ext::fragment(100, false, 1)])
                        .fold(v6(STRANGER_V6, OUTSIDE_V6), Ipv6::ext),
                )
                .tcp(tcp(22)),
            Pass(PASS_NOT_PROTECTED),
        ),
        case(
            "hop-by-hop + destination options + routing, SSH with a grant",
            ssh6_with([
                Ext::hop_by_hop(),
                Ext::destination_options(),
                Ext::routing(),
            ]),
            Pass(PASS_GRANT),
        ),
        case(
            "authentication header (length in 4-byte words), SSH with a grant",
            ssh6_with([Ext::auth(3)]),
            Pass(PASS_GRANT),
        ),
        case(
            "IPv6 first fragment (offset 0, M), SSH with a grant",
            ssh6_with([Ext::fragment(0, true, 1)]),
            Pass(PASS_GRANT),
        ),
        case(
            "IPv6 non-first fragment from the granted client",
            ssh6_with([Ext::fragment(100, true, 1)]),
            Drop(DROP_FRAGMENT),
        ),
        case(
            "IPv6 non-first fragment behind hop-by-hop options",
            ssh6_with([Ext::hop_by_hop(), Ext::fragment(1, false, 1)]),
            Drop(DROP_FRAGMENT),
        ),
        case(
            "six extension headers (the bound), SSH with a grant",
            ssh6_with(seven_exts[..6].iter().cloned()),
            Pass(PASS_GRANT),
        ),
        case(
            "seven extension headers",
            ssh6_with(seven_exts.iter().cloned()),
            Drop(DROP_EXT_HEADERS),
        ),
        case(
            "hop-by-hop header cut short (claims 16 bytes, 10 present)",
            Frame::new()
                .ipv6(
                    v6(CLIENT_V6, SERVER_V6)
                        .ext(Ext::raw(proto::HOP_BY_HOP, 1))
                        .payload_len(10),
                )
                .tcp(tcp(22))
                .truncate(V6_L4 + 10),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "fragment header cut short (6 bytes)",
            Frame::new()
                .ipv6(
                    v6(CLIENT_V6, SERVER_V6)
                        .ext(Ext::fragment(0, true, 1))
                        .payload_len(6),
                )
                .tcp(tcp(22))
                .truncate(V6_L4 + 6),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "destination options past the IPv6 payload length",
            Frame::new()
                .ipv6(
                    v6(CLIENT_V6, SERVER_V6)
                        .ext(Ext::destination_options())
                        .payload_len(4),
                )
                .tcp(tcp(22)),
            Drop(DROP_TRUNCATED_L3),
        ),
        case(
            "IPv6 from the IPv4-mapped address of a granted IPv4 client",
            tcp6(CLIENT_V4.to_ipv6_mapped(), SERVER_V6, 22),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "TCP header cut short over IPv6",
            ssh6().cut_transport(12),
            Drop(DROP_TRUNCATED_L4),
        ),
        case(
            "UDP header cut short behind destination options",
            Frame::new()
                .ipv6(v6(CLIENT_V6, SERVER_V6).ext(Ext::destination_options()))
                .udp(Udp::new(CLIENT_PORT, 53))
                .cut_transport(4),
            Drop(DROP_TRUNCATED_L4),
        ),
        case(
            "ICMPv6 echo with a grant (ICMPv6 service)",
            icmp6(CLIENT_V6, 64, Icmp::echo_request_v6(7, 1)),
            Pass(PASS_GRANT),
        ),
        case(
            "ICMPv6 echo from a stranger",
            icmp6(STRANGER_V6, 64, Icmp::echo_request_v6(7, 1)),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "ICMPv6 header cut short (7 bytes)",
            icmp6(CLIENT_V6, 64, Icmp::echo_request_v6(7, 1)).cut_transport(7),
            Drop(DROP_TRUNCATED_L4),
        ),
        case(
            "neighbour solicitation to a protected address, hop limit 255, from a stranger",
            icmp6(STRANGER_V6, 255, Icmp::neighbor_solicitation(SERVER_V6)),
            Pass(PASS_NEIGHBOR_DISCOVERY),
        ),
        case(
            "neighbour solicitation with hop limit 64 is not ND",
            icmp6(STRANGER_V6, 64, Icmp::neighbor_solicitation(SERVER_V6)),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "neighbour advertisement, hop limit 255",
            icmp6(
                STRANGER_V6,
                255,
                Icmp::new(Icmp::V6_NEIGHBOR_ADVERTISEMENT, 0).body(&SERVER_V6.octets()),
            ),
            Pass(PASS_NEIGHBOR_DISCOVERY),
        ),
        case(
            "MLD report from a link-local address, hop limit 1, router alert",
            Frame::new()
                .ipv6(
                    v6(LINK_LOCAL, SERVER_V6)
                        .hop_limit(1)
                        .ext(Ext::hop_by_hop_router_alert()),
                )
                .icmpv6(Icmp::mld_report(SERVER_V6)),
            Pass(PASS_NEIGHBOR_DISCOVERY),
        ),
        case(
            "MLD report from a global address is not link control",
            Frame::new()
                .ipv6(
                    v6(STRANGER_V6, SERVER_V6)
                        .hop_limit(1)
                        .ext(Ext::hop_by_hop_router_alert()),
                )
                .icmpv6(Icmp::mld_report(SERVER_V6)),
            Drop(DROP_NO_GRANT),
        ),
        case(
            "MLD report from a link-local address with hop limit 255 is not link control",
            icmp6(LINK_LOCAL, 255, Icmp::mld_report(SERVER_V6)),
            Drop(DROP_NO_GRANT),
        ),
    ]
}

/// Slots that move with events, not with verdicts.
fn is_event_slot(slot: usize) -> bool {
    slot == EVENTS_SUPPRESSED as usize || slot == EVENTS_LOST as usize
}

fn slot_name(slot: usize) -> String {
    let slot = slot as u32;
    let base = ztna_common::verdict::WOULD_DROP_BASE;
    if slot >= base {
        format!("would_{}", reason_name(slot - base))
    } else {
        reason_name(slot).to_owned()
    }
}

#[test]
fn verdict_table() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let mut dataplane = load_fixture();
    // Events are checked below; here they would only move the event slots.
    dataplane.set_event_budget(0, 0).expect("disable events");

    let cases = cases();
    assert!(
        cases.len() >= 40,
        "the table shrank to {} cases",
        cases.len()
    );
    for reason in 0..REASON_COUNT {
        assert!(
            cases.iter().any(|c| c.expect.reason() == reason),
            "no case expects {}",
            reason_name(reason)
        );
    }

    let mut failures = Vec::new();
    for case in &cases {
        let expect = case.expect;
        assert_eq!(
            is_pass(expect.reason()),
            matches!(expect, Expect::Pass(_)),
            "case {:?}: {expect:?} names a reason of the other kind",
            case.name
        );
        dataplane.set_mode(case.mode).expect("set mode");
        let before = dataplane.stats().expect("stats");
        let (action, _) = dataplane.test_run(&case.frame, 1).expect("test_run");
        let after = dataplane.stats().expect("stats");
        let moved: Vec<(usize, u64)> = before
            .iter()
            .zip(&after)
            .enumerate()
            .filter(|(slot, (b, a))| a != b && !is_event_slot(*slot))
            .map(|(slot, (b, a))| (slot, a - b))
            .collect();
        let expected_moved = vec![(expect.slot(), 1)];
        if action != expect.action() || moved != expected_moved {
            failures.push(format!(
                "{}: expected action {} and {} +1, got action {action} and {}\n    frame: {}",
                case.name,
                expect.action(),
                slot_name(expect.slot()),
                moved
                    .iter()
                    .map(|(slot, n)| format!("{} +{n}", slot_name(*slot)))
                    .collect::<Vec<_>>()
                    .join(", "),
                hex(&case.frame),
            ));
        }
    }
    dataplane.set_mode(Mode::Enforce).expect("set mode");
    eprintln!("verdict table: {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `BPF_PROG_TEST_RUN` refuses frames shorter than an Ethernet header, so `DROP_TRUNCATED_L2` for a
/// cut Ethernet header cannot be observed through it (the table covers it with cut VLAN tags).
#[test]
fn test_run_refuses_frames_shorter_than_ethernet() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let dataplane = load_fixture();
    let frame = ssh4().truncate(13).build();
    assert!(
        dataplane.test_run(&frame, 1).is_err(),
        "the kernel ran the program on a 13-byte frame; add a DROP_TRUNCATED_L2 case for it"
    );
}

#[test]
fn grant_counters_count_passed_packets_and_bytes() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let dataplane = load_fixture();
    let client = IpAddr::from(CLIENT_V4);
    let before = dataplane.grant(client, APP_SSH).unwrap().expect("grant");
    assert_eq!((before.packets, before.bytes), (0, 0));

    let small = ssh4().build();
    let large = ssh4().payload(&[0x5a; 1000]).build();
    for frame in [&small, &small, &large] {
        let (action, _) = dataplane.test_run(frame, 1).unwrap();
        assert_eq!(action, XDP_PASS);
    }
    // `repeat` runs the program that many times on the same frame.
    dataplane.test_run(&small, 10).unwrap();
    let after = dataplane.grant(client, APP_SSH).unwrap().expect("grant");
    assert_eq!(after.packets, 13);
    assert_eq!(
        after.bytes,
        12 * small.len() as u64 + large.len() as u64,
        "bytes count whole frames"
    );

    // Drops move no grant counter, not even of the app's other grants.
    let dropped = ssh4()
        .ipv4(v4(CLIENT_V4, SERVER_V4).fragment(185, false))
        .build();
    assert_eq!(dataplane.test_run(&dropped, 1).unwrap().0, XDP_DROP);
    let https = tcp4(CLIENT_V4, SERVER_V4, 443).build();
    assert_eq!(dataplane.test_run(&https, 1).unwrap().0, XDP_DROP);
    assert_eq!(dataplane.grant(client, APP_SSH).unwrap(), Some(after));

    // Each grant counts its own traffic.
    let dns = Frame::new()
        .ipv4(v4(CLIENT_V4, SERVER_V4))
        .udp(Udp::new(CLIENT_PORT, 53))
        .build();
    dataplane.test_run(&dns, 1).unwrap();
    let dns_grant = dataplane.grant(client, APP_DNS).unwrap().expect("grant");
    assert_eq!((dns_grant.packets, dns_grant.bytes), (1, dns.len() as u64));
    assert_eq!(dataplane.grant(client, APP_SSH).unwrap(), Some(after));
}

#[test]
fn grant_expires_in_the_kernel_on_its_own() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let mut dataplane = load_fixture();
    let source = Ipv4Addr::new(192, 0, 2, 77);
    dataplane
        .upsert_grant(
            source.into(),
            APP_SSH,
            deadline_after(Duration::from_millis(300)),
        )
        .unwrap();
    let frame = tcp4(source, SERVER_V4, 22).build();
    assert_eq!(dataplane.test_run(&frame, 1).unwrap().0, XDP_PASS);
    thread::sleep(Duration::from_millis(400));
    let before = dataplane.stats().unwrap();
    assert_eq!(dataplane.test_run(&frame, 1).unwrap().0, XDP_DROP);
    let after = dataplane.stats().unwrap();
    assert_eq!(
        after[DROP_EXPIRED as usize] - before[DROP_EXPIRED as usize],
        1
    );
}

#[test]
fn extending_a_grant_moves_its_deadline_and_keeps_its_counters() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let mut dataplane = load_fixture();
    let source = Ipv4Addr::new(192, 0, 2, 78);
    let frame = tcp4(source, SERVER_V4, 22).build();
    assert!(
        !dataplane
            .extend_grant(
                source.into(),
                APP_SSH,
                deadline_after(Duration::from_secs(60))
            )
            .unwrap(),
        "there is no grant to extend yet"
    );
    dataplane
        .upsert_grant(source.into(), APP_SSH, monotonic_coarse_ns() - 1)
        .unwrap();
    assert_eq!(dataplane.test_run(&frame, 1).unwrap().0, XDP_DROP);

    let later = deadline_after(Duration::from_secs(60));
    assert!(
        dataplane
            .extend_grant(source.into(), APP_SSH, later)
            .unwrap()
    );
    assert_eq!(dataplane.test_run(&frame, 3).unwrap().0, XDP_PASS);
    let grant = dataplane
        .grant(source.into(), APP_SSH)
        .unwrap()
        .expect("grant");
    assert_eq!(grant.expires_at_ns, later);
    assert_eq!(grant.packets, 3);

    // Extending again keeps what was counted.
    dataplane
        .extend_grant(source.into(), APP_SSH, later + 1)
        .unwrap();
    assert_eq!(
        dataplane
            .grant(source.into(), APP_SSH)
            .unwrap()
            .map(|g| g.packets),
        Some(3)
    );
}

#[test]
fn an_app_can_be_put_in_monitor_mode_and_back() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let mut dataplane = load_fixture();
    // HTTPS from a client without a grant: dropped while the gateway enforces.
    let frame = tcp4(STRANGER_V4, SERVER_V4, 443).build();
    assert_eq!(dataplane.test_run(&frame, 1).unwrap().0, XDP_DROP);

    assert_eq!(
        dataplane.set_app_mode(APP_HTTPS, APP_MODE_MONITOR).unwrap(),
        1,
        "one service belongs to the app"
    );
    let before = dataplane.stats().unwrap();
    assert_eq!(dataplane.test_run(&frame, 1).unwrap().0, XDP_PASS);
    let after = dataplane.stats().unwrap();
    let slot = stat_index(DROP_NO_GRANT, true) as usize;
    assert_eq!(after[slot] - before[slot], 1, "counted as a would-drop");
    // Other apps still enforce.
    assert_eq!(
        dataplane
            .test_run(&tcp4(STRANGER_V4, SERVER_V4, 22).build(), 1)
            .unwrap()
            .0,
        XDP_DROP
    );

    dataplane.set_app_mode(APP_HTTPS, APP_MODE_INHERIT).unwrap();
    assert_eq!(dataplane.test_run(&frame, 1).unwrap().0, XDP_DROP);
}

#[test]
fn installed_prefixes_read_back_masked() {
    require_root!("loading the XDP program");
    let mut dataplane = Dataplane::load(&LoadOptions::default()).expect("load the XDP program");
    let v4 = Prefix::new(Ipv4Addr::new(10, 9, 8, 7).into(), 16).unwrap();
    let v6 = Prefix::new(Ipv6Addr::new(0x2001, 0xdb8, 5, 6, 0, 0, 0, 1).into(), 48).unwrap();
    dataplane.add_prefix(v4, 11).unwrap();
    dataplane.add_prefix(v6, 12).unwrap();
    let mut listed = dataplane.prefixes().unwrap();
    listed.sort();
    assert_eq!(
        listed,
        [
            (
                Prefix::new(Ipv4Addr::new(10, 9, 0, 0).into(), 16).unwrap(),
                11
            ),
            (
                Prefix::new(Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 0).into(), 48).unwrap(),
                12
            ),
        ]
    );
    dataplane.remove_prefix(v4).unwrap();
    dataplane.remove_prefix(v6).unwrap();
    assert!(dataplane.prefixes().unwrap().is_empty());
}

/// Takes every waiting event.
fn drain(reader: &mut EventReader) -> Vec<Event> {
    reader.drain()
}

fn expect_one_event(dataplane: &Dataplane, reader: &mut EventReader, frame: &Frame) -> Event {
    let frame = frame.build();
    dataplane.test_run(&frame, 1).expect("test_run");
    let events = drain(reader);
    assert_eq!(events.len(), 1, "one event per denied packet: {events:?}");
    let event = events[0];
    assert_eq!(event.pkt_len as usize, frame.len());
    assert_ne!(event.timestamp_ns, 0);
    event
}

#[test]
fn deny_and_would_deny_events_name_reason_addresses_and_ports() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let mut dataplane = load_fixture();
    dataplane.set_event_budget(1000, 1000).unwrap();
    let mut reader = dataplane.take_events().expect("event reader");
    assert!(drain(&mut reader).is_empty());

    // A denied IPv4 packet.
    let event = expect_one_event(&dataplane, &mut reader, &tcp4(STRANGER_V4, SERVER_V4, 22));
    assert_eq!((event.kind, event.reason), (EVENT_DENY, DROP_NO_GRANT));
    assert_eq!(event.src, v4_mapped(STRANGER_V4.octets()));
    assert_eq!(event.dst, v4_mapped(SERVER_V4.octets()));
    assert_eq!(u16::from_be(event.sport_be), CLIENT_PORT);
    assert_eq!(u16::from_be(event.dport_be), 22);
    assert_eq!((event.proto, event.ip_version), (proto::TCP, 4));
    assert_eq!(event.app_id, APP_SSH);

    // A denied IPv6 packet with no service.
    let udp6 = Frame::new()
        .ipv6(v6(STRANGER_V6, SERVER_V6))
        .udp(Udp::new(5353, 9));
    let event = expect_one_event(&dataplane, &mut reader, &udp6);
    assert_eq!((event.kind, event.reason), (EVENT_DENY, DROP_NO_SERVICE));
    assert_eq!(event.src, STRANGER_V6.octets());
    assert_eq!(event.dst, SERVER_V6.octets());
    assert_eq!(
        (u16::from_be(event.sport_be), u16::from_be(event.dport_be)),
        (5353, 9)
    );
    assert_eq!((event.proto, event.ip_version), (proto::UDP, 6));
    assert_eq!(event.app_id, 0, "no service, no app");

    // A drop before the IP header was read carries no addresses.
    let tagged = ssh4()
        .vlan(TPID_8021AD, 1)
        .vlan(TPID_8021Q, 2)
        .vlan(TPID_8021Q, 3);
    let event = expect_one_event(&dataplane, &mut reader, &tagged);
    assert_eq!((event.kind, event.reason), (EVENT_DENY, DROP_VLAN_DEPTH));
    assert_eq!(
        (event.ip_version, event.src, event.dst),
        (0, [0; 16], [0; 16])
    );

    // An app in monitor mode: the packet passes and is reported as a would-deny.
    let event = expect_one_event(&dataplane, &mut reader, &tcp4(STRANGER_V4, PILOT_HOST, 80));
    assert_eq!(
        (event.kind, event.reason),
        (EVENT_WOULD_DENY, DROP_NO_GRANT)
    );
    assert_eq!(event.dst, v4_mapped(PILOT_HOST.octets()));
    assert_eq!(event.app_id, APP_PILOT);

    // The gateway in monitor mode: an expired grant passes, reported as a would-deny.
    dataplane.set_mode(Mode::Monitor).unwrap();
    let event = expect_one_event(&dataplane, &mut reader, &tcp4(EXPIRED_V4, SERVER_V4, 22));
    assert_eq!((event.kind, event.reason), (EVENT_WOULD_DENY, DROP_EXPIRED));
    assert_eq!(event.src, v4_mapped(EXPIRED_V4.octets()));
    dataplane.set_mode(Mode::Enforce).unwrap();

    // Passes are not events.
    for frame in [ssh4(), ssh6(), tcp4(STRANGER_V4, OUTSIDE_V4, 22)] {
        assert_eq!(dataplane.test_run(&frame.build(), 1).unwrap().0, XDP_PASS);
    }
    assert!(drain(&mut reader).is_empty(), "a pass emitted an event");
    let stats = dataplane.stats().unwrap();
    assert_eq!(stats[EVENTS_SUPPRESSED as usize], 0);
    assert_eq!(stats[EVENTS_LOST as usize], 0);
}

/// Keeps the calling thread on the CPU it runs on, so that one per-CPU token bucket sees every
/// packet.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu failed");
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it for any cpu below
    // CPU_SETSIZE, and sched_setaffinity(0, ...) applies to the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity failed");
    }
}

#[test]
fn token_bucket_limits_events_per_cpu() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    pin_to_current_cpu();
    let mut dataplane = load_fixture();
    const RATE: u32 = 1;
    const BURST: u32 = 5;
    const SENT: u64 = 50;
    dataplane.set_event_budget(RATE, BURST).unwrap();
    let mut reader = dataplane.take_events().expect("event reader");

    let frame = tcp4(STRANGER_V4, SERVER_V4, 22).build();
    let before = dataplane.stats().unwrap();
    for _ in 0..SENT {
        assert_eq!(dataplane.test_run(&frame, 1).unwrap().0, XDP_DROP);
    }
    let after = dataplane.stats().unwrap();
    let events = drain(&mut reader).len() as u64;
    let suppressed = after[EVENTS_SUPPRESSED as usize] - before[EVENTS_SUPPRESSED as usize];
    let lost = after[EVENTS_LOST as usize] - before[EVENTS_LOST as usize];
    let dropped = after[DROP_NO_GRANT as usize] - before[DROP_NO_GRANT as usize];
    eprintln!("token bucket: {SENT} drops, {events} events, {suppressed} suppressed");
    assert_eq!(dropped, SENT, "every packet is counted, event or not");
    // A full bucket, plus at most one token refilled while the loop ran (1 per second).
    assert!(
        (1..=u64::from(BURST) + 1).contains(&events),
        "{events} events for a burst of {BURST}"
    );
    assert_eq!(
        events + suppressed,
        SENT,
        "every drop is an event or suppressed"
    );
    assert_eq!(lost, 0);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
