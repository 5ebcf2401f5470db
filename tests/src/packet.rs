//! Hand-built Ethernet frames for the kernel tests and the benchmark.
//!
//! A [`Frame`] is described layer by layer and serialised by [`Frame::build`]. Every length,
//! next-header field and checksum is derived from the layers unless a test overrides it, so a test
//! names only what it is about:
//!
//! ```
//! use std::net::Ipv4Addr;
//!
//! use ztna_tests::packet::{Frame, Ipv4, TPID_8021AD, TPID_8021Q, Tcp};
//!
//! let src = Ipv4Addr::new(192, 0, 2, 10);
//! let dst = Ipv4Addr::new(10, 1, 0, 5);
//! // QinQ-tagged TCP SYN to port 22 whose IPv4 header claims a 4-byte header (IHL 1).
//! let frame = Frame::new()
//!     .vlan(TPID_8021AD, 100)
//!     .vlan(TPID_8021Q, 200)
//!     .ipv4(Ipv4::new(src, dst).ihl(1))
//!     .tcp(Tcp::new(40_000, 22))
//!     .build();
//! assert_eq!(frame.len(), 14 + 8 + 20 + 20);
//! ```
//!
//! Checksums (IPv4 header, TCP, UDP, ICMP, ICMPv6) are computed so that frames are realistic when
//! they are injected into a real interface; the XDP program itself never checks them.

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Local experimental EtherType (IEEE 802): the type of a frame without a network layer.
pub const ETH_P_EXPERIMENTAL: u16 = 0x88b5;
/// 802.1Q customer VLAN tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service VLAN tag (the outer tag of QinQ).
pub const TPID_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag.
pub const TPID_QINQ: u16 = 0x9100;

/// IP protocol / IPv6 next-header numbers used by the builder.
pub mod proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
    /// RFC 3692 experimental protocol: the protocol of an IP packet without a transport layer.
    pub const EXPERIMENTAL: u8 = 253;
}

/// Ethernet frame length without the FCS below which senders pad.
pub const ETH_MIN_LEN: usize = 60;

const ETH_HDR_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const ICMP_HDR_LEN: usize = 8;

/// One VLAN tag: its TPID (the EtherType that announces it) and its tag control information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vlan {
    pub tpid: u16,
    pub tci: u16,
}

/// An Ethernet frame, built from the outside in.
#[derive(Clone, Debug)]
pub struct Frame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlans: Vec<Vlan>,
    ether_type: Option<u16>,
    network: Network,
    transport: Transport,
    payload: Vec<u8>,
    cut_transport: Option<usize>,
    pad_to: usize,
    truncate: Option<usize>,
}

#[derive(Clone, Debug)]
enum Network {
    None,
    Ipv4(Ipv4),
    Ipv6(Ipv6),
}

#[derive(Clone, Debug)]
enum Transport {
    None,
    Tcp(Tcp),
    Udp(Udp),
    Icmp(Icmp),
    Icmpv6(Icmp),
}

impl Transport {
    fn proto(&self) -> u8 {
        match self {
            Self::None => proto::EXPERIMENTAL,
            Self::Tcp(_) => proto::TCP,
            Self::Udp(_) => proto::UDP,
            Self::Icmp(_) => proto::ICMP,
            Self::Icmpv6(_) => proto::ICMPV6,
        }
    }

    /// The header with a zero checksum, and where the checksum goes.
    fn header(&self, segment_len: usize) -> (Vec<u8>, Option<usize>) {
        match self {
            Self::None => (Vec::new(), None),
            Self::Tcp(tcp) => (tcp.header(), Some(16)),
            Self::Udp(udp) => (udp.header(segment_len), Some(6)),
            Self::Icmp(icmp) | Self::Icmpv6(icmp) => (icmp.header(), Some(2)),
        }
    }

    fn header_len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Tcp(tcp) => TCP_HDR_LEN + tcp.options.len(),
            Self::Udp(_) => UDP_HDR_LEN,
            Self::Icmp(icmp) | Self::Icmpv6(icmp) => ICMP_HDR_LEN + icmp.body.len(),
        }
    }
}

/// Where each layer starts in a built frame (before any truncation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The IP header (or whatever follows the Ethernet header and VLAN tags).
    pub l3_offset: usize,
    /// The transport header: after the IPv4 options or the IPv6 extension headers.
    pub l4_offset: usize,
    /// The payload after the transport header.
    pub payload_offset: usize,
}

