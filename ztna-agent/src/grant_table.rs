//! The writer side of the grant table: a bucketized cuckoo hash table over the slots of `GRANTS`
//! (layout, hashing and bucket selection in [`ztna_common::grant`]).
//!
//! The table works on any [`BucketMemory`]: the `mmap` of the BPF array in the data plane, a heap
//! allocation in the unit tests, so that the same code is tested without a kernel.
//!
//! # Concurrency and memory ordering
//!
//! There is one writer (the task that owns the [`crate::dataplane::Dataplane`]; `&mut self` here) and
//! any number of XDP readers on other CPUs. Every rewrite of a slot's agent-owned fields (state, key,
//! epoch, deadline; counters when a grant is installed) is bracketed by its sequence counter:
//!
//! 1. store `seq + 1` (odd), then a release fence (the `smp_wmb` of a seqlock writer),
//! 2. write the fields (volatile stores),
//! 3. a release fence, then store `seq + 2` (even).
//!
//! The reader (`ztna-ebpf/src/verdict.rs`, `read_slot`) loads the counter, the key, the epoch and the
//! deadline, and the counter again, and uses what it read only when the counter was even and did not
//! change. On x86 (TSO) stores become visible in program order and loads are not reordered with
//! other loads, so the fences only have to stop the compiler (they compile to nothing) and the BPF
//! JIT keeps the program's load order: a reader that sees the same even counter twice read fields
//! from before the write began or after it ended, never a mix. On arm64 the writer's fences become
//! `dmb ish` (already correct), but the reader would need its first counter load to be a
//! load-acquire and a load barrier before the re-read, which BPF offers only as `BPF_LOAD_ACQ`
//! (Linux 6.15) or a fully ordered atomic: x86 is the platform this module is built and tested for.
//!
//! Failing closed: a slot being rewritten reads as "no grant", so an update can cost a packet, but a
//! reader can never combine one grant's key with another's deadline or epoch. A cuckoo displacement
//! copies an entry into its new slot *before* its old slot is overwritten, so the entry is always in
//! at least one of its slots; a reader that scans the destination just before the copy and the
//! source just after the overwrite still misses it, and drops that one packet. Displacements only
//! happen on inserts whose two candidate buckets are both full.
//!
//! The packet and byte counters belong to the XDP program (plain adds). The writer zeroes them when
//! it installs a grant and copies them when it moves one; increments that race with either are lost,
//! as increments racing each other on two CPUs are. The writer never rewrites the counters of a
//! grant it extends.

use std::{
    collections::HashSet,
    ptr::{NonNull, addr_of_mut},
    sync::atomic::{AtomicU32, Ordering, fence},
};

use thiserror::Error;
use ztna_common::grant::{
    GrantBucket, GrantKey, GrantSlot, SLOT_FREE, SLOT_USED, SLOTS_PER_BUCKET, key_buckets,
};

/// Most buckets one insert examines while it searches for a displacement path (breadth first, so
/// paths stay short: four levels already reach 2 + 8 + 32 + 128 buckets).
const MAX_SEARCH_BUCKETS: usize = 2048;

/// Memory that holds a table's buckets, zeroed when fresh.
pub trait BucketMemory {
    /// The first bucket; `buckets()` of them follow, writable through this pointer.
    fn base(&self) -> NonNull<GrantBucket>;
    /// Number of buckets.
    fn buckets(&self) -> u32;
}

/// Buckets on the heap: the in-memory model the unit tests run the table on.
pub struct HeapBuckets {
    base: NonNull<GrantBucket>,
    buckets: u32,
}

impl HeapBuckets {
    pub fn new(buckets: u32) -> Self {
        let boxed = vec![GrantBucket::default(); buckets as usize].into_boxed_slice();
        let base = NonNull::new(Box::into_raw(boxed).cast::<GrantBucket>())
            .expect("Box::into_raw is never null");
        Self { base, buckets }
    }
}

impl BucketMemory for HeapBuckets {
    fn base(&self) -> NonNull<GrantBucket> {
        self.base
    }

    fn buckets(&self) -> u32 {
        self.buckets
    }
}

impl Drop for HeapBuckets {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.buckets as usize);
        // SAFETY: `base` and `buckets` come from `Box::into_raw` of a boxed slice of that length.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Why a grant could not be installed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum TableError {
    #[error("the grant table holds its capacity of {capacity} grants")]
    Full { capacity: u32 },
    #[error(
        "no free slot for the grant within {MAX_SEARCH_BUCKETS} buckets of displacement search \
         ({len} of {capacity} grants installed)"
    )]
    NoSlot { len: u32, capacity: u32 },
}

