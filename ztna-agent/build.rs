use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the XDP program (`ztna-ebpf`, binary `ztna`) for the BPF target with the nightly toolchain;
/// the agent embeds the object with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("{manifest_dir} has no parent directory"))?
        .join("ztna-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "ztna-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("failed to build the XDP program; `cargo xtask setup` installs the toolchain it needs")
}
