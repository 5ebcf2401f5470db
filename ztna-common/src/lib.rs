//! Types shared by the ztna XDP program (`ztna-ebpf`), the gateway agent and the client.
//!
//! Everything that crosses the kernel/user boundary lives here: map names and capacities, map keys and
//! values, verdict reasons and the event record. Map types are `#[repr(C)]`, `Copy`, with explicit
//! padding and no `bool`/`Option`, and their sizes are checked at compile time so that the kernel and
//! user space can never disagree about a layout.
//!
//! Byte order: addresses and ports are stored in network byte order (big endian) wherever a field says
//! so; counters, ids and timestamps are in host byte order.
#![no_std]

pub mod config;
pub mod event;
pub mod grant;
pub mod maps;
pub mod net;
pub mod service;
pub mod verdict;

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` lets the agent read and write these types in BPF maps.
    use crate::{config, event, grant, net, service};

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {
            $(
                // SAFETY: the type is `#[repr(C)]`, `Copy`, has no implicit padding (checked by the
                // size assertions next to its definition) and every bit pattern is a valid value.
                unsafe impl aya::Pod for $t {}
            )*
        };
    }

    pod!(
        config::GlobalConfig,
        event::Event,
        grant::GrantKey,
        grant::GrantBucket,
        net::ProtectedNet,
        service::ServiceKey,
        service::ServiceValue,
        config::EventBucket,
    );
}
