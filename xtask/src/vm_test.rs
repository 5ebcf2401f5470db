//! `cargo xtask vm-test`: the kernel-facing tests (`ztna-tests`) on the kernels gateways run, not only the
//! developer's.
//!
//! For a Debian kernel it downloads `linux-image-<abi>-cloud-amd64` with `apt-get download` (cached under
//! `target/vm/<abi>/`), packs an initramfs with busybox, `ip`, `ping`, the veth module, the test executables, the
//! agent and their shared libraries, and boots it under QEMU with `tests/vm/init.sh` as PID 1. The guest runs every
//! test executable and prints `ZTNA-VM-RESULT: PASS` or `ZTNA-VM-RESULT: FAIL <names>` before it powers off; the
//! run passes only when the PASS marker appears. `host` runs the same executables directly on the running kernel.

use std::{
    collections::{BTreeSet, HashMap},
    env,
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{artifacts, cmd, setup};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kernel to test on, repeatable: `host` (the running kernel, no VM), a Debian kernel line such as `6.1` or
    /// `6.12` (the newest `linux-image-<line>.*-cloud-amd64` apt knows), or an exact ABI such as `6.1.0-57`.
    /// Default: host, 6.1 and 6.12.
    #[arg(long = "kernel", value_name = "VERSION|host")]
    kernels: Vec<String>,
    /// Keep the initramfs and its staging tree under target/vm/<abi>/ and print a QEMU command that boots it again
    /// with a shell after the tests.
    #[arg(long)]
    keep: bool,
    /// Do not check or install the toolchain and packages first.
    #[arg(long)]
    skip_setup: bool,
    /// Arguments for every test executable, after `--` (a test name filter, `--nocapture`, ...).
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// What `cargo xtask vm-test` runs without `--kernel`.
const MATRIX: &[&str] = &["host", "6.1", "6.12"];

/// What `cargo xtask test` runs after the host tests: Debian 12's 6.1 LTS, the oldest kernel ztna supports, and the
/// 6.12 line that bookworm-security also ships.
pub const DEBIAN_MATRIX: &[&str] = &["6.1", "6.12"];

/// The whole guest run, boot to power-off, after which QEMU is killed and the run fails.
const GUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long a KVM guest may stay silent before it counts as stuck. A stock kernel that KVM cannot run (nested
/// virtualisation without some feature) hangs silently before its first console line; under TCG the whole boot
/// takes about 5 s.
const KVM_BOOT_GRACE: Duration = Duration::from_secs(10);

/// How long QEMU may take to exit after the guest printed its result.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// The proptest budget inside the guests: under TCG every instruction is emulated, and the full 1M-frame run that the
/// host does would dominate the CI time.
const GUEST_PROPTEST_PACKETS: &str = "50000";

/// The kernel modules the namespace tests need and the guest inserts (with their dependencies).
const GUEST_MODULES: &[&str] = &["veth"];

/// Host tools the tests run, copied into the guest at their host paths with their libraries (busybox provides the
/// rest). `true`: the run fails without it.
const GUEST_TOOLS: &[(&str, bool)] = &[("ip", true), ("ping", true), ("ethtool", false)];

const RESULT_MARKER: &str = "ZTNA-VM-RESULT: ";

/// Where the namespace tests (`ztna_tests::netns::agent_binary`) look for the agent first.
const AGENT_BIN_ENV: &str = "ZTNA_AGENT_BIN";

/// PID 1 of the guest.
const INIT_SCRIPT: &str = include_str!("../../tests/vm/init.sh");

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.skip_setup {
        setup::prepare(setup::Needs::Run)?;
    }
    let requested: Vec<String> = if args.kernels.is_empty() {
        MATRIX.iter().map(|kernel| (*kernel).to_owned()).collect()
    } else {
        args.kernels
    };
    run_matrix(&requested, args.keep, &args.test_args)
}

/// Runs the tests on every kernel of `requested` in turn and fails, after all of them ran, if any failed.
pub fn run_matrix(requested: &[String], keep: bool, test_args: &[String]) -> anyhow::Result<()> {
    let kernels = requested
        .iter()
        .map(|kernel| KernelChoice::parse(kernel))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Every run is `--test-threads=1` already (the namespace tests share /run/netns and the pins), and libtest
    // refuses the option twice.
    let test_args = without_test_threads(test_args);
    let test_args = test_args.as_slice();
    let artifacts = Artifacts::build()?;
    let mut accel = None;
    let mut outcomes = Vec::new();
    for kernel in &kernels {
        let started = Instant::now();
        let result = match kernel {
            KernelChoice::Host => run_on_host(&artifacts, test_args),
            KernelChoice::Debian(line) => {
                let accel = accel.get_or_insert_with(Accel::detect);
                run_on_debian_kernel(line, &artifacts, accel, keep, test_args)
            }
        };
        let outcome = Outcome {
            kernel: kernel.to_string(),
            elapsed: started.elapsed(),
            result,
        };
        match &outcome.result {
            Ok(run) => println!(
                "vm-test: {} passed ({}) in {:.0?}",
                outcome.kernel, run.description, outcome.elapsed
            ),
            Err(err) => eprintln!(
                "vm-test: {} FAILED after {:.0?}: {err:#}",
                outcome.kernel, outcome.elapsed
            ),
        }
        outcomes.push(outcome);
    }
    println!("vm-test summary:");
    for outcome in &outcomes {
        match &outcome.result {
            Ok(run) => println!(
                "  PASS  {:<8} {} — {:.0?}",
                outcome.kernel, run.description, outcome.elapsed
            ),
            Err(err) => println!(
                "  FAIL  {:<8} {err:#} — {:.0?}",
                outcome.kernel, outcome.elapsed
            ),
        }
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| outcome.result.is_err())
        .map(|outcome| outcome.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "the kernel tests failed on {}; the guest's console is in target/vm/<abi>/console.log",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `args` without `--test-threads=N` or `--test-threads N`.
fn without_test_threads(args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--test-threads" {
            args.next();
        } else if !arg.starts_with("--test-threads=") {
            kept.push(arg.clone());
        }
    }
    kept
}

/// One kernel's result, for the summary.
struct Outcome {
    kernel: String,
    elapsed: Duration,
    result: anyhow::Result<Passed>,
}

/// What ran, for the summary: `linux-image-6.1.0-57-cloud-amd64 6.1.192-3, TCG, guest 9s`.
struct Passed {
    description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KernelChoice {
    Host,
    /// A kernel line (`6.1`) or ABI (`6.1.0-57`) of Debian's `linux-image-*-cloud-amd64` packages.
    Debian(String),
}

impl KernelChoice {
    fn parse(kernel: &str) -> anyhow::Result<Self> {
        if kernel == "host" {
            return Ok(Self::Host);
        }
        let plausible = kernel.starts_with(|c: char| c.is_ascii_digit())
            && kernel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-+~".contains(c));
        if !plausible {
            bail!(
                "--kernel {kernel:?}: expected `host`, a kernel line such as `6.1`, or a Debian ABI such as `6.1.0-57`"
            );
        }
        Ok(Self::Debian(kernel.to_owned()))
    }
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host => f.write_str("host"),
            Self::Debian(line) => f.write_str(line),
        }
    }
}