impl Default for Frame {
    fn default() -> Self {
        Self::new()
    }
}

impl Frame {
    /// An Ethernet frame between two locally administered MAC addresses, with nothing in it yet.
    pub fn new() -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlans: Vec::new(),
            ether_type: None,
            network: Network::None,
            transport: Transport::None,
            payload: Vec::new(),
            cut_transport: None,
            pad_to: 0,
            truncate: None,
        }
    }

    /// A broadcast ARP request: who has `target`? tell `sender`.
    pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Self {
        let mut arp = Vec::with_capacity(28);
        arp.extend_from_slice(&[0, 1]); // hardware type: Ethernet
        arp.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        arp.extend_from_slice(&[6, 4, 0, 1]); // address lengths, operation: request
        let frame = Self::new();
        arp.extend_from_slice(&frame.src_mac);
        arp.extend_from_slice(&sender.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&target.octets());
        Self {
            dst_mac: [0xff; 6],
            ..frame
        }
        .ether_type(ETH_P_ARP)
        .payload(&arp)
    }

    pub fn dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    pub fn src_mac(mut self, mac: [u8; 6]) -> Self {
        self.src_mac = mac;
        self
    }

    /// Appends a VLAN tag inside the ones already added (the first call adds the outermost tag).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push(Vlan {
            tpid,
            tci: vid & 0x0fff,
        });
        self
    }

    /// Overrides the EtherType after the last VLAN tag (otherwise derived from the network layer).
    pub fn ether_type(mut self, ether_type: u16) -> Self {
        self.ether_type = Some(ether_type);
        self
    }

    pub fn ipv4(mut self, ipv4: Ipv4) -> Self {
        self.network = Network::Ipv4(ipv4);
        self
    }

    pub fn ipv6(mut self, ipv6: Ipv6) -> Self {
        self.network = Network::Ipv6(ipv6);
        self
    }

    pub fn tcp(mut self, tcp: Tcp) -> Self {
        self.transport = Transport::Tcp(tcp);
        self
    }

    pub fn udp(mut self, udp: Udp) -> Self {
        self.transport = Transport::Udp(udp);
        self
    }

    /// An ICMP (IPv4) message; see [`Icmp::echo_request`].
    pub fn icmp(mut self, icmp: Icmp) -> Self {
        self.transport = Transport::Icmp(icmp);
        self
    }

    /// An ICMPv6 message; see [`Icmp::echo_request_v6`] and [`Icmp::neighbor_solicitation`].
    pub fn icmpv6(mut self, icmp: Icmp) -> Self {
        self.transport = Transport::Icmpv6(icmp);
        self
    }

    /// Bytes after the transport header (or after the IP header or L2 header, when those are the
    /// last layer).
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Keeps only the first `len` bytes of the transport header and payload, and makes the IP
    /// lengths describe the short datagram: a header cut short by its sender. Compare
    /// [`Frame::truncate`], which cuts the frame after every length was written.
    pub fn cut_transport(mut self, len: usize) -> Self {
        self.cut_transport = Some(len);
        self
    }

    /// Pads the frame with zeros to at least `len` bytes, as Ethernet senders pad to
    /// [`ETH_MIN_LEN`]. The padding is not counted in IP lengths.
    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    /// Cuts the built frame after `len` bytes (after padding; lengths in headers are not changed).
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    /// Where each layer starts.
    pub fn layout(&self) -> Layout {
        let l3_offset = ETH_HDR_LEN + VLAN_TAG_LEN * self.vlans.len();
        let l3_len = match &self.network {
            Network::None => 0,
            Network::Ipv4(ipv4) => ipv4.header_len(),
            Network::Ipv6(ipv6) => IPV6_HDR_LEN + ipv6.extensions_len(),
        };
        let l4_offset = l3_offset + l3_len;
        Layout {
            l3_offset,
            l4_offset,
            payload_offset: l4_offset + self.transport.header_len(),
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut segment = self.segment();
        // Checksums cover the whole segment, as its sender computed them before the cut.
        match &self.network {
            Network::None => {
                if let Some(offset) = self.transport.header(segment.len()).1 {
                    let sum = checksum(&[&segment]);
                    segment[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
                }
            }
            Network::Ipv4(ipv4) => ipv4.fill_checksum(&self.transport, &mut segment),
            Network::Ipv6(ipv6) => ipv6.fill_checksum(&self.transport, &mut segment),
        }
        if let Some(len) = self.cut_transport {
            segment.truncate(len);
        }
        let packet = match &self.network {
            Network::None => segment,
            Network::Ipv4(ipv4) => ipv4.packet(self.transport.proto(), &segment),
            Network::Ipv6(ipv6) => ipv6.packet(self.transport.proto(), &segment),
        };

        let ether_type = self.ether_type.unwrap_or(match self.network {
            Network::None => ETH_P_EXPERIMENTAL,
            Network::Ipv4(_) => ETH_P_IPV4,
            Network::Ipv6(_) => ETH_P_IPV6,
        });
        let mut frame = Vec::with_capacity(self.layout().l3_offset + packet.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        // Each tag's TPID sits where an EtherType would; the last EtherType names the payload.
        for vlan in &self.vlans {
            frame.extend_from_slice(&vlan.tpid.to_be_bytes());
            frame.extend_from_slice(&vlan.tci.to_be_bytes());
        }
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(&packet);
        if frame.len() < self.pad_to {
            frame.resize(self.pad_to, 0);
        }
        if let Some(len) = self.truncate {
            frame.truncate(len);
        }
        frame
    }

    /// The transport header (checksum zero) followed by the payload.
    fn segment(&self) -> Vec<u8> {
        let segment_len = self.transport.header_len() + self.payload.len();
        let (mut segment, _) = self.transport.header(segment_len);
        segment.extend_from_slice(&self.payload);
        segment
    }
}

/// An IPv4 header. Total length, protocol and checksum are derived unless overridden.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    version: u8,
    ihl: Option<u8>,
    tos: u8,
    total_len: Option<u16>,
    identification: u16,
    dont_fragment: bool,
    more_fragments: bool,
    fragment_offset: u16,
    ttl: u8,
    protocol: Option<u8>,
    options: Vec<u8>,
}

impl Ipv4 {
    /// A 20-byte header from `src` to `dst` with TTL 64.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            version: 4,
            ihl: None,
            tos: 0,
            total_len: None,
            identification: 0,
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
            ttl: 64,
            protocol: None,
            options: Vec::new(),
        }
    }

    /// Overrides the version nibble.
    pub fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    /// Overrides the header length field (in 4-byte words); the bytes written are still the
    /// 20-byte header plus the options.
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }

    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// Overrides the total length field.
    pub fn total_len(mut self, total_len: u16) -> Self {
        self.total_len = Some(total_len);
        self
    }

    pub fn identification(mut self, identification: u16) -> Self {
        self.identification = identification;
        self
    }

    pub fn dont_fragment(mut self) -> Self {
        self.dont_fragment = true;
        self
    }

    /// A fragment at `offset` 8-byte units into the datagram; `more` sets the MF flag. The first
    /// fragment is `fragment(0, true)`.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.fragment_offset = offset & 0x1fff;
        self.more_fragments = more;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Overrides the protocol field (otherwise the transport layer's).
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Header options, padded with end-of-option-list bytes to a multiple of 4.
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self.options.resize(options.len().next_multiple_of(4), 0);
        self
    }

    fn header_len(&self) -> usize {
        IPV4_HDR_LEN + self.options.len()
    }

    fn fill_checksum(&self, transport: &Transport, segment: &mut [u8]) {
        let proto = transport.proto();
        if let Some(offset) = transport.header(segment.len()).1 {
            let sum = if proto == proto::ICMP {
                checksum(&[segment])
            } else {
                let pseudo = pseudo_header_v4(self.src, self.dst, proto, segment.len());
                checksum(&[&pseudo, segment])
            };
            segment[offset..offset + 2].copy_from_slice(&udp_checksum(proto, sum).to_be_bytes());
        }
    }

    fn packet(&self, proto: u8, segment: &[u8]) -> Vec<u8> {
        let header_len = self.header_len();
        let ihl = self.ihl.unwrap_or((header_len / 4) as u8);
        let total_len = self
            .total_len
            .unwrap_or((header_len + segment.len()) as u16);
        let flags_fragment = (u16::from(self.dont_fragment) << 14)
            | (u16::from(self.more_fragments) << 13)
            | self.fragment_offset;
        let mut packet = Vec::with_capacity(header_len + segment.len());
        packet.push((self.version << 4) | (ihl & 0x0f));
        packet.push(self.tos);
        packet.extend_from_slice(&total_len.to_be_bytes());
        packet.extend_from_slice(&self.identification.to_be_bytes());
        packet.extend_from_slice(&flags_fragment.to_be_bytes());
        packet.push(self.ttl);
        packet.push(self.protocol.unwrap_or(proto));
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(&self.options);
        let sum = checksum(&[&packet]);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
        packet.extend_from_slice(segment);
        packet
    }
}

