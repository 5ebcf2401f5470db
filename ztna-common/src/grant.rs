//! Grants: per-identity flow tokens installed by the agent after it verified user, device and posture.
//!
//! # The grant table
//!
//! `GRANTS` is a `BPF_MAP_TYPE_ARRAY` (flag `BPF_F_MMAPABLE`) of [`GrantBucket`]s, used as a
//! bucketized cuckoo hash table: a key lives in one of the [`SLOTS_PER_BUCKET`] slots of one of its two
//! candidate buckets ([`candidate_buckets`]), so a lookup compares at most eight slots and needs no
//! loop of unknown length. The XDP program finds a bucket with an array lookup, which the verifier
//! inlines; a `BPF_MAP_TYPE_HASH` lookup instead is a chain of kernel calls (`__htab_map_lookup_elem`,
//! `jhash`, `lookup_nulls_elem_raw`, `memcmp`) that each pay the return-thunk mitigations, measured
//! at ~27 ns of a 45 ns verdict on a 2.6 GHz Xeon with return thunks.
//!
//! The agent is the only writer. It writes slots through an `mmap` of the array, each under the slot's
//! sequence counter ([`GrantSlot::seq`], a seqlock: odd while the agent rewrites the slot). The XDP
//! program reads the counter, the key, the epoch and the deadline, then the counter again, and treats
//! an odd or changed counter as "no grant": a grant being rewritten can cost a packet, it can never
//! let one through that its old or new contents would not. The packet and byte counters are written
//! only by the XDP program (plain adds, approximate under concurrency) and zeroed by the agent when it
//! installs a grant. The full memory-ordering argument is in `ztna-agent/src/grant_table.rs`.
//!
//! Which session and identity a grant belongs to is the agent's knowledge, keyed by the same
//! (source, app) pair; the kernel only needs the deadline, the epoch and the counters.

/// Number of low bits of an epoch that grants keep and compare.
pub const EPOCH_BITS: u32 = 24;
/// Mask of the epoch bits.
pub const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

/// Key of a grant: the pair a slot of `GRANTS` is looked up by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    /// Source address observed by the agent, network byte order; IPv4 as `::ffff:a.b.c.d`.
    pub src: [u8; 16],
    /// App the grant opens ([`crate::service::ServiceValue::app_id`]).
    pub app_id: u32,
}

const _: () = assert!(size_of::<GrantKey>() == 20);

/// Whether `epoch` (a grant's) is the current one (`CONFIG.epoch`), comparing the bits a grant keeps.
#[inline(always)]
pub const fn epoch_matches(grant_epoch: u32, current: u32) -> bool {
    (grant_epoch as u64 & EPOCH_MASK) == (current as u64 & EPOCH_MASK)
}

/// [`GrantSlot::state`] of a slot that holds no grant (every slot of a fresh table).
pub const SLOT_FREE: u32 = 0;
/// [`GrantSlot::state`] of a slot that holds a grant.
pub const SLOT_USED: u32 = 1;

/// One slot of the grant table.
///
/// Fields the agent owns (`seq` .. `expires_at_ns`) are written only by the agent, inside the slot's
/// seqlock; `bytes` and `packets` are written only by the XDP program (and zeroed by the agent when it
/// installs a grant). 56 bytes: a table sized for one million grants at 90 % load takes about 62 bytes
/// of kernel memory per grant (the preallocated hash map it replaced took 113).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantSlot {
    /// Sequence counter: odd while the agent rewrites the slot, bumped by two per rewrite.
    pub seq: u32,
    /// [`SLOT_FREE`] or [`SLOT_USED`].
    pub state: u32,
    /// Source address, network byte order; IPv4 as `::ffff:a.b.c.d` ([`GrantKey::src`]).
    pub src: [u8; 16],
    /// App the grant opens ([`GrantKey::app_id`]).
    pub app_id: u32,
    /// Epoch the grant was written under (low [`EPOCH_BITS`] bits).
    pub epoch: u32,
    /// Deadline on the kernel's monotonic clock (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns`). A packet at
    /// or after this instant is dropped, whether or not the agent is running.
    pub expires_at_ns: u64,
    /// Bytes passed under this grant (L2 frame length).
    pub bytes: u64,
    /// Packets passed under this grant.
    pub packets: u64,
}

const _: () = assert!(size_of::<GrantSlot>() == 56);
// The XDP program reads `seq` and `state` as one little-endian `u64` and the source as two `u64`s.
const _: () = assert!(core::mem::offset_of!(GrantSlot, state) == 4);
const _: () = assert!(core::mem::offset_of!(GrantSlot, src) == 8);

impl GrantSlot {
    /// The key the slot holds (meaningful when `state` is [`SLOT_USED`]).
    pub const fn key(&self) -> GrantKey {
        GrantKey {
            src: self.src,
            app_id: self.app_id,
        }
    }
}

/// Slots per bucket: a lookup compares at most twice this many slots.
pub const SLOTS_PER_BUCKET: usize = 4;

/// One element of `GRANTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantBucket {
    pub slots: [GrantSlot; SLOTS_PER_BUCKET],
}

