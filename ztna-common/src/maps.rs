//! Map names, capacities and pinning paths. Names are at most 15 characters (the kernel's limit).

/// Global configuration, an array with one [`crate::config::GlobalConfig`].
pub const CONFIG: &str = "CONFIG";
/// Protected IPv4 destinations: LPM trie, `Key<[u8; 4]>` -> [`crate::net::ProtectedNet`].
pub const PROTECTED_V4: &str = "PROTECTED_V4";
/// Protected IPv6 destinations: LPM trie, `Key<[u8; 16]>` -> [`crate::net::ProtectedNet`].
pub const PROTECTED_V6: &str = "PROTECTED_V6";
/// Services: LPM trie, `Key<ServiceLpmData>` (see [`crate::service::ServiceKey::lpm_data`]) ->
/// [`crate::service::ServiceValue`].
pub const SERVICES: &str = "SERVICES";
/// Grants: an mmapable array of [`crate::grant::GrantBucket`], used as a cuckoo hash table keyed by
/// [`crate::grant::GrantKey`] (see [`crate::grant`]).
pub const GRANTS: &str = "GRANTS";
/// Per-CPU array of `u64` packet counters indexed by [`crate::verdict::stat_index`].
pub const STATS: &str = "STATS";
/// Ring buffer of [`crate::event::Event`] records.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU token bucket that limits how many events each CPU may emit.
pub const EVENT_BUCKET: &str = "EVENT_BUCKET";

/// Every map the XDP program owns, in the order the agent pins them.
pub const ALL: [&str; 8] = [
    CONFIG,
    PROTECTED_V4,
    PROTECTED_V6,
    SERVICES,
    GRANTS,
    STATS,
    EVENTS,
    EVENT_BUCKET,
];

/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "ztna_ingress";
/// Name of the program that passes every packet untouched: the benchmarks' `XDP_PASS` floor.
pub const BASELINE_PROGRAM: &str = "ztna_baseline";

/// Maximum number of protected IPv4 prefixes (and, separately, IPv6 prefixes).
pub const PROTECTED_CAPACITY: u32 = 262_144;
/// Maximum number of (net, protocol, port) service entries.
pub const SERVICES_CAPACITY: u32 = 1 << 20;
/// `BPF_F_MMAPABLE`: the agent writes the grant table through an `mmap` of the array.
pub const GRANTS_MAP_FLAGS: u32 = 1 << 10;
/// Default number of grants; the agent sets the real size from its configuration at load time.
pub const GRANTS_DEFAULT_CAPACITY: u32 = 65_536;
/// Size of the event ring buffer in bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Root under bpffs where every instance pins its maps and links: `/sys/fs/bpf/ztna/<instance>/`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/ztna";
