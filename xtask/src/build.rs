//! `cargo xtask build`: release build of the default workspace members, then the paths of the binaries.

use anyhow::Context as _;

use crate::{artifacts, cmd, setup};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(Args {}: Args) -> anyhow::Result<()> {
    setup::prepare(setup::Needs::Run)?;
    // JSON messages on stdout name every artifact; diagnostics are still rendered for humans on stderr.
    let messages = cmd::run_stdout(cmd::cargo().args([
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
    ]))?;
    let executables = artifacts::executables(&messages, artifacts::Kind::Any)
        .context("failed to read cargo's build messages")?;
    for executable in executables {
        println!("built: {}", executable.display());
    }
    Ok(())
}
