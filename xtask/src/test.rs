//! `cargo xtask test`: every test of the workspace, as CI runs it (`.ci/run`), then the kernel tests on Debian's
//! kernels in QEMU (`cargo xtask vm-test`).

use crate::{cmd, setup, vm_test};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not check or install the toolchain and packages first.
    #[arg(long)]
    skip_setup: bool,
    /// Skip the kernel matrix in QEMU (`cargo xtask vm-test`) that runs after the host tests.
    #[arg(long)]
    no_vm: bool,
    /// Arguments for the test binaries, after `--` (for example `-- --test-threads=1`).
    #[arg(last = true)]
    test_args: Vec<String>,
}

const NOT_ROOT_WARNING: &str = "warning: not running as root: the kernel tests (loading and attaching XDP, network \
                                namespaces, BPF_PROG_TEST_RUN) will skip; run `cargo xtask test` as root to run them";

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.skip_setup {
        setup::prepare(setup::Needs::Run)?;
    }
    let root = setup::is_root()?;
    if !root {
        eprintln!("{NOT_ROOT_WARNING}");
    }
    let mut cargo = cmd::cargo();
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    cargo.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "ztna-ebpf",
        "--no-fail-fast",
    ]);
    if !args.test_args.is_empty() {
        cargo.arg("--").args(&args.test_args);
    }
    let host_result = cmd::run(&mut cargo);
    if !root {
        // Again at the end, where it is not lost above the test output.
        eprintln!("{NOT_ROOT_WARNING}");
    }
    if args.no_vm {
        return host_result;
    }
    // The VM matrix runs even when a host test failed: whether the other kernels fail the same way is worth knowing.
    // The guests run the tests as root whoever runs xtask.
    let kernels: Vec<String> = vm_test::DEBIAN_MATRIX
        .iter()
        .map(|kernel| (*kernel).to_owned())
        .collect();
    let vm_result = vm_test::run_matrix(&kernels, false, &args.test_args);
    match (host_result, vm_result) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(host), Ok(())) => Err(host),
        (Ok(()), Err(vm)) => Err(vm),
        (Err(host), Err(vm)) => Err(anyhow::anyhow!("{host:#}; and in the VMs: {vm:#}")),
    }
}