/// An IPv6 header and its extension headers. Payload length and next-header fields are derived
/// unless overridden.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    version: u8,
    traffic_class: u8,
    flow_label: u32,
    payload_len: Option<u16>,
    next_header: Option<u8>,
    hop_limit: u8,
    extensions: Vec<Ext>,
}

impl Ipv6 {
    /// A header from `src` to `dst` with hop limit 64 and no extension headers.
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self {
            src,
            dst,
            version: 6,
            traffic_class: 0,
            flow_label: 0,
            payload_len: None,
            next_header: None,
            hop_limit: 64,
            extensions: Vec::new(),
        }
    }

    /// Overrides the version nibble.
    pub fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    pub fn traffic_class(mut self, traffic_class: u8) -> Self {
        self.traffic_class = traffic_class;
        self
    }

    pub fn flow_label(mut self, flow_label: u32) -> Self {
        self.flow_label = flow_label & 0x000f_ffff;
        self
    }

    /// Overrides the payload length field (0 announces a jumbogram).
    pub fn payload_len(mut self, payload_len: u16) -> Self {
        self.payload_len = Some(payload_len);
        self
    }

    /// Overrides the fixed header's next-header field (otherwise the first extension header's
    /// kind, or the transport layer's protocol).
    pub fn next_header(mut self, next_header: u8) -> Self {
        self.next_header = Some(next_header);
        self
    }

    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    /// Appends an extension header after the ones already added.
    pub fn ext(mut self, ext: Ext) -> Self {
        self.extensions.push(ext);
        self
    }

    fn extensions_len(&self) -> usize {
        self.extensions.iter().map(Ext::len).sum()
    }

    fn fill_checksum(&self, transport: &Transport, segment: &mut [u8]) {
        let proto = transport.proto();
        if let Some(offset) = transport.header(segment.len()).1 {
            let pseudo = pseudo_header_v6(self.src, self.dst, proto, segment.len());
            let sum = checksum(&[&pseudo, segment]);
            segment[offset..offset + 2].copy_from_slice(&udp_checksum(proto, sum).to_be_bytes());
        }
    }

    fn packet(&self, proto: u8, segment: &[u8]) -> Vec<u8> {
        let mut chain = Vec::with_capacity(self.extensions_len());
        let kinds = self.extensions.iter().map(|ext| ext.kind);
        let mut next_kinds = kinds.clone().skip(1).chain(std::iter::once(proto));
        for ext in &self.extensions {
            ext.write(next_kinds.next().unwrap_or(proto), &mut chain);
        }
        let first = kinds.chain(std::iter::once(proto)).next().unwrap_or(proto);
        let payload_len = self
            .payload_len
            .unwrap_or((chain.len() + segment.len()) as u16);
        let version_class_flow = (u32::from(self.version) << 28)
            | (u32::from(self.traffic_class) << 20)
            | self.flow_label;

        let mut packet = Vec::with_capacity(IPV6_HDR_LEN + chain.len() + segment.len());
        packet.extend_from_slice(&version_class_flow.to_be_bytes());
        packet.extend_from_slice(&payload_len.to_be_bytes());
        packet.push(self.next_header.unwrap_or(first));
        packet.push(self.hop_limit);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(&chain);
        packet.extend_from_slice(segment);
        packet
    }
}

