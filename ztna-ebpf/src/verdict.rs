//! The verdict path: L2 -> L3 -> protected? -> L4 -> service -> grant -> expiry and epoch.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use ztna_common::{
    config::{GlobalConfig, MODE_MONITOR},
    grant::{
        GrantSlot, SLOT_USED, SLOTS_PER_BUCKET, candidate_buckets, epoch_matches, grant_hash,
        ipv4_source_words, is_ipv4_mapped_words, source_hash, source_words,
    },
    service::{
        APP_MODE_ENFORCE, APP_MODE_INHERIT, APP_MODE_MONITOR, SERVICE_PREFIX_EXACT, ServiceKey,
        ServiceValue,
    },
    verdict::{
        DROP_EXPIRED, DROP_FRAGMENT, DROP_NO_GRANT, DROP_NO_SERVICE, DROP_STALE_EPOCH,
        DROP_TRUNCATED_L3, PASS_GRANT, PASS_NEIGHBOR_DISCOVERY, PASS_NOT_IP, PASS_NOT_PROTECTED,
        is_pass, stat_index,
    },
};

use crate::{
    event, ipv4, ipv6, l4,
    maps::{CONFIG, GRANTS, PROTECTED_V4, PROTECTED_V6, SERVICES, STATS},
    parse::{ETH_P_IPV4, ETH_P_IPV6, parse_l2, read_at},
};

/// What the L3 parsers found. Addresses stay in the packet and are read where they are needed, which
/// keeps the program well inside the 512-byte BPF stack.
pub struct L3 {
    pub ip_version: u8,
    pub proto: u8,
    pub hop_limit: u8,
    pub non_first_fragment: bool,
    /// The datagram claims more than `MAX_CHECKED_DATAGRAM_LEN` bytes, which cannot be checked.
    pub oversized: bool,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the next header (options skipped; IPv6 extension headers not yet skipped).
    pub next_offset: usize,
    /// Offset just past the datagram as its header states it (IPv4 total length, IPv6 payload
    /// length). Bytes after it are Ethernet padding or junk that the stack trims, so no header the
    /// verdict depends on may be read from them.
    pub end_offset: usize,
}

/// Everything known about a packet when its verdict is reached; feeds the event record.
#[derive(Clone, Copy)]
pub struct PacketInfo {
    pub ip_version: u8,
    pub proto: u8,
    pub sport_be: u16,
    pub dport_be: u16,
    pub app_id: u32,
    pub app_mode: u32,
    /// Offset of the IP header, valid when `ip_version` is not 0.
    pub l3_offset: usize,
}

impl PacketInfo {
    const fn empty() -> Self {
        Self {
            ip_version: 0,
            proto: 0,
            sport_be: 0,
            dport_be: 0,
            app_id: 0,
            app_mode: APP_MODE_INHERIT,
            l3_offset: 0,
        }
    }
}

