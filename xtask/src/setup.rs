//! `cargo xtask setup`: make a fresh Debian 12 machine able to build, lint and test ztna.
//!
//! Idempotent: every requirement is checked first, present ones are reported as `ok:` and only missing ones are
//! installed, each with the reason it is needed. Other subcommands call [`prepare`] before they build.

use std::{
    env, fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::cmd::{self, ProbeError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only report what is missing, install nothing, and exit non-zero if anything is missing.
    #[arg(long)]
    check: bool,
}

/// A Debian package that the tests, the VM runner or the benchmarks need, and why.
pub struct DebianPackage {
    pub name: &'static str,
    pub why: &'static str,
}

/// The Debian packages `setup` installs. Every name was checked with `apt-cache policy` on Debian 12 (bookworm).
pub const PACKAGES: &[DebianPackage] = &[
    DebianPackage {
        name: "iproute2",
        why: "`ip netns`, veth pairs and `ip link set ... xdp` in the namespace tests",
    },
    DebianPackage {
        name: "iputils-ping",
        why: "`ping` sends the ICMP traffic of the namespace tests",
    },
    DebianPackage {
        name: "ethtool",
        why: "turns off veth offloads so that XDP sees complete packets and checksums",
    },
    DebianPackage {
        name: "procps",
        why: "`sysctl` (forwarding in test namespaces) and `ps`/`pgrep` for test processes",
    },
    DebianPackage {
        name: "bpftool",
        why: "inspecting the pinned maps and programs under /sys/fs/bpf/ztna",
    },
    DebianPackage {
        name: "qemu-system-x86",
        why: "boots the kernels of the VM tests (`vm-test`)",
    },
    DebianPackage {
        name: "busybox-static",
        why: "the userland inside the VM tests' initramfs",
    },
    DebianPackage {
        name: "cpio",
        why: "packs the VM tests' initramfs",
    },
    DebianPackage {
        name: "kmod",
        why: "`modprobe`/`depmod` for kernel modules in the VM tests",
    },
    DebianPackage {
        name: "nftables",
        why: "the nftables baseline of the benchmark comparisons",
    },
    DebianPackage {
        name: "iptables",
        why: "the iptables baseline of the benchmark comparisons",
    },
    DebianPackage {
        name: "iperf3",
        why: "generates the traffic of the throughput benchmarks",
    },
];

/// The bpf-linker release line aya 0.14 builds with.
const BPF_LINKER_LINE: &str = "0.13";

/// Overrides where the LLVM symlinks for bpf-linker go (default `/opt/ztna/llvm-<major>`).
const LLVM_PREFIX_ENV: &str = "ZTNA_LLVM_PREFIX";

/// What a subcommand needs to have in place before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// The toolchain that builds the XDP program, plus nightly rustfmt and clippy (`lint`).
    Lint,
    /// The toolchain that builds the XDP program, plus the Debian packages (`build`, `test`, `bench`, `demo`).
    Run,
    /// Everything (`setup`).
    All,
}

/// One thing `setup` makes sure of, listed in the order they have to be installed.
#[derive(Clone, Copy)]
enum Requirement {
    Nightly,
    NightlyComponent {
        name: &'static str,
        why: &'static str,
    },
    BpfLinker,
    Package(&'static DebianPackage),
}

impl Requirement {
    fn name(self) -> String {
        match self {
            Self::Nightly => "nightly toolchain".to_owned(),
            Self::NightlyComponent { name, .. } => format!("nightly component {name}"),
            Self::BpfLinker => format!("bpf-linker {BPF_LINKER_LINE}"),
            Self::Package(package) => format!("package {}", package.name),
        }
    }

    fn why(self) -> &'static str {
        match self {
            Self::Nightly => {
                "aya-build compiles the XDP program with `cargo +nightly ... -Z build-std=core`"
            }
            Self::NightlyComponent { why, .. } => why,
            Self::BpfLinker => "links the XDP program's LLVM bitcode into a BPF object",
            Self::Package(package) => package.why,
        }
    }