/// An IPv6 extension header. Its next-header field is filled in by the chain it is part of.
#[derive(Clone, Debug)]
pub struct Ext {
    kind: u8,
    /// Everything after the next-header byte and the length byte.
    body: Vec<u8>,
    len_field: Option<u8>,
}

impl Ext {
    /// An 8-byte hop-by-hop options header holding one PadN option.
    pub fn hop_by_hop() -> Self {
        Self::options_header(proto::HOP_BY_HOP, &[])
    }

    /// A hop-by-hop header with a router alert option (RFC 2711, value 0: MLD), as every MLD
    /// message carries.
    pub fn hop_by_hop_router_alert() -> Self {
        Self::options_header(proto::HOP_BY_HOP, &[5, 2, 0, 0])
    }

    /// An 8-byte destination options header holding one PadN option.
    pub fn destination_options() -> Self {
        Self::options_header(proto::DEST_OPTS, &[])
    }

    /// An 8-byte routing header (type 0, no segments left: ignored by every receiver).
    pub fn routing() -> Self {
        Self::raw(proto::ROUTING, 0)
    }

    /// A fragment header: `offset` in 8-byte units, `more` for the M flag. The first fragment is
    /// `fragment(0, true, id)`.
    pub fn fragment(offset: u16, more: bool, identification: u32) -> Self {
        let offset_flags = ((offset & 0x1fff) << 3) | u16::from(more);
        let mut body = offset_flags.to_be_bytes().to_vec();
        body.extend_from_slice(&identification.to_be_bytes());
        Self {
            kind: proto::FRAGMENT,
            body,
            len_field: None,
        }
    }