#[inline(always)]
pub fn try_ztna_ingress(ctx: &XdpContext) -> u32 {
    // A missing entry reads as all zeros: enforce, epoch 0, no events.
    let config = match CONFIG.get(0) {
        Some(config) => *config,
        None => GlobalConfig::default(),
    };
    let mut info = PacketInfo::empty();
    let reason = match classify(ctx, &config, &mut info) {
        Ok(reason) | Err(reason) => reason,
    };
    let monitored = !is_pass(reason) && monitor_mode(&config, info.app_mode);
    count(stat_index(reason, monitored));
    if !is_pass(reason) {
        event::emit(ctx, &config, &info, reason, monitored);
    }
    if is_pass(reason) || monitored {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

/// Whether a would-drop passes: an app's own mode wins over the global one.
#[inline(always)]
fn monitor_mode(config: &GlobalConfig, app_mode: u32) -> bool {
    match app_mode {
        APP_MODE_MONITOR => true,
        APP_MODE_ENFORCE => false,
        _ => config.mode == MODE_MONITOR,
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, valid for the whole program run; no other context on this CPU
        // writes it concurrently.
        unsafe { *counter += 1 };
    }
}

/// The verdict reason for a packet; `Err` carries a drop reason found while parsing.
#[inline(always)]
fn classify(ctx: &XdpContext, config: &GlobalConfig, info: &mut PacketInfo) -> Result<u32, u32> {
    let l2 = parse_l2(ctx)?;
    let (mut l3, net_id) = match l2.ether_type {
        ETH_P_IPV4 => {
            let l3 = ipv4::parse(ctx, l2.l3_offset)?;
            info.ip_version = 4;
            info.l3_offset = l3.l3_offset;
            let dst: [u8; 4] =
                read_at(ctx, l3.l3_offset + ipv4::IPV4_DST_OFFSET).ok_or(DROP_TRUNCATED_L3)?;
            match PROTECTED_V4.get(Key::new(32, dst)) {
                Some(net) => (l3, net.net_id),
                None => return Ok(PASS_NOT_PROTECTED),
            }
        }
        ETH_P_IPV6 => {
            let l3 = ipv6::parse(ctx, l2.l3_offset)?;
            info.ip_version = 6;
            info.l3_offset = l3.l3_offset;
            let dst: [u8; 16] =
                read_at(ctx, l3.l3_offset + ipv6::IPV6_DST_OFFSET).ok_or(DROP_TRUNCATED_L3)?;
            match PROTECTED_V6.get(Key::new(128, dst)) {
                Some(net) => (l3, net.net_id),
                None => return Ok(PASS_NOT_PROTECTED),
            }
        }
        _ => return Ok(PASS_NOT_IP),
    };

    // From here on the destination is protected: anything we cannot parse is dropped.
    if l3.oversized {
        return Err(DROP_TRUNCATED_L3);
    }
    if l3.non_first_fragment {
        return Err(DROP_FRAGMENT);
    }
    if l3.ip_version == 6 {
        ipv6::skip_extensions(ctx, &mut l3)?;
    }
    info.proto = l3.proto;
    let l4 = l4::parse(ctx, l3.proto, l3.next_offset, l3.end_offset)?;
    info.sport_be = l4.sport_be;
    info.dport_be = l4.dport_be;
    let src = source_words_of(ctx, &l3)?;
    // Only IPv6 carries neighbour discovery: an IPv4 packet of protocol 58 is not exempt.
    if l3.ip_version == 6
        && l3.proto == l4::PROTO_ICMPV6
        && l4::is_ipv6_link_control(l4.icmp_type, l3.hop_limit, src)
    {
        return Ok(PASS_NEIGHBOR_DISCOVERY);
    }

    // The grant table's parameters are read here rather than kept from the copy of CONFIG made at
    // the start: values live across the L3 parsers make the compiler spill and refill registers
    // there, and the 6.1 verifier loses the bounds of a refilled length. Hashed before the service
    // lookup, which the CPU then overlaps with the hash's multiplications.
    let (seed, buckets) = grant_table_parameters();
    let source = source_hash(src, seed);
    let service = lookup_service(net_id, l3.proto, l4.dport_be).ok_or(DROP_NO_SERVICE)?;
    info.app_id = service.app_id;
    info.app_mode = service.mode;

    // Grant keys hold IPv4 sources as ::ffff:a.b.c.d, so an IPv6 packet from that (IPv4-mapped)
    // address would borrow the IPv4 host's grants. Such sources never appear on the wire legitimately.
    if l3.ip_version == 6 && is_ipv4_mapped_words(src) {
        return Err(DROP_NO_GRANT);
    }
    let grant = find_grant(buckets, src, source, service.app_id).ok_or(DROP_NO_GRANT)?;
    if !epoch_matches(grant.epoch, config.epoch) {
        return Err(DROP_STALE_EPOCH);
    }
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now >= grant.expires_at_ns {
        return Err(DROP_EXPIRED);
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: the slot pointer comes from a successful array lookup and stays valid for this program
    // run. Only XDP programs write the counters: plain adds, not atomic ones (measured 9 ns per packet
    // cheaper); a grant's packets are spread over CPUs only when one source runs several flows at
    // once, where a concurrent update can lose a count, as can an agent rewriting the slot at the same
    // instant. The counters are for operators, never for a verdict.
    unsafe {
        (*grant.slot).bytes += len;
        (*grant.slot).packets += 1;
    }
    Ok(PASS_GRANT)
}

/// A grant found in the table: a consistent snapshot of what the verdict needs, and where to count.
struct GrantHit {
    slot: *mut GrantSlot,
    epoch: u32,
    expires_at_ns: u64,
}

/// The grant table's hash seed and bucket count from CONFIG; a missing entry reads as zeros, which
/// finds no grant.
#[inline(always)]
fn grant_table_parameters() -> (u64, u32) {
    match CONFIG.get(0) {
        Some(config) => (config.grant_seed, config.grant_buckets),
        None => (0, 0),
    }
}

/// Looks (`src`, `app_id`) up in the grant table: two inlined array lookups (the key's candidate
/// buckets) and at most eight slot comparisons.
#[inline(always)]
fn find_grant(buckets: u32, words: [u64; 2], source: u64, app_id: u32) -> Option<GrantHit> {
    let [first, second] = candidate_buckets(grant_hash(source, app_id), buckets);
    if let Some(hit) = probe_bucket(first, words, app_id) {
        return Some(hit);
    }
    probe_bucket(second, words, app_id)
}

#[inline(always)]
fn probe_bucket(index: u32, words: [u64; 2], app_id: u32) -> Option<GrantHit> {
    let bucket = GRANTS.get_ptr_mut(index)?;
    // SAFETY: `bucket` points at a whole `GrantBucket` inside the map for this program run.
    let slots = unsafe { core::ptr::addr_of_mut!((*bucket).slots) }.cast::<GrantSlot>();
    for i in 0..SLOTS_PER_BUCKET {
        // SAFETY: `i` is below the bucket's slot count.
        let slot = unsafe { slots.add(i) };
        // SAFETY: as above, `slot` points at a slot inside the map value.
        if let Some(hit) = unsafe { read_slot(slot, words, app_id) } {
            return Some(hit);
        }
    }
    None
}

/// The slot's grant if it holds (`words`, `app_id`) and was not rewritten while we read it.
///
/// The reader half of the slot's seqlock (the writer is `ztna-agent/src/grant_table.rs`): sequence,
/// key, epoch, deadline, sequence again, every load volatile so that the compiler keeps their order.
/// x86 keeps loads in program order (TSO), and the JIT emits plain moves, so an even sequence that
/// reads the same before and after vouches for everything read in between. A slot in the middle of a
/// rewrite (odd) or rewritten meanwhile (changed) reads as "no grant": fail closed. On arm64 the first
/// load would need acquire semantics and the re-read a load barrier (a BPF load-acquire, or a fully
/// ordered BPF atomic in between).
///
/// # Safety
///
/// `slot` must point at a slot inside the grant map's value.
#[inline(always)]
unsafe fn read_slot(slot: *mut GrantSlot, words: [u64; 2], app_id: u32) -> Option<GrantHit> {
    use core::ptr::{addr_of, read_volatile};
    // SAFETY (whole body): the caller vouches for `slot`; every field is naturally aligned.
    unsafe {
        let src = addr_of!((*slot).src).cast::<u64>();
        // A filter before the seqlock read: the second word (the IPv4 address, the IPv6 interface
        // id) tells most keys apart, so a slot of another key costs one load. It proves nothing.
        if read_volatile(src.add(1)) != words[1] {
            return None;
        }
        // `seq` in the low half, `state` in the high half (little endian, checked in ztna-common).
        let head = read_volatile(slot.cast::<u64>());
        if head & 0xffff_ffff_0000_0001 != u64::from(SLOT_USED) << 32 {
            return None;
        }
        if read_volatile(src) != words[0]
            || read_volatile(src.add(1)) != words[1]
            || read_volatile(addr_of!((*slot).app_id)) != app_id
        {
            return None;
        }
        let epoch = read_volatile(addr_of!((*slot).epoch));
        let expires_at_ns = read_volatile(addr_of!((*slot).expires_at_ns));
        if read_volatile(addr_of!((*slot).seq)) != head as u32 {
            return None;
        }
        Some(GrantHit {
            slot,
            epoch,
            expires_at_ns,
        })
    }
}

/// The source address as the grant table's key words (IPv4 as `::ffff:a.b.c.d`), built straight from
/// the packet bytes.
#[inline(always)]
pub fn source_words_of(ctx: &XdpContext, l3: &L3) -> Result<[u64; 2], u32> {
    if l3.ip_version == 4 {
        let src: [u8; 4] =
            read_at(ctx, l3.l3_offset + ipv4::IPV4_SRC_OFFSET).ok_or(DROP_TRUNCATED_L3)?;
        Ok(ipv4_source_words(src))
    } else {
        let src: [u8; 16] =
            read_at(ctx, l3.l3_offset + ipv6::IPV6_SRC_OFFSET).ok_or(DROP_TRUNCATED_L3)?;
        Ok(source_words(&src))
    }
}

/// The most specific service: exact (net, proto, port), else (net, proto, any port), else (net, any
/// protocol) — one LPM lookup.
#[inline(always)]
fn lookup_service(net_id: u32, proto: u8, dport_be: u16) -> Option<ServiceValue> {
    let key = ServiceKey {
        net_id,
        dport_be,
        proto,
        _pad0: 0,
    };
    SERVICES
        .get(Key::new(SERVICE_PREFIX_EXACT, key.lpm_data()))
        .copied()
}
