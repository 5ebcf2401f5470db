//! The global configuration entry (`CONFIG[0]`) and the per-CPU event token bucket.

/// Packets to protected destinations that lack a grant are dropped.
pub const MODE_ENFORCE: u32 = 0;
/// Packets that would be dropped pass and are reported as would-drop events (phased rollout).
pub const MODE_MONITOR: u32 = 1;

/// Global settings read by the XDP program on every packet.
///
/// An all-zero entry (a map that was never written) means: enforce, epoch 0, no events — fail closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalConfig {
    /// [`MODE_ENFORCE`] or [`MODE_MONITOR`]; any other value is treated as enforce.
    pub mode: u32,
    /// Current grant epoch (low [`crate::grant::EPOCH_BITS`] bits). Grants written under another epoch
    /// are stale: bumping it revokes every grant at once.
    pub epoch: u32,
    /// Events each CPU may emit per second (token bucket refill rate); 0 disables events.
    pub event_rate_per_sec: u32,
    /// Largest burst of events a CPU may emit at once (token bucket depth).
    pub event_burst: u32,
    /// Dark-mode and single-packet-authorization flags; reserved, 0 today.
    pub flags: u32,
    /// UDP port of single-packet-authorization knocks, network byte order; 0 when off.
    pub spa_port_be: u16,
    pub _pad0: u16,
}

const _: () = assert!(size_of::<GlobalConfig>() == 24);

/// Per-CPU token bucket state for event sampling, in milli-tokens so that low rates refill smoothly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    /// Available tokens times 1000.
    pub milli_tokens: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_refill_ns: u64,
}

const _: () = assert!(size_of::<EventBucket>() == 16);
