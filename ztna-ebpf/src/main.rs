//! The ztna XDP enforcement program.
//!
//! Every packet ends in one verdict reason (`ztna_common::verdict`), counted per CPU. Packets to
//! destinations that are not protected pass untouched; packets to protected destinations pass only
//! with a live grant for (source, app). Anything that cannot be parsed on the way to a protected
//! destination is dropped: the program fails closed.
#![no_std]
#![no_main]

mod event;
mod ipv4;
mod ipv6;
mod l4;
mod maps;
mod parse;
mod verdict;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn ztna_ingress(ctx: XdpContext) -> u32 {
    verdict::try_ztna_ingress(&ctx)
}

/// Passes every packet and does nothing else: the floor that benchmarks measure the enforcement
/// program against, in the same run. Never attached by the agent.
#[xdp]
pub fn ztna_baseline(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
