//! Property test: a million random and mutated frames through `BPF_PROG_TEST_RUN`, each judged by a
//! reference model that shares no code with the XDP program.
//!
//! Invariant: no frame to a protected destination passes without a live grant for its source and
//! the app of the service it matches. For every `XDP_PASS` the reference must show that the frame is
//! not IP, or its destination is not protected, or it is IPv6 neighbour discovery / multicast
//! listener traffic, or a live grant exists, or the matched app is in monitor mode. The reference
//! also predicts the verdict reason of every frame, so the test further checks that the kernel never
//! drops what the reference passes and that the kernel's per-reason `STATS` equal the reference's.
//!
//! The reference decodes headers with `etherparse` where etherparse accepts exactly what the
//! documented contract (`ztna_common::verdict`, DESIGN.md) accepts: Ethernet, VLAN tags, the IPv4
//! header and options, the IPv6 fixed header, generic and fragment extension headers, UDP and
//! ICMPv6. It reads by hand where the contract is looser than etherparse or says more: the IP
//! length checks (the frame must hold the datagram; headers must lie inside the datagram), the
//! authentication header (any length field), TCP (only the 20-byte fixed header must be present;
//! options are not the gateway's business) and ICMPv4 (etherparse also checks the length of
//! timestamp messages).
//!
//! Reproduce a run with `ZTNA_PROPTEST_SEED=<seed>`; change its size with `ZTNA_PROPTEST_PACKETS`.
//! Frame `i` depends only on the seed and `i`, so a failure names the seed and the index.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, Icmpv6Slice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeader, Ipv6RawExtHeaderSlice,
    SingleVlanHeaderSlice, UdpHeaderSlice,
    err::{LenError, ipv4::HeaderSliceError},
};
use rand::{Rng, RngCore, SeedableRng, rngs::SmallRng, seq::IndexedRandom};
use ztna_agent::dataplane::{Dataplane, LoadOptions, Prefix, deadline_after, monotonic_coarse_ns};
use ztna_common::{
    service::{APP_MODE_ENFORCE, APP_MODE_INHERIT, APP_MODE_MONITOR, ServiceKey, ServiceValue},
    verdict::{
        DROP_BAD_L3, DROP_BAD_L4, DROP_EXPIRED, DROP_EXT_HEADERS, DROP_FRAGMENT, DROP_NO_GRANT,
        DROP_NO_SERVICE, DROP_STALE_EPOCH, DROP_TRUNCATED_L2, DROP_TRUNCATED_L3, DROP_TRUNCATED_L4,
        DROP_VLAN_DEPTH, MAX_CHECKED_DATAGRAM_LEN, PASS_GRANT, PASS_NEIGHBOR_DISCOVERY,
        PASS_NOT_IP, PASS_NOT_PROTECTED, REASON_COUNT, STATS_LEN, WOULD_DROP_BASE, is_pass,
        reason_name, stat_index,
    },
};
use ztna_tests::{
    packet::{
        ETH_MIN_LEN, Ext, Frame, Icmp, Ipv4, Ipv6, TPID_8021AD, TPID_8021Q, TPID_QINQ, Tcp, Udp,
        proto,
    },
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const DEFAULT_PACKETS: u64 = 1_000_000;
/// Frames stay well inside what `BPF_PROG_TEST_RUN` copies into one page.
const MAX_FRAME: usize = 1500;
/// `BPF_PROG_TEST_RUN` refuses XDP frames shorter than an Ethernet header.
const MIN_FRAME: usize = 14;

// --- the policy ------------------------------------------------------------------------------

/// Whether a grant lets traffic through, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GrantState {
    Live,
    Expired,
    /// Written under the epoch before the current one.
    Stale,
    /// Both: the epoch is checked first.
    StaleAndExpired,
}

/// What the test installs, in the reference's own terms.
struct Policy {
    v4: Vec<(Ipv4Addr, u8, u32)>,
    v6: Vec<(Ipv6Addr, u8, u32)>,
    /// (net, protocol, destination port) -> (app, app mode); port 0 and protocol 0 are wildcards.
    services: HashMap<(u32, u8, u16), (u32, u32)>,
    /// (source as installed, app). An IPv4-mapped IPv6 source is installed as its IPv4 address; a
    /// packet's source is looked up in its own family, as the wire carries it.
    grants: HashMap<(IpAddr, u32), GrantState>,
    sources_v4: Vec<Ipv4Addr>,
    sources_v6: Vec<Ipv6Addr>,
}

