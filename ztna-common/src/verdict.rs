//! Verdict reasons. Every packet the XDP program sees ends in exactly one reason, counted in `STATS`.
//!
//! Reasons are `u32` codes so that they fit a register and index the per-CPU `STATS` array directly.
//! In monitor mode a packet that would have been dropped passes; it is counted at
//! [`WOULD_DROP_BASE`]` + reason` instead of at its drop reason.

/// The destination is not protected (or the packet is not for an IP protocol the gateway guards).
pub const PASS_NOT_PROTECTED: u32 = 0;
/// Not IPv4 or IPv6 (ARP, LLDP, ...): passed untouched.
pub const PASS_NOT_IP: u32 = 1;
/// A live grant for (source, app) matched.
pub const PASS_GRANT: u32 = 2;
/// IPv6 neighbour discovery or multicast listener traffic to a protected address: never broken.
pub const PASS_NEIGHBOR_DISCOVERY: u32 = 3;
/// Ethernet or VLAN header cut short.
pub const DROP_TRUNCATED_L2: u32 = 4;
/// More VLAN tags than the parser follows (two: 802.1ad outer, 802.1Q inner).
pub const DROP_VLAN_DEPTH: u32 = 5;
/// IPv4/IPv6 header or an IPv6 extension header cut short.
pub const DROP_TRUNCATED_L3: u32 = 6;
/// Invalid IP header to a protected destination: IPv4 IHL < 5 or total length shorter than the header,
/// wrong version nibble.
pub const DROP_BAD_L3: u32 = 7;
/// A non-first fragment to a protected destination (its ports cannot be known).
pub const DROP_FRAGMENT: u32 = 8;
/// An IPv6 extension-header chain longer than the parser follows.
pub const DROP_EXT_HEADERS: u32 = 9;
/// TCP/UDP/ICMP header cut short on a packet to a protected destination.
pub const DROP_TRUNCATED_L4: u32 = 10;
/// Invalid transport header to a protected destination (TCP data offset < 5).
pub const DROP_BAD_L4: u32 = 11;
/// The protected destination has no service for this protocol and port.
pub const DROP_NO_SERVICE: u32 = 12;
/// No grant for (source, app).
pub const DROP_NO_GRANT: u32 = 13;
/// The grant's deadline has passed.
pub const DROP_EXPIRED: u32 = 14;
/// The grant was written under an older epoch (mass revocation).
pub const DROP_STALE_EPOCH: u32 = 15;

/// Largest IP datagram length (IPv4 total length, IPv6 payload length) whose extent the XDP program
/// checks against the frame. The verifier follows packet offsets only up to 64 KiB, so a longer claim
/// cannot be checked: such a packet passes when its destination is not protected (generic XDP sees
/// GRO-merged packets of up to 64 KiB, and the stack judges the length itself) and is dropped as
/// [`DROP_TRUNCATED_L3`] when it is.
pub const MAX_CHECKED_DATAGRAM_LEN: usize = 65_343;

/// Number of verdict reasons.
pub const REASON_COUNT: u32 = 16;

/// `STATS` slot counting events the per-CPU token bucket suppressed.
pub const EVENTS_SUPPRESSED: u32 = 16;
/// `STATS` slot counting events lost because the ring buffer was full.
pub const EVENTS_LOST: u32 = 17;

/// `STATS` slot of the first would-drop counter (monitor mode).
pub const WOULD_DROP_BASE: u32 = 32;
/// Number of `STATS` slots.
pub const STATS_LEN: u32 = 64;

/// Whether `reason` ends in `XDP_PASS`.
#[inline(always)]
pub const fn is_pass(reason: u32) -> bool {
    reason <= PASS_NEIGHBOR_DISCOVERY
}

/// `STATS` slot that counts `reason`; `monitored` selects the would-drop slot of a drop reason.
#[inline(always)]
pub const fn stat_index(reason: u32, monitored: bool) -> u32 {
    if monitored && !is_pass(reason) {
        WOULD_DROP_BASE + reason
    } else {
        reason
    }
}

/// Stable, lower-case name of a reason, used in logs, metrics labels and the CLI.
pub const fn reason_name(reason: u32) -> &'static str {
    match reason {
        PASS_NOT_PROTECTED => "pass_not_protected",
        PASS_NOT_IP => "pass_not_ip",
        PASS_GRANT => "pass_grant",
        PASS_NEIGHBOR_DISCOVERY => "pass_neighbor_discovery",
        DROP_TRUNCATED_L2 => "drop_truncated_l2",
        DROP_VLAN_DEPTH => "drop_vlan_depth",
        DROP_TRUNCATED_L3 => "drop_truncated_l3",
        DROP_BAD_L3 => "drop_bad_l3",
        DROP_FRAGMENT => "drop_fragment",
        DROP_EXT_HEADERS => "drop_ext_headers",
        DROP_TRUNCATED_L4 => "drop_truncated_l4",
        DROP_BAD_L4 => "drop_bad_l4",
        DROP_NO_SERVICE => "drop_no_service",
        DROP_NO_GRANT => "drop_no_grant",
        DROP_EXPIRED => "drop_expired",
        DROP_STALE_EPOCH => "drop_stale_epoch",
        EVENTS_SUPPRESSED => "events_suppressed",
        EVENTS_LOST => "events_lost",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_name_and_a_slot() {
        for reason in 0..REASON_COUNT {
            assert_ne!(reason_name(reason), "unknown", "reason {reason}");
            assert!(stat_index(reason, true) < STATS_LEN);
        }
        assert_eq!(
            stat_index(DROP_NO_GRANT, true),
            WOULD_DROP_BASE + DROP_NO_GRANT
        );
        assert_eq!(stat_index(PASS_GRANT, true), PASS_GRANT);
    }
}