/// `target/vm/`, where the kernels, initramfs images and console logs go.
fn vm_dir() -> PathBuf {
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target"));
    target.join("vm")
}

/// The `ztna-tests` package directory; cargo runs its tests there, and so do the host run and the guest.
fn tests_dir() -> PathBuf {
    cmd::workspace_root().join("tests")
}

// ---------------------------------------------------------------------------------------------------------------
// What runs in the guest: the test executables and the agent binaries, built once for the whole matrix.

struct TestExecutable {
    /// The test target's name (`load`, `netns_traffic`).
    name: String,
    path: PathBuf,
}

struct Artifacts {
    tests: Vec<TestExecutable>,
    /// `ztna-agent` and any other binary of the agent package the tests start.
    binaries: Vec<PathBuf>,
}

impl Artifacts {
    fn build() -> anyhow::Result<Self> {
        // stderr inherited: `run_stdout` relies on `output()`, which would otherwise swallow the compiler's errors.
        let messages = cmd::run_stdout(cmd::cargo().stderr(Stdio::inherit()).args([
            "test",
            "--release",
            "-p",
            "ztna-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ]))?;
        let tests: Vec<TestExecutable> = artifacts::executables(&messages, artifacts::Kind::Test)?
            .into_iter()
            .map(|path| TestExecutable {
                name: test_name(&path),
                path,
            })
            .collect();
        if tests.is_empty() {
            bail!("`cargo test -p ztna-tests --no-run` built no test executable");
        }
        let messages = cmd::run_stdout(cmd::cargo().stderr(Stdio::inherit()).args([
            "build",
            "--release",
            "-p",
            "ztna-agent",
            "--bins",
            "--message-format=json-render-diagnostics",
        ]))?;
        let binaries = artifacts::executables(&messages, artifacts::Kind::Bin)?;
        Ok(Self { tests, binaries })
    }
}

/// `load` from `target/release/deps/load-97ff474592940f84`.
fn test_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => file,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `--kernel host`.

fn run_on_host(artifacts: &Artifacts, test_args: &[String]) -> anyhow::Result<Passed> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("failed to read /proc/sys/kernel/osrelease")?;
    if !setup::is_root()? {
        eprintln!(
            "warning: not running as root: on the host kernel the kernel tests skip; run as root, or test in a VM \
             (`--kernel 6.1`), where the tests run as root"
        );
    }
    let mut failed = Vec::new();
    for test in &artifacts.tests {
        let mut command = Command::new(&test.path);
        command
            .arg("--test-threads=1")
            .args(test_args)
            .envs(test_env(artifacts))
            .current_dir(tests_dir());
        if let Err(err) = cmd::run(&mut command) {
            eprintln!("vm-test: {} failed on the host: {err:#}", test.name);
            failed.push(test.name.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(" "));
    }
    Ok(Passed {
        description: format!("kernel {}, no VM", release.trim()),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Debian kernels: resolve, download, unpack.

struct DebianKernel {
    /// `6.1.0-57-cloud-amd64`: the kernel release, `uname -r` in the guest.
    release: String,
    /// `linux-image-6.1.0-57-cloud-amd64`.
    package: String,
    /// `target/vm/6.1.0-57-cloud-amd64/`.
    dir: PathBuf,
}

impl DebianKernel {
    fn new(abi: &str) -> Self {
        let release = format!("{abi}-cloud-amd64");
        Self {
            package: format!("linux-image-{release}"),
            dir: vm_dir().join(&release),
            release,
        }
    }

    /// The unpacked package; it exists only once unpacking completed.
    fn root(&self) -> PathBuf {
        self.dir.join("kernel")
    }

    fn vmlinuz(&self) -> PathBuf {
        self.root()
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    fn modules(&self) -> PathBuf {
        self.root().join("lib/modules").join(&self.release)
    }

    fn is_cached(&self) -> bool {
        self.vmlinuz().is_file()
    }

    /// The package's version (`6.1.192-3`), read from the downloaded `.deb`.
    fn package_version(&self) -> String {
        let version = find_deb(&self.dir, &self.package).and_then(|deb| {
            cmd::probe(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"))
                .map_err(anyhow::Error::from)
        });
        match version {
            Ok(version) => version.trim().to_owned(),
            Err(_) => "version unknown".to_owned(),
        }
    }
}

/// Resolves `line` to the newest matching kernel apt knows or the cache holds, and makes sure it is unpacked under
/// `target/vm/<release>/`. An empty or stale apt index (no such package, or the mirror dropped the old ABI) gets one
/// `apt-get update` when root.
fn fetch_kernel(line: &str) -> anyhow::Result<DebianKernel> {
    match try_fetch_kernel(line) {
        Ok(kernel) => Ok(kernel),
        Err(err) if setup::is_root()? => {
            eprintln!("vm-test: {err:#}; updating the apt index and trying again");
            cmd::run(Command::new("apt-get").arg("update"))?;
            try_fetch_kernel(line)
        }
        Err(err) => Err(err.context("as root, vm-test would run `apt-get update` and try again")),
    }
}

fn try_fetch_kernel(line: &str) -> anyhow::Result<DebianKernel> {
    let kernel = resolve_kernel(line)?;
    if kernel.is_cached() {
        println!(
            "vm-test: {} is cached in {}",
            kernel.package,
            kernel.dir.display()
        );
    } else {
        download_and_unpack(&kernel)?;
    }
    Ok(kernel)
}

fn resolve_kernel(line: &str) -> anyhow::Result<DebianKernel> {
    let mut abis = BTreeSet::new();
    let index = cmd::probe(Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-.*-cloud-amd64$",
    ]));
    let index_error = match index {
        Ok(listing) => {
            abis.extend(listing.lines().filter_map(|line| {
                let package = line.split_whitespace().next()?;
                cloud_abi(package)
            }));
            None
        }
        Err(err) => Some(err),
    };
    abis.extend(cached_abis());
    let newest = abis
        .into_iter()
        .filter(|abi| abi_matches(line, abi))
        .max_by_key(|abi| version_key(abi));
    match (newest, index_error) {
        (Some(abi), _) => Ok(DebianKernel::new(&abi)),
        (None, Some(err)) => Err(anyhow!(err).context(format!(
            "failed to list Debian's cloud kernels, and none matching {line:?} is cached in {}",
            vm_dir().display()
        ))),
        (None, None) => bail!(
            "no linux-image-{line}*-cloud-amd64 package in the apt index or in {}; `apt-cache search --names-only \
             '^linux-image-.*-cloud-amd64$'` lists the available ones (run `apt-get update` if it lists none)",
            vm_dir().display()
        ),
    }
}

/// `6.1.0-57` from `linux-image-6.1.0-57-cloud-amd64`; `None` for meta-packages (`linux-image-6.12-cloud-amd64`),
/// whose ABI lacks the patch level.
fn cloud_abi(package: &str) -> Option<String> {
    let abi = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-cloud-amd64")?;
    let mut numbers = abi.split('.');
    let concrete = numbers.next()?.parse::<u32>().is_ok()
        && numbers.next()?.parse::<u32>().is_ok()
        && numbers.next()?.starts_with(|c: char| c.is_ascii_digit());
    concrete.then(|| abi.to_owned())
}

/// The ABIs already unpacked under `target/vm/`.
fn cached_abis() -> Vec<String> {
    let Ok(entries) = fs::read_dir(vm_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let release = entry.ok()?.file_name().into_string().ok()?;
            let abi = release.strip_suffix("-cloud-amd64")?;
            DebianKernel::new(abi).is_cached().then(|| abi.to_owned())
        })
        .collect()
}

/// Whether `abi` belongs to the requested line: `6.1` matches `6.1.0-57` but not `6.12.118+deb12`.
fn abi_matches(line: &str, abi: &str) -> bool {
    match abi.strip_prefix(line) {
        Some(rest) => rest.is_empty() || rest.starts_with(['.', '-', '+']),
        None => false,
    }
}

/// Orders ABIs by their numbers: `6.1.0-57` < `6.1.0-100`, `6.12.9+deb12` < `6.12.118+deb12`.
fn version_key(abi: &str) -> Vec<u64> {
    abi.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

fn download_and_unpack(kernel: &DebianKernel) -> anyhow::Result<()> {
    fs::create_dir_all(&kernel.dir)
        .with_context(|| format!("failed to create {}", kernel.dir.display()))?;
    let mut download = Command::new("apt-get");
    if setup::is_root()? {
        // As root apt downloads as the `_apt` user, who may not write to target/; say so instead of warning.
        download.args(["-o", "APT::Sandbox::User=root"]);
    }
    download
        .args(["download", &kernel.package])
        .current_dir(&kernel.dir);
    cmd::run(&mut download)?;
    let deb = find_deb(&kernel.dir, &kernel.package)?;
    // Unpacked next to its final place and renamed when complete, so that an interrupted run is not taken for a
    // cached kernel.
    let partial = kernel.dir.join("kernel.partial");
    remove_if_present(&partial)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    remove_if_present(&kernel.root())?;
    fs::rename(&partial, kernel.root())
        .with_context(|| format!("failed to rename {} to kernel/", partial.display()))?;
    if !kernel.is_cached() {
        bail!("{} holds no {}", deb.display(), kernel.vmlinuz().display());
    }
    Ok(())
}

/// The `<package>_<version>_amd64.deb` that `apt-get download` left in `dir` (the newest, should there be several).
fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("failed to list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
        })
        .collect();
    debs.sort_by_key(|path| fs::metadata(path).and_then(|meta| meta.modified()).ok());
    debs.pop()
        .ok_or_else(|| anyhow!("no {package}_*.deb in {}", dir.display()))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => Err(err),
    }
    .with_context(|| format!("failed to remove {}", path.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// The initramfs.

/// A directory tree that becomes the guest's root file system. Files keep their host paths, so that a test that
/// finds the agent next to itself, or through the workspace path compiled into it, finds it in the guest too.
struct Staging {
    root: PathBuf,
}

impl Staging {
    fn create(root: PathBuf) -> anyhow::Result<Self> {
        remove_if_present(&root)?;
        for dir in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "etc/ztna-vm",
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "root",
            "var",
        ] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        // Debian 12's merged /usr, with relative links: writing through them while staging stays inside the tree.
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("var/run", "../run"),
        ] {
            let link = root.join(link);
            symlink(target, &link)
                .with_context(|| format!("failed to link {} to {target}", link.display()))?;
        }
        Ok(Self { root })
    }

    /// Where the guest path `guest` (absolute) lives in the tree.
    fn path(&self, guest: &Path) -> PathBuf {
        self.root.join(guest.strip_prefix("/").unwrap_or(guest))
    }

    /// Copies the host file `host` to `guest` (permissions included).
    fn copy(&self, host: &Path, guest: &Path) -> anyhow::Result<()> {
        let target = self.path(guest);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        fs::copy(host, &target).with_context(|| {
            format!(
                "failed to copy {} into the initramfs as {}",
                host.display(),
                guest.display()
            )
        })?;
        Ok(())
    }

    /// Copies a dynamically linked executable to its own host path, with the libraries `ldd` names.
    fn copy_executable(&self, host: &Path) -> anyhow::Result<()> {
        self.copy(host, host)?;
        for library in shared_libraries(host)? {
            if !self.path(&library).exists() {
                self.copy(&library, &library)?;
            }
        }
        Ok(())
    }

    fn write(&self, guest: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.path(Path::new(guest));
        fs::write(&path, contents)
            .with_context(|| format!("failed to write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("failed to make {} mode {mode:o}", path.display()))
    }

    /// Packs the tree as a gzip-compressed cpio (newc) archive owned by root, the format the kernel unpacks.
    fn pack(&self, archive: &Path) -> anyhow::Result<()> {
        let mut listing = String::new();
        list_tree(&self.root, Path::new(""), &mut listing)?;
        let listing_path = archive.with_extension("files");
        fs::write(&listing_path, listing)
            .with_context(|| format!("failed to write {}", listing_path.display()))?;
        let cpio_path = archive.with_extension("");
        let stdin = File::open(&listing_path)
            .with_context(|| format!("failed to open {}", listing_path.display()))?;
        let stdout = File::create(&cpio_path)
            .with_context(|| format!("failed to create {}", cpio_path.display()))?;
        cmd::run(
            Command::new("cpio")
                .args(["--create", "--format=newc", "--owner=0:0", "--quiet"])
                .current_dir(&self.root)
                .stdin(stdin)
                .stdout(stdout),
        )?;
        fs::remove_file(&listing_path)
            .with_context(|| format!("failed to remove {}", listing_path.display()))?;
        // -1: the guest decompresses it under emulation, where a smaller archive does not pay for a slower gunzip.
        cmd::run(
            Command::new("gzip")
                .args(["-1", "-n", "-f"])
                .arg(&cpio_path),
        )?;
        Ok(())
    }
}

/// Appends every path under `dir` (relative to the tree's root, parents before children) to `listing`, one a line,
/// without following symbolic links.
fn list_tree(root: &Path, dir: &Path, listing: &mut String) -> anyhow::Result<()> {
    let absolute = root.join(dir);
    let mut entries: Vec<_> = fs::read_dir(&absolute)
        .with_context(|| format!("failed to list {}", absolute.display()))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("failed to list {}", absolute.display()))?;
    entries.sort();
    for name in entries {
        let relative = dir.join(&name);
        let text = relative
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", relative.display()))?;
        if text.contains('\n') {
            bail!("{text:?} contains a newline, which a cpio file list cannot hold");
        }
        writeln!(listing, "{text}").expect("writing to a String cannot fail");
        let meta = fs::symlink_metadata(root.join(&relative))
            .with_context(|| format!("failed to stat {}", relative.display()))?;
        if meta.is_dir() {
            list_tree(root, &relative, listing)?;
        }
    }
    Ok(())
}

/// The shared libraries (and the dynamic loader) `ldd` names for `executable`; none for a static one.
fn shared_libraries(executable: &Path) -> anyhow::Result<Vec<PathBuf>> {
    match cmd::probe(Command::new("ldd").arg(executable)) {
        Ok(listing) => parse_ldd(&listing)
            .with_context(|| format!("`ldd {}` names a missing library", executable.display())),
        // glibc's ldd exits 1 for a static executable.
        Err(cmd::ProbeError::Failed { reason, .. })
            if reason.contains("not a dynamic executable") =>
        {
            Ok(Vec::new())
        }
        Err(err) => Err(err.into()),
    }
}

/// The library paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_ldd(listing: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in listing.lines().map(str::trim) {
        if line.is_empty() || line.contains("not a dynamic executable") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, resolved)) => {
                let resolved = resolved.trim();
                if resolved.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                resolved.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|path| path.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// `PATH`-style lookup of a host tool, in the directories where Debian installs them.
fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// Builds `target/vm/<release>/initramfs.cpio.gz` for `kernel`, with `staging/` next to it.
fn build_initramfs(
    kernel: &DebianKernel,
    artifacts: &Artifacts,
    test_args: &[String],
) -> anyhow::Result<PathBuf> {
    let staging = Staging::create(kernel.dir.join("staging"))?;

    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: install busybox-static (`cargo xtask setup`)");
    }
    staging.copy(busybox, Path::new("/usr/bin/busybox"))?;
    for libraries in shared_libraries(busybox)? {
        staging.copy(&libraries, &libraries)?;
    }

    let mut tools = Vec::new();
    for &(name, required) in GUEST_TOOLS {
        match find_tool(name) {
            Some(path) => {
                staging.copy_executable(&path)?;
                tools.push(path);
            }
            None if required => {
                bail!("`{name}` is missing on the host; `cargo xtask setup` installs it")
            }
            None => println!("vm-test: note: no `{name}` on the host; the guest goes without it"),
        }
    }
    // Busybox's applets fill in what the real tools above do not provide.
    let applets = cmd::probe(Command::new(busybox).arg("--list-full"))
        .context("failed to list busybox's applets")?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|applet| !applet.is_empty())
    {
        let link = staging.path(&Path::new("/").join(applet));
        if fs::symlink_metadata(&link).is_err() {
            symlink("/usr/bin/busybox", &link)
                .with_context(|| format!("failed to link {}", link.display()))?;
        }
    }

    for test in &artifacts.tests {
        staging.copy_executable(&test.path)?;
    }
    for binary in &artifacts.binaries {
        staging.copy_executable(binary)?;
    }
    let workdir = staging.path(&tests_dir());
    fs::create_dir_all(&workdir)
        .with_context(|| format!("failed to create {}", workdir.display()))?;

    let modules = stage_modules(kernel, &staging)?;

    staging.write("/init", INIT_SCRIPT, 0o755)?;
    staging.write("/etc/ztna-vm/env", &guest_env(artifacts), 0o644)?;
    staging.write("/etc/ztna-vm/modules", &lines(&modules), 0o644)?;
    let tests: Vec<String> = artifacts
        .tests
        .iter()
        .map(|test| format!("{} {}", test.name, test.path.display()))
        .collect();
    staging.write("/etc/ztna-vm/tests", &lines(&tests), 0o644)?;
    staging.write("/etc/ztna-vm/test-args", &lines(test_args), 0o644)?;

    let archive = kernel.dir.join("initramfs.cpio.gz");
    staging.pack(&archive)?;
    Ok(archive)
}

fn lines(items: &[String]) -> String {
    items.iter().map(|item| format!("{item}\n")).collect()
}

/// What the tests see in the guest, on top of [`test_env`].
fn guest_env(artifacts: &Artifacts) -> String {
    let mut vars: Vec<(String, String)> = vec![
        ("HOME".to_owned(), "/root".to_owned()),
        ("RUST_BACKTRACE".to_owned(), "1".to_owned()),
        (
            "ZTNA_PROPTEST_PACKETS".to_owned(),
            GUEST_PROPTEST_PACKETS.to_owned(),
        ),
        // cargo sets it when it runs a test; tests that find files or binaries through it find the mirrored paths.
        (
            "CARGO_MANIFEST_DIR".to_owned(),
            tests_dir().display().to_string(),
        ),
    ];
    for (name, value) in test_env(artifacts) {
        vars.retain(|(existing, _)| *existing != name);
        vars.push((name, value));
    }
    let mut env = String::new();
    writeln!(
        env,
        "ZTNA_VM_WORKDIR={}",
        shell_quote(&tests_dir().display().to_string())
    )
    .expect("writing to a String cannot fail");
    for (name, value) in vars {
        writeln!(env, "export {name}={}", shell_quote(&value))
            .expect("writing to a String cannot fail");
    }
    env
}

/// The environment of the test executables, on the host and in the guest: the agent binary this run built
/// (`ZTNA_AGENT_BIN`, which the namespace tests honour), and the host's `ZTNA_*` settings and `RUST_LOG`, as
/// `cargo test` would pass them on.
fn test_env(artifacts: &Artifacts) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = env::vars()
        .filter(|(name, _)| {
            (name.starts_with("ZTNA_") && name != AGENT_BIN_ENV) || name == "RUST_LOG"
        })
        .collect();
    if let Some(agent) = artifacts
        .binaries
        .iter()
        .find(|binary| binary.file_name().is_some_and(|name| name == "ztna-agent"))
    {
        vars.push((AGENT_BIN_ENV.to_owned(), agent.display().to_string()));
    }
    vars
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Copies [`GUEST_MODULES`] and what they depend on, decompressed, into the tree, and returns their guest paths in
/// the order `insmod` needs (dependencies first).
fn stage_modules(kernel: &DebianKernel, staging: &Staging) -> anyhow::Result<Vec<String>> {
    let available = module_files(&kernel.modules())?;
    let guest_dir = Path::new("/lib/modules").join(&kernel.release);
    fs::create_dir_all(staging.path(&guest_dir))
        .with_context(|| format!("failed to create {}", guest_dir.display()))?;
    let mut order = Vec::new();
    for module in GUEST_MODULES {
        stage_module(
            module,
            &available,
            staging,
            &guest_dir,
            &mut order,
            &mut Vec::new(),
        )?;
    }
    Ok(order)
}

fn stage_module(
    name: &str,
    available: &HashMap<String, PathBuf>,
    staging: &Staging,
    guest_dir: &Path,
    order: &mut Vec<String>,
    chain: &mut Vec<String>,
) -> anyhow::Result<()> {
    let name = name.replace('-', "_");
    let guest = guest_dir.join(format!("{name}.ko"));
    let guest_text = guest.display().to_string();
    if order.contains(&guest_text) {
        return Ok(());
    }
    if chain.contains(&name) {
        bail!(
            "kernel modules depend on each other in a cycle: {} -> {name}",
            chain.join(" -> ")
        );
    }
    let source = available.get(&name).ok_or_else(|| {
        anyhow!("the kernel package has no module {name} (needed by the namespace tests)")
    })?;
    let target = staging.path(&guest);
    decompress_module(source, &target)?;
    let depends = cmd::probe(Command::new("modinfo").args(["-F", "depends"]).arg(&target))
        .with_context(|| format!("failed to read the dependencies of {}", source.display()))?;
    chain.push(name.clone());
    for dependency in depends.trim().split(',').filter(|dep| !dep.is_empty()) {
        stage_module(dependency, available, staging, guest_dir, order, chain)?;
    }
    chain.pop();
    order.push(guest_text);
    Ok(())
}

/// Every module file under `dir`, by module name (`veth`, dashes as underscores).
fn module_files(dir: &Path) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut modules = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))?
        {
            let path = entry
                .with_context(|| format!("failed to list {}", dir.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = module_name(&path) {
                modules.insert(name, path);
            }
        }
    }
    Ok(modules)
}

