//! The data plane: loads the XDP program, attaches it, pins its maps and links, and offers a typed API
//! over the maps. This is the only module that imports `aya`.
//!
//! Pinned state lives under `/sys/fs/bpf/ztna/<instance>/`: one file per map (named as in
//! [`ztna_common::maps`]) and one `link_<interface>` per attachment. An agent that restarts (or
//! crashes) finds the pinned maps and links again: the kernel keeps enforcing the grants in between,
//! and the new program replaces the old one on the same link atomically.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs, io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
    ptr::NonNull,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, Map, MapData, MapError, MapType, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use thiserror::Error;
use tracing::{info, warn};
use ztna_common::{
    config::{EventBucket, GlobalConfig, MODE_ENFORCE, MODE_MONITOR},
    event::Event,
    grant::{EPOCH_MASK, GrantBucket, GrantKey, GrantSlot, buckets_for_capacity},
    maps,
    net::{ProtectedNet, v4_mapped},
    service::{ServiceKey, ServiceLpmData, ServiceValue},
    verdict::STATS_LEN,
};

use crate::grant_table::{BucketMemory, GrantTable, TableError};

/// The XDP object built by `build.rs`.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztna"));

/// Magic number of a BPF file system (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("failed to load the XDP program: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("failed to load the XDP program into the kernel (verifier or kernel refused it): {0}")]
    Verify(#[source] Box<ProgramError>),
    #[error("{name} is missing from the XDP object")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type or layout: {source}")]
    MapType {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("failed to {action} in map {name}: {source}")]
    Map {
        action: &'static str,
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {name} is full ({capacity} entries); raise its capacity in the configuration")]
    MapFull { name: &'static str, capacity: u32 },
    #[error("{path} is not on a BPF file system; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpfFs { path: PathBuf },
    #[error("failed to create pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to pin {what} at {path}: {source}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to attach the XDP program to {interface} in {mode} mode: {source}")]
    Attach {
        interface: String,
        mode: AttachMode,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to reuse the pinned XDP link {path}: {source}")]
    Relink {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("interface {interface} does not exist")]
    NoInterface { interface: String },
    #[error("XDP program is not attached to {interface}")]
    NotAttached { interface: String },
    #[error("failed to remove {path}: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("prefix {addr}/{len} is invalid: the length exceeds {max}")]
    Prefix { addr: IpAddr, len: u8, max: u8 },
    #[error(
        "Linux {release} is too old: {feature} arrived in {needed}; ztna needs Linux {min} or newer \
         (upgrade the kernel, e.g. to your distribution's current LTS)",
        needed = format_version(*needed),
        min = format_version(MIN_KERNEL)
    )]
    KernelTooOld {
        release: String,
        feature: &'static str,
        needed: (u32, u32),
    },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] Box<ProgramError>),
    #[error("failed to map the grant table {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the pinned grant table does not match its configuration ({detail}); it was left by another \
         ztna version or is damaged: remove the instance's pins ({path}) and restart"
    )]
    PinnedTable { detail: String, path: PathBuf },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver (native) mode, falling back to generic mode with a warning when the driver refuses.
    #[default]
    Auto,
    /// Native XDP in the driver; fail if the driver cannot.
    Driver,
    /// Generic XDP in the kernel's receive path (works on every interface, slower).
    Generic,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Driver => "driver",
            Self::Generic => "generic",
        })
    }
}

/// Global enforcement mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop what has no grant.
    #[default]
    Enforce,
    /// Pass what would be dropped and report it (phased rollout).
    Monitor,
}

impl Mode {
    const fn raw(self) -> u32 {
        match self {
            Self::Enforce => MODE_ENFORCE,
            Self::Monitor => MODE_MONITOR,
        }
    }
}

/// A destination prefix; host bits are cleared when installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(DataplaneError::Prefix { addr, len, max });
        }
        Ok(Self { addr, len })
    }
}

/// A prefix as the key of its LPM trie, host bits cleared.
enum PrefixKey {
    V4(Key<[u8; 4]>),
    V6(Key<[u8; 16]>),
}

