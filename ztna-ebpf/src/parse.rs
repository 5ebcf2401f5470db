//! Bounds-checked access to packet bytes. `ptr_at` is the only place that turns a packet offset into
//! a pointer.

use aya_ebpf::programs::XdpContext;

/// Largest offset the parser ever reads at; keeps every variable offset provably bounded for the
/// verifier (Ethernet + 2 VLAN tags + IPv6 + a bounded extension-header chain).
pub const MAX_OFFSET: usize = 0x3fff;

/// A pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    let offset = offset & MAX_OFFSET;
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