    fn is_package(self) -> bool {
        matches!(self, Self::Package(_))
    }

    /// `Ok(what was found)` when present, `Err(why not)` when missing.
    fn check(self) -> Result<String, String> {
        match self {
            Self::Nightly => check_nightly(),
            Self::NightlyComponent { name, .. } => check_nightly_component(name),
            Self::BpfLinker => check_bpf_linker(),
            Self::Package(package) => check_package(package),
        }
    }
}

const RUST_SRC: Requirement = Requirement::NightlyComponent {
    name: "rust-src",
    why: "`-Z build-std=core` rebuilds core for bpfel-unknown-none from source",
};
const NIGHTLY_RUSTFMT: Requirement = Requirement::NightlyComponent {
    name: "rustfmt",
    why: "`cargo xtask lint` formats with nightly rustfmt (rustfmt.toml uses unstable options)",
};
const NIGHTLY_CLIPPY: Requirement = Requirement::NightlyComponent {
    name: "clippy",
    why: "`cargo xtask lint` lints the eBPF crate with nightly clippy",
};

fn requirements(needs: Needs) -> Vec<Requirement> {
    let mut requirements = vec![Requirement::Nightly, RUST_SRC];
    if matches!(needs, Needs::Lint | Needs::All) {
        requirements.extend([NIGHTLY_RUSTFMT, NIGHTLY_CLIPPY]);
    }
    requirements.push(Requirement::BpfLinker);
    if matches!(needs, Needs::Run | Needs::All) {
        requirements.extend(PACKAGES.iter().map(Requirement::Package));
    }
    requirements
}

/// A requirement and what checking it found.
struct Finding {
    requirement: Requirement,
    state: Result<String, String>,
}

impl Finding {
    fn print(&self) {
        match &self.state {
            Ok(found) => println!("ok: {} ({found})", self.requirement.name()),
            Err(missing) => println!(
                "missing: {} — {} ({missing})",
                self.requirement.name(),
                self.requirement.why()
            ),
        }
    }
}

fn survey(needs: Needs) -> Vec<Finding> {
    requirements(needs)
        .into_iter()
        .map(|requirement| Finding {
            requirement,
            state: requirement.check(),
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.check {
        let findings = survey(Needs::All);
        findings.iter().for_each(Finding::print);
        let missing: Vec<String> = findings
            .iter()
            .filter(|finding| finding.state.is_err())
            .map(|finding| finding.requirement.name())
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing: {}; run `cargo xtask setup` as root to install them",
                missing.join(", ")
            );
        }
        return Ok(());
    }
    if !is_root()? {
        bail!("setup installs packages and needs root; run it as root or with sudo");
    }
    let findings = survey(Needs::All);
    findings.iter().for_each(Finding::print);
    install(Needs::All, &findings)
}

