//! Records the XDP program writes to the `EVENTS` ring buffer.

/// A packet was dropped (sampled).
pub const EVENT_DENY: u32 = 1;
/// Monitor mode: a packet that would have been dropped passed (sampled).
pub const EVENT_WOULD_DENY: u32 = 2;

/// One sampled deny or would-deny.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`EVENT_DENY`] or [`EVENT_WOULD_DENY`]; the first field of every record, so that user space can
    /// dispatch on it.
    pub kind: u32,
    /// The drop reason (`crate::verdict`).
    pub reason: u32,
    /// `bpf_ktime_get_ns` when the packet was seen.
    pub timestamp_ns: u64,
    /// Source address, network byte order; IPv4 as `::ffff:a.b.c.d`; zero when not parsed.
    pub src: [u8; 16],
    /// Destination address, same form as `src`.
    pub dst: [u8; 16],
    /// App matched by the service lookup; 0 when none.
    pub app_id: u32,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// Frame length in bytes.
    pub pkt_len: u32,
    /// Source port, network byte order; 0 when none.
    pub sport_be: u16,
    /// Destination port, network byte order; 0 when none.
    pub dport_be: u16,
    /// IP protocol number; 0 when not parsed.
    pub proto: u8,
    /// 4 or 6; 0 when the IP header was not parsed.
    pub ip_version: u8,
    pub _pad0: [u8; 6],
}

const _: () = assert!(size_of::<Event>() == 72);
