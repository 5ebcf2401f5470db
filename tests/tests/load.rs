//! The XDP program passes the verifier of the running kernel and answers a packet.

use ztna_agent::dataplane::{Dataplane, LoadOptions};

#[test]
fn program_loads_and_runs() {
    if !nix_is_root() {
        eprintln!("skipped: loading an XDP program needs root (CAP_BPF)");
        return;
    }
    let dataplane = Dataplane::load(&LoadOptions::default()).expect("load");
    // An ARP frame: not IP, passes.
    let mut frame = vec![0u8; 60];
    frame[12] = 0x08;
    frame[13] = 0x06;
    let (action, _) = dataplane.test_run(&frame, 1).expect("test_run");
    assert_eq!(action, 2, "XDP_PASS");
    let stats = dataplane.stats().unwrap();
    assert_eq!(stats[ztna_common::verdict::PASS_NOT_IP as usize], 1);
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
