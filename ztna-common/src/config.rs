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
    /// Nanoseconds of credit one event costs (10^9 / events per second per CPU); 0 disables events.
    /// The XDP program's token bucket works in nanoseconds so that it never divides.
    pub event_interval_ns: u64,
    /// Most credit a CPU's bucket holds: `event_burst * event_interval_ns`.
    pub event_burst_ns: u64,
    /// Events per second per CPU, as configured (for display; the program uses the two fields above).
    pub event_rate_per_sec: u32,
    /// Largest burst of events per CPU, as configured (for display).
    pub event_burst: u32,
    /// Dark-mode and single-packet-authorization flags; reserved, 0 today.
    pub flags: u32,
    /// UDP port of single-packet-authorization knocks, network byte order; 0 when off.
    pub spa_port_be: u16,
    pub _pad0: u16,
    /// Seed of the grant table's hash ([`crate::grant::grant_hash`]), random per instance. It lives
    /// here, pinned with the maps, so that a restarted agent finds the grants it left behind.
    pub grant_seed: u64,
    /// Buckets in `GRANTS` (its `max_entries`); the XDP program maps hashes onto `0..grant_buckets`.
    pub grant_buckets: u32,
    /// Grants the agent admits into the table before it answers "full" (for display and restarts).
    pub grant_capacity: u32,
}

const _: () = assert!(size_of::<GlobalConfig>() == 56);

impl GlobalConfig {
    /// Sets the event budget: `rate` events per second per CPU, bursts of up to `burst`; a rate of 0
    /// turns events off.
    pub const fn with_event_budget(mut self, rate: u32, burst: u32) -> Self {
        self.event_rate_per_sec = rate;
        self.event_burst = burst;
        if rate == 0 {
            self.event_interval_ns = 0;
            self.event_burst_ns = 0;
        } else {
            self.event_interval_ns = 1_000_000_000 / rate as u64;
            let burst = if burst == 0 { 1 } else { burst };
            self.event_burst_ns = burst as u64 * self.event_interval_ns;
        }
        self
    }
}

/// Per-CPU token bucket state for event sampling, in nanoseconds of credit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    /// Credit available, at most `GlobalConfig::event_burst_ns`.
    pub credit_ns: u64,
    /// `bpf_ktime_get_coarse_ns` of the last event decision on this CPU.
    pub last_ns: u64,
}

const _: () = assert!(size_of::<EventBucket>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_budget_in_nanoseconds() {
        let config = GlobalConfig::default().with_event_budget(100, 20);
        assert_eq!(config.event_interval_ns, 10_000_000);
        assert_eq!(config.event_burst_ns, 200_000_000);
        let off = config.with_event_budget(0, 20);
        assert_eq!(off.event_interval_ns, 0);
    }
}