impl Policy {
    fn new() -> Self {
        let v4 = vec![
            (Ipv4Addr::new(10, 0, 0, 0), 8, 1),
            (Ipv4Addr::new(10, 9, 0, 0), 16, 2),
            (Ipv4Addr::new(10, 9, 9, 9), 32, 3),
            (Ipv4Addr::new(172, 16, 0, 0), 12, 4),
        ];
        let v6 = vec![
            ("2001:db8:a::".parse().unwrap(), 48, 5),
            ("2001:db8:a:b::".parse().unwrap(), 64, 6),
            ("fd00::".parse().unwrap(), 8, 7),
        ];
        let (inherit, monitor, enforce) = (APP_MODE_INHERIT, APP_MODE_MONITOR, APP_MODE_ENFORCE);
        let services = HashMap::from([
            ((1, proto::TCP, 22), (1, inherit)),
            ((1, proto::TCP, 443), (2, inherit)),
            ((1, proto::UDP, 53), (3, inherit)),
            ((1, proto::ICMP, 0), (4, inherit)),
            ((1, proto::TCP, 80), (5, monitor)),
            ((2, proto::TCP, 0), (6, inherit)),
            ((2, proto::UDP, 500), (7, inherit)),
            ((3, 0, 0), (8, inherit)),
            ((4, proto::UDP, 0), (9, inherit)),
            ((4, proto::ICMP, 0), (4, inherit)),
            ((4, proto::TCP, 22), (1, inherit)),
            ((4, 47, 0), (10, inherit)),
            ((5, proto::TCP, 22), (1, inherit)),
            ((5, proto::ICMPV6, 0), (11, inherit)),
            ((5, proto::UDP, 53), (3, inherit)),
            ((5, proto::TCP, 8443), (12, enforce)),
            ((6, 0, 0), (13, monitor)),
            ((7, proto::TCP, 0), (14, inherit)),
            ((7, proto::ICMPV6, 0), (11, inherit)),
        ]);
        let sources_v4: Vec<Ipv4Addr> = (1..=6)
            .map(|host| Ipv4Addr::new(192, 0, 2, host))
            .chain([Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::UNSPECIFIED])
            .collect();
        let sources_v6: Vec<Ipv6Addr> = (1..=4)
            .map(|host| Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, host))
            .chain([
                "fe80::1".parse().unwrap(),
                Ipv6Addr::UNSPECIFIED,
                // The agent installs its grants as 192.0.2.1's; on the wire it is an IPv6 source.
                Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(),
            ])
            .collect();

        // A fixed spread of grant states over (source, app), independent of the seed.
        let mut apps: Vec<u32> = services.values().map(|(app, _)| *app).collect();
        apps.sort_unstable();
        apps.dedup();
        let sources = sources_v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(sources_v6.iter().map(|a| IpAddr::V6(*a)));
        let mut grants = HashMap::new();
        for (s, source) in sources.enumerate() {
            for &app in &apps {
                let state = match (s * 3 + app as usize * 5) % 7 {
                    0..=2 => GrantState::Live,
                    3 => GrantState::Expired,
                    4 => GrantState::Stale,
                    5 => GrantState::StaleAndExpired,
                    _ => continue,
                };
                grants.entry((source.to_canonical(), app)).or_insert(state);
            }
        }
        Self {
            v4,
            v6,
            services,
            grants,
            sources_v4,
            sources_v6,
        }
    }

    fn install(&self, dataplane: &mut Dataplane) {
        for &(addr, len, net_id) in &self.v4 {
            dataplane
                .add_prefix(Prefix::new(addr.into(), len).unwrap(), net_id)
                .expect("add prefix");
        }
        for &(addr, len, net_id) in &self.v6 {
            dataplane
                .add_prefix(Prefix::new(addr.into(), len).unwrap(), net_id)
                .expect("add prefix");
        }
        for (&(net_id, proto, port), &(app_id, mode)) in &self.services {
            dataplane
                .add_service(
                    ServiceKey::new(net_id, proto, port),
                    ServiceValue { app_id, mode },
                )
                .expect("add service");
        }
        let live = deadline_after(Duration::from_secs(3600));
        let past = monotonic_coarse_ns() - 1_000_000_000;
        let install = |dataplane: &mut Dataplane, wanted: &[GrantState]| {
            for (&(source, app_id), state) in &self.grants {
                if wanted.contains(state) {
                    let deadline = match state {
                        GrantState::Live | GrantState::Stale => live,
                        GrantState::Expired | GrantState::StaleAndExpired => past,
                    };
                    dataplane
                        .upsert_grant(source, app_id, deadline)
                        .expect("install grant");
                }
            }
        };
        install(dataplane, &[GrantState::Stale, GrantState::StaleAndExpired]);
        dataplane.bump_epoch().expect("bump epoch");
        install(dataplane, &[GrantState::Live, GrantState::Expired]);
        // Verdicts only; the event path is covered by the verdict table.
        dataplane.set_event_budget(0, 0).expect("disable events");
    }

    fn net_v4(&self, dst: Ipv4Addr) -> Option<u32> {
        let dst = u32::from(dst);
        self.v4
            .iter()
            .filter(|(addr, len, _)| *len == 0 || (dst ^ u32::from(*addr)) >> (32 - len) == 0)
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, net)| *net)
    }

    fn net_v6(&self, dst: Ipv6Addr) -> Option<u32> {
        let dst = u128::from(dst);
        self.v6
            .iter()
            .filter(|(addr, len, _)| *len == 0 || (dst ^ u128::from(*addr)) >> (128 - len) == 0)
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, net)| *net)
    }

    fn service(&self, net: u32, proto: u8, port: u16) -> Option<(u32, u32)> {
        [(proto, port), (proto, 0), (0, 0)]
            .iter()
            .find_map(|&(proto, port)| self.services.get(&(net, proto, port)).copied())
    }
}