impl Prefix {
    fn key(&self) -> PrefixKey {
        let len = u32::from(self.len);
        match self.addr {
            IpAddr::V4(v4) => PrefixKey::V4(Key::new(len, mask_prefix(v4.octets(), self.len))),
            IpAddr::V6(v6) => PrefixKey::V6(Key::new(len, mask_prefix(v6.octets(), self.len))),
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Clears the bits past `len` in `bytes` (big-endian).
fn mask_prefix<const N: usize>(mut bytes: [u8; N], len: u8) -> [u8; N] {
    for (i, byte) in bytes.iter_mut().enumerate() {
        let bit = (i * 8) as u32;
        let len = u32::from(len);
        if bit >= len {
            *byte = 0;
        } else if bit + 8 > len {
            *byte &= 0xffu8 << (8 - (len - bit));
        }
    }
    bytes
}

/// The 16-byte form of a source address used in grant keys (IPv4, and IPv4-mapped IPv6, as
/// `::ffff:a.b.c.d`).
pub fn grant_source(addr: IpAddr) -> [u8; 16] {
    match addr.to_canonical() {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Decodes a 16-byte address from a grant key or event (`::ffff:a.b.c.d` back to IPv4).
pub fn decode_address(bytes: [u8; 16]) -> IpAddr {
    IpAddr::from(bytes).to_canonical()
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the XDP program compares grant deadlines with
/// (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel deadline `ttl` from now.
pub fn deadline_after(ttl: Duration) -> u64 {
    monotonic_coarse_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

/// Kernel features the XDP program and the agent rely on, with the release that brought each.
const KERNEL_FEATURES: [((u32, u32), &str); 4] = [
    (
        (5, 3),
        "bounded loops in the verifier (IPv6 extension-header walk)",
    ),
    ((5, 8), "the BPF ring buffer (deny events)"),
    (
        (5, 9),
        "BPF links for XDP (pinned attachments that survive an agent restart)",
    ),
    (
        (5, 11),
        "bpf_ktime_get_coarse_ns (grant expiry in the kernel) and memcg accounting of BPF maps",
    ),
];

/// The oldest kernel ztna can run on at all; the oldest one the test matrix boots is [`TESTED_KERNEL`].
pub const MIN_KERNEL: (u32, u32) = (5, 11);
/// The oldest kernel the test matrix runs on (Debian 12's LTS).
pub const TESTED_KERNEL: (u32, u32) = (6, 1);

fn format_version((major, minor): (u32, u32)) -> String {
    format!("{major}.{minor}")
}

/// `major.minor` of a kernel release string such as `6.1.0-28-cloud-amd64`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses a kernel that lacks a feature ztna needs, naming the first missing one; warns on a kernel
/// older than the oldest tested one.
pub fn check_kernel_release(release: &str) -> Result<()> {
    let Some(version) = parse_kernel_release(release) else {
        warn!("cannot parse kernel release {release:?}; assuming it is recent enough");
        return Ok(());
    };
    if let Some((needed, feature)) = KERNEL_FEATURES.iter().find(|(needed, _)| version < *needed) {
        return Err(DataplaneError::KernelTooOld {
            release: release.to_owned(),
            feature,
            needed: *needed,
        });
    }
    if version < TESTED_KERNEL {
        warn!(
            "Linux {release} is older than {}, the oldest kernel ztna is tested on",
            format_version(TESTED_KERNEL)
        );
    }
    Ok(())
}

/// Where and whether to pin.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin maps and links under `<pin_root>/<instance>/` and reuse what is pinned there. Without it
    /// the maps live as long as this process (tests, benchmarks).
    pub instance: Option<String>,
    /// Root of the pin directories; [`maps::PIN_ROOT`] by default.
    pub pin_root: PathBuf,
    /// Grants the grant table admits (it is sized for them at no more than 90 % load).
    pub grants_capacity: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            instance: None,
            pin_root: PathBuf::from(maps::PIN_ROOT),
            grants_capacity: maps::GRANTS_DEFAULT_CAPACITY,
        }
    }
}

/// One attachment of the program to an interface.
#[derive(Debug)]
struct Attachment {
    mode: AttachMode,
    /// Keeps an unpinned link alive; a pinned link lives in bpffs and this is just our handle.
    _link: FdLink,
    pin_path: Option<PathBuf>,
}

/// A live decoded grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    pub source: IpAddr,
    pub app_id: u32,
    pub expires_at_ns: u64,
    pub epoch: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// Whether the maps were found pinned from an earlier run.
    reused_pins: bool,
    attachments: BTreeMap<String, Attachment>,
    config: Array<MapData, GlobalConfig>,
    protected_v4: LpmTrie<MapData, [u8; 4], ProtectedNet>,
    protected_v6: LpmTrie<MapData, [u8; 16], ProtectedNet>,
    services: LpmTrie<MapData, ServiceLpmData, ServiceValue>,
    grants: GrantTable<MappedBuckets>,
    stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    _event_bucket: PerCpuArray<MapData, EventBucket>,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap { name })?;
    T::try_from(map).map_err(|source| DataplaneError::MapType {
        name,
        source: Box::new(source),
    })
}

fn map_err(action: &'static str, name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        action,
        name,
        source: Box::new(source),
    }
}

fn is_bpf_fs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid C string and `stat` a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// Where distributions mount the BPF file system.
const BPF_FS_DEFAULT: &str = "/sys/fs/bpf";

/// Makes sure `root` lies on a BPF file system, mounting one at `/sys/fs/bpf` when nothing is mounted
/// there yet (as systemd does on most distributions, but not in minimal systems and containers).
fn ensure_bpf_fs(root: &Path) -> Result<()> {
    if root.ancestors().any(is_bpf_fs) {
        return Ok(());
    }
    let default = Path::new(BPF_FS_DEFAULT);
    if root.starts_with(default) && !is_bpf_fs(default) {
        let target = CString::new(BPF_FS_DEFAULT).expect("no NUL in a constant");
        let fstype = CString::new("bpf").expect("no NUL in a constant");
        // SAFETY: valid C strings; no mount data.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            info!("mounted a BPF file system at {BPF_FS_DEFAULT}");
            return Ok(());
        }
        warn!(
            "could not mount a BPF file system at {BPF_FS_DEFAULT}: {}",
            io::Error::last_os_error()
        );
    }
    Err(DataplaneError::NotBpfFs {
        path: root.to_owned(),
    })
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`; lift it so that large grant maps load.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit value for setrlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        warn!(
            "could not raise RLIMIT_MEMLOCK: {}; large maps may fail to load on kernels before 5.11",
            io::Error::last_os_error()
        );
    }
}

/// Looks up an interface index by name.
pub fn interface_index(interface: &str) -> Result<u32> {
    let c_name = CString::new(interface).map_err(|_| DataplaneError::NoInterface {
        interface: interface.to_owned(),
    })?;
    // SAFETY: `c_name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::NoInterface {
            interface: interface.to_owned(),
        });
    }
    Ok(index)
}