    /// An authentication header (RFC 4302) with `icv_words` 4-byte words of integrity check value;
    /// its length field counts 4-byte words, unlike every other extension header.
    pub fn auth(icv_words: u8) -> Self {
        let mut body = vec![0, 0]; // reserved
        body.extend_from_slice(&0x1000u32.to_be_bytes()); // SPI
        body.extend_from_slice(&1u32.to_be_bytes()); // sequence number
        body.resize(body.len() + 4 * usize::from(icv_words), 0xab);
        Self {
            kind: proto::AUTH,
            body,
            len_field: None,
        }
    }

    /// Any extension header of `kind` with the generic layout: `(len_units + 1) * 8` bytes.
    pub fn raw(kind: u8, len_units: u8) -> Self {
        Self {
            kind,
            body: vec![0; (usize::from(len_units) + 1) * 8 - 2],
            len_field: None,
        }
    }

    /// Overrides the length byte (the bytes written do not change).
    pub fn len_field(mut self, len_field: u8) -> Self {
        self.len_field = Some(len_field);
        self
    }

    /// The extension header's kind (its next-header number).
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// Bytes this header occupies.
    pub fn len(&self) -> usize {
        2 + self.body.len()
    }

    /// Never empty: an extension header holds at least its next-header and length bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn options_header(kind: u8, options: &[u8]) -> Self {
        let mut body = options.to_vec();
        // Pad with a PadN option (or Pad1 when one byte is missing) to a multiple of 8 in all.
        let missing = (2 + body.len()).next_multiple_of(8) - (2 + body.len());
        let missing = if missing == 0 { 8 } else { missing };
        match missing {
            1 => body.push(0),
            n => {
                body.push(1);
                body.push((n - 2) as u8);
                body.resize(body.len() + n - 2, 0);
            }
        }
        Self {
            kind,
            body,
            len_field: None,
        }
    }

    fn write(&self, next: u8, out: &mut Vec<u8>) {
        let len_field = self.len_field.unwrap_or(match self.kind {
            proto::FRAGMENT => 0,
            proto::AUTH => (self.len() / 4).saturating_sub(2) as u8,
            _ => (self.len() / 8).saturating_sub(1) as u8,
        });
        out.push(next);
        out.push(len_field);
        out.extend_from_slice(&self.body);
    }
}

/// A TCP header (a SYN unless told otherwise).
#[derive(Clone, Debug)]
pub struct Tcp {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    data_offset: Option<u8>,
    flags: u8,
    window: u16,
    options: Vec<u8>,
}