// --- the reference model ---------------------------------------------------------------------

/// The reference's verdict on one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Judgement {
    reason: u32,
    /// A drop that passes because the matched app is in monitor mode (the gateway enforces).
    monitored: bool,
}

impl Judgement {
    fn action(self) -> u32 {
        if is_pass(self.reason) || self.monitored {
            XDP_PASS
        } else {
            XDP_DROP
        }
    }

    fn slot(self) -> usize {
        stat_index(self.reason, self.monitored) as usize
    }
}

/// A verdict reached before any app was matched (never monitored: the gateway enforces).
fn verdict(reason: u32) -> Judgement {
    Judgement {
        reason,
        monitored: false,
    }
}

/// What the reference learned from the IP layer.
struct IpInfo<'a> {
    /// The source as the packet carries it (an IPv4-mapped IPv6 source stays IPv6).
    source: IpAddr,
    net: Option<u32>,
    is_ipv6: bool,
    source_v6: Option<Ipv6Addr>,
    hop_limit: u8,
    non_first_fragment: bool,
    /// The length field claims more than the program can check against the frame.
    oversized: bool,
    /// Protocol of the fixed header (IPv6: the first next-header).
    protocol: u8,
    /// The datagram after the fixed header (and IPv4 options): exactly what its length field says.
    payload: &'a [u8],
}

fn judge(frame: &[u8], policy: &Policy) -> Judgement {
    match classify(frame, policy) {
        Ok(judgement) | Err(judgement) => judgement,
    }
}

fn classify(frame: &[u8], policy: &Policy) -> Result<Judgement, Judgement> {
    const MAX_VLAN_TAGS: usize = 2;
    let ethernet =
        Ethernet2HeaderSlice::from_slice(frame).map_err(|_| verdict(DROP_TRUNCATED_L2))?;
    let mut ether_type = ethernet.ether_type();
    let mut rest = &frame[ethernet.slice().len()..];
    let mut tags = 0;
    while matches!(
        ether_type,
        EtherType::VLAN_TAGGED_FRAME
            | EtherType::PROVIDER_BRIDGING
            | EtherType::VLAN_DOUBLE_TAGGED_FRAME
    ) {
        if tags == MAX_VLAN_TAGS {
            return Err(verdict(DROP_VLAN_DEPTH));
        }
        let tag =
            SingleVlanHeaderSlice::from_slice(rest).map_err(|_| verdict(DROP_TRUNCATED_L2))?;
        ether_type = tag.ether_type();
        rest = &rest[tag.slice().len()..];
        tags += 1;
    }
    let ip = match ether_type {
        EtherType::IPV4 => ipv4(rest, policy)?,
        EtherType::IPV6 => ipv6(rest, policy)?,
        _ => return Ok(verdict(PASS_NOT_IP)),
    };
    let Some(net) = ip.net else {
        return Ok(verdict(PASS_NOT_PROTECTED));
    };
    if ip.oversized {
        return Err(verdict(DROP_TRUNCATED_L3));
    }
    if ip.non_first_fragment {
        return Err(verdict(DROP_FRAGMENT));
    }
    let (protocol, segment) = if ip.is_ipv6 {
        skip_extensions(ip.protocol, ip.payload)?
    } else {
        (ip.protocol, ip.payload)
    };
    let (port, icmp_type) = transport(protocol, segment)?;
    if let (Some(source), Some(icmp_type), proto::ICMPV6) = (ip.source_v6, icmp_type, protocol)
        && is_link_control(icmp_type, ip.hop_limit, source)
    {
        return Ok(verdict(PASS_NEIGHBOR_DISCOVERY));
    }

    let (app, mode) = policy
        .service(net, protocol, port)
        .ok_or(verdict(DROP_NO_SERVICE))?;
    let app_verdict = |reason| Judgement {
        reason,
        monitored: mode == APP_MODE_MONITOR,
    };
    match policy.grants.get(&(ip.source, app)) {
        None => Err(app_verdict(DROP_NO_GRANT)),
        Some(GrantState::Stale | GrantState::StaleAndExpired) => Err(app_verdict(DROP_STALE_EPOCH)),
        Some(GrantState::Expired) => Err(app_verdict(DROP_EXPIRED)),
        Some(GrantState::Live) => Ok(verdict(PASS_GRANT)),
    }
}