/// Index of a slot: `bucket * SLOTS_PER_BUCKET + slot`.
type SlotIndex = usize;

/// A node of the displacement search: the item at `parent_slot` of the parent node's bucket would
/// move into `bucket`.
#[derive(Clone, Copy)]
struct SearchNode {
    bucket: u32,
    parent: Option<usize>,
    parent_slot: usize,
}

/// The grant table. Only `&mut self` methods write, so one owner is the one writer.
pub struct GrantTable<M> {
    memory: M,
    buckets: u32,
    seed: u64,
    capacity: u32,
    len: u32,
}

impl<M: BucketMemory> GrantTable<M> {
    /// A table over `memory` that has never been written (all zeros): no scan needed.
    pub fn new_empty(memory: M, seed: u64, capacity: u32) -> Self {
        let buckets = memory.buckets();
        Self {
            memory,
            buckets,
            seed,
            capacity,
            len: 0,
        }
    }

    /// A table over `memory` that may hold grants (a pinned map): counts them, and frees any slot left
    /// mid-rewrite (odd sequence) by a writer that died there, since its fields may be half written.
    pub fn open(memory: M, seed: u64, capacity: u32) -> Self {
        let mut table = Self::new_empty(memory, seed, capacity);
        for index in 0..table.slot_count() {
            let slot = table.read(index);
            if slot.seq & 1 == 1 {
                table.write(index, clear);
            } else if slot.state == SLOT_USED {
                table.len += 1;
            }
        }
        table
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn memory(&self) -> &M {
        &self.memory
    }

    fn slot_count(&self) -> usize {
        self.buckets as usize * SLOTS_PER_BUCKET
    }

    fn slot_ptr(&self, index: SlotIndex) -> *mut GrantSlot {
        assert!(index < self.slot_count(), "slot {index} out of range");
        // SAFETY: `index` is inside the memory, which holds `buckets` contiguous buckets of
        // `SLOTS_PER_BUCKET` slots each (`GrantBucket` is `repr(C)` with no padding).
        unsafe { self.memory.base().cast::<GrantSlot>().as_ptr().add(index) }
    }

    /// A copy of slot `index`. The XDP program may be adding to the counters meanwhile; the other
    /// fields change only through `&mut self`.
    fn read(&self, index: SlotIndex) -> GrantSlot {
        // SAFETY: an aligned, initialized slot inside the memory; volatile because the kernel writes
        // the counters concurrently.
        unsafe { std::ptr::read_volatile(self.slot_ptr(index)) }
    }

    /// Rewrites slot `index` under its sequence counter (see the module documentation).
    fn write(&mut self, index: SlotIndex, fields: impl FnOnce(*mut GrantSlot)) {
        let slot = self.slot_ptr(index);
        // SAFETY: `seq` is an aligned `u32` inside the memory, and `AtomicU32` has its layout; the
        // only other accesses to it are the XDP program's loads.
        let seq = unsafe { AtomicU32::from_ptr(addr_of_mut!((*slot).seq)) };
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        fields(slot);
        fence(Ordering::Release);
        seq.store(odd.wrapping_add(1), Ordering::Relaxed);
    }

    fn candidates(&self, key: &GrantKey) -> [u32; 2] {
        key_buckets(key, self.seed, self.buckets)
    }

    fn bucket_slots(bucket: u32) -> impl Iterator<Item = SlotIndex> {
        let first = bucket as usize * SLOTS_PER_BUCKET;
        first..first + SLOTS_PER_BUCKET
    }

    /// The slot that holds `key`, if any.
    fn find(&self, key: &GrantKey) -> Option<SlotIndex> {
        let [first, second] = self.candidates(key);
        Self::bucket_slots(first)
            .chain(Self::bucket_slots(second))
            .find(|index| {
                let slot = self.read(*index);
                slot.state == SLOT_USED && slot.key() == *key
            })
    }

    fn free_slot(&self, bucket: u32) -> Option<SlotIndex> {
        Self::bucket_slots(bucket).find(|index| self.read(*index).state != SLOT_USED)
    }

    /// The grant for `key`, if installed.
    pub fn get(&self, key: &GrantKey) -> Option<GrantSlot> {
        self.find(key).map(|index| self.read(index))
    }

    /// Every installed grant, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = GrantSlot> + '_ {
        (0..self.slot_count())
            .map(|index| self.read(index))
            .filter(|slot| slot.state == SLOT_USED)
    }

