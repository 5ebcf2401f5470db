//! IPv6: the fixed header and a bounded chain of extension headers.

use aya_ebpf::programs::XdpContext;
use ztna_common::verdict::{DROP_BAD_L3, DROP_EXT_HEADERS, DROP_FRAGMENT, DROP_TRUNCATED_L3};

use crate::{
    parse::{MAX_DATAGRAM_LEN, ptr_at, read_at},
    verdict::L3,
};

const IPV6_HDR_LEN: usize = 40;
/// Extension headers followed before the chain is called too long and the packet dropped.
pub const MAX_EXT_HEADERS: usize = 6;

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_AUTH: u8 = 51;
const NEXT_DEST_OPTS: u8 = 60;
const NEXT_MOBILITY: u8 = 135;
const NEXT_HIP: u8 = 139;
const NEXT_SHIM6: u8 = 140;

#[inline(always)]
const fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXT_HOP_BY_HOP
            | NEXT_ROUTING
            | NEXT_FRAGMENT
            | NEXT_AUTH
            | NEXT_DEST_OPTS
            | NEXT_MOBILITY
            | NEXT_HIP
            | NEXT_SHIM6
    )
}

/// Offset of the source address in the header; the destination follows it.
pub const IPV6_SRC_OFFSET: usize = 8;
pub const IPV6_DST_OFFSET: usize = 24;

/// Parses the fixed IPv6 header at `offset`. `proto` is the fixed header's next-header field until
/// [`skip_extensions`] walks the chain (only done for protected destinations).
#[inline(always)]
pub fn parse(ctx: &XdpContext, offset: usize) -> Result<L3, u32> {
    let hdr = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, offset).ok_or(DROP_TRUNCATED_L3)?;
    // SAFETY: `ptr_at` checked that the 40-byte fixed header lies inside the packet.
    let (version, payload_len, next, hop_limit) = unsafe {
        (
            (*hdr)[0] >> 4,
            usize::from(u16::from_be_bytes([(*hdr)[4], (*hdr)[5]])),
            (*hdr)[6],
            (*hdr)[7],
        )
    };
    if version != 6 {
        return Err(DROP_BAD_L3);
    }
    // A longer claim cannot be checked against the frame: judged once the destination is known.
    let oversized = payload_len > MAX_DATAGRAM_LEN;
    // A zero payload length announces a jumbogram, which runs to the end of the frame: no bound but
    // the frame's own.
    if payload_len != 0 && !oversized {
        ptr_at::<u8>(ctx, offset + IPV6_HDR_LEN + payload_len - 1).ok_or(DROP_TRUNCATED_L3)?;
    }
    let end_offset = if payload_len == 0 {
        usize::MAX
    } else {
        offset + IPV6_HDR_LEN + payload_len
    };
    Ok(L3 {
        ip_version: 6,
        proto: next,
        hop_limit,
        non_first_fragment: false,
        oversized,
        l3_offset: offset,
        next_offset: offset + IPV6_HDR_LEN,
        end_offset,
    })
}

/// Walks at most [`MAX_EXT_HEADERS`] extension headers; on success `l3.proto` and `l3.next_offset`
/// name the upper-layer protocol and where its header starts.
#[inline(always)]
pub fn skip_extensions(ctx: &XdpContext, l3: &mut L3) -> Result<(), u32> {
    let mut next = l3.proto;
    let mut offset = l3.next_offset;
    for _ in 0..MAX_EXT_HEADERS {
        if !is_extension(next) {
            l3.proto = next;
            l3.next_offset = offset;
            return Ok(());
        }
        // Every extension header is at least 8 bytes, and must lie inside the datagram.
        if offset + 8 > l3.end_offset {
            return Err(DROP_TRUNCATED_L3);
        }
        let ext: [u8; 4] = read_at(ctx, offset).ok_or(DROP_TRUNCATED_L3)?;
        let len = match next {
            NEXT_FRAGMENT => {
                // The fragment header is 8 bytes; its offset field sits in bytes 2..4.
                ptr_at::<[u8; 8]>(ctx, offset).ok_or(DROP_TRUNCATED_L3)?;
                let fragment_offset = u16::from_be_bytes([ext[2], ext[3]]) >> 3;
                if fragment_offset != 0 {
                    return Err(DROP_FRAGMENT);
                }
                8
            }
            // RFC 4302: the AH length counts 4-byte words, minus 2.
            NEXT_AUTH => (usize::from(ext[1]) + 2) * 4,
            _ => (usize::from(ext[1]) + 1) * 8,
        };
        // The whole extension header must be inside the packet, not just its first bytes.
        ptr_at::<u8>(ctx, offset + len - 1).ok_or(DROP_TRUNCATED_L3)?;
        if offset + len > l3.end_offset {
            return Err(DROP_TRUNCATED_L3);
        }
        next = ext[0];
        offset += len;
    }
    if is_extension(next) {
        return Err(DROP_EXT_HEADERS);
    }
    l3.proto = next;
    l3.next_offset = offset;
    Ok(())
}
