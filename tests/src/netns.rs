//! A network-namespace lab: clients, a gateway and a server wired with veth pairs, for tests that send
//! real traffic through the XDP program, for the demo and for VM tests.
//!
//! ```text
//!   client 0 (eth0 10.0.1.2/24, fd00:1::2/64) ──── c0 (10.0.1.1, fd00:1::1) ┐
//!   client 1 (eth0 10.0.2.2/24, fd00:2::2/64) ──── c1 (10.0.2.1, fd00:2::1) ├ gateway (forwarding)
//!   server   (eth0 10.0.100.2/24, fd00:100::2/64) ─ srv (10.0.100.1, fd00:100::1) ┘
//! ```
//!
//! The XDP program goes on the gateway's client-facing interfaces (`c0`, `c1`, ...). Addresses are
//! the same in every lab (each lab has its own namespaces); namespace, instance and directory names
//! are unique per process and lab, so that tests run in parallel. Dropping a [`Lab`] removes its
//! namespaces (and with them the veths and any XDP attachment), its pins under `/sys/fs/bpf/ztna/` and
//! its temporary directory, also when the test panics.
//!
//! Code that must run inside a namespace (sockets, `if_nametoindex`, attaching XDP) runs on a
//! dedicated thread that joined the namespace with `setns`: [`Netns::run`] and [`Netns::spawn`].
//! Commands run with [`Netns::command`], which joins the namespace between fork and exec. That keeps
//! the mount namespace: `ip netns exec` remounts `/sys`, which hides the BPF file system at
//! `/sys/fs/bpf` where the agent pins its maps.

use std::{
    ffi::CString,
    fs::{self, File},
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ztna_common::maps::PIN_ROOT;

/// Magic number of a BPF file system (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A unique suffix for names of this process: `<pid>-<n>`.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `command` and fails with its output when it does not succeed.
pub fn run_checked(command: &mut Command) -> io::Result<Output> {
    let output = command.stdin(Stdio::null()).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("failed to start {command:?}: {e} (is the package installed?)"),
        )
    })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        )));
    }
    Ok(output)
}

fn ip(args: &[&str]) -> io::Result<()> {
    run_checked(Command::new("ip").args(args)).map(drop)
}

/// Mounts the BPF file system at `/sys/fs/bpf` unless it is there (pinning needs it).
pub fn ensure_bpffs() -> io::Result<()> {
    let path = CString::new("/sys/fs/bpf").expect("no NUL");
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a valid out pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    run_checked(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"])).map(drop)
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    name: String,
    file: Arc<File>,
}

impl Netns {
    /// Creates the namespace with `ip netns add` and brings its loopback up.
    pub fn create(name: &str) -> io::Result<Self> {
        ip(&["netns", "add", name])?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(file) => file,
            Err(e) => {
                let _ = ip(&["netns", "del", name]);
                return Err(e);
            }
        };
        let ns = Self {
            name: name.to_owned(),
            file: Arc::new(file),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(drop)
    }

    /// Writes a sysctl of this namespace, e.g. `("net/ipv4/ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{key}");
        let value = value.to_owned();
        // /proc/sys/net follows the network namespace of the thread that opens it.
        self.run(move || fs::write(&path, value))
            .map_err(|e| io::Error::new(e.kind(), format!("failed to write {key}: {e}")))
    }

    /// A command that runs in this namespace (joined between fork and exec); the mount namespace and
    /// so `/sys/fs/bpf` stay the caller's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        let file = Arc::clone(&self.file);
        // SAFETY: the closure runs in the child between fork and exec and only calls setns(2), which
        // is async-signal-safe; it allocates nothing. The namespace file stays open through `file`.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Runs `ip netns exec <name> <args>` (for tools that want `/sys` of the namespace) and returns
    /// its output, successful or not.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    fn enter(file: &File) {
        // SAFETY: a valid namespace fd; CLONE_NEWNET only affects the calling thread, which was
        // created for this purpose and ends with the closure.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns failed: {}", io::Error::last_os_error());
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. Sockets created in `f`
    /// belong to the namespace; threads `f` starts inherit it.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = &self.file;
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    Self::enter(file);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts `f` on a new thread inside this namespace.
    pub fn spawn<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = Arc::clone(&self.file);
        thread::spawn(move || {
            Self::enter(&file);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete namespace {}: {e}", self.name);
        }
    }
}

