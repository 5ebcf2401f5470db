//! Kernel tests need root (CAP_BPF to load the program, CAP_NET_ADMIN for XDP and namespaces);
//! without it they skip and say why instead of failing.

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns from the calling test, after saying why, when the process is not root.
///
/// ```
/// fn verdicts() {
///     ztna_tests::require_root!("loading the XDP program");
///     // ... load and test_run ...
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    ($what:expr) => {
        if !$crate::root::is_root() {
            eprintln!(
                "skipped: {} needs root (CAP_BPF, CAP_NET_ADMIN); run with sudo or `cargo xtask test`",
                $what
            );
            return;
        }
    };
}