/// The fast path other subcommands take first: a quiet check, and the full setup only when something is missing.
///
/// Without root nothing can be installed: a missing toolchain piece is an error (nothing builds without it), missing
/// packages are a warning (the root-only tests that use them skip without root anyway).
pub fn prepare(needs: Needs) -> anyhow::Result<()> {
    let findings = survey(needs);
    let missing: Vec<&Finding> = findings
        .iter()
        .filter(|finding| finding.state.is_err())
        .collect();
    if missing.is_empty() {
        println!(
            "ok: setup complete ({} requirements checked; `cargo xtask setup --check` lists them)",
            findings.len()
        );
        return Ok(());
    }
    if is_root()? {
        println!("setup: something is missing; running the full `cargo xtask setup`");
        findings.iter().for_each(Finding::print);
        return install(needs, &findings);
    }
    missing.iter().for_each(|finding| finding.print());
    let names = |packages: bool| {
        missing
            .iter()
            .filter(|finding| finding.requirement.is_package() == packages)
            .map(|finding| finding.requirement.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if missing
        .iter()
        .any(|finding| !finding.requirement.is_package())
    {
        bail!(
            "missing {}; nothing builds without it: run `cargo xtask setup` as root (or with sudo) first",
            names(false)
        );
    }
    eprintln!(
        "warning: missing {}; the root-only tests and benchmarks that use them will not work until \
         `cargo xtask setup` runs as root",
        names(true)
    );
    Ok(())
}

/// Installs what `findings` reports missing, in order, then checks everything again.
fn install(needs: Needs, findings: &[Finding]) -> anyhow::Result<()> {
    let missing: Vec<Requirement> = findings
        .iter()
        .filter(|finding| finding.state.is_err())
        .map(|finding| finding.requirement)
        .collect();
    if missing.is_empty() {
        println!("setup: nothing to install");
        return Ok(());
    }
    let mut components = Vec::new();
    let mut packages = Vec::new();
    for requirement in missing {
        match requirement {
            Requirement::Nightly => {
                announce(requirement);
                cmd::run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                ]))?;
            }
            Requirement::NightlyComponent { name, .. } => {
                announce(requirement);
                components.push(name);
            }
            Requirement::BpfLinker => {
                // bpf-linker is built against the nightly toolchain's LLVM, so the components go in first.
                add_nightly_components(&mut components)?;
                announce(requirement);
                install_bpf_linker()?;
            }
            Requirement::Package(package) => {
                announce(requirement);
                packages.push(package.name);
            }
        }
    }
    add_nightly_components(&mut components)?;
    if !packages.is_empty() {
        cmd::run(Command::new("apt-get").arg("update"))?;
        // --no-remove: setup adds packages and never takes any away; if a package conflicts with something already
        // installed (say a backported qemu-utils), apt stops and the person running setup decides.
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends", "--no-remove"])
                .args(&packages),
        )?;
    }

    let still_missing: Vec<String> = survey(needs)
        .into_iter()
        .filter_map(|finding| {
            let missing = finding.state.err()?;
            Some(format!("{}: {missing}", finding.requirement.name()))
        })
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "setup installed what was missing, but these still fail their check:\n  {}",
            still_missing.join("\n  ")
        );
    }
    println!("setup: done");
    Ok(())
}

fn announce(requirement: Requirement) {
    println!("installing: {} — {}", requirement.name(), requirement.why());
}

/// Adds the queued nightly components with one `rustup component add`, and empties the queue.
fn add_nightly_components(components: &mut Vec<&'static str>) -> anyhow::Result<()> {
    if components.is_empty() {
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(components.iter())
            .args(["--toolchain", "nightly"]),
    )?;
    components.clear();
    Ok(())
}

/// Whether this process runs with effective user id 0, read from `/proc/self/status` (`Uid: real effective ...`).
pub fn is_root() -> anyhow::Result<bool> {
    let status =
        fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("failed to find the effective uid in /proc/self/status"))?;
    Ok(effective_uid == "0")
}

fn check_nightly() -> Result<String, String> {
    // `rustup run` never installs a toolchain on its own (unlike `+nightly` under some rustup versions).
    cmd::probe(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
        .map(|version| version.trim().to_owned())
        .map_err(|err| err.to_string())
}

fn check_nightly_component(name: &str) -> Result<String, String> {
    let installed = cmd::probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .map_err(|err| err.to_string())?;
    // Lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let is_installed = installed.lines().map(str::trim).any(|component| {
        component == name
            || component
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
    });
    if is_installed {
        Ok("installed".to_owned())
    } else {
        Err("not installed".to_owned())
    }
}

fn check_bpf_linker() -> Result<String, String> {
    let version = cmd::probe(Command::new("bpf-linker").arg("--version")).map_err(|err| match err {
        ProbeError::NotFound { .. } => {
            format!("{err}; `cargo install` puts it in $CARGO_HOME/bin (~/.cargo/bin), which must be on PATH")
        }
        ProbeError::Failed { .. } => format!(
            "{err}; a nightly update removes the libLLVM it was linked against, and setup rebuilds it then"
        ),
    })?;
    // `bpf-linker 0.13.0`
    let version = version.trim();
    let line_prefix = format!("{BPF_LINKER_LINE}.");
    match version.split_whitespace().nth(1) {
        Some(number) if number.starts_with(&line_prefix) => Ok(version.to_owned()),
        _ => Err(format!("found `{version}`, need {BPF_LINKER_LINE}.x")),
    }
}

