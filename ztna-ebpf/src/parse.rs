//! Bounds-checked access to packet bytes. `ptr_at` is the only place that turns a packet offset into
//! a pointer.

use aya_ebpf::programs::XdpContext;
use ztna_common::verdict::MAX_CHECKED_DATAGRAM_LEN;

/// Largest offset the parser reads at. The verifier tracks packet offsets only up to 0xffff
/// (`MAX_PACKET_OFF`) and every read adds at most 64 bytes; rejecting larger offsets explicitly also
/// gives the verifier a bound for values whose range it lost (older verifiers forget the range of a
/// byte-swapped length).
pub const MAX_OFFSET: usize = 0xffff - 64;

/// Largest IP datagram length checked against the frame ([`MAX_CHECKED_DATAGRAM_LEN`]). Checking the
/// length field itself before it meets a packet pointer tells the verifier its range, which older
/// verifiers (6.1, 6.12) lose across the byte swap of a big-endian load; a check folded into a later
/// sum would not reach the register that the pointer arithmetic uses.
pub const MAX_DATAGRAM_LEN: usize = MAX_CHECKED_DATAGRAM_LEN;
const _: () = assert!(MAX_DATAGRAM_LEN + 128 <= MAX_OFFSET);

/// A pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is too short (or
/// the offset beyond [`MAX_OFFSET`], which only a datagram claiming close to 64 KiB can reach).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if offset > MAX_OFFSET {
        return None;
    }
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a `T` at `offset`, or `None` when the packet is too short.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `ptr` lie inside the packet; the read is
    // unaligned because packet headers carry no alignment guarantee.
    Some(unsafe { core::ptr::read_unaligned(ptr) })
}

/// Big-endian `u16` at `offset`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read_at::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_HDR_LEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag, still sent by some switches.
pub const ETH_P_QINQ1: u16 = 0x9100;

#[inline(always)]
pub const fn is_vlan(ether_type: u16) -> bool {
    matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1)
}

/// Where the L3 header starts and which protocol it is, after up to [`MAX_VLAN_TAGS`] VLAN tags.
pub struct L2 {
    pub ether_type: u16,
    pub l3_offset: usize,
}

/// Parses Ethernet and VLAN tags; the error is a verdict reason.
#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Result<L2, u32> {
    use ztna_common::verdict::{DROP_TRUNCATED_L2, DROP_VLAN_DEPTH};

    let mut ether_type = be16_at(ctx, 12).ok_or(DROP_TRUNCATED_L2)?;
    let mut offset = ETH_HDR_LEN;
    // Unrolled by hand: the verifier sees two straight-line tag reads.
    if is_vlan(ether_type) {
        ether_type = be16_at(ctx, offset + 2).ok_or(DROP_TRUNCATED_L2)?;
        offset += VLAN_HDR_LEN;
        if is_vlan(ether_type) {
            ether_type = be16_at(ctx, offset + 2).ok_or(DROP_TRUNCATED_L2)?;
            offset += VLAN_HDR_LEN;
            if is_vlan(ether_type) {
                return Err(DROP_VLAN_DEPTH);
            }
        }
    }
    Ok(L2 {
        ether_type,
        l3_offset: offset,
    })
}