/// An address family, for tests that run once per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A client namespace and its link to the gateway.
pub struct Client {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The gateway's interface facing this client (where the XDP program goes).
    pub gateway_interface: String,
}

impl Client {
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4),
            Family::V6 => IpAddr::V6(self.v6),
        }
    }
}

/// Lab shape.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub clients: usize,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self { clients: 1 }
    }
}

/// Clients, a forwarding gateway and a server, each in its own namespace. See the module docs.
pub struct Lab {
    /// Unique per lab: `<pid>-<n>`.
    pub id: String,
    /// Instance name for pins of an agent run in this lab (`/sys/fs/bpf/ztna/<instance>`).
    pub instance: String,
    /// A scratch directory (configurations, logs), removed on drop.
    pub dir: PathBuf,
    pub server_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    /// The server's interface in its namespace.
    pub server_interface: String,
    // Field order is drop order: clients and server first, the gateway (holding the peers) last.
    pub clients: Vec<Client>,
    pub server: Netns,
    pub gateway: Netns,
}

impl Lab {
    /// Builds a lab with one client.
    pub fn new() -> io::Result<Self> {
        Self::with(&LabOptions::default())
    }

    /// Builds a lab; everything created so far is removed again if a step fails.
    pub fn with(options: &LabOptions) -> io::Result<Self> {
        ensure_bpffs()?;
        let id = unique_suffix();
        let dir = std::env::temp_dir().join(format!("ztna-lab-{id}"));
        fs::create_dir_all(&dir)?;
        let gateway = Netns::create(&format!("ztna-{id}-gw"))?;
        let server = Netns::create(&format!("ztna-{id}-srv"))?;
        let mut lab = Self {
            instance: format!("test-{id}"),
            id,
            dir,
            server_v4: Ipv4Addr::new(10, 0, 100, 2),
            server_v6: "fd00:100::2".parse().expect("literal"),
            server_interface: "eth0".into(),
            clients: Vec::new(),
            server,
            gateway,
        };
        for ns in [&lab.gateway, &lab.server] {
            Self::quiet_ipv6(ns)?;
        }
        lab.gateway.sysctl("net/ipv4/ip_forward", "1")?;
        lab.gateway.sysctl("net/ipv6/conf/all/forwarding", "1")?;

        Self::wire(
            &lab.gateway,
            "srv",
            &lab.server,
            "eth0",
            ("10.0.100.1/24", "fd00:100::1/64"),
            ("10.0.100.2/24", "fd00:100::2/64"),
        )?;
        lab.server
            .ip(&["route", "add", "default", "via", "10.0.100.1"])?;
        lab.server
            .ip(&["-6", "route", "add", "default", "via", "fd00:100::1"])?;

        for i in 0..options.clients {
            let n = i + 1;
            let ns = Netns::create(&format!("ztna-{}-c{i}", lab.id))?;
            Self::quiet_ipv6(&ns)?;
            let gateway_interface = format!("c{i}");
            Self::wire(
                &lab.gateway,
                &gateway_interface,
                &ns,
                "eth0",
                (&format!("10.0.{n}.1/24"), &format!("fd00:{n}::1/64")),
                (&format!("10.0.{n}.2/24"), &format!("fd00:{n}::2/64")),
            )?;
            ns.ip(&["route", "add", "default", "via", &format!("10.0.{n}.1")])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{n}::1"),
            ])?;
            lab.clients.push(Client {
                ns,
                v4: Ipv4Addr::new(10, 0, n as u8, 2),
                v6: format!("fd00:{n}::2").parse().expect("valid"),
                gateway_interface,
            });
        }
        Ok(lab)
    }

    /// No duplicate address detection (addresses usable at once), no router solicitations.
    fn quiet_ipv6(ns: &Netns) -> io::Result<()> {
        for scope in ["all", "default"] {
            ns.sysctl(&format!("net/ipv6/conf/{scope}/accept_dad"), "0")?;
            ns.sysctl(&format!("net/ipv6/conf/{scope}/router_solicitations"), "0")?;
        }
        Ok(())
    }

    /// A veth pair from `a` (named `a_name`) to `b` (named `b_name`), addressed and up.
    fn wire(
        a: &Netns,
        a_name: &str,
        b: &Netns,
        b_name: &str,
        a_addrs: (&str, &str),
        b_addrs: (&str, &str),
    ) -> io::Result<()> {
        a.ip(&[
            "link",
            "add",
            a_name,
            "type",
            "veth",
            "peer",
            "name",
            b_name,
            "netns",
            b.name(),
        ])?;
        for (ns, name, (v4, v6)) in [(a, a_name, a_addrs), (b, b_name, b_addrs)] {
            ns.ip(&["addr", "add", v4, "dev", name])?;
            ns.ip(&["-6", "addr", "add", v6, "dev", name, "nodad"])?;
            ns.ip(&["link", "set", name, "up"])?;
        }
        Ok(())
    }

    pub fn server_addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.server_v4),
            Family::V6 => IpAddr::V6(self.server_v6),
        }
    }

    /// The server's subnet for `family`: address and prefix length.
    pub fn server_prefix(&self, family: Family) -> (IpAddr, u8) {
        match family {
            Family::V4 => (IpAddr::V4(Ipv4Addr::new(10, 0, 100, 0)), 24),
            Family::V6 => (IpAddr::V6("fd00:100::".parse().expect("literal")), 64),
        }
    }

    /// The server's subnet for `family` in CIDR notation, for configurations.
    pub fn server_cidr(&self, family: Family) -> String {
        let (addr, len) = self.server_prefix(family);
        format!("{addr}/{len}")
    }

    /// The pin directory of this lab's instance.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(&self.instance)
    }

    /// Writes `text` to a file in the lab directory and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> io::Result<PathBuf> {
        let path = self.dir.join(name);
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the real `ztna-agent run --config <config> --log-format json` in the gateway namespace
    /// and waits until it logs that it runs.
    pub fn start_agent(&self, config: &Path, extra_args: &[&str]) -> io::Result<Agent> {
        let binary = agent_binary()?;
        let mut command = self.gateway.command(binary);
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .args(extra_args)
            .env("RUST_LOG", "info");
        let mut agent = Agent::spawn(command)?;
        agent.wait_for_log("agent running", Duration::from_secs(20))?;
        Ok(agent)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pins first: a removed link pin detaches the program even if a test left an fd behind.
        let pins = self.pin_dir();
        if pins.exists()
            && let Err(e) = ztna_agent::dataplane::remove_pins(&pins)
        {
            eprintln!("warning: could not remove {}: {e}", pins.display());
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The namespaces go with the fields, in declaration order.
    }
}