fn check_package(package: &DebianPackage) -> Result<String, String> {
    let status = cmd::probe(Command::new("dpkg-query").args([
        "-W",
        "-f=${Status}\t${Version}",
        package.name,
    ]));
    match status {
        Ok(status) => match status.trim().split_once('\t') {
            Some(("install ok installed", version)) => Ok(version.to_owned()),
            _ => Err(format!("not installed: dpkg status `{}`", status.trim())),
        },
        Err(ProbeError::NotFound { .. }) => {
            Err("dpkg-query is not on PATH; setup supports Debian 12 only".to_owned())
        }
        Err(ProbeError::Failed { .. }) => Err("not installed".to_owned()),
    }
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM.
///
/// A plain `cargo install bpf-linker` wants a system LLVM of the newest major (23), which Debian 12 does not have.
/// The nightly toolchain ships `lib/libLLVM.so.<major>.<minor>-rust-<version>`; bpf-linker's build script finds LLVM
/// under `$LLVM_PREFIX/lib` as `libLLVM.so`, and the binary keeps `$LLVM_PREFIX/lib` as its RUNPATH and loads the
/// library by its full name. So the prefix must outlast the install (hence `/opt`, not `/tmp`) and hold both names.
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot =
        cmd::probe(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let llvm = RustLlvm::find(&Path::new(sysroot.trim()).join("lib"))?;
    let prefix = match env::var_os(LLVM_PREFIX_ENV) {
        Some(prefix) => std::path::absolute(&prefix).with_context(|| {
            format!(
                "failed to make {LLVM_PREFIX_ENV}={} absolute",
                prefix.to_string_lossy()
            )
        })?,
        None => PathBuf::from(format!("/opt/ztna/llvm-{}", llvm.major)),
    };
    llvm.link_into(&prefix)?;
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("^{BPF_LINKER_LINE}"),
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{}", llvm.major),
            ])
            // We only get here when the installed bpf-linker fails its check (absent, wrong version, or its libLLVM
            // gone after a nightly update); without --force cargo would call a broken 0.13 "already installed".
            .arg("--force"),
    )
}

/// The LLVM shared library inside a Rust toolchain's sysroot.
#[derive(Debug)]
struct RustLlvm {
    path: PathBuf,
    file_name: String,
    major: u32,
}

