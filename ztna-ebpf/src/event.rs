//! Sampled deny and would-deny events, rate-limited per CPU by a token bucket so that a flood of
//! denied packets cannot starve user space or the ring buffer.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use ztna_common::{
    config::GlobalConfig,
    event::{EVENT_DENY, EVENT_WOULD_DENY, Event},
    net::v4_mapped,
    verdict::{EVENTS_LOST, EVENTS_SUPPRESSED},
};

use crate::{
    ipv4::IPV4_SRC_OFFSET,
    ipv6::IPV6_SRC_OFFSET,
    maps::{EVENT_BUCKET, EVENTS, STATS},
    parse::{ptr_at, read_at},
    verdict::PacketInfo,
};

#[inline(always)]
pub fn emit(
    ctx: &XdpContext,
    config: &GlobalConfig,
    info: &PacketInfo,
    reason: u32,
    monitored: bool,
) {
    if config.event_interval_ns == 0 {
        return;
    }
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if !take_token(config, now) {
        bump(EVENTS_SUPPRESSED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(EVENTS_LOST);
        return;
    };
    let event = entry.write(Event {
        kind: if monitored {
            EVENT_WOULD_DENY
        } else {
            EVENT_DENY
        },
        reason,
        timestamp_ns: now,
        src: [0; 16],
        dst: [0; 16],
        app_id: info.app_id,
        // SAFETY: reading the context field the program was given.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        pkt_len: (ctx.data_end() - ctx.data()) as u32,
        sport_be: info.sport_be,
        dport_be: info.dport_be,
        proto: info.proto,
        ip_version: info.ip_version,
        _pad0: [0; 6],
    });
    if info.ip_version != 0 {
        copy_addresses(ctx, info, event);
    }
    entry.submit(0);
}

/// Copies source and destination from the packet straight into the reserved record.
#[inline(always)]
fn copy_addresses(ctx: &XdpContext, info: &PacketInfo, event: &mut Event) {
    if info.ip_version == 4 {
        if let Some(addrs) = read_at::<[u8; 8]>(ctx, info.l3_offset + IPV4_SRC_OFFSET) {
            event.src = v4_mapped([addrs[0], addrs[1], addrs[2], addrs[3]]);
            event.dst = v4_mapped([addrs[4], addrs[5], addrs[6], addrs[7]]);
        }
    } else if let Some(addrs) = ptr_at::<[u8; 32]>(ctx, info.l3_offset + IPV6_SRC_OFFSET) {
        // SAFETY: `ptr_at` checked that both addresses lie inside the packet.
        let addrs = unsafe { &*addrs };
        event.src.copy_from_slice(&addrs[..16]);
        event.dst.copy_from_slice(&addrs[16..]);
    }
}

/// Credits this CPU's bucket with the time elapsed since its last decision and spends one event's
/// worth of credit if there is enough. Nanoseconds throughout, so no division on the packet path.
#[inline(always)]
fn take_token(config: &GlobalConfig, now: u64) -> bool {
    let Some(bucket) = EVENT_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, valid for this program run and not shared with another CPU.
    let bucket = unsafe { &mut *bucket };
    let elapsed = now.saturating_sub(bucket.last_ns);
    bucket.last_ns = now;
    let credit = bucket
        .credit_ns
        .saturating_add(elapsed)
        .min(config.event_burst_ns);
    if credit < config.event_interval_ns {
        bucket.credit_ns = credit;
        return false;
    }
    bucket.credit_ns = credit - config.event_interval_ns;
    true
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, valid for this program run.
        unsafe { *counter += 1 };
    }
}
