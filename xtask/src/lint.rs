//! `cargo xtask lint`: formatting and clippy, for the user crates and (with nightly, for the BPF target) the eBPF crate.

use anyhow::bail;

use crate::{cmd, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reformat with `cargo +nightly fmt --all` instead of checking the formatting.
    #[arg(long)]
    fix: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    setup::prepare(setup::Needs::Lint)?;

    // Nightly rustfmt: rustfmt.toml uses unstable options (`group_imports`, `imports_granularity`).
    let mut fmt = cmd::cargo_nightly();
    fmt.args(["fmt", "--all"]);
    if !args.fix {
        fmt.args(["--", "--check"]);
    }

    let mut clippy = cmd::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "ztna-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);

    // The eBPF crate only compiles for the BPF target, with nightly and a core rebuilt from source; clippy only
    // checks, so bpf-linker is not involved here.
    let mut clippy_ebpf = cmd::cargo_nightly();
    clippy_ebpf.args([
        "clippy",
        "-p",
        "ztna-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ]);
    clippy_ebpf.args(["--", "-D", "warnings"]);

    // Run every check, so that one run reports everything, then fail naming each check that failed.
    let failures: Vec<String> = [fmt, clippy, clippy_ebpf]
        .iter_mut()
        .filter_map(|check| cmd::run(check).err())
        .map(|err| err.to_string())
        .collect();
    if !failures.is_empty() {
        bail!("lint failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}