impl Tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn new(sport: u16, dport: u16) -> Self {
        Self {
            sport,
            dport,
            seq: 1,
            ack: 0,
            data_offset: None,
            flags: Self::SYN,
            window: 64_240,
            options: Vec::new(),
        }
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    pub fn window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }

    /// Header options, padded with end-of-option-list bytes to a multiple of 4.
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self.options.resize(options.len().next_multiple_of(4), 0);
        self
    }

    /// Overrides the data offset nibble (header length in 4-byte words).
    pub fn data_offset(mut self, data_offset: u8) -> Self {
        self.data_offset = Some(data_offset);
        self
    }

    fn header(&self) -> Vec<u8> {
        let len = TCP_HDR_LEN + self.options.len();
        let data_offset = self.data_offset.unwrap_or((len / 4) as u8);
        let mut header = Vec::with_capacity(len);
        header.extend_from_slice(&self.sport.to_be_bytes());
        header.extend_from_slice(&self.dport.to_be_bytes());
        header.extend_from_slice(&self.seq.to_be_bytes());
        header.extend_from_slice(&self.ack.to_be_bytes());
        header.push(data_offset << 4);
        header.push(self.flags);
        header.extend_from_slice(&self.window.to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        header.extend_from_slice(&self.options);
        header
    }
}

/// A UDP header. Its length field covers header and payload unless overridden.
#[derive(Clone, Debug)]
pub struct Udp {
    sport: u16,
    dport: u16,
    length: Option<u16>,
}

impl Udp {
    pub fn new(sport: u16, dport: u16) -> Self {
        Self {
            sport,
            dport,
            length: None,
        }
    }

    /// Overrides the length field.
    pub fn length(mut self, length: u16) -> Self {
        self.length = Some(length);
        self
    }

    fn header(&self, segment_len: usize) -> Vec<u8> {
        let length = self.length.unwrap_or(segment_len as u16);
        let mut header = Vec::with_capacity(UDP_HDR_LEN);
        header.extend_from_slice(&self.sport.to_be_bytes());
        header.extend_from_slice(&self.dport.to_be_bytes());
        header.extend_from_slice(&length.to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        header
    }
}

/// An ICMP or ICMPv6 message: type, code, the 4 bytes after the checksum, and a body. The same
/// shape serves both; [`Frame::icmp`] and [`Frame::icmpv6`] choose the protocol.
#[derive(Clone, Debug)]
pub struct Icmp {
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    body: Vec<u8>,
}

impl Icmp {
    pub const ECHO_REQUEST: u8 = 8;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_MLD_QUERY: u8 = 130;
    pub const V6_MLD_REPORT: u8 = 131;
    pub const V6_ROUTER_SOLICITATION: u8 = 133;
    pub const V6_NEIGHBOR_SOLICITATION: u8 = 135;
    pub const V6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
    pub const V6_MLD2_REPORT: u8 = 143;

    /// Any message; the 4 bytes after the checksum are zero.
    pub fn new(icmp_type: u8, code: u8) -> Self {
        Self {
            icmp_type,
            code,
            rest: [0; 4],
            body: Vec::new(),
        }
    }

    /// ICMP echo request (type 8).
    pub fn echo_request(id: u16, seq: u16) -> Self {
        Self::new(Self::ECHO_REQUEST, 0).id_seq(id, seq)
    }

    /// ICMPv6 echo request (type 128).
    pub fn echo_request_v6(id: u16, seq: u16) -> Self {
        Self::new(Self::V6_ECHO_REQUEST, 0).id_seq(id, seq)
    }

    /// ICMPv6 neighbour solicitation (type 135) for `target`.
    pub fn neighbor_solicitation(target: Ipv6Addr) -> Self {
        Self::new(Self::V6_NEIGHBOR_SOLICITATION, 0).body(&target.octets())
    }

    /// MLDv1 listener report (type 131) for `group`.
    pub fn mld_report(group: Ipv6Addr) -> Self {
        Self::new(Self::V6_MLD_REPORT, 0).body(&group.octets())
    }

    /// Sets the 4 bytes after the checksum.
    pub fn rest(mut self, rest: [u8; 4]) -> Self {
        self.rest = rest;
        self
    }

    /// Bytes after the 8-byte header that belong to the message (e.g. a solicitation's target).
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    fn id_seq(self, id: u16, seq: u16) -> Self {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        self.rest([a, b, c, d])
    }