fn ipv4<'a>(packet: &'a [u8], policy: &Policy) -> Result<IpInfo<'a>, Judgement> {
    const FIXED_LEN: usize = 20;
    if packet.len() < FIXED_LEN {
        return Err(verdict(DROP_TRUNCATED_L3));
    }
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let header = match Ipv4HeaderSlice::from_slice(packet) {
        Ok(header) => header,
        // Wrong version, or IHL below 5.
        Err(HeaderSliceError::Content(_)) => return Err(verdict(DROP_BAD_L3)),
        // The options run past the frame: a header that also claims to be longer than its datagram
        // is invalid, otherwise it is cut short.
        Err(HeaderSliceError::Len(LenError { required_len, .. })) => {
            return Err(verdict(if total_len < required_len {
                DROP_BAD_L3
            } else {
                DROP_TRUNCATED_L3
            }));
        }
    };
    let header_len = header.slice().len();
    if total_len < header_len {
        return Err(verdict(DROP_BAD_L3));
    }
    // A length the program cannot check against the frame is judged once the destination is known.
    let oversized = total_len > MAX_CHECKED_DATAGRAM_LEN;
    if !oversized && total_len > packet.len() {
        return Err(verdict(DROP_TRUNCATED_L3));
    }
    Ok(IpInfo {
        oversized,
        source: header.source_addr().into(),
        net: policy.net_v4(header.destination_addr()),
        is_ipv6: false,
        source_v6: None,
        hop_limit: header.ttl(),
        non_first_fragment: header.fragments_offset().value() != 0,
        protocol: header.protocol().0,
        payload: &packet[header_len..total_len.min(packet.len())],
    })
}

fn ipv6<'a>(packet: &'a [u8], policy: &Policy) -> Result<IpInfo<'a>, Judgement> {
    let header = Ipv6HeaderSlice::from_slice(packet).map_err(|err| match err {
        etherparse::err::ipv6::HeaderSliceError::Len(_) => verdict(DROP_TRUNCATED_L3),
        etherparse::err::ipv6::HeaderSliceError::Content(_) => verdict(DROP_BAD_L3),
    })?;
    let rest = &packet[header.slice().len()..];
    // RFC 2675: a zero payload length announces a jumbogram, which runs to the end of the frame.
    let oversized = usize::from(header.payload_length()) > MAX_CHECKED_DATAGRAM_LEN;
    let payload = match usize::from(header.payload_length()) {
        0 => rest,
        _ if oversized => rest,
        len if len > rest.len() => return Err(verdict(DROP_TRUNCATED_L3)),
        len => &rest[..len],
    };
    Ok(IpInfo {
        oversized,
        // Not canonicalised: an IPv4-mapped source on the wire is not the IPv4 host.
        source: header.source_addr().into(),
        net: policy.net_v6(header.destination_addr()),
        is_ipv6: true,
        source_v6: Some(header.source_addr()),
        hop_limit: header.hop_limit(),
        non_first_fragment: false,
        protocol: header.next_header().0,
        payload,
    })
}

/// Walks at most six IPv6 extension headers; returns the upper-layer protocol and its bytes.
fn skip_extensions(mut next: u8, mut data: &[u8]) -> Result<(u8, &[u8]), Judgement> {
    const MAX_EXT_HEADERS: usize = 6;
    let is_extension = |next: u8| {
        let number = IpNumber(next);
        Ipv6RawExtHeader::header_type_supported(number)
            || number == IpNumber::IPV6_FRAGMENTATION_HEADER
            || number == IpNumber::AUTHENTICATION_HEADER
    };
    let truncated = |_| verdict(DROP_TRUNCATED_L3);
    for _ in 0..MAX_EXT_HEADERS {
        if !is_extension(next) {
            return Ok((next, data));
        }
        let (following, len) = match IpNumber(next) {
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                let fragment = Ipv6FragmentHeaderSlice::from_slice(data).map_err(truncated)?;
                if fragment.fragment_offset().value() != 0 {
                    return Err(verdict(DROP_FRAGMENT));
                }
                (fragment.next_header().0, fragment.slice().len())
            }
            IpNumber::AUTHENTICATION_HEADER => {
                // RFC 4302: the length counts 4-byte words, minus 2. Read by hand because
                // etherparse (rightly) rejects the length 0 that no AH can have, and the
                // contract only asks that the header lie inside the datagram.
                let (&following, &len_field) = data
                    .first()
                    .zip(data.get(1))
                    .ok_or(verdict(DROP_TRUNCATED_L3))?;
                let len = (usize::from(len_field) + 2) * 4;
                if data.len() < len {
                    return Err(verdict(DROP_TRUNCATED_L3));
                }
                (following, len)
            }
            _ => {
                let ext = Ipv6RawExtHeaderSlice::from_slice(data).map_err(truncated)?;
                (ext.next_header().0, ext.slice().len())
            }
        };
        next = following;
        data = &data[len..];
    }
    if is_extension(next) {
        return Err(verdict(DROP_EXT_HEADERS));
    }
    Ok((next, data))
}