/// `veth` from `veth.ko`, `veth.ko.xz`, `veth.ko.zst` or `veth.ko.gz`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (name, rest) = file.split_once(".ko")?;
    matches!(rest, "" | ".xz" | ".zst" | ".gz").then(|| name.replace('-', "_"))
}

/// Writes the module at `source` to `target` uncompressed: busybox's `insmod` loads only plain `.ko` files.
fn decompress_module(source: &Path, target: &Path) -> anyhow::Result<()> {
    let extension = source.extension().and_then(|ext| ext.to_str());
    let mut command = match extension {
        Some("ko") => {
            fs::copy(source, target)
                .with_context(|| format!("failed to copy {}", source.display()))?;
            return Ok(());
        }
        // busybox-static, which vm-test needs anyway, decompresses xz and gzip.
        Some("xz") => {
            let mut command = Command::new("busybox");
            command.arg("xzcat");
            command
        }
        Some("gz") => {
            let mut command = Command::new("busybox");
            command.arg("zcat");
            command
        }
        Some("zst") => {
            let mut command = Command::new("zstd");
            command.args(["-d", "-c", "-q"]);
            command
        }
        _ => bail!(
            "{} is not a kernel module vm-test knows how to unpack",
            source.display()
        ),
    };
    let output =
        File::create(target).with_context(|| format!("failed to create {}", target.display()))?;
    cmd::run(command.arg(source).stdout(output))
}

