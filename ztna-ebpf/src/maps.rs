//! The program's maps. The agent pins them under `/sys/fs/bpf/ztna/<instance>/` at load time, so they
//! are declared unpinned here: a test that loads the object gets fresh maps.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, RingBuf},
};
use ztna_common::{
    config::{EventBucket, GlobalConfig},
    grant::{GrantBucket, buckets_for_capacity},
    maps::{
        EVENTS_BYTES, GRANTS_DEFAULT_CAPACITY, GRANTS_MAP_FLAGS, PROTECTED_CAPACITY,
        SERVICES_CAPACITY,
    },
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

/// The grant table: buckets of a cuckoo hash table (see `ztna_common::grant`). An array, so that a
/// lookup is inlined by the verifier; mmapable, so that the agent writes slots directly. Sized by
/// the agent.
#[map(name = "GRANTS")]
pub static GRANTS: Array<GrantBucket> = Array::with_max_entries(
    buckets_for_capacity(GRANTS_DEFAULT_CAPACITY),
    GRANTS_MAP_FLAGS,
);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "EVENT_BUCKET")]
pub static EVENT_BUCKET: PerCpuArray<EventBucket> = PerCpuArray::with_max_entries(1, 0);