impl Dataplane {
    /// Loads the program and creates (or, when pinning, reuses) its maps. Nothing is attached yet.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        if let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") {
            check_kernel_release(release.trim())?;
        }
        raise_memlock_limit();
        let pin_dir = match &options.instance {
            Some(instance) => {
                let root = &options.pin_root;
                ensure_bpf_fs(root)?;
                let dir = root.join(instance);
                fs::create_dir_all(&dir).map_err(|source| DataplaneError::PinDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(dir)
            }
            None => None,
        };
        let reused_pins = pin_dir
            .as_ref()
            .is_some_and(|dir| maps::ALL.iter().any(|name| dir.join(name).exists()));

        let pin_paths: Vec<(&'static str, PathBuf)> = match &pin_dir {
            Some(dir) => maps::ALL
                .iter()
                .map(|name| (*name, dir.join(name)))
                .collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::GRANTS, buckets_for_capacity(options.grants_capacity));
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(PROGRAM_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        {
            let program: &mut Xdp = ebpf
                .program_mut(maps::PROGRAM)
                .ok_or(DataplaneError::MissingMap {
                    name: maps::PROGRAM,
                })?
                .try_into()
                .map_err(|e| DataplaneError::Verify(Box::new(e)))?;
            program
                .load()
                .map_err(|e| DataplaneError::Verify(Box::new(e)))?;
        }

        let config: Array<MapData, GlobalConfig> = take_map(&mut ebpf, maps::CONFIG)?;
        let grants = open_grant_table(
            &mut ebpf,
            &config,
            reused_pins,
            options.grants_capacity,
            pin_dir.as_deref(),
        )?;
        if grants.capacity() != options.grants_capacity {
            warn!(
                "pinned grant table holds {} grants, configuration asks for {}; keeping the pinned \
                 table (remove the instance's pins to resize)",
                grants.capacity(),
                options.grants_capacity
            );
        }
        let mut dataplane = Self {
            config,
            protected_v4: take_map(&mut ebpf, maps::PROTECTED_V4)?,
            protected_v6: take_map(&mut ebpf, maps::PROTECTED_V6)?,
            services: take_map(&mut ebpf, maps::SERVICES)?,
            grants,
            stats: take_map(&mut ebpf, maps::STATS)?,
            events: Some(take_map(&mut ebpf, maps::EVENTS)?),
            _event_bucket: take_map(&mut ebpf, maps::EVENT_BUCKET)?,
            ebpf,
            pin_dir,
            reused_pins,
            attachments: BTreeMap::new(),
        };
        // Writes the grant table's seed and size into CONFIG (a fresh instance, or a pinned one that
        // predates them), where the XDP program reads them.
        let current = dataplane.config()?;
        dataplane.set_config(&current)?;
        if reused_pins {
            info!(
                "reusing pinned maps in {} ({} live grants)",
                dataplane
                    .pin_dir
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display(),
                dataplane.grants().map(|g| g.len()).unwrap_or(0)
            );
        } else {
            // A fresh instance: write the defaults so that the config entry is explicit.
            dataplane.set_config(&GlobalConfig::default().with_event_budget(100, 100))?;
        }
        Ok(dataplane)
    }

    /// Whether the maps came from an earlier run's pins.
    pub fn reused_pins(&self) -> bool {
        self.reused_pins
    }

    /// The pin directory, when pinning.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn program_mut(&mut self) -> &mut Xdp {
        let program = self
            .ebpf
            .program_mut(maps::PROGRAM)
            .expect("program presence was checked at load");
        program
            .try_into()
            .expect("program type was checked at load")
    }

    /// The loaded XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &Xdp {
        let program = self
            .ebpf
            .program(maps::PROGRAM)
            .expect("program presence was checked at load");
        program
            .try_into()
            .expect("program type was checked at load")
    }

    /// Runs the program once per `repeat` on `packet` through `BPF_PROG_TEST_RUN` and returns the XDP
    /// action and the kernel's average duration per run.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        run_test(self.program(), packet, repeat)
    }

    /// Runs the `XDP_PASS`-only baseline program from the same object on `packet`, loading it on first
    /// use: the floor that per-packet costs are measured against.
    pub fn baseline_test_run(&mut self, packet: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(maps::BASELINE_PROGRAM)
            .ok_or(DataplaneError::MissingMap {
                name: maps::BASELINE_PROGRAM,
            })?
            .try_into()
            .map_err(|e| DataplaneError::Verify(Box::new(e)))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|e| DataplaneError::Verify(Box::new(e)))?;
        }
        run_test(program, packet, repeat)
    }

    /// Attaches to `interface`. With pinning, a link pinned by an earlier run is taken over: the new
    /// program replaces the old one atomically, so no packet goes unenforced in between.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachMode> {
        let if_index = interface_index(interface)?;
        let pin_path = self
            .pin_dir
            .as_ref()
            .map(|dir| dir.join(format!("link_{interface}")));
        if let Some(path) = pin_path.as_ref().filter(|p| p.exists()) {
            let link = self.relink(path)?;
            info!(
                "took over pinned XDP link on {interface} ({})",
                path.display()
            );
            self.attachments.insert(
                interface.to_owned(),
                Attachment {
                    mode,
                    _link: link,
                    pin_path: Some(path.clone()),
                },
            );
            return Ok(mode);
        }

        let (link_id, used) = match mode {
            AttachMode::Driver => (
                self.attach_raw(interface, if_index, AttachMode::Driver)?,
                AttachMode::Driver,
            ),
            AttachMode::Generic => (
                self.attach_raw(interface, if_index, AttachMode::Generic)?,
                AttachMode::Generic,
            ),
            AttachMode::Auto => match self.attach_raw(interface, if_index, AttachMode::Driver) {
                Ok(id) => (id, AttachMode::Driver),
                Err(err) => {
                    warn!("{err}; falling back to generic mode on {interface}");
                    (
                        self.attach_raw(interface, if_index, AttachMode::Generic)?,
                        AttachMode::Generic,
                    )
                }
            },
        };
        let link = self
            .program_mut()
            .take_link(link_id)
            .map_err(|e| DataplaneError::Attach {
                interface: interface.to_owned(),
                mode: used,
                source: Box::new(e),
            })?;
        let link = FdLink::try_from(link).map_err(|e| DataplaneError::Attach {
            interface: interface.to_owned(),
            mode: used,
            source: Box::new(e),
        })?;
        let link = match &pin_path {
            Some(path) => {
                let pinned = link.pin(path).map_err(|e| DataplaneError::Pin {
                    what: format!("the XDP link on {interface}"),
                    path: path.clone(),
                    source: Box::new(e),
                })?;
                FdLink::from(pinned)
            }
            None => link,
        };
        info!("attached XDP program to {interface} in {used} mode");
        self.attachments.insert(
            interface.to_owned(),
            Attachment {
                mode: used,
                _link: link,
                pin_path,
            },
        );
        Ok(used)
    }

    fn attach_raw(
        &mut self,
        interface: &str,
        if_index: u32,
        mode: AttachMode,
    ) -> Result<aya::programs::xdp::XdpLinkId> {
        let xdp_mode = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
            AttachMode::Auto => XdpMode::Default,
        };
        self.program_mut()
            .attach_to_if_index(if_index, xdp_mode)
            .map_err(|e| DataplaneError::Attach {
                interface: interface.to_owned(),
                mode,
                source: Box::new(e),
            })
    }

    fn relink(&mut self, path: &Path) -> Result<FdLink> {
        let relink_err = |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Relink {
            path: path.to_owned(),
            source: e,
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| relink_err(Box::new(e)))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e: LinkError| relink_err(Box::new(e)))?;
        let program = self.program_mut();
        let id = program
            .attach_to_link(link)
            .map_err(|e| relink_err(Box::new(e)))?;
        let link = program.take_link(id).map_err(|e| relink_err(Box::new(e)))?;
        FdLink::try_from(link).map_err(|e| relink_err(Box::new(e)))
    }

    /// Interfaces the program is attached to, with the mode used.
    pub fn attachments(&self) -> Vec<(String, AttachMode)> {
        self.attachments
            .iter()
            .map(|(name, a)| (name.clone(), a.mode))
            .collect()
    }

    /// Detaches from `interface` and removes its link pin.
    pub fn detach(&mut self, interface: &str) -> Result<()> {
        let attachment =
            self.attachments
                .remove(interface)
                .ok_or_else(|| DataplaneError::NotAttached {
                    interface: interface.to_owned(),
                })?;
        if let Some(path) = &attachment.pin_path {
            fs::remove_file(path).map_err(|source| DataplaneError::Unpin {
                path: path.clone(),
                source,
            })?;
        }
        drop(attachment);
        info!("detached XDP program from {interface}");
        Ok(())
    }

    /// Detaches from every interface and removes every pin of this instance: a clean shutdown that
    /// leaves nothing behind in the kernel.
    pub fn teardown(mut self) -> Result<()> {
        let interfaces: Vec<String> = self.attachments.keys().cloned().collect();
        for interface in interfaces {
            self.detach(&interface)?;
        }
        if let Some(dir) = self.pin_dir.take() {
            remove_pins(&dir)?;
        }
        Ok(())
    }

    // --- configuration ------------------------------------------------------------------------

    pub fn config(&self) -> Result<GlobalConfig> {
        self.config
            .get(&0, 0)
            .map_err(map_err("read the configuration", maps::CONFIG))
    }

    /// Writes the configuration entry. The grant table's fields (seed, buckets, capacity) belong to
    /// the table and are kept whatever `config` says: with others the XDP program would look grants up
    /// in the wrong buckets.
    pub fn set_config(&mut self, config: &GlobalConfig) -> Result<()> {
        let config = GlobalConfig {
            grant_seed: self.grants.seed(),
            grant_buckets: self.grants.buckets(),
            grant_capacity: self.grants.capacity(),
            ..*config
        };
        self.config
            .set(0, config, 0)
            .map_err(map_err("write the configuration", maps::CONFIG))
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        let mut config = self.config()?;
        config.mode = mode.raw();
        self.set_config(&config)
    }

    /// Sets the event sampling budget per CPU: `rate` events per second, bursts of `burst`.
    pub fn set_event_budget(&mut self, rate: u32, burst: u32) -> Result<()> {
        let config = self.config()?.with_event_budget(rate, burst);
        self.set_config(&config)
    }

    /// The current epoch (the bits grants keep).
    pub fn epoch(&self) -> Result<u32> {
        Ok(self.config()?.epoch & EPOCH_MASK as u32)
    }

    /// Revokes every grant at once by moving to the next epoch; returns the new epoch.
    pub fn bump_epoch(&mut self) -> Result<u32> {
        let mut config = self.config()?;
        config.epoch = (config.epoch.wrapping_add(1)) & EPOCH_MASK as u32;
        self.set_config(&config)?;
        Ok(config.epoch)
    }

    // --- protected destinations and services --------------------------------------------------

    pub fn add_prefix(&mut self, prefix: Prefix, net_id: u32) -> Result<()> {
        let value = ProtectedNet { net_id };
        match prefix.key() {
            PrefixKey::V4(key) => self
                .protected_v4
                .insert(&key, value, 0)
                .map_err(map_err("add a prefix", maps::PROTECTED_V4)),
            PrefixKey::V6(key) => self
                .protected_v6
                .insert(&key, value, 0)
                .map_err(map_err("add a prefix", maps::PROTECTED_V6)),
        }
    }

    pub fn remove_prefix(&mut self, prefix: Prefix) -> Result<()> {
        match prefix.key() {
            PrefixKey::V4(key) => self
                .protected_v4
                .remove(&key)
                .map_err(map_err("remove a prefix", maps::PROTECTED_V4)),
            PrefixKey::V6(key) => self
                .protected_v6
                .remove(&key)
                .map_err(map_err("remove a prefix", maps::PROTECTED_V6)),
        }
    }

    /// Every installed prefix with its net id.
    pub fn prefixes(&self) -> Result<Vec<(Prefix, u32)>> {
        fn entry<const N: usize>(key: Key<[u8; N]>, value: ProtectedNet) -> (Prefix, u32)
        where
            IpAddr: From<[u8; N]>,
        {
            let addr = IpAddr::from(key.data());
            let len = key.prefix_len() as u8;
            (Prefix { addr, len }, value.net_id)
        }
        let v4 = self.protected_v4.iter().map(|item| {
            item.map(|(key, value)| entry(key, value))
                .map_err(map_err("list prefixes", maps::PROTECTED_V4))
        });
        let v6 = self.protected_v6.iter().map(|item| {
            item.map(|(key, value)| entry(key, value))
                .map_err(map_err("list prefixes", maps::PROTECTED_V6))
        });
        v4.chain(v6).collect()
    }

    /// Installs a service; port 0 and protocol 0 are wildcards (see [`ServiceKey`]).
    pub fn add_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.services
            .insert(&Key::new(key.prefix_len(), key.lpm_data()), value, 0)
            .map_err(map_err("add a service", maps::SERVICES))
    }

    pub fn remove_service(&mut self, key: ServiceKey) -> Result<()> {
        self.services
            .remove(&Key::new(key.prefix_len(), key.lpm_data()))
            .map_err(map_err("remove a service", maps::SERVICES))
    }

    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services
            .iter()
            .map(|item| {
                item.map(|(key, value)| (ServiceKey::from_lpm(key.prefix_len(), key.data()), value))
                    .map_err(map_err("list services", maps::SERVICES))
            })
            .collect()
    }

    /// Sets the per-app mode (`ztna_common::service::APP_MODE_*`) on every service of `app_id`.
    pub fn set_app_mode(&mut self, app_id: u32, mode: u32) -> Result<usize> {
        let services = self.services()?;
        let mut changed = 0;
        for (key, mut value) in services {
            if value.app_id == app_id {
                value.mode = mode;
                self.add_service(key, value)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    // --- grants ------------------------------------------------------------------------------

    /// Installs or replaces the grant for (`source`, `app_id`) under the current epoch, expiring at
    /// `expires_at_ns` on the kernel's monotonic clock ([`deadline_after`]). Counters restart.
    pub fn upsert_grant(&mut self, source: IpAddr, app_id: u32, expires_at_ns: u64) -> Result<()> {
        let epoch = self.epoch()?;
        self.grants
            .upsert(&grant_key(source, app_id), expires_at_ns, epoch)
            .map_err(|error| {
                if let TableError::NoSlot { .. } = error {
                    warn!("{error}");
                }
                DataplaneError::MapFull {
                    name: maps::GRANTS,
                    capacity: self.grants.capacity(),
                }
            })
    }

    /// Moves the deadline of an existing grant, keeping its counters. Returns false if there is none.
    pub fn extend_grant(
        &mut self,
        source: IpAddr,
        app_id: u32,
        expires_at_ns: u64,
    ) -> Result<bool> {
        Ok(self
            .grants
            .extend(&grant_key(source, app_id), expires_at_ns))
    }

    /// Removes the grant for (`source`, `app_id`); returns whether there was one.
    pub fn remove_grant(&mut self, source: IpAddr, app_id: u32) -> Result<bool> {
        Ok(self.grants.remove(&grant_key(source, app_id)))
    }

    pub fn grant(&self, source: IpAddr, app_id: u32) -> Result<Option<GrantEntry>> {
        Ok(self
            .grants
            .get(&grant_key(source, app_id))
            .map(|slot| decode_grant(&slot)))
    }

    /// Every grant in the table, live or not.
    pub fn grants(&self) -> Result<Vec<GrantEntry>> {
        Ok(self
            .grants
            .entries()
            .map(|slot| decode_grant(&slot))
            .collect())
    }

    /// Number of grants the table admits.
    pub fn grants_capacity(&self) -> u32 {
        self.grants.capacity()
    }

    // --- counters and events -----------------------------------------------------------------

    /// Packet counters for every `STATS` slot, summed over CPUs (index with
    /// `ztna_common::verdict::stat_index`).
    pub fn stats(&self) -> Result<Vec<u64>> {
        (0..STATS_LEN)
            .map(|index| {
                self.stats
                    .get(&index, 0)
                    .map(|values| values.iter().sum())
                    .map_err(map_err("read counters", maps::STATS))
            })
            .collect()
    }

    /// The event ring buffer; can be taken once (by the task that streams events).
    pub fn take_events(&mut self) -> Option<EventReader> {
        self.events.take().map(|ring| EventReader { ring })
    }

    /// Bytes of kernel memory charged to the grant map, from the map's own accounting
    /// (`memlock` in its fdinfo).
    pub fn grants_memory_bytes(&self) -> io::Result<u64> {
        let fd = self.grants.memory().map.fd().as_fd().as_raw_fd();
        map_memlock(fd)
    }
}

fn grant_key(source: IpAddr, app_id: u32) -> GrantKey {
    GrantKey {
        src: grant_source(source),
        app_id,
    }
}

/// `BPF_PROG_TEST_RUN` of `program` on `packet`, `repeat` times: the XDP action and the kernel's
/// average duration per run.
fn run_test(program: &Xdp, packet: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|e| DataplaneError::TestRun(Box::new(e)))?;
    Ok((result.return_value, result.duration))
}

fn decode_grant(slot: &GrantSlot) -> GrantEntry {
    GrantEntry {
        source: decode_address(slot.src),
        app_id: slot.app_id,
        expires_at_ns: slot.expires_at_ns,
        epoch: slot.epoch & EPOCH_MASK as u32,
        packets: slot.packets,
        bytes: slot.bytes,
    }
}

/// The grant map's buckets, mapped into this process (`MAP_SHARED`): the agent writes grants straight
/// into the memory the XDP program reads.
pub struct MappedBuckets {
    /// Keeps the map (and so the memory) alive for as long as the mapping.
    map: MapData,
    base: NonNull<GrantBucket>,
    bytes: usize,
    buckets: u32,
}

// SAFETY: the mapping is plain shared memory owned by this value; the grant table accesses it only
// through `&self` (reads) and `&mut self` (writes) of its owner, as with any heap memory.
unsafe impl Send for MappedBuckets {}
// SAFETY: as above; shared references only read (volatile).
unsafe impl Sync for MappedBuckets {}

impl MappedBuckets {
    fn new(map: MapData, buckets: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("sysconf(_SC_PAGESIZE) failed"))?;
        let bytes = (buckets as usize * size_of::<GrantBucket>()).next_multiple_of(page);
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of a BPF_F_MMAPABLE array, no larger than the array's
        // values (rounded up to a page, as the kernel allows); we own the result until munmap.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<GrantBucket>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self {
            map,
            base,
            bytes,
            buckets,
        })
    }
}

