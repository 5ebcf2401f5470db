//! Developer and CI entry points for the ztna workspace: `cargo xtask <command>`.

mod artifacts;
mod bench;
mod build;
mod cmd;
mod demo;
mod lint;
mod setup;
mod test;
mod vm_test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(bin_name = "cargo xtask", about = "Developer and CI tasks for ztna")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need on Debian 12: nightly Rust, bpf-linker, test packages (as root).
    Setup(setup::Args),
    /// Build the default workspace members in release mode and print where the binaries are.
    Build(build::Args),
    /// Run every test of the workspace; the kernel tests need root. Then the kernel tests on Debian's kernels in QEMU.
    Test(test::Args),
    /// Run the kernel tests on other kernels: Debian's cloud kernels booted in QEMU, or the host's (`--kernel host`).
    VmTest(vm_test::Args),
    /// Check formatting (nightly rustfmt) and run clippy on the user crates and on the eBPF crate.
    Lint(lint::Args),
    /// Run the benchmarks (`ztna-bench`).
    Bench(bench::Args),
    /// Run the end-to-end demo (`ztna-demo`).
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(args) => setup::run(args),
        Command::Build(args) => build::run(args),
        Command::Test(args) => test::run(args),
        Command::VmTest(args) => vm_test::run(args),
        Command::Lint(args) => lint::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The message and its causes, without the backtrace `RUST_BACKTRACE=1` would add: the failing
            // command is named in the message, and the backtrace of xtask itself helps nobody.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