impl RustLlvm {
    /// Finds the single `libLLVM.so.<major>.<minor>-rust-*` in `lib_dir`.
    fn find(lib_dir: &Path) -> anyhow::Result<Self> {
        let entries = fs::read_dir(lib_dir)
            .with_context(|| format!("failed to list {}", lib_dir.display()))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("failed to list {}", lib_dir.display()))?;
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            let Some(version) = file_name.strip_prefix("libLLVM.so.") else {
                continue;
            };
            if !version.contains("-rust-") {
                continue;
            }
            let major = version
                .split('.')
                .next()
                .and_then(|major| major.parse().ok());
            let major = major.with_context(|| {
                format!("failed to read the LLVM major version from {file_name}")
            })?;
            found.push(Self {
                path: entry.path(),
                file_name,
                major,
            });
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => bail!(
                "failed to find libLLVM.so.<major>.<minor>-rust-* in {}; is the nightly toolchain complete?",
                lib_dir.display()
            ),
            _ => bail!(
                "found several LLVM libraries in {}: {}; expected one",
                lib_dir.display(),
                found
                    .iter()
                    .map(|llvm| llvm.file_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Makes `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<file name>` symlinks to this library.
    fn link_into(&self, prefix: &Path) -> anyhow::Result<()> {
        let lib_dir = prefix.join("lib");
        fs::create_dir_all(&lib_dir)
            .with_context(|| format!("failed to create {}", lib_dir.display()))?;
        for name in ["libLLVM.so", self.file_name.as_str()] {
            let link = lib_dir.join(name);
            replace_symlink(&self.path, &link)?;
        }
        Ok(())
    }
}

/// Points `link` at `target`, replacing an older symlink but never a real file.
fn replace_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(link) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            let current = fs::read_link(link)
                .with_context(|| format!("failed to read the symlink {}", link.display()))?;
            if current == target {
                println!("ok: {} -> {}", link.display(), target.display());
                return Ok(());
            }
            fs::remove_file(link)
                .with_context(|| format!("failed to remove the old symlink {}", link.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a symlink; move it away, or point {LLVM_PREFIX_ENV} at another directory",
            link.display()
        ),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("failed to inspect {}", link.display()));
        }
    }
    println!("linking: {} -> {}", link.display(), target.display());
    symlink(target, link)
        .with_context(|| format!("failed to link {} to {}", link.display(), target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed again even when the test panics.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn links_the_toolchain_llvm_under_both_names_and_relinks_after_an_update() {
        let scratch = Scratch::new("llvm-link");
        let sysroot_lib = scratch.0.join("sysroot/lib");
        fs::create_dir_all(&sysroot_lib).unwrap();
        fs::write(
            sysroot_lib.join("libLLVM.so.22.1-rust-1.97.0-nightly"),
            "old",
        )
        .unwrap();
        // The other spelling in the sysroot must not count as a second candidate.
        fs::write(sysroot_lib.join("libLLVM-22-rust-1.97.0-nightly.so"), "").unwrap();
        let prefix = scratch.0.join("prefix");

        let llvm = RustLlvm::find(&sysroot_lib).unwrap();
        assert_eq!(llvm.major, 22);
        llvm.link_into(&prefix).unwrap();
        llvm.link_into(&prefix).unwrap(); // idempotent
        for name in ["libLLVM.so", "libLLVM.so.22.1-rust-1.97.0-nightly"] {
            assert_eq!(
                fs::read_link(prefix.join("lib").join(name)).unwrap(),
                llvm.path
            );
            assert_eq!(
                fs::read_to_string(prefix.join("lib").join(name)).unwrap(),
                "old"
            );
        }

        // A nightly update renames the library: the generic name follows it.
        fs::remove_file(&llvm.path).unwrap();
        fs::write(
            sysroot_lib.join("libLLVM.so.22.1-rust-1.98.0-nightly"),
            "new",
        )
        .unwrap();
        let updated = RustLlvm::find(&sysroot_lib).unwrap();
        updated.link_into(&prefix).unwrap();
        assert_eq!(
            fs::read_to_string(prefix.join("lib/libLLVM.so")).unwrap(),
            "new"
        );
        assert_eq!(
            fs::read_to_string(prefix.join("lib/libLLVM.so.22.1-rust-1.98.0-nightly")).unwrap(),
            "new"
        );
    }

    #[test]
    fn refuses_to_replace_a_real_file() {
        let scratch = Scratch::new("llvm-real-file");
        fs::write(scratch.0.join("libLLVM.so.22.1-rust-x"), "").unwrap();
        fs::create_dir_all(scratch.0.join("prefix/lib")).unwrap();
        fs::write(scratch.0.join("prefix/lib/libLLVM.so"), "system").unwrap();
        let err = RustLlvm::find(&scratch.0)
            .unwrap()
            .link_into(&scratch.0.join("prefix"))
            .unwrap_err();
        assert!(err.to_string().contains("is not a symlink"), "{err:#}");
    }

    #[test]
    fn explains_a_sysroot_without_llvm() {
        let scratch = Scratch::new("llvm-none");
        let err = RustLlvm::find(&scratch.0).unwrap_err();
        assert!(
            err.to_string().contains("failed to find libLLVM.so"),
            "{err:#}"
        );
    }

    #[test]
    fn package_names_are_unique_and_explained() {
        for (index, package) in PACKAGES.iter().enumerate() {
            assert!(!package.why.is_empty(), "{} has no reason", package.name);
            assert!(
                PACKAGES[..index]
                    .iter()
                    .all(|earlier| earlier.name != package.name),
                "{} is listed twice",
                package.name
            );
        }
    }
}