    /// Installs or replaces the grant for `key`; counters restart.
    pub fn upsert(
        &mut self,
        key: &GrantKey,
        expires_at_ns: u64,
        epoch: u32,
    ) -> Result<(), TableError> {
        let grant = GrantSlot {
            seq: 0,
            state: SLOT_USED,
            src: key.src,
            app_id: key.app_id,
            epoch,
            expires_at_ns,
            bytes: 0,
            packets: 0,
        };
        if let Some(index) = self.find(key) {
            self.write(index, |slot| store(slot, &grant));
            return Ok(());
        }
        if self.len >= self.capacity {
            return Err(TableError::Full {
                capacity: self.capacity,
            });
        }
        let [first, second] = self.candidates(key);
        let index = match self.free_slot(first).or_else(|| self.free_slot(second)) {
            Some(index) => index,
            None => self.make_room([first, second]).ok_or(TableError::NoSlot {
                len: self.len,
                capacity: self.capacity,
            })?,
        };
        self.write(index, |slot| store(slot, &grant));
        self.len += 1;
        Ok(())
    }

    /// Moves the deadline of the grant for `key`, keeping its epoch and counters. False if none.
    pub fn extend(&mut self, key: &GrantKey, expires_at_ns: u64) -> bool {
        let Some(index) = self.find(key) else {
            return false;
        };
        self.write(index, |slot| {
            // SAFETY: `slot` points at a slot inside the memory.
            unsafe { std::ptr::write_volatile(addr_of_mut!((*slot).expires_at_ns), expires_at_ns) };
        });
        true
    }

    /// Removes the grant for `key`; false if there was none.
    pub fn remove(&mut self, key: &GrantKey) -> bool {
        let Some(index) = self.find(key) else {
            return false;
        };
        self.write(index, clear);
        self.len -= 1;
        true
    }

    /// Frees a slot in one of `start` (both full) by moving entries along the shortest path of
    /// displacements to a bucket with a free slot, found breadth first; returns the freed slot.
    ///
    /// The moves run from the far end of the path back: each copies an entry into a slot that is
    /// free or whose entry was already copied onward, so every entry stays readable throughout.
    fn make_room(&mut self, start: [u32; 2]) -> Option<SlotIndex> {
        let mut nodes: Vec<SearchNode> = Vec::new();
        let mut visited: HashSet<u32> = HashSet::new();
        for bucket in start {
            if visited.insert(bucket) {
                nodes.push(SearchNode {
                    bucket,
                    parent: None,
                    parent_slot: 0,
                });
            }
        }
        let mut head = 0;
        while head < nodes.len() && nodes.len() < MAX_SEARCH_BUCKETS {
            let node = nodes[head];
            for from in Self::bucket_slots(node.bucket) {
                let entry = self.read(from);
                let [a, b] = self.candidates(&entry.key());
                let alternative = if a == node.bucket { b } else { a };
                if alternative == node.bucket {
                    continue;
                }
                if let Some(to) = self.free_slot(alternative) {
                    return Some(self.displace(&nodes, head, from, to));
                }
                if visited.insert(alternative) {
                    nodes.push(SearchNode {
                        bucket: alternative,
                        parent: Some(head),
                        parent_slot: from - node.bucket as usize * SLOTS_PER_BUCKET,
                    });
                }
            }
            head += 1;
        }
        None
    }

    /// Runs the moves of a path that ends with `last_from` -> `last_to` (a free slot) in node `leaf`,
    /// and returns the root slot it frees.
    fn displace(
        &mut self,
        nodes: &[SearchNode],
        leaf: usize,
        last_from: SlotIndex,
        last_to: SlotIndex,
    ) -> SlotIndex {
        self.move_entry(last_from, last_to);
        let mut freed = last_from;
        let mut current = leaf;
        while let Some(parent) = nodes[current].parent {
            let from =
                nodes[parent].bucket as usize * SLOTS_PER_BUCKET + nodes[current].parent_slot;
            self.move_entry(from, freed);
            freed = from;
            current = parent;
        }
        freed
    }

    /// Copies the entry at `from` into `to` (free, or already copied onward). `from` keeps its
    /// copy until the caller overwrites it.
    fn move_entry(&mut self, from: SlotIndex, to: SlotIndex) {
        let entry = self.read(from);
        self.write(to, |slot| store(slot, &entry));
    }
}