// ---------------------------------------------------------------------------------------------------------------
// QEMU.

/// Whether guests run under KVM; starts with "when /dev/kvm opens" and turns to TCG for good once KVM fails to
/// boot a guest.
struct Accel {
    kvm: bool,
}

impl Accel {
    fn detect() -> Self {
        let kvm = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !kvm {
            println!("vm-test: /dev/kvm is not usable here; the guests run under TCG emulation");
        }
        Self { kvm }
    }
}

fn run_on_debian_kernel(
    line: &str,
    artifacts: &Artifacts,
    accel: &mut Accel,
    keep: bool,
    test_args: &[String],
) -> anyhow::Result<Passed> {
    let kernel = fetch_kernel(line)?;
    let version = kernel.package_version();
    println!("vm-test: kernel {} {version}", kernel.package);
    let initramfs = build_initramfs(&kernel, artifacts, test_args)?;
    let console_log = kernel.dir.join("console.log");

    let mut boot = boot_guest(&kernel, &initramfs, accel.kvm, &console_log)?;
    if let Err(GuestError::KvmFailed(why)) = &boot.result {
        println!(
            "vm-test: KVM could not boot this kernel ({why}); falling back to TCG emulation for the rest of the run"
        );
        accel.kvm = false;
        boot = boot_guest(&kernel, &initramfs, false, &console_log)?;
    }

    if keep {
        println!(
            "vm-test: kept {} and its tree {}; boot it again with a shell after the tests:\n  {}",
            initramfs.display(),
            kernel.dir.join("staging").display(),
            cmd::display(&qemu_command(&kernel, &initramfs, accel.kvm, " ztna.shell"))
        );
    } else {
        remove_if_present(&kernel.dir.join("staging"))?;
        remove_if_present(&initramfs)?;
    }

    let accel_name = if boot.kvm { "KVM" } else { "TCG" };
    match boot.result {
        Ok(()) => Ok(Passed {
            description: format!(
                "{} {version}, {accel_name}, guest {:.0?}",
                kernel.package, boot.elapsed
            ),
        }),
        Err(err) => Err(anyhow!(err).context(format!(
            "{} {version} under {accel_name} (console: {})",
            kernel.package,
            console_log.display()
        ))),
    }
}