/// The destination port (0 without ports) and the ICMP type of the transport header.
fn transport(protocol: u8, segment: &[u8]) -> Result<(u16, Option<u8>), Judgement> {
    let truncated = |_| verdict(DROP_TRUNCATED_L4);
    match protocol {
        proto::TCP => {
            // The fixed header must be present and its data offset sane; options are not read.
            const TCP_FIXED_LEN: usize = 20;
            if segment.len() < TCP_FIXED_LEN {
                return Err(verdict(DROP_TRUNCATED_L4));
            }
            if segment[12] >> 4 < 5 {
                return Err(verdict(DROP_BAD_L4));
            }
            Ok((u16::from_be_bytes([segment[2], segment[3]]), None))
        }
        proto::UDP => {
            let udp = UdpHeaderSlice::from_slice(segment).map_err(truncated)?;
            Ok((udp.destination_port(), None))
        }
        proto::ICMP => {
            // By hand: etherparse also wants a timestamp message to be exactly 20 bytes, a check
            // the gateway leaves to the destination. The contract is the 8-byte header.
            const ICMP_HDR_LEN: usize = 8;
            if segment.len() < ICMP_HDR_LEN {
                return Err(verdict(DROP_TRUNCATED_L4));
            }
            Ok((0, Some(segment[0])))
        }
        proto::ICMPV6 => {
            let icmp = Icmpv6Slice::from_slice(segment).map_err(truncated)?;
            Ok((0, Some(icmp.type_u8())))
        }
        _ => Ok((0, None)),
    }
}

/// RFC 4861 neighbour discovery (hop limit 255), or RFC 2710/3810 multicast listener discovery
/// from a link-local or unspecified source (hop limit 1).
fn is_link_control(icmp_type: u8, hop_limit: u8, source: Ipv6Addr) -> bool {
    const ROUTER_SOLICITATION: u8 = 133;
    const REDIRECT: u8 = 137;
    const MLD_QUERY: u8 = 130;
    const MLD_DONE: u8 = 132;
    const MLD2_REPORT: u8 = 143;
    match icmp_type {
        ROUTER_SOLICITATION..=REDIRECT => hop_limit == 255,
        MLD_QUERY..=MLD_DONE | MLD2_REPORT => {
            hop_limit == 1 && (source.is_unicast_link_local() || source.is_unspecified())
        }
        _ => false,
    }
}

// --- frame generation ------------------------------------------------------------------------

/// The frame with index `index` of the run with `seed`.
fn generate(seed: u64, index: u64, policy: &Policy) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut frame = random_frame(&mut rng, policy).build();
    if rng.random_bool(0.5) {
        for _ in 0..rng.random_range(1..=3) {
            mutate(&mut rng, &mut frame);
        }
    }
    frame.truncate(MAX_FRAME);
    frame
}

fn random_frame(rng: &mut SmallRng, policy: &Policy) -> Frame {
    let mut frame = Frame::new();
    let tags = *[0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3]
        .choose(rng)
        .expect("non-empty");
    for _ in 0..tags {
        let tpid = *[TPID_8021Q, TPID_8021AD, TPID_QINQ]
            .choose(rng)
            .expect("non-empty");
        frame = frame.vlan(tpid, rng.random_range(0..4096));
    }
    let is_ipv6 = rng.random_bool(0.5);
    frame = match rng.random_range(0..100) {
        0..=3 => Frame::arp_request(
            Ipv4Addr::from(rng.next_u32()),
            Ipv4Addr::from(rng.next_u32()),
        ),
        4..=6 => frame.ether_type(rng.random()),
        _ if is_ipv6 => frame.ipv6(random_ipv6(rng, policy)),
        _ => frame.ipv4(random_ipv4(rng, policy)),
    };
    let icmp_for_family = |rng: &mut SmallRng, frame: Frame| {
        if is_ipv6 {
            let icmp_type = *[128, 129, 1, 130, 131, 132, 133, 134, 135, 136, 137, 143]
                .choose(rng)
                .expect("non-empty");
            frame.icmpv6(Icmp::new(icmp_type, 0))
        } else {
            let icmp_type = *[8, 0, 3, 11].choose(rng).expect("non-empty");
            frame.icmp(Icmp::new(icmp_type, 0))
        }
    };
    frame = match rng.random_range(0..100) {
        0..=39 => frame.tcp(random_tcp(rng)),
        40..=64 => frame.udp(Udp::new(rng.random(), random_port(rng))),
        65..=84 => icmp_for_family(rng, frame),
        // ICMP of the other family: an IPv4 packet dressed as neighbour discovery must not pass.
        85..=89 => {
            let icmp_type = rng.random_range(128..=143);
            if is_ipv6 {
                frame.icmp(Icmp::new(icmp_type, 0))
            } else {
                frame.icmpv6(Icmp::new(icmp_type, 0))
            }
        }
        _ => frame,
    };
    let payload_len = if rng.random_bool(0.1) {
        rng.random_range(0..600)
    } else {
        rng.random_range(0..48)
    };
    let mut payload = vec![0; payload_len];
    rng.fill_bytes(&mut payload);
    frame = frame.payload(&payload);
    if rng.random_bool(0.05) {
        frame = frame.cut_transport(rng.random_range(0..24));
    }
    if rng.random_bool(0.3) {
        frame = frame.pad_to(ETH_MIN_LEN);
    }
    frame
}

