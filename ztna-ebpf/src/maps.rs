//! The program's maps. The agent pins them under `/sys/fs/bpf/ztna/<instance>/` at load time, so they
//! are declared unpinned here: a test that loads the object gets fresh maps.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use ztna_common::{
    config::{EventBucket, GlobalConfig},
    grant::{GrantKey, GrantValue},
    maps::{EVENTS_BYTES, GRANTS_DEFAULT_CAPACITY, PROTECTED_CAPACITY, SERVICES_CAPACITY},
    net::ProtectedNet,
    service::{ServiceLpmData, ServiceValue},
    verdict::STATS_LEN,
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

#[map(name = "PROTECTED_V4")]
pub static PROTECTED_V4: LpmTrie<[u8; 4], ProtectedNet> =
    LpmTrie::with_max_entries(PROTECTED_CAPACITY, 0);

#[map(name = "PROTECTED_V6")]
pub static PROTECTED_V6: LpmTrie<[u8; 16], ProtectedNet> =
    LpmTrie::with_max_entries(PROTECTED_CAPACITY, 0);

/// An LPM trie: one lookup finds the exact service or the most specific wildcard.
#[map(name = "SERVICES")]
pub static SERVICES: LpmTrie<ServiceLpmData, ServiceValue> =
    LpmTrie::with_max_entries(SERVICES_CAPACITY, 0);

/// Preallocated, so that installing a grant never allocates in the kernel; sized by the agent.
#[map(name = "GRANTS")]
pub static GRANTS: HashMap<GrantKey, GrantValue> =
    HashMap::with_max_entries(GRANTS_DEFAULT_CAPACITY, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "EVENT_BUCKET")]
pub static EVENT_BUCKET: PerCpuArray<EventBucket> = PerCpuArray::with_max_entries(1, 0);