fn qemu_command(
    kernel: &DebianKernel,
    initramfs: &Path,
    kvm: bool,
    extra_cmdline: &str,
) -> Command {
    // Under TCG the guest gets one CPU: attaching and detaching XDP flips static keys, which the
    // kernel patches live with int3 breakpoints, and multi-threaded TCG does not make that patching
    // coherent across vCPUs: a second vCPU can execute a stale int3 and panic (seen on 6.12 in
    // netif_receive_skb_list_internal). Per-CPU behaviour is covered by the host run.
    let cpus = if kvm { "2" } else { "1" };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-m", "2G", "-smp", cpus]);
    if kvm {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // `max` gives the guest RDRAND, so that getrandom() does not wait for entropy in a silent VM.
        qemu.args(["-accel", "tcg", "-cpu", "max"]);
    }
    qemu.arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet{extra_cmdline}"));
    qemu
}

/// Why a guest run failed.
#[derive(Debug)]
enum GuestError {
    /// KVM never got the kernel to its first console line; TCG may.
    KvmFailed(String),
    /// The guest reported failing tests.
    TestsFailed(Vec<String>),
    TimedOut {
        running: Option<String>,
    },
    /// QEMU exited without a result marker: a kernel panic, or init died.
    NoResult,
    Io(String),
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KvmFailed(why) => write!(f, "KVM failed: {why}"),
            Self::TestsFailed(names) => write!(f, "failed in the guest: {}", names.join(" ")),
            Self::TimedOut { running: Some(test) } => write!(
                f,
                "timed out after {:?} while running {test}; QEMU killed",
                GUEST_TIMEOUT
            ),
            Self::TimedOut { running: None } => {
                write!(f, "timed out after {GUEST_TIMEOUT:?}; QEMU killed")
            }
            Self::NoResult => f.write_str(
                "the guest stopped without printing a ZTNA-VM-RESULT line (kernel panic, or init died)",
            ),
            Self::Io(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for GuestError {}

struct Boot {
    kvm: bool,
    elapsed: Duration,
    result: Result<(), GuestError>,
}

/// The result line of the guest's init, or `None` for any other console line.
fn parse_result(line: &str) -> Option<Result<(), Vec<String>>> {
    let verdict = line.trim_end().strip_prefix(RESULT_MARKER)?;
    if verdict == "PASS" {
        return Some(Ok(()));
    }
    let names = verdict.strip_prefix("FAIL")?;
    Some(Err(names.split_whitespace().map(str::to_owned).collect()))
}

enum ConsoleEvent {
    Stdout(String),
    Stderr(String),
}

/// Boots the guest, shows its console live (and copies it to `console_log`), and waits for its result marker.
fn boot_guest(
    kernel: &DebianKernel,
    initramfs: &Path,
    kvm: bool,
    console_log: &Path,
) -> anyhow::Result<Boot> {
    let mut qemu = qemu_command(kernel, initramfs, kvm, "");
    let line = cmd::display(&qemu);
    println!("$ {line}");
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{line}`"))?;
    let log = File::create(console_log)
        .with_context(|| format!("failed to create {}", console_log.display()))?;
    let (sender, events) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout_sender = sender.clone();
    let stdout_thread = thread::spawn(move || forward_console(stdout, log, stdout_sender));
    let stderr_thread = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if sender.send(ConsoleEvent::Stderr(line)).is_err() {
                break;
            }
        }
    });

    let result = watch(&events, kvm, started);
    if result.is_err() || child.try_wait().ok().flatten().is_none() {
        // Stops a stuck or timed-out guest; QEMU is our own child, killed by its pid.
        let _ = child.kill();
    }
    let status = child
        .wait()
        .with_context(|| format!("failed to wait for `{line}`"))?;
    let elapsed = started.elapsed();
    let _ = stdout_thread.join();
    let _ = stderr_thread.join();
    let result = match result {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err(names))) => Err(GuestError::TestsFailed(names)),
        Ok(None) if !status.success() => Err(GuestError::Io(format!(
            "QEMU exited with {status} before the guest printed a result"
        ))),
        Ok(None) => Err(GuestError::NoResult),
        Err(err) => Err(err),
    };
    Ok(Boot {
        kvm,
        elapsed,
        result,
    })
}

/// Copies QEMU's stdout (the guest's serial console) to our stdout as it comes, and to the log; sends whole lines.
fn forward_console(mut stdout: impl io::Read, mut log: File, sender: mpsc::Sender<ConsoleEvent>) {
    let mut buffer = [0u8; 4096];
    let mut pending = Vec::new();
    loop {
        let read = match stdout.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        let mut terminal = io::stdout().lock();
        let _ = terminal.write_all(chunk);
        let _ = terminal.flush();
        drop(terminal);
        let _ = log.write_all(chunk);
        pending.extend_from_slice(chunk);
        while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            if sender.send(ConsoleEvent::Stdout(line)).is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let _ = sender.send(ConsoleEvent::Stdout(
            String::from_utf8_lossy(&pending).into_owned(),
        ));
    }
}

/// Waits for the guest's result marker and for QEMU to exit, within the deadlines. `Ok(None)`: QEMU exited without
/// a marker.
fn watch(
    events: &mpsc::Receiver<ConsoleEvent>,
    kvm: bool,
    started: Instant,
) -> Result<Option<Result<(), Vec<String>>>, GuestError> {
    let mut console_seen = false;
    let mut running: Option<String> = None;
    let mut result = None;
    let mut result_at: Option<Instant> = None;
    loop {
        match events.recv_timeout(Duration::from_millis(250)) {
            Ok(ConsoleEvent::Stdout(line)) => {
                console_seen = true;
                if let Some(test) = line.strip_prefix("ztna-vm: running ") {
                    running = Some(test.trim().to_owned());
                }
                if let Some(verdict) = parse_result(&line) {
                    result = Some(verdict);
                    result_at = Some(Instant::now());
                }
            }
            Ok(ConsoleEvent::Stderr(line)) => {
                if kvm
                    && (line.contains("KVM internal error") || line.contains("emulation failure"))
                {
                    return Err(GuestError::KvmFailed(line));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: QEMU is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if kvm && !console_seen {
                    return Err(GuestError::KvmFailed(
                        "QEMU exited before the guest printed anything".to_owned(),
                    ));
                }
                return Ok(result);
            }
        }
        if kvm && !console_seen && started.elapsed() > KVM_BOOT_GRACE {
            return Err(GuestError::KvmFailed(format!(
                "no console output within {KVM_BOOT_GRACE:?}"
            )));
        }
        if result_at.is_some_and(|at| at.elapsed() > POWEROFF_GRACE) {
            // The verdict is in; the caller kills a guest that does not power off.
            return Ok(result);
        }
        if started.elapsed() > GUEST_TIMEOUT {
            return Err(GuestError::TimedOut { running });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_match_their_own_abis_only() {
        assert!(abi_matches("6.1", "6.1.0-57"));
        assert!(abi_matches("6.1.0-57", "6.1.0-57"));
        assert!(abi_matches("6.12", "6.12.118+deb12"));
        assert!(!abi_matches("6.1", "6.12.118+deb12"));
        assert!(!abi_matches("6.1.0-5", "6.1.0-57"));
    }

    #[test]
    fn newest_abi_wins_by_number_not_text() {
        let newest = ["6.1.0-9", "6.1.0-57", "6.1.0-100"]
            .into_iter()
            .max_by_key(|abi| version_key(abi));
        assert_eq!(newest, Some("6.1.0-100"));
        assert!(version_key("6.12.9+deb12") < version_key("6.12.118+deb12"));
    }

    #[test]
    fn meta_packages_have_no_abi() {
        assert_eq!(
            cloud_abi("linux-image-6.1.0-57-cloud-amd64").as_deref(),
            Some("6.1.0-57")
        );
        assert_eq!(
            cloud_abi("linux-image-6.12.118+deb12-cloud-amd64").as_deref(),
            Some("6.12.118+deb12")
        );
        assert_eq!(cloud_abi("linux-image-6.12-cloud-amd64"), None);
        assert_eq!(cloud_abi("linux-image-cloud-amd64"), None);
    }

    #[test]
    fn kernel_choice_rejects_what_is_not_a_version() {
        assert_eq!(KernelChoice::parse("host").unwrap(), KernelChoice::Host);
        assert_eq!(
            KernelChoice::parse("6.1").unwrap(),
            KernelChoice::Debian("6.1".to_owned())
        );
        assert!(KernelChoice::parse("latest").is_err());
        assert!(KernelChoice::parse("6.1; rm -rf /").is_err());
    }

    #[test]
    fn ldd_output_names_libraries_and_loader() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6c)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f6d)\n";
        assert_eq!(
            parse_ldd(listing).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        let err = parse_ldd("\tlibbpf.so.1 => not found\n").unwrap_err();
        assert_eq!(err.to_string(), "libbpf.so.1 not found");
    }

    #[test]
    fn result_marker_is_pass_or_fail_with_names() {
        assert_eq!(parse_result("ZTNA-VM-RESULT: PASS"), Some(Ok(())));
        assert_eq!(parse_result("ZTNA-VM-RESULT: PASS\r"), Some(Ok(())));
        assert_eq!(
            parse_result("ZTNA-VM-RESULT: FAIL load netns_traffic"),
            Some(Err(vec!["load".to_owned(), "netns_traffic".to_owned()]))
        );
        assert_eq!(parse_result("ZTNA-VM-RESULT: PASSED"), None);
        assert_eq!(parse_result("test load ... ok"), None);
        assert_eq!(parse_result("  ZTNA-VM-RESULT: PASS"), None);
    }

    #[test]
    fn test_names_drop_the_hash() {
        assert_eq!(
            test_name(Path::new("/w/target/release/deps/load-97ff474592940f84")),
            "load"
        );
    }

    #[test]
    fn module_names_ignore_compression() {
        assert_eq!(module_name(Path::new("a/veth.ko")).as_deref(), Some("veth"));
        assert_eq!(
            module_name(Path::new("a/nf-tables.ko.xz")).as_deref(),
            Some("nf_tables")
        );
        assert_eq!(module_name(Path::new("a/modules.order")), None);
        assert_eq!(module_name(Path::new("a/x.ko.bz2")), None);
    }

    #[test]
    fn test_threads_are_not_passed_twice() {
        let args = [
            "--test-threads=4",
            "load",
            "--test-threads",
            "2",
            "--nocapture",
        ]
        .map(String::from);
        assert_eq!(without_test_threads(&args), ["load", "--nocapture"]);
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