/// A running `ztna-agent`, killed on drop. Its log lines (stderr and stdout) are collected.
pub struct Agent {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Spawns `command` with its output captured.
    pub fn spawn(mut command: Command) -> io::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("failed to start {command:?}: {e}")))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let stdout: Box<dyn io::Read + Send> = Box::new(child.stdout.take().expect("piped"));
        let stderr: Box<dyn io::Read + Send> = Box::new(child.stderr.take().expect("piped"));
        for stream in [stdout, stderr] {
            let logs = Arc::clone(&logs);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("ZTNA_TEST_ECHO_AGENT").is_some() {
                        eprintln!("agent: {line}");
                    }
                    logs.lock().expect("not poisoned").push(line);
                }
            }));
        }
        Ok(Self {
            child,
            logs,
            readers,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("not poisoned").clone()
    }

    /// Waits until a log line contains `needle` and returns it; fails with the logs when the agent
    /// exits or `timeout` passes first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return Ok(line);
            }
            let exited = self.child.try_wait()?;
            if exited.is_some() || Instant::now() >= deadline {
                // Give the readers a moment to collect the last lines.
                thread::sleep(Duration::from_millis(100));
                return Err(io::Error::other(format!(
                    "agent {} before logging {needle:?}; its log:\n{}",
                    match exited {
                        Some(status) => format!("exited ({status})"),
                        None => format!("logged nothing matching within {timeout:?}"),
                    },
                    self.logs().join("\n")
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: the agent gets no chance to clean up.
    pub fn kill9(mut self) -> io::Result<ExitStatus> {
        self.child.kill()?;
        let status = self.child.wait()?;
        self.join_readers();
        Ok(status)
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit.
    pub fn terminate(mut self, timeout: Duration) -> io::Result<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.join_readers();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "agent did not exit within {timeout:?} of SIGTERM; its log:\n{}",
                    self.logs().join("\n")
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Path of the `ztna-agent` binary of this build.
///
/// `ZTNA_AGENT_BIN` wins. Otherwise the binary next to the running executable's profile directory
/// (`target/<profile>/ztna-agent`); when the executable runs under cargo (tests, `cargo run`), that
/// binary is first built with `cargo build -p ztna-agent` in the same profile, because cargo builds
/// another package's library for our tests but not its binaries.
pub fn agent_binary() -> io::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| locate_agent().map_err(|e| e.to_string()))
        .clone()
        .map_err(io::Error::other)
}

fn locate_agent() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ZTNA_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let mut profile_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let candidate = profile_dir.join("ztna-agent");
    let cargo = std::env::var_os("CARGO");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    if let (Some(cargo), Some(workspace), Some(target_dir)) =
        (cargo, workspace, profile_dir.parent())
    {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(name) => name.to_owned(),
            None => "release".to_owned(),
        };
        let output = Command::new(cargo)
            .current_dir(workspace)
            .args([
                "build",
                "--quiet",
                "-p",
                "ztna-agent",
                "--bin",
                "ztna-agent",
            ])
            .args(["--profile", &profile])
            .arg("--target-dir")
            .arg(target_dir)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "`cargo build -p ztna-agent --profile {profile}` failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
    }
    if !candidate.exists() {
        return Err(io::Error::other(format!(
            "{} is missing; build it with `cargo build --release -p ztna-agent` or point \
             ZTNA_AGENT_BIN at it",
            candidate.display()
        )));
    }
    Ok(candidate)
}

// --- traffic ------------------------------------------------------------------------------------

/// TCP and UDP echo servers on one port of every address of a namespace (dual stack), stopped on
/// drop.
pub struct EchoServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, port: u16) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (listener, udp) = ns.run(|| -> io::Result<_> {
            let listener = TcpListener::bind(("::", port))?;
            listener.set_nonblocking(true)?;
            let udp = UdpSocket::bind(("::", port))?;
            udp.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok((listener, udp))
        })?;
        let mut threads = Vec::new();
        let tcp_stop = Arc::clone(&stop);
        threads.push(thread::spawn(move || {
            accept_loop(&listener, &tcp_stop, |mut stream, stop| {
                let mut buf = [0u8; 16 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        Err(e) if is_timeout(&e) => continue,
                        Err(_) => break,
                    }
                }
            })
        }));
        let udp_stop = Arc::clone(&stop);
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        }));
        Ok(Self {
            port,
            stop,
            threads,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A TCP server that reads and counts bytes on every connection, stopped on drop.
pub struct ByteSink {
    pub port: u16,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ByteSink {
    pub fn start(ns: &Netns, port: u16) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let listener = ns.run(|| -> io::Result<_> {
            let listener = TcpListener::bind(("::", port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        let (thread_stop, counter) = (Arc::clone(&stop), Arc::clone(&received));
        let thread = thread::spawn(move || {
            accept_loop(&listener, &thread_stop, move |mut stream, stop| {
                let mut buf = [0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if is_timeout(&e) => continue,
                        Err(_) => break,
                    }
                }
            })
        });
        Ok(Self {
            port,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// Bytes received so far over all connections.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for ByteSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Accepts connections until `stop`, serving each on its own thread with `serve`.
fn accept_loop<S>(listener: &TcpListener, stop: &Arc<AtomicBool>, serve: S)
where
    S: Fn(TcpStream, &AtomicBool) + Send + Sync + Clone + 'static,
{
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                let (serve, stop) = (serve.clone(), Arc::clone(stop));
                connections.push(thread::spawn(move || serve(stream, &stop)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// What became of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The echo came back.
    Answered,
    /// Nothing came back within the timeout (what a drop looks like).
    Silent,
    /// Something else: refused, unreachable, a wrong echo. Never what a test expects.
    Failed(String),
}

/// TCP connect to `addr`, send a line, read it back (run inside the client's namespace).
pub fn tcp_echo(addr: SocketAddr, timeout: Duration) -> Probe {
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(e) if is_timeout(&e) => return Probe::Silent,
        Err(e) => return Probe::Failed(format!("connect to {addr}: {e}")),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if let Err(e) = stream.write_all(b"ztna\n") {
        return Probe::Failed(format!("write to {addr}: {e}"));
    }
    let mut buf = [0u8; 5];
    let result = match stream.read_exact(&mut buf) {
        Ok(()) if &buf == b"ztna\n" => Probe::Answered,
        Ok(()) => Probe::Failed(format!("wrong echo from {addr}: {buf:?}")),
        Err(e) if is_timeout(&e) => Probe::Silent,
        Err(e) => Probe::Failed(format!("read from {addr}: {e}")),
    };
    let _ = stream.shutdown(Shutdown::Both);
    result
}

/// One UDP datagram to `addr` and its echo (run inside the client's namespace).
pub fn udp_echo(addr: SocketAddr, timeout: Duration) -> Probe {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(socket) => socket,
        Err(e) => return Probe::Failed(format!("bind: {e}")),
    };
    let _ = socket.set_read_timeout(Some(timeout));
    if let Err(e) = socket.send_to(b"ztna", addr) {
        return Probe::Failed(format!("send to {addr}: {e}"));
    }
    let mut buf = [0u8; 16];
    match socket.recv_from(&mut buf) {
        Ok((4, from)) if &buf[..4] == b"ztna" && from == addr => Probe::Answered,
        Ok((n, from)) => Probe::Failed(format!("unexpected datagram of {n} bytes from {from}")),
        Err(e) if is_timeout(&e) => Probe::Silent,
        Err(e) => Probe::Failed(format!("receive from {addr}: {e}")),
    }
}

/// One ICMP echo with iputils `ping` from `ns` to `addr`.
pub fn ping(ns: &Netns, addr: IpAddr, timeout: Duration) -> Probe {
    let seconds = timeout.as_secs().max(1).to_string();
    match ns
        .command("ping")
        .args(["-n", "-q", "-c", "1", "-W", &seconds])
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => Probe::Answered,
        // iputils: 1 when no reply came, 2 on other errors.
        Ok(output) if output.status.code() == Some(1) => Probe::Silent,
        Ok(output) => Probe::Failed(format!(
            "ping {addr}: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) => Probe::Failed(format!("failed to run ping (install iputils-ping): {e}")),
    }
}

/// A TCP stream from a client that writes as fast as it can until stopped, counting its write
/// attempts, to show that a revoked flow stops arriving while the sender keeps trying.
pub struct Writer {
    attempts: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Connects from `ns` to `addr` and starts writing.
    pub fn start(ns: &Netns, addr: SocketAddr) -> io::Result<Self> {
        let stream = ns.run(|| -> io::Result<TcpStream> {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_write_timeout(Some(Duration::from_millis(100)))?;
            Ok(stream)
        })?;
        let attempts = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, e, s) = (Arc::clone(&attempts), Arc::clone(&error), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut stream = stream;
            let chunk = vec![0x5au8; 16 * 1024];
            while !s.load(Ordering::Relaxed) {
                a.fetch_add(1, Ordering::Relaxed);
                match stream.write(&chunk) {
                    Ok(_) => {}
                    Err(err) if is_timeout(&err) => {}
                    Err(err) => {
                        *e.lock().expect("not poisoned") = Some(err.to_string());
                        return;
                    }
                }
            }
        });
        Ok(Self {
            attempts,
            error,
            stop,
            thread: Some(thread),
        })
    }

    /// Write calls made so far (blocked ones included).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The error that ended the stream, if one did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("not poisoned").clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