fn random_ipv4(rng: &mut SmallRng, policy: &Policy) -> Ipv4 {
    let src = if rng.random_bool(0.9) {
        *policy.sources_v4.choose(rng).expect("non-empty")
    } else {
        Ipv4Addr::from(rng.next_u32())
    };
    let dst = if rng.random_bool(0.8) {
        let (prefix, len, _) = *policy.v4.choose(rng).expect("non-empty");
        let host_bits = if len == 32 { 0 } else { rng.next_u32() >> len };
        Ipv4Addr::from(u32::from(prefix) | host_bits)
    } else {
        Ipv4Addr::from(rng.next_u32())
    };
    let mut ipv4 = Ipv4::new(src, dst).ttl(random_hop_limit(rng));
    if rng.random_bool(0.15) {
        let mut options = vec![0; rng.random_range(1..=40)];
        rng.fill_bytes(&mut options);
        ipv4 = ipv4.options(&options);
    }
    match rng.random_range(0..100) {
        0..=7 => ipv4 = ipv4.fragment(0, true),
        8..=15 => ipv4 = ipv4.fragment(rng.random_range(1..0x2000), rng.random()),
        _ => {}
    }
    if rng.random_bool(0.05) {
        ipv4 = ipv4.protocol(random_protocol(rng));
    }
    if rng.random_bool(0.05) {
        ipv4 = ipv4.total_len(random_length(rng));
    }
    if rng.random_bool(0.03) {
        ipv4 = ipv4.ihl(rng.random_range(0..16));
    }
    ipv4
}

fn random_ipv6(rng: &mut SmallRng, policy: &Policy) -> Ipv6 {
    let src = if rng.random_bool(0.9) {
        *policy.sources_v6.choose(rng).expect("non-empty")
    } else {
        Ipv6Addr::from(rng.random::<u128>())
    };
    let dst = if rng.random_bool(0.8) {
        let (prefix, len, _) = *policy.v6.choose(rng).expect("non-empty");
        Ipv6Addr::from(u128::from(prefix) | (rng.random::<u128>() >> len))
    } else {
        Ipv6Addr::from(rng.random::<u128>())
    };
    let mut ipv6 = Ipv6::new(src, dst).hop_limit(random_hop_limit(rng));
    if rng.random_bool(0.35) {
        for _ in 0..rng.random_range(1..=8) {
            let ext = match rng.random_range(0..100) {
                0..=19 => Ext::hop_by_hop(),
                20..=39 => Ext::destination_options(),
                40..=49 => Ext::routing(),
                50..=64 => Ext::fragment(0, true, rng.random()),
                65..=72 => Ext::fragment(rng.random_range(1..0x2000), rng.random(), rng.random()),
                73..=84 => Ext::auth(rng.random_range(0..4)),
                _ => Ext::raw(
                    *[135, 139, 140].choose(rng).expect("non-empty"),
                    rng.random_range(0..3),
                ),
            };
            ipv6 = ipv6.ext(ext);
        }
    }
    if rng.random_bool(0.05) {
        ipv6 = ipv6.next_header(random_protocol(rng));
    }
    if rng.random_bool(0.05) {
        ipv6 = ipv6.payload_len(random_length(rng));
    }
    ipv6
}

fn random_tcp(rng: &mut SmallRng) -> Tcp {
    let mut tcp = Tcp::new(rng.random(), random_port(rng)).flags(rng.random());
    if rng.random_bool(0.1) {
        let mut options = vec![0; rng.random_range(1..=40)];
        rng.fill_bytes(&mut options);
        tcp = tcp.options(&options);
    }
    if rng.random_bool(0.05) {
        tcp = tcp.data_offset(rng.random_range(0..16));
    }
    tcp
}

/// Mostly ports that some service names.
fn random_port(rng: &mut SmallRng) -> u16 {
    if rng.random_bool(0.7) {
        *[22, 443, 53, 80, 500, 8443, 0, 1, 65535]
            .choose(rng)
            .expect("non-empty")
    } else {
        rng.random()
    }
}

fn random_hop_limit(rng: &mut SmallRng) -> u8 {
    *[1, 64, 255, rng.random()].choose(rng).expect("non-empty")
}

fn random_protocol(rng: &mut SmallRng) -> u8 {
    *[
        0,
        proto::ICMP,
        proto::TCP,
        proto::UDP,
        proto::ROUTING,
        proto::FRAGMENT,
        47,
        50,
        proto::AUTH,
        proto::ICMPV6,
        proto::NO_NEXT_HEADER,
        proto::DEST_OPTS,
        rng.random(),
    ]
    .choose(rng)
    .expect("non-empty")
}