impl BucketMemory for MappedBuckets {
    fn base(&self) -> NonNull<GrantBucket> {
        self.base
    }

    fn buckets(&self) -> u32 {
        self.buckets
    }
}

impl Drop for MappedBuckets {
    fn drop(&mut self) {
        // SAFETY: `base` and `bytes` describe a mapping made in `new` and not unmapped since.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// A random 64-bit seed for a fresh grant table.
fn random_seed() -> io::Result<u64> {
    let mut seed = [0u8; 8];
    // SAFETY: `seed` is a valid, writable buffer of its length.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(seed))
}

/// Takes `GRANTS` out of the object, maps it, and opens the table on it: a fresh table gets a random
/// seed, a pinned one the seed and capacity its CONFIG recorded.
fn open_grant_table(
    ebpf: &mut Ebpf,
    config: &Array<MapData, GlobalConfig>,
    reused_pins: bool,
    capacity: u32,
    pin_dir: Option<&Path>,
) -> Result<GrantTable<MappedBuckets>> {
    let name = maps::GRANTS;
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap { name })?;
    let pinned = |detail: String| DataplaneError::PinnedTable {
        detail,
        path: pin_dir.map(Path::to_owned).unwrap_or_default(),
    };
    let Map::Array(data) = map else {
        return Err(pinned(format!("{name} is not an array")));
    };
    let info = data.info().map_err(|source| DataplaneError::MapType {
        name,
        source: Box::new(source),
    })?;
    if info.map_type().ok() != Some(MapType::Array)
        || info.value_size() as usize != size_of::<GrantBucket>()
        || info.map_flags() & maps::GRANTS_MAP_FLAGS == 0
    {
        return Err(pinned(format!(
            "{name} has value size {} and flags {:#x}, expected {} and BPF_F_MMAPABLE",
            info.value_size(),
            info.map_flags(),
            size_of::<GrantBucket>()
        )));
    }
    let buckets = info.max_entries();
    let memory = MappedBuckets::new(data, buckets)
        .map_err(|source| DataplaneError::Mmap { name, source })?;
    let recorded = if reused_pins {
        Some(
            config
                .get(&0, 0)
                .map_err(map_err("read the configuration", maps::CONFIG))?,
        )
    } else {
        None
    };
    match recorded {
        Some(recorded) if recorded.grant_buckets != 0 => {
            if recorded.grant_buckets != buckets {
                return Err(pinned(format!(
                    "CONFIG records {} buckets, {name} has {buckets}",
                    recorded.grant_buckets
                )));
            }
            Ok(GrantTable::open(
                memory,
                recorded.grant_seed,
                recorded.grant_capacity,
            ))
        }
        _ => {
            let seed = random_seed().map_err(|source| DataplaneError::Mmap { name, source })?;
            if !reused_pins {
                // A map created by this load: all zeros.
                return Ok(GrantTable::new_empty(memory, seed, capacity));
            }
            let table = GrantTable::open(memory, seed, capacity);
            if !table.is_empty() {
                return Err(pinned(format!(
                    "{name} holds grants but CONFIG records no seed to find them by"
                )));
            }
            Ok(table)
        }
    }
}

/// The grant for (`source`, `app_id`) in the pinned maps of an instance (`pin_dir`), read through
/// the `bpf` syscall without loading anything: for tools and tests that inspect a running gateway.
pub fn pinned_grant(pin_dir: &Path, source: IpAddr, app_id: u32) -> Result<Option<GrantEntry>> {
    let open = |name: &'static str| {
        MapData::from_pin(pin_dir.join(name)).map_err(|source| DataplaneError::MapType {
            name,
            source: Box::new(source),
        })
    };
    let config: Array<MapData, GlobalConfig> = Array::try_from(Map::Array(open(maps::CONFIG)?))
        .map_err(|source| DataplaneError::MapType {
            name: maps::CONFIG,
            source: Box::new(source),
        })?;
    let grants: Array<MapData, GrantBucket> = Array::try_from(Map::Array(open(maps::GRANTS)?))
        .map_err(|source| DataplaneError::MapType {
            name: maps::GRANTS,
            source: Box::new(source),
        })?;
    let config = config
        .get(&0, 0)
        .map_err(map_err("read the configuration", maps::CONFIG))?;
    let key = grant_key(source, app_id);
    for bucket in ztna_common::grant::key_buckets(&key, config.grant_seed, config.grant_buckets) {
        let bucket = grants
            .get(&bucket, 0)
            .map_err(map_err("read a grant bucket", maps::GRANTS))?;
        if let Some(slot) = bucket
            .slots
            .iter()
            .find(|slot| slot.state == ztna_common::grant::SLOT_USED && slot.key() == key)
        {
            return Ok(Some(decode_grant(slot)));
        }
    }
    Ok(None)
}