const _: () = assert!(size_of::<GrantBucket>() == 224);

/// Highest share of slots, in percent, that a table holds when it is full to its capacity. Cuckoo
/// tables with two choices and four slots per bucket place keys reliably up to about 95 %.
pub const MAX_LOAD_PERCENT: u64 = 90;
/// Buckets every table gets on top of its share: small tables have few buckets, and a handful of
/// keys that all pick the same two would otherwise fill them.
pub const SPARE_BUCKETS: u64 = 8;
/// Largest bucket count a table may have (the array's `max_entries` is a `u32`, and bucket selection
/// multiplies a 32-bit hash by it).
pub const MAX_BUCKETS: u64 = u32::MAX as u64;

/// Buckets of a table that holds `capacity` grants at no more than [`MAX_LOAD_PERCENT`] load.
pub const fn buckets_for_capacity(capacity: u32) -> u32 {
    let slots = (capacity as u64 * 100).div_ceil(MAX_LOAD_PERCENT);
    let buckets = slots.div_ceil(SLOTS_PER_BUCKET as u64) + SPARE_BUCKETS;
    if buckets > MAX_BUCKETS {
        MAX_BUCKETS as u32
    } else {
        buckets as u32
    }
}

/// Odd 64-bit multipliers (from `splitmix64`).
const MULTIPLIER_A: u64 = 0x9e37_79b9_7f4a_7c15;
const MULTIPLIER_B: u64 = 0xbf58_476d_1ce4_e5b9;
const MULTIPLIER_C: u64 = 0x94d0_49bb_1331_11eb;

/// The source address as the two little-endian `u64` words the table hashes and compares (the same
/// words the XDP program loads from a slot).
#[inline(always)]
pub const fn source_words(src: &[u8; 16]) -> [u64; 2] {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        low[i] = src[i];
        high[i] = src[8 + i];
        i += 1;
    }
    [u64::from_le_bytes(low), u64::from_le_bytes(high)]
}

/// [`source_words`] of the IPv4 source `addr` (network byte order) as `::ffff:a.b.c.d`, without
/// building the 16 bytes first.
#[inline(always)]
pub const fn ipv4_source_words(addr: [u8; 4]) -> [u64; 2] {
    [0, 0xffff_0000 | (u32::from_le_bytes(addr) as u64) << 32]
}

/// Whether source words hold an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
#[inline(always)]
pub const fn is_ipv4_mapped_words(words: [u64; 2]) -> bool {
    words[0] == 0 && words[1] & 0xffff_ffff == 0xffff_0000
}

/// Hash of a key's source under the table's per-instance `seed`: two well-mixed 32-bit values (low
/// and high half), one per candidate bucket, that [`grant_hash`] combines with the app.
///
/// A verdict waits for the hash, so it is built for latency rather than instruction count, and split
/// so that the XDP program can compute this, the larger part, before its service lookup (which
/// yields the app) and overlap the two. The prefix word is folded in through a multiplication, so
/// that it cannot cancel the address word; then every bit is folded into the low half, which every
/// bit of a product's high half depends on, and two independent multiplications (which the CPU runs
/// side by side) give the two high halves.
///
/// Only the agent inserts keys, and only for authenticated sources, so the hash need not resist
/// chosen keys; the random seed still keeps one instance's collisions from being another's.
#[inline(always)]
pub const fn source_hash(words: [u64; 2], seed: u64) -> u64 {
    let mut folded = (words[0] ^ seed).wrapping_mul(MULTIPLIER_A) ^ words[1];
    folded ^= folded >> 32;
    folded ^= seed >> 7;
    let first = folded.wrapping_mul(MULTIPLIER_B);
    let second = folded.wrapping_mul(MULTIPLIER_C);
    (first >> 32) | (second & 0xffff_ffff_0000_0000)
}

/// Odd 32-bit multipliers for the app (Fibonacci hashing: consecutive ids spread over the top bits).
const APP_MULTIPLIER_A: u32 = 0x9e37_79b9;
const APP_MULTIPLIER_B: u32 = 0x85eb_ca6b;

/// The two 32-bit hashes of (`source`, `app_id`), `source` from [`source_hash`]: one multiplication
/// per half after the app is known.
#[inline(always)]
pub const fn grant_hash(source: u64, app_id: u32) -> [u32; 2] {
    [
        source as u32 ^ app_id.wrapping_mul(APP_MULTIPLIER_A),
        (source >> 32) as u32 ^ app_id.wrapping_mul(APP_MULTIPLIER_B),
    ]
}

/// Maps a 32-bit hash onto `0..buckets` without a division (Lemire's multiply-shift reduction), so
/// that the bucket count need not be a power of two and a table is sized to its capacity.
#[inline(always)]
pub const fn reduce(hash: u32, buckets: u32) -> u32 {
    ((hash as u64 * buckets as u64) >> 32) as u32
}

/// The two buckets a key with hash `hash` may live in. They coincide for about one key in `buckets`,
/// which then has four candidate slots.
#[inline(always)]
pub const fn candidate_buckets(hash: [u32; 2], buckets: u32) -> [u32; 2] {
    [reduce(hash[0], buckets), reduce(hash[1], buckets)]
}