/// A length field that is often almost right.
fn random_length(rng: &mut SmallRng) -> u16 {
    match rng.random_range(0..4) {
        0 => rng.random(),
        1 => rng.random_range(0..64),
        _ => rng.random_range(0..200),
    }
}

/// One byte-level change: the kinds of damage a frame suffers on the wire or at an attacker's hands.
fn mutate(rng: &mut SmallRng, frame: &mut Vec<u8>) {
    const INTERESTING: [u8; 16] = [
        0, 1, 4, 5, 6, 17, 44, 58, 0x45, 0x60, 0x7f, 0x80, 0x81, 0x88, 0xfe, 0xff,
    ];
    // Most headers live in the first 100 bytes.
    let header_position = |rng: &mut SmallRng, len: usize| rng.random_range(0..len.clamp(1, 100));
    if frame.is_empty() {
        return;
    }
    match rng.random_range(0..100) {
        0..=24 => {
            let at = header_position(rng, frame.len());
            frame[at] ^= 1 << rng.random_range(0..8);
        }
        25..=44 => {
            let at = header_position(rng, frame.len());
            frame[at] = *INTERESTING.choose(rng).expect("non-empty");
        }
        45..=54 => {
            let at = header_position(rng, frame.len());
            frame[at] = rng.random();
        }
        55..=69 => {
            let len = rng.random_range(0..=frame.len());
            frame.truncate(len);
        }
        70..=77 => {
            let mut tail = vec![0; rng.random_range(1..64)];
            rng.fill_bytes(&mut tail);
            frame.extend_from_slice(&tail);
        }
        78..=85 if frame.len() >= 12 => {
            // Push a VLAN tag in front of whatever the frame carried.
            let tpid = *[TPID_8021Q, TPID_8021AD, TPID_QINQ]
                .choose(rng)
                .expect("non-empty");
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend_from_slice(&rng.random::<u16>().to_be_bytes());
            frame.splice(12..12, tag);
        }
        86..=91 if frame.len() >= 18 => {
            // Pop four bytes after the MAC addresses (an untag, or a misaligned frame).
            frame.drain(12..16);
        }
        _ => {
            if frame.len() >= 2 {
                let at = rng.random_range(0..frame.len() - 1);
                frame[at..at + 2].copy_from_slice(&rng.random::<u16>().to_be_bytes());
            }
        }
    }
}

// --- the run ---------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")))
}

/// A seed from the operating system's randomness (the keys std draws for every `RandomState`).
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    /// Frames the kernel ran the program on.
    sent: u64,
    /// Frames `BPF_PROG_TEST_RUN` refused (shorter than an Ethernet header).
    refused: u64,
    /// The reference's count per `STATS` slot.
    expected: Vec<u64>,
    failures: Vec<String>,
}

const MAX_REPORTED_FAILURES: usize = 20;