    fn header(&self) -> Vec<u8> {
        let mut header = Vec::with_capacity(ICMP_HDR_LEN + self.body.len());
        header.extend_from_slice(&[self.icmp_type, self.code, 0, 0]);
        header.extend_from_slice(&self.rest);
        header.extend_from_slice(&self.body);
        header
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each of even length except
/// possibly the last.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// UDP sends a computed zero as all ones (zero means "no checksum").
fn udp_checksum(proto: u8, sum: u16) -> u16 {
    if proto == proto::UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    pseudo
}

fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    pseudo
}

#[cfg(test)]
mod tests {
    //! The builder checked against an independent parser (etherparse).

    use etherparse::{
        EtherType, Icmpv6Slice, IpNumber, Ipv4HeaderSlice, Ipv6Slice, SlicedPacket, TransportSlice,
    };

    use super::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const DST4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
    const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);

    #[test]
    fn qinq_tcp_over_ipv4_parses_with_valid_checksums() {
        let frame = Frame::new()
            .vlan(TPID_8021AD, 100)
            .vlan(TPID_8021Q, 200)
            .ipv4(Ipv4::new(SRC4, DST4).ttl(9).options(&[148, 4, 0, 0]))
            .tcp(Tcp::new(40_000, 22).seq(7))
            .payload(b"hello");
        let bytes = frame.build();
        let layout = frame.layout();
        assert_eq!(
            layout,
            Layout {
                l3_offset: 22,
                l4_offset: 46,
                payload_offset: 66
            }
        );
        assert_eq!(bytes.len(), 71);

        let packet = SlicedPacket::from_ethernet(&bytes).expect("parses");
        let vlans: Vec<_> = packet.vlan_ids().iter().map(|id| id.value()).collect();
        assert_eq!(vlans, [100, 200]);
        let Some(etherparse::NetSlice::Ipv4(ipv4)) = &packet.net else {
            panic!("not IPv4: {:?}", packet.net);
        };
        let header = ipv4.header();
        assert_eq!(
            (header.source_addr(), header.destination_addr()),
            (SRC4, DST4)
        );
        assert_eq!((header.ttl(), header.ihl(), header.total_len()), (9, 6, 49));
        assert_eq!(
            header.header_checksum(),
            header.to_header().calc_header_checksum()
        );
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            panic!("not TCP");
        };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (40_000, 22));
        assert!(tcp.syn());
        assert_eq!(tcp.payload(), b"hello");
        assert_eq!(
            tcp.checksum(),
            tcp.to_header()
                .calc_checksum_ipv4_raw(SRC4.octets(), DST4.octets(), tcp.payload())
                .unwrap()
        );
    }

    #[test]
    fn ipv6_extension_chain_and_udp_parse_with_valid_checksum() {
        let bytes = Frame::new()
            .ipv6(
                Ipv6::new(SRC6, DST6)
                    .hop_limit(5)
                    .ext(Ext::hop_by_hop())
                    .ext(Ext::routing())
                    .ext(Ext::auth(3))
                    .ext(Ext::destination_options()),
            )
            .udp(Udp::new(5353, 53))
            .payload(&[1, 2, 3])
            .build();
        let packet = SlicedPacket::from_ethernet(&bytes).expect("parses");
        let Some(etherparse::NetSlice::Ipv6(ipv6)) = &packet.net else {
            panic!("not IPv6");
        };
        assert_eq!(ipv6.header().hop_limit(), 5);
        assert_eq!(
            ipv6.header().next_header(),
            IpNumber::IPV6_HEADER_HOP_BY_HOP
        );
        assert_eq!(ipv6.payload().ip_number, IpNumber::UDP);
        // 8 + 8 + 24 + 8 bytes of extension headers, 8 of UDP, 3 of payload.
        assert_eq!(usize::from(ipv6.header().payload_length()), 48 + 8 + 3);
        let Some(TransportSlice::Udp(udp)) = &packet.transport else {
            panic!("not UDP");
        };
        assert_eq!(
            (udp.source_port(), udp.destination_port(), udp.length()),
            (5353, 53, 11)
        );
        let expected = udp
            .to_header()
            .calc_checksum_ipv6_raw(SRC6.octets(), DST6.octets(), udp.payload())
            .unwrap();
        assert_eq!(udp.checksum(), expected);
    }

    #[test]
    fn icmpv6_neighbor_solicitation_has_valid_checksum() {
        let bytes = Frame::new()
            .ipv6(Ipv6::new(SRC6, DST6).hop_limit(255))
            .icmpv6(Icmp::neighbor_solicitation(DST6))
            .build();
        let ipv6 = Ipv6Slice::from_slice(&bytes[14..]).expect("parses");
        let icmp = Icmpv6Slice::from_slice(ipv6.payload().payload).expect("ICMPv6");
        assert_eq!(icmp.type_u8(), Icmp::V6_NEIGHBOR_SOLICITATION);
        assert_eq!(&icmp.payload()[..16], &DST6.octets());
        assert!(icmp.is_checksum_valid(SRC6.octets(), DST6.octets()));
    }

    #[test]
    fn overrides_land_in_their_fields() {
        let bytes = Frame::new()
            .ipv4(
                Ipv4::new(SRC4, DST4)
                    .ihl(4)
                    .total_len(1000)
                    .fragment(185, true)
                    .protocol(47),
            )
            .tcp(Tcp::new(1, 2).data_offset(3))
            .build();
        assert_eq!(bytes[14], 0x44, "version 4, IHL 4");
        assert_eq!(&bytes[16..18], &1000u16.to_be_bytes());
        assert_eq!(
            &bytes[20..22],
            &(0x2000u16 | 185).to_be_bytes(),
            "MF and offset"
        );
        assert_eq!(bytes[23], 47);
        assert_eq!(bytes[34 + 12] >> 4, 3, "TCP data offset");

        let bytes = Frame::new()
            .ipv6(
                Ipv6::new(SRC6, DST6)
                    .version(4)
                    .payload_len(0)
                    .next_header(200),
            )
            .build();
        assert_eq!(bytes[14] >> 4, 4);
        assert_eq!((&bytes[18..20], bytes[20]), (&[0u8, 0][..], 200));

        let bytes = Frame::new()
            .ipv6(Ipv6::new(SRC6, DST6).ext(Ext::fragment(100, true, 9)))
            .udp(Udp::new(1, 2))
            .build();
        let ipv6 = Ipv6Slice::from_slice(&bytes[14..]).expect("parses");
        assert!(ipv6.is_payload_fragmented());
        let fragment = &bytes[54..62];
        assert_eq!(fragment[0], proto::UDP);
        assert_eq!(
            u16::from_be_bytes([fragment[2], fragment[3]]),
            (100 << 3) | 1
        );
        assert_eq!(&fragment[4..], &9u32.to_be_bytes());
    }

    #[test]
    fn cut_transport_keeps_ip_lengths_consistent_and_truncate_does_not() {
        let frame = Frame::new()
            .ipv4(Ipv4::new(SRC4, DST4))
            .tcp(Tcp::new(1, 22));
        let cut = frame.clone().cut_transport(12).build();
        assert_eq!(cut.len(), 14 + 20 + 12);
        let header = Ipv4HeaderSlice::from_slice(&cut[14..]).unwrap();
        assert_eq!(header.total_len(), 32);

        let truncated = frame.truncate(14 + 20 + 12).build();
        assert_eq!(truncated.len(), 46);
        let header = Ipv4HeaderSlice::from_slice(&truncated[14..]).unwrap();
        assert_eq!(
            header.total_len(),
            40,
            "the header still describes the whole datagram"
        );
    }

    #[test]
    fn padding_arp_and_bare_frames() {
        let arp = Frame::arp_request(SRC4, DST4).pad_to(ETH_MIN_LEN).build();
        assert_eq!(arp.len(), ETH_MIN_LEN);
        assert_eq!(&arp[..6], &[0xff; 6]);
        let packet = SlicedPacket::from_ethernet(&arp).expect("parses");
        let Some(etherparse::NetSlice::Arp(request)) = &packet.net else {
            panic!("not ARP: {:?}", packet.net);
        };
        assert_eq!(request.sender_protocol_addr(), SRC4.octets());
        assert_eq!(request.target_protocol_addr(), DST4.octets());

        let bare = Frame::new().payload(&[1, 2]).build();
        assert_eq!(bare.len(), 16);
        assert_eq!(
            EtherType(u16::from_be_bytes([bare[12], bare[13]])),
            EtherType(ETH_P_EXPERIMENTAL)
        );
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071, section 3: the sum of these words is 0xddf2, so the checksum is !0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
        // Splitting the input at an even offset changes nothing.
        assert_eq!(checksum(&[&data[..2], &data[2..]]), !0xddf2);
    }
}