/// [`candidate_buckets`] of `key` in a table of `buckets` buckets hashed with `seed`.
#[inline(always)]
pub const fn key_buckets(key: &GrantKey, seed: u64, buckets: u32) -> [u32; 2] {
    candidate_buckets(
        grant_hash(source_hash(source_words(&key.src), seed), key.app_id),
        buckets,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_compares_low_bits_only() {
        assert!(epoch_matches(5, 5));
        assert!(epoch_matches(5, 5 + (1 << EPOCH_BITS)));
        assert!(!epoch_matches(5, 6));
    }

    #[test]
    fn sizing_keeps_load_under_the_limit_and_memory_under_budget() {
        for capacity in [1u32, 3, 10, 1024, 65_536, 1_000_000, 1 << 24] {
            let buckets = buckets_for_capacity(capacity);
            let slots = u64::from(buckets) * SLOTS_PER_BUCKET as u64;
            assert!(
                u64::from(capacity) * 100 <= slots * MAX_LOAD_PERCENT,
                "{capacity} grants in {slots} slots"
            );
        }
        // One million grants: the budget is 120 bytes of kernel memory per grant.
        let bytes = u64::from(buckets_for_capacity(1_000_000)) * size_of::<GrantBucket>() as u64;
        assert!(bytes / 1_000_000 <= 64, "{bytes} bytes for 1M grants");
        assert!(buckets_for_capacity(u32::MAX) < u32::MAX);
    }

    #[test]
    fn reduce_covers_the_range_and_stays_inside_it() {
        assert_eq!(reduce(0, 10), 0);
        assert_eq!(reduce(u32::MAX, 10), 9);
        assert_eq!(reduce(u32::MAX, 1), 0);
        assert_eq!(reduce(1 << 31, 10), 5);
        assert_eq!(reduce(12345, 0), 0);
    }

    #[test]
    fn source_words_are_little_endian_halves() {
        let mut src = [0u8; 16];
        src[0] = 1;
        src[8] = 2;
        src[15] = 0x80;
        assert_eq!(source_words(&src), [1, 2 | (0x80 << 56)]);
    }

    #[test]
    fn ipv4_words_match_the_mapped_address() {
        let addr = [192, 0, 2, 10];
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&addr);
        assert_eq!(ipv4_source_words(addr), source_words(&mapped));
        assert!(is_ipv4_mapped_words(source_words(&mapped)));
        mapped[9] = 1;
        assert!(!is_ipv4_mapped_words(source_words(&mapped)));
        let v6: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert!(!is_ipv4_mapped_words(source_words(&v6)));
    }

    #[test]
    fn hash_depends_on_every_key_word_and_the_seed() {
        let hash = |words, app_id, seed| grant_hash(source_hash(words, seed), app_id);
        let words = [0x1111, 0x2222];
        let base = hash(words, 7, 42);
        for other in [
            hash([0x1110, 0x2222], 7, 42),
            hash([0x1111, 0x2223], 7, 42),
            hash(words, 8, 42),
            hash(words, 7, 43),
        ] {
            assert_ne!(base[0], other[0]);
            assert_ne!(base[1], other[1]);
        }
        assert_eq!(base, hash(words, 7, 42));
    }

    #[test]
    fn buckets_spread_evenly_over_a_table() {
        // 100 000 IPv4 sources in a row (the worst case for a weak hash: one byte varies at a time)
        // over 1000 buckets: every bucket gets close to its share through both choices.
        let buckets = 1000u32;
        let mut counts = [0u32; 1000];
        let mut same = 0;
        for i in 0..100_000u32 {
            let mut src = [0u8; 16];
            src[10] = 0xff;
            src[11] = 0xff;
            src[12..].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            let [b0, b1] = key_buckets(&GrantKey { src, app_id: 1 }, 0xdead_beef, buckets);
            assert!(b0 < buckets && b1 < buckets);
            counts[b0 as usize] += 1;
            counts[b1 as usize] += 1;
            same += u32::from(b0 == b1);
        }
        // 200 expected per bucket; a binomial spread stays within about ±4.5 sigma (sigma ~ 14).
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 135 && *max < 265, "bucket loads {min}..{max}");
        assert!(same < 250, "{same} keys with one candidate bucket");

        // IPv6 sources in one /64 with sequential interface ids, and many apps per source.
        let mut counts = [0u32; 1000];
        for i in 0..100_000u64 {
            let mut src = [0u8; 16];
            src[..8].copy_from_slice(&0x2001_0db8_0001_0000u64.to_be_bytes());
            src[8..].copy_from_slice(&(i / 4).to_be_bytes());
            let key = GrantKey {
                src,
                app_id: (i % 4) as u32 + 1,
            };
            let [b0, b1] = key_buckets(&key, 0x1234_5678_9abc, buckets);
            counts[b0 as usize] += 1;
            counts[b1 as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 135 && *max < 265, "IPv6 bucket loads {min}..{max}");
    }
}
