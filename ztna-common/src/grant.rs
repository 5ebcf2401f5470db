//! Grants: per-identity flow tokens installed by the agent after it verified user, device and posture.
//!
//! The value is kept at 24 bytes so that a preallocated map of one million grants stays under 120 bytes
//! of kernel memory per grant (48-byte element header + 24-byte key + 24-byte value + 16-byte bucket).
//! Which session and identity a grant belongs to is the agent's knowledge, keyed by the same
//! (source, app) pair; the kernel only needs the deadline, the epoch and the counters.

/// Number of low bits of [`GrantValue::epoch_packets`] that hold the epoch.
pub const EPOCH_BITS: u32 = 24;
/// Mask of the epoch bits.
pub const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
/// What the XDP program adds to [`GrantValue::epoch_packets`] per packet: the packet count lives in the
/// high 40 bits, so it wraps off the top without ever touching the epoch.
pub const PACKET_INCREMENT: u64 = 1 << EPOCH_BITS;

/// Key of `GRANTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    /// Source address observed by the agent, network byte order; IPv4 as `::ffff:a.b.c.d`.
    pub src: [u8; 16],
    /// App the grant opens ([`crate::service::ServiceValue::app_id`]).
    pub app_id: u32,
}

const _: () = assert!(size_of::<GrantKey>() == 20);

/// Value of `GRANTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantValue {
    /// Deadline on the kernel's monotonic clock (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns`). A packet at
    /// or after this instant is dropped, whether or not the agent is running.
    pub expires_at_ns: u64,
    /// Bytes passed under this grant (L2 frame length).
    pub bytes: u64,
    /// Epoch in the low [`EPOCH_BITS`] bits, packets passed in the high bits.
    pub epoch_packets: u64,
}

const _: () = assert!(size_of::<GrantValue>() == 24);

impl GrantValue {
    /// A fresh grant for `epoch` that expires at `expires_at_ns`.
    pub const fn new(expires_at_ns: u64, epoch: u32) -> Self {
        Self {
            expires_at_ns,
            bytes: 0,
            epoch_packets: epoch as u64 & EPOCH_MASK,
        }
    }

    /// The epoch the grant was written under.
    #[inline(always)]
    pub const fn epoch(&self) -> u32 {
        (self.epoch_packets & EPOCH_MASK) as u32
    }

    /// Packets passed under this grant (modulo 2^40).
    #[inline(always)]
    pub const fn packets(&self) -> u64 {
        self.epoch_packets >> EPOCH_BITS
    }
}

/// Whether `epoch` (a grant's) is the current one (`CONFIG.epoch`), comparing the bits a grant keeps.
#[inline(always)]
pub const fn epoch_matches(grant_epoch: u32, current: u32) -> bool {
    (grant_epoch as u64 & EPOCH_MASK) == (current as u64 & EPOCH_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_counter_never_touches_epoch() {
        let mut value = GrantValue::new(10, 0x00ab_cdef);
        value.epoch_packets = value.epoch_packets.wrapping_add(PACKET_INCREMENT * 3);
        assert_eq!(value.epoch(), 0x00ab_cdef);
        assert_eq!(value.packets(), 3);
        value.epoch_packets = value
            .epoch_packets
            .wrapping_add(PACKET_INCREMENT.wrapping_mul(1 << 40));
        assert_eq!(value.epoch(), 0x00ab_cdef);
        assert_eq!(value.packets(), 3);
    }

    #[test]
    fn epoch_compares_low_bits_only() {
        assert!(epoch_matches(5, 5));
        assert!(epoch_matches(5, 5 + (1 << EPOCH_BITS)));
        assert!(!epoch_matches(5, 6));
    }
}
