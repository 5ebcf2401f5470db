//! `cargo xtask bench`: runs the `ztna-bench` binary of the `ztna-tests` crate in release mode.

use crate::{cmd, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which benchmarks to run.
    #[arg(value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Further arguments for `ztna-bench`, after `--`.
    #[arg(last = true)]
    bench_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Suite {
    /// Per-packet cost of the XDP program (BPF_PROG_TEST_RUN), as ratios against an XDP_PASS baseline.
    Dataplane,
    /// Every benchmark there is (today: the data plane).
    All,
}

impl Suite {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Dataplane => "dataplane",
            Self::All => "all",
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    setup::prepare(setup::Needs::Run)?;
    cmd::run_tests_binary(
        "ztna-bench",
        std::iter::once(args.suite.as_arg()).chain(args.bench_args.iter().map(String::as_str)),
    )
}
