//! Transport headers: TCP, UDP, ICMP, ICMPv6. Only the fields a verdict needs are read.

use aya_ebpf::programs::XdpContext;
use ztna_common::verdict::{DROP_BAD_L4, DROP_TRUNCATED_L4};

use crate::parse::ptr_at;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

const TCP_MIN_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
/// Every ICMP and ICMPv6 message carries at least 8 bytes of header.
const ICMP_HDR_LEN: usize = 8;

/// Ports in network byte order (0 for protocols without ports) and the ICMP type.
#[derive(Clone, Copy, Default)]
pub struct L4 {
    pub sport_be: u16,
    pub dport_be: u16,
    pub icmp_type: u8,
}

/// Parses the transport header at `offset`; it must end by `end` (the end of the IP datagram).
#[inline(always)]
pub fn parse(ctx: &XdpContext, proto: u8, offset: usize, end: usize) -> Result<L4, u32> {
    let header_len = match proto {
        PROTO_TCP => TCP_MIN_HDR_LEN,
        PROTO_UDP => UDP_HDR_LEN,
        PROTO_ICMP | PROTO_ICMPV6 => ICMP_HDR_LEN,
        _ => 0,
    };
    if offset + header_len > end {
        return Err(DROP_TRUNCATED_L4);
    }
    match proto {
        PROTO_TCP => {
            let hdr = ptr_at::<[u8; TCP_MIN_HDR_LEN]>(ctx, offset).ok_or(DROP_TRUNCATED_L4)?;
            // SAFETY: `ptr_at` checked that the 20-byte TCP header lies inside the packet.
            let (ports, data_offset) = unsafe { (ports(hdr.cast()), (*hdr)[12] >> 4) };
            if data_offset < 5 {
                return Err(DROP_BAD_L4);
            }
            Ok(ports)
        }
        PROTO_UDP => {
            let hdr = ptr_at::<[u8; UDP_HDR_LEN]>(ctx, offset).ok_or(DROP_TRUNCATED_L4)?;
            // SAFETY: `ptr_at` checked that the 8-byte UDP header lies inside the packet.
            Ok(unsafe { ports(hdr.cast()) })
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let hdr = ptr_at::<[u8; ICMP_HDR_LEN]>(ctx, offset).ok_or(DROP_TRUNCATED_L4)?;
            Ok(L4 {
                sport_be: 0,
                dport_be: 0,
                // SAFETY: `ptr_at` checked that the 8-byte ICMP header lies inside the packet.
                icmp_type: unsafe { (*hdr)[0] },
            })
        }
        _ => Ok(L4::default()),
    }
}

/// Source and destination ports, kept in network byte order.
///
/// # Safety
/// `hdr` must point at 4 readable bytes inside the packet.
#[inline(always)]
unsafe fn ports(hdr: *const [u8; 4]) -> L4 {
    // SAFETY: guaranteed by the caller.
    let hdr = unsafe { &*hdr };
    L4 {
        sport_be: u16::from_ne_bytes([hdr[0], hdr[1]]),
        dport_be: u16::from_ne_bytes([hdr[2], hdr[3]]),
        icmp_type: 0,
    }
}

/// IPv6 neighbour discovery (RFC 4861: router/neighbour solicitation and advertisement, redirect),
/// valid only with hop limit 255, and multicast listener discovery (RFC 2710/3810) from a link-local
/// or unspecified source with hop limit 1. Both are link-local control traffic that must never break.
///
/// `src` is the source address as `ztna_common::grant::source_words` (little-endian words, so the
/// first byte on the wire is the low byte of `src[0]`).
#[inline(always)]
pub fn is_ipv6_link_control(icmp_type: u8, hop_limit: u8, src: [u64; 2]) -> bool {
    match icmp_type {
        133..=137 => hop_limit == 255,
        130..=132 | 143 => {
            // fe80::/10: first byte 0xfe, top two bits of the second 0b10.
            let link_local = src[0] & 0xc0ff == 0x80fe;
            let unspecified = src[0] == 0 && src[1] == 0;
            hop_limit == 1 && (link_local || unspecified)
        }
        _ => false,
    }
}
