//! IPv4: the fixed header, options and fragments.

use aya_ebpf::programs::XdpContext;
use ztna_common::verdict::{DROP_BAD_L3, DROP_TRUNCATED_L3};

use crate::{
    parse::{MAX_DATAGRAM_LEN, ptr_at},
    verdict::L3,
};

const IPV4_MIN_HDR_LEN: usize = 20;
/// Fragment offset bits of the flags/fragment-offset field.
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
/// Offset of the source address in the header; the destination follows it.
pub const IPV4_SRC_OFFSET: usize = 12;
pub const IPV4_DST_OFFSET: usize = 16;

/// Parses the IPv4 header at `offset`. Header errors are verdict reasons whatever the destination: the
/// kernel's own receive path drops such packets too, so nothing legitimate is lost.
#[inline(always)]
pub fn parse(ctx: &XdpContext, offset: usize) -> Result<L3, u32> {
    let hdr = ptr_at::<[u8; IPV4_MIN_HDR_LEN]>(ctx, offset).ok_or(DROP_TRUNCATED_L3)?;
    // SAFETY: `ptr_at` checked that the 20-byte fixed header lies inside the packet.
    let (version_ihl, total_len, fragment, ttl, proto) = unsafe {
        (
            (*hdr)[0],
            usize::from(u16::from_be_bytes([(*hdr)[2], (*hdr)[3]])),
            u16::from_be_bytes([(*hdr)[6], (*hdr)[7]]),
            (*hdr)[8],
            (*hdr)[9],
        )
    };
    if version_ihl >> 4 != 4 {
        return Err(DROP_BAD_L3);
    }
    let hdr_len = usize::from(version_ihl & 0x0f) * 4;
    if hdr_len < IPV4_MIN_HDR_LEN || total_len < hdr_len {
        return Err(DROP_BAD_L3);
    }
    // A longer claim cannot be checked against the frame: judged once the destination is known.
    let oversized = total_len > MAX_DATAGRAM_LEN;
    // Options present in full, and the datagram no longer than the frame.
    ptr_at::<u8>(ctx, offset + hdr_len - 1).ok_or(DROP_TRUNCATED_L3)?;
    if !oversized {
        ptr_at::<u8>(ctx, offset + total_len - 1).ok_or(DROP_TRUNCATED_L3)?;
    }
    Ok(L3 {
        ip_version: 4,
        proto,
        hop_limit: ttl,
        non_first_fragment: fragment & IPV4_FRAG_OFFSET_MASK != 0,
        oversized,
        l3_offset: offset,
        next_offset: offset + hdr_len,
        end_offset: offset + total_len,
    })
}
