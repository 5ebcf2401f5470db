//! The library target exists so that `ztna-agent` can list this crate as a build dependency; the XDP
//! program itself is the `ztna` binary built for `bpfel-unknown-none` by `ztna-agent/build.rs`.
#![no_std]
