//! `cargo xtask demo`: runs the `ztna-demo` binary of the `ztna-tests` crate in release mode.

use crate::{cmd, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Arguments for `ztna-demo`, after `--`.
    #[arg(last = true)]
    demo_args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    setup::prepare(setup::Needs::Run)?;
    cmd::run_tests_binary("ztna-demo", &args.demo_args)
}