/// Writes every field of `grant` but the sequence counter into `slot`.
fn store(slot: *mut GrantSlot, grant: &GrantSlot) {
    // SAFETY: `slot` points at an aligned slot inside the memory, inside a seqlock write.
    unsafe {
        std::ptr::write_volatile(addr_of_mut!((*slot).state), grant.state);
        std::ptr::write_volatile(addr_of_mut!((*slot).src), grant.src);
        std::ptr::write_volatile(addr_of_mut!((*slot).app_id), grant.app_id);
        std::ptr::write_volatile(addr_of_mut!((*slot).epoch), grant.epoch);
        std::ptr::write_volatile(addr_of_mut!((*slot).expires_at_ns), grant.expires_at_ns);
        std::ptr::write_volatile(addr_of_mut!((*slot).bytes), grant.bytes);
        std::ptr::write_volatile(addr_of_mut!((*slot).packets), grant.packets);
    }
}

/// Frees `slot`, zeroing what it held.
fn clear(slot: *mut GrantSlot) {
    store(
        slot,
        &GrantSlot {
            state: SLOT_FREE,
            ..GrantSlot::default()
        },
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
    use ztna_common::grant::buckets_for_capacity;

    use super::*;

    fn key(n: u32) -> GrantKey {
        let mut src = [0u8; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..].copy_from_slice(&n.to_be_bytes());
        GrantKey {
            src,
            app_id: 1 + n % 3,
        }
    }

    fn table(capacity: u32) -> GrantTable<HeapBuckets> {
        GrantTable::new_empty(
            HeapBuckets::new(buckets_for_capacity(capacity)),
            0x5eed,
            capacity,
        )
    }

    /// Every key is in one of its two candidate buckets, exactly once, and `len` counts them.
    fn assert_consistent(table: &GrantTable<HeapBuckets>) {
        let mut seen = HashSet::new();
        for index in 0..table.slot_count() {
            let slot = table.read(index);
            assert_eq!(slot.seq & 1, 0, "slot {index} left mid-write");
            if slot.state != SLOT_USED {
                assert_eq!(
                    slot,
                    GrantSlot {
                        seq: slot.seq,
                        ..GrantSlot::default()
                    }
                );
                continue;
            }
            let bucket = (index / SLOTS_PER_BUCKET) as u32;
            assert!(table.candidates(&slot.key()).contains(&bucket));
            assert!(seen.insert(slot.key()), "{:?} twice", slot.key());
        }
        assert_eq!(seen.len(), table.len() as usize);
    }

    #[test]
    fn insert_get_extend_remove() {
        let mut table = table(16);
        table.upsert(&key(1), 100, 3).unwrap();
        let grant = table.get(&key(1)).unwrap();
        assert_eq!((grant.expires_at_ns, grant.epoch), (100, 3));
        assert_eq!(table.get(&key(2)), None);

        // The XDP program counts; extending keeps the counters, upserting restarts them.
        let index = table.find(&key(1)).unwrap();
        // SAFETY: a slot of the table, no concurrent access in this test.
        unsafe { (*table.slot_ptr(index)).packets = 5 };
        assert!(table.extend(&key(1), 200));
        let grant = table.get(&key(1)).unwrap();
        assert_eq!(
            (grant.expires_at_ns, grant.epoch, grant.packets),
            (200, 3, 5)
        );
        table.upsert(&key(1), 300, 4).unwrap();
        let grant = table.get(&key(1)).unwrap();
        assert_eq!(
            (grant.expires_at_ns, grant.epoch, grant.packets),
            (300, 4, 0)
        );
        assert_eq!(table.len(), 1);

        assert!(!table.extend(&key(2), 1));
        assert!(table.remove(&key(1)));
        assert!(!table.remove(&key(1)));
        assert_eq!(table.get(&key(1)), None);
        assert!(table.is_empty());
        assert_consistent(&table);
    }

    #[test]
    fn every_write_leaves_an_even_sequence_that_moved() {
        let mut table = table(4);
        table.upsert(&key(1), 1, 0).unwrap();
        let index = table.find(&key(1)).unwrap();
        let before = table.read(index).seq;
        assert_eq!(before % 2, 0);
        table.extend(&key(1), 2);
        assert_eq!(table.read(index).seq, before + 2);
    }

    #[test]
    fn fills_to_capacity_then_reports_full() {
        let capacity = 50_000;
        let mut table = table(capacity);
        for n in 0..capacity {
            table
                .upsert(&key(n), u64::from(n), 1)
                .unwrap_or_else(|e| panic!("grant {n}: {e}"));
        }
        assert_eq!(table.len(), capacity);
        assert_eq!(
            table.upsert(&key(capacity), 1, 1),
            Err(TableError::Full { capacity })
        );
        // Replacing an installed grant still works when full.
        table.upsert(&key(7), 77, 1).unwrap();
        assert_consistent(&table);
        for n in 0..capacity {
            let expected = if n == 7 { 77 } else { u64::from(n) };
            assert_eq!(
                table.get(&key(n)).unwrap().expires_at_ns,
                expected,
                "grant {n}"
            );
        }
    }

    #[test]
    fn small_tables_hold_their_capacity() {
        for capacity in [1, 2, 3, 5, 10, 17, 100] {
            for seed in 0..50 {
                let mut table = GrantTable::new_empty(
                    HeapBuckets::new(buckets_for_capacity(capacity)),
                    seed,
                    capacity,
                );
                for n in 0..capacity {
                    table.upsert(&key(n * 7919 + seed as u32), 1, 0).unwrap();
                }
                assert_consistent(&table);
            }
        }
    }

    #[test]
    fn displacement_keeps_every_entry() {
        // Two buckets only (no spare ones): the third key onwards needs displacements.
        let mut table = GrantTable::new_empty(HeapBuckets::new(3), 1, 10);
        let mut placed = Vec::new();
        for n in 0..10_000 {
            if table.upsert(&key(n), u64::from(n), 0).is_ok() {
                placed.push(n);
            }
            if placed.len() == 10 {
                break;
            }
        }
        assert_eq!(placed.len(), 10);
        assert_consistent(&table);
        for n in placed {
            assert_eq!(table.get(&key(n)).unwrap().expires_at_ns, u64::from(n));
        }
    }

    #[test]
    fn random_operations_match_a_reference_model() {
        let capacity = 2000;
        let mut table = table(capacity);
        let mut model: BTreeMap<GrantKey, (u64, u32)> = BTreeMap::new();
        let mut rng = SmallRng::seed_from_u64(7);
        for step in 0..200_000u64 {
            let k = key(rng.random_range(0..3000));
            match rng.random_range(0..4) {
                0 | 1 => {
                    let result = table.upsert(&k, step, 2);
                    if model.contains_key(&k) || model.len() < capacity as usize {
                        result.unwrap();
                        model.insert(k, (step, 2));
                    } else {
                        assert_eq!(result, Err(TableError::Full { capacity }));
                    }
                }
                2 => {
                    assert_eq!(table.remove(&k), model.remove(&k).is_some());
                }
                _ => {
                    let extended = table.extend(&k, step);
                    assert_eq!(extended, model.contains_key(&k));
                    if let Some(entry) = model.get_mut(&k) {
                        entry.0 = step;
                    }
                }
            }
        }
        assert_consistent(&table);
        let actual: BTreeMap<GrantKey, (u64, u32)> = table
            .entries()
            .map(|s| (s.key(), (s.expires_at_ns, s.epoch)))
            .collect();
        assert_eq!(actual, model);
    }

    #[test]
    fn open_counts_grants_and_frees_half_written_slots() {
        let memory = HeapBuckets::new(buckets_for_capacity(100));
        let mut table = GrantTable::new_empty(memory, 9, 100);
        for n in 0..40 {
            table.upsert(&key(n), 1, 0).unwrap();
        }
        let torn = table.find(&key(3)).unwrap();
        // A writer that died between its two sequence stores.
        // SAFETY: a slot of the table, no concurrent access in this test.
        unsafe { (*table.slot_ptr(torn)).seq |= 1 };
        let GrantTable { memory, .. } = table;
        let reopened = GrantTable::open(memory, 9, 100);
        assert_eq!(reopened.len(), 39);
        assert_eq!(reopened.get(&key(3)), None);
        assert!(reopened.get(&key(4)).is_some());
        assert_consistent(&reopened);
    }

    #[test]
    fn a_different_seed_does_not_find_the_grants() {
        // Seeds are per instance and pinned: reopening with another seed must not be silent.
        let mut table = table(100);
        for n in 0..100 {
            table.upsert(&key(n), 1, 0).unwrap();
        }
        let GrantTable { memory, .. } = table;
        let other = GrantTable::open(memory, 0x5eed + 1, 100);
        let found = (0..100).filter(|n| other.get(&key(*n)).is_some()).count();
        assert!(found < 50, "{found} of 100 grants found under another seed");
    }
}