fn run_range(
    dataplane: &Dataplane,
    policy: &Policy,
    seed: u64,
    range: Range<u64>,
    stop: &AtomicBool,
) -> Tally {
    let mut tally = Tally {
        expected: vec![0; STATS_LEN as usize],
        ..Tally::default()
    };
    for index in range {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let frame = generate(seed, index, policy);
        let judgement = judge(&frame, policy);
        let action = match dataplane.test_run(&frame, 1) {
            Ok((action, _)) => action,
            Err(_) if frame.len() < MIN_FRAME => {
                tally.refused += 1;
                continue;
            }
            Err(e) => panic!(
                "test_run failed on frame {index} ({} bytes): {e}",
                frame.len()
            ),
        };
        tally.sent += 1;
        tally.expected[judgement.slot()] += 1;
        let failure = if action == XDP_PASS && judgement.action() == XDP_DROP {
            Some("INVARIANT BROKEN: the kernel passed a frame the reference cannot justify")
        } else if action == XDP_DROP && judgement.action() == XDP_PASS {
            Some("the kernel dropped a frame the reference passes")
        } else if action != XDP_PASS && action != XDP_DROP {
            Some("the kernel returned an action other than XDP_PASS or XDP_DROP")
        } else {
            None
        };
        if let Some(what) = failure {
            tally.failures.push(format!(
                "{what}\n    seed {seed:#x} frame {index}: kernel action {action}, reference {} \
                 ({}{})\n    frame ({} bytes): {}",
                judgement.action(),
                if judgement.monitored {
                    "monitored "
                } else {
                    ""
                },
                reason_name(judgement.reason),
                frame.len(),
                hex(&frame)
            ));
            if tally.failures.len() >= MAX_REPORTED_FAILURES {
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
    tally
}

/// After the per-reason counts disagreed: replays the frames in chunks, then frame by frame inside
/// each chunk whose counts differ, and names the frames whose kernel slot differs from the
/// reference's.
fn find_slot_mismatches(
    dataplane: &Dataplane,
    policy: &Policy,
    seed: u64,
    packets: u64,
) -> Vec<String> {
    const CHUNK: u64 = 4096;
    // The kernel's and the reference's slot counts for frames `range`, one test_run per frame.
    let replay = |range: Range<u64>| {
        let mut expected = vec![0u64; STATS_LEN as usize];
        let before = dataplane.stats().expect("stats");
        for index in range {
            let frame = generate(seed, index, policy);
            if frame.len() >= MIN_FRAME {
                expected[judge(&frame, policy).slot()] += 1;
                dataplane.test_run(&frame, 1).expect("test_run");
            }
        }
        let after = dataplane.stats().expect("stats");
        let kernel: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        (kernel, expected)
    };
    let mut found = Vec::new();
    for chunk in (0..packets).step_by(CHUNK as usize) {
        let (kernel, expected) = replay(chunk..(chunk + CHUNK).min(packets));
        if kernel == expected {
            continue;
        }
        for index in chunk..(chunk + CHUNK).min(packets) {
            let (kernel, expected) = replay(index..index + 1);
            if kernel != expected {
                let slot_of = |counts: &[u64]| counts.iter().position(|n| *n != 0).map(slot_label);
                found.push(format!(
                    "seed {seed:#x} frame {index}: kernel counted {:?}, reference {:?}\n    \
                     frame: {}",
                    slot_of(&kernel),
                    slot_of(&expected),
                    hex(&generate(seed, index, policy))
                ));
                if found.len() >= MAX_REPORTED_FAILURES {
                    return found;
                }
            }
        }
    }
    found
}

fn slot_label(slot: usize) -> String {
    let slot = slot as u32;
    if slot >= WOULD_DROP_BASE {
        format!("would_{}", reason_name(slot - WOULD_DROP_BASE))
    } else {
        reason_name(slot).to_owned()
    }
}

#[test]
fn no_frame_passes_without_a_live_grant() {
    require_root!("BPF_PROG_TEST_RUN on the XDP program");
    let seed = env_u64("ZTNA_PROPTEST_SEED").unwrap_or_else(fresh_seed);
    let packets = env_u64("ZTNA_PROPTEST_PACKETS").unwrap_or(DEFAULT_PACKETS);
    eprintln!(
        "property: seed {seed:#x}, {packets} frames (replay with ZTNA_PROPTEST_SEED={seed:#x})"
    );

    let policy = Policy::new();
    let mut dataplane = Dataplane::load(&LoadOptions::default()).expect("load the XDP program");
    policy.install(&mut dataplane);
    let dataplane = dataplane;
    let before = dataplane.stats().expect("stats");

    // One worker per CPU: BPF_PROG_TEST_RUN runs on the caller's CPU and STATS is per CPU.
    let workers = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let tallies: Vec<Tally> = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let range = packets * worker / workers..packets * (worker + 1) / workers;
                let (dataplane, policy, stop) = (&dataplane, &policy, &stop);
                scope.spawn(move || run_range(dataplane, policy, seed, range, stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let elapsed = started.elapsed();

    let after = dataplane.stats().expect("stats");
    let kernel: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let mut expected = vec![0; STATS_LEN as usize];
    let (mut sent, mut refused) = (0, 0);
    let mut failures = Vec::new();
    for tally in tallies {
        sent += tally.sent;
        refused += tally.refused;
        for (total, n) in expected.iter_mut().zip(&tally.expected) {
            *total += n;
        }
        failures.extend(tally.failures);
    }
    eprintln!(
        "property: {sent} frames through the program, {refused} refused by test_run (< {MIN_FRAME} \
         bytes), {workers} workers, {:.2?} ({:.2} µs per frame)",
        elapsed,
        elapsed.as_secs_f64() * 1e6 / (sent + refused).max(1) as f64
    );
    for slot in (0..STATS_LEN as usize).filter(|&s| kernel[s] != 0 || expected[s] != 0) {
        eprintln!(
            "    {:<28} kernel {:>9}  reference {:>9}",
            slot_label(slot),
            kernel[slot],
            expected[slot]
        );
    }

    assert!(
        failures.is_empty(),
        "{} frame(s) judged differently (first {MAX_REPORTED_FAILURES} shown):\n{}",
        failures.len(),
        failures.join("\n")
    );
    let counted: u64 = (0..REASON_COUNT)
        .flat_map(|reason| [reason as usize, (WOULD_DROP_BASE + reason) as usize])
        .map(|slot| kernel[slot])
        .sum();
    assert_eq!(
        counted, sent,
        "per-reason STATS must sum to the frames sent"
    );
    if kernel != expected {
        let mismatches = find_slot_mismatches(&dataplane, &policy, seed, packets);
        panic!(
            "the kernel's per-reason counts differ from the reference's:\n{}",
            mismatches.join("\n")
        );
    }
    // The run must have exercised every reason, or the generators have drifted.
    for reason in 0..REASON_COUNT {
        assert!(
            packets < 100_000 || kernel[reason as usize] > 0,
            "no frame ended in {}: the generators no longer reach it",
            reason_name(reason)
        );
    }
}