/// `memlock:` of a BPF map's fdinfo: the kernel's own accounting of the map's memory.
pub fn map_memlock(fd: RawFd) -> io::Result<u64> {
    let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no memlock line in the fdinfo of fd {fd}")))
}

/// Removes every pin of an instance (maps and links) and its directory. Links removed here detach.
pub fn remove_pins(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DataplaneError::Unpin {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        fs::remove_file(&path).map_err(|source| DataplaneError::Unpin {
            path: path.clone(),
            source,
        })?;
    }
    fs::remove_dir(dir).map_err(|source| DataplaneError::Unpin {
        path: dir.to_owned(),
        source,
    })
}

/// Reads [`Event`] records from the ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    /// The next event, if one is waiting. Records of other kinds or sizes are skipped.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let item = self.ring.next()?;
            if item.len() >= size_of::<Event>() {
                // SAFETY: the record holds at least `size_of::<Event>()` bytes written by the XDP
                // program as an `Event`; every bit pattern is a valid `Event`.
                return Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
    }

    /// Drains every waiting event.
    pub fn drain(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn prefixes_are_masked() {
        assert_eq!(mask_prefix([10, 1, 2, 3], 8), [10, 0, 0, 0]);
        assert_eq!(mask_prefix([10, 1, 255, 3], 20), [10, 1, 240, 0]);
        assert_eq!(mask_prefix([1, 2, 3, 4], 32), [1, 2, 3, 4]);
        assert_eq!(mask_prefix([1, 2, 3, 4], 0), [0, 0, 0, 0]);
    }

    #[test]
    fn prefix_length_is_checked() {
        assert!(Prefix::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 33).is_err());
        assert!(Prefix::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).is_ok());
    }

    #[test]
    fn old_kernels_are_refused_by_feature() {
        assert_eq!(parse_kernel_release("6.1.0-28-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v1147"), Some((6, 18)));
        assert!(check_kernel_release("6.1.0-28-cloud-amd64").is_ok());
        assert!(check_kernel_release("5.15.0").is_ok());
        let err = check_kernel_release("5.10.0-30-amd64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bpf_ktime_get_coarse_ns"), "{err}");
        assert!(err.contains("5.11"), "{err}");
        let err = check_kernel_release("4.19.0").unwrap_err().to_string();
        assert!(err.contains("bounded loops"), "{err}");
    }

    #[test]
    fn grant_sources_round_trip() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(decode_address(grant_source(v4)), v4);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(grant_source(mapped), grant_source(v4));
        let v6 = IpAddr::V6("2001:db8::1".parse().unwrap());
        assert_eq!(decode_address(grant_source(v6)), v6);
    }
}
