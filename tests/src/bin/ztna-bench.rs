//! `cargo xtask bench dataplane`: per-packet cost of the XDP program through `BPF_PROG_TEST_RUN`.
//!
//! Every case runs `--repeat` times inside the kernel per measurement; rounds interleave the cases
//! (and the `XDP_PASS` floor) so that a noisy neighbour hits all of them alike, and the table reports
//! medians over rounds. Costs are given as the difference and ratio over the floor measured in the
//! same run: absolute times on a shared machine say little.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ztna_agent::dataplane::{Dataplane, LoadOptions, Prefix, deadline_after, monotonic_coarse_ns};
use ztna_common::service::{APP_MODE_INHERIT, ServiceKey, ServiceValue};
use ztna_tests::packet::{Frame, Ipv4, Ipv6, TPID_8021Q, Tcp};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const APP_ID: u32 = 1;
const NET_ID: u32 = 1;
const PORT: u16 = 443;

const SECTION_BEGIN: &str = "<!-- bench:dataplane:begin -->";
const SECTION_END: &str = "<!-- bench:dataplane:end -->";

struct Args {
    grants: Vec<u32>,
    repeat: u32,
    rounds: usize,
    write: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: ztna-bench dataplane [--grants 1,10000,1000000] [--repeat 1000000] [--rounds 7] \
     [--write BENCHMARKS.md]"
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("dataplane") | Some("all") => {}
        Some(other) => bail!("unknown benchmark {other:?}\n{}", usage()),
        None => bail!("{}", usage()),
    }
    let mut parsed = Args {
        grants: vec![1, 10_000, 1_000_000],
        repeat: 1_000_000,
        rounds: 7,
        write: None,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{}", usage()))?;
        match flag.as_str() {
            "--grants" => {
                parsed.grants = value
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--grants {value:?}: expected numbers like 1,10000"))?
            }
            "--repeat" => {
                parsed.repeat = value
                    .parse()
                    .with_context(|| format!("--repeat {value:?}: expected a number"))?
            }
            "--rounds" => {
                parsed.rounds = value
                    .parse()
                    .with_context(|| format!("--rounds {value:?}: expected a number"))?
            }
            "--write" => parsed.write = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other}\n{}", usage()),
        }
    }
    if parsed.rounds == 0 || parsed.repeat == 0 || parsed.grants.is_empty() {
        bail!(
            "--rounds, --repeat and --grants must be positive\n{}",
            usage()
        );
    }
    Ok(parsed)
}

/// A packet the bench sends, and the action it must get (checked on every round).
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: u32,
    /// Whether the floor is this program (the `XDP_PASS` baseline) rather than the enforcer.
    baseline: bool,
}

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const EXPIRED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);
const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 5);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 5);

fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr) -> Frame {
    Frame::new()
        .ipv4(Ipv4::new(src, dst))
        .tcp(Tcp::new(40_000, PORT))
        .payload(&[0; 16])
}

fn cases() -> Vec<Case> {
    let hit_v4 = tcp_v4(CLIENT_V4, SERVER_V4).build();
    vec![
        Case {
            name: "XDP_PASS floor",
            frame: hit_v4.clone(),
            expect: XDP_PASS,
            baseline: true,
        },
        Case {
            name: "not protected, pass",
            frame: tcp_v4(CLIENT_V4, OUTSIDE_V4).build(),
            expect: XDP_PASS,
            baseline: false,
        },
        Case {
            name: "grant hit, IPv4",
            frame: hit_v4,
            expect: XDP_PASS,
            baseline: false,
        },
        Case {
            name: "grant hit, IPv6",
            frame: Frame::new()
                .ipv6(Ipv6::new(CLIENT_V6, SERVER_V6))
                .tcp(Tcp::new(40_000, PORT))
                .payload(&[0; 16])
                .build(),
            expect: XDP_PASS,
            baseline: false,
        },
        Case {
            name: "grant hit, IPv4 in 802.1Q",
            frame: tcp_v4(CLIENT_V4, SERVER_V4).vlan(TPID_8021Q, 42).build(),
            expect: XDP_PASS,
            baseline: false,
        },
        Case {
            name: "drop, no grant",
            frame: tcp_v4(STRANGER_V4, SERVER_V4).build(),
            expect: XDP_DROP,
            baseline: false,
        },
        Case {
            name: "drop, expired grant",
            frame: tcp_v4(EXPIRED_V4, SERVER_V4).build(),
            expect: XDP_DROP,
            baseline: false,
        },
    ]
}

/// Loads the program with `grants` grants: the bench's own sources plus filler from 100.64.0.0/10
/// and 2001:db8:1::/64, half and half, so that the map is as full as the case says.
fn prepare(grants: u32) -> anyhow::Result<Dataplane> {
    let mut dataplane = Dataplane::load(&LoadOptions {
        grants_capacity: grants.max(3),
        ..LoadOptions::default()
    })
    .context("failed to load the XDP program (run as root)")?;
    dataplane.add_prefix(
        Prefix::new(IpAddr::V4(Ipv4Addr::new(10, 2, 0, 0)), 16)?,
        NET_ID,
    )?;
    dataplane.add_prefix(Prefix::new(IpAddr::V6(SERVER_V6), 64)?, NET_ID)?;
    dataplane.add_service(
        ServiceKey::new(NET_ID, 6, PORT),
        ServiceValue {
            app_id: APP_ID,
            mode: APP_MODE_INHERIT,
        },
    )?;
    let live = deadline_after(Duration::from_secs(3600));
    dataplane.upsert_grant(IpAddr::V4(CLIENT_V4), APP_ID, live)?;
    dataplane.upsert_grant(IpAddr::V6(CLIENT_V6), APP_ID, live)?;
    dataplane.upsert_grant(IpAddr::V4(EXPIRED_V4), APP_ID, monotonic_coarse_ns() - 1)?;
    for i in 3..grants {
        let source = if i % 2 == 0 {
            let n = 0x6440_0000u32 + i; // 100.64.0.0 + i
            IpAddr::V4(Ipv4Addr::from(n))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                1,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            ))
        };
        dataplane.upsert_grant(source, APP_ID, live)?;
    }
    Ok(dataplane)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

struct Row {
    grants: u32,
    case: &'static str,
    median_ns: f64,
    floor_ns: f64,
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads an XDP program: run it as root");
    }
    let cases = cases();
    let mut rows = Vec::new();
    let mut memory = Vec::new();
    let started = Instant::now();
    for &grants in &args.grants {
        eprintln!("preparing {grants} grants ...");
        let mut dataplane = prepare(grants)?;
        let bytes = dataplane.grants_memory_bytes()?;
        memory.push((grants, dataplane.grants_capacity(), bytes));
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        for round in 0..args.rounds {
            for (i, case) in cases.iter().enumerate() {
                let (action, per_run) = if case.baseline {
                    dataplane.baseline_test_run(&case.frame, args.repeat)?
                } else {
                    dataplane.test_run(&case.frame, args.repeat)?
                };
                if action != case.expect {
                    bail!(
                        "{} with {grants} grants returned action {action}, expected {}",
                        case.name,
                        case.expect
                    );
                }
                samples[i].push(per_run.as_secs_f64() * 1e9);
            }
            eprintln!("  round {}/{} done", round + 1, args.rounds);
        }
        let mut medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        let floor = medians[0];
        for (case, median_ns) in cases.iter().zip(medians.drain(..)) {
            rows.push(Row {
                grants,
                case: case.name,
                median_ns,
                floor_ns: floor,
            });
        }
    }

    let report = render(&args, &rows, &memory, started.elapsed());
    println!("{report}");
    if let Some(path) = &args.write {
        write_section(path, &report)?;
        eprintln!("updated {}", path.display());
    }
    Ok(())
}

fn render(args: &Args, rows: &[Row], memory: &[(u32, u32, u64)], took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Data plane: per-packet cost through `BPF_PROG_TEST_RUN`\n"
    );
    let _ = writeln!(
        out,
        "Command: `cargo xtask bench dataplane` ({} rounds, repeat {} per measurement, medians; \
         the floor is an `XDP_PASS`-only program run on the same packet in the same rounds).  ",
        args.rounds, args.repeat
    );
    let _ = writeln!(
        out,
        "Kernel {}, CPU {}, {} CPUs; run took {:.0} s.\n",
        kernel_release(),
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        took.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| grants | case | ns/packet | over floor (ns) | ratio to floor |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:+.1} | {:.2} |",
            row.grants,
            row.case,
            row.median_ns,
            row.median_ns - row.floor_ns,
            row.median_ns / row.floor_ns
        );
    }
    let _ = writeln!(
        out,
        "\nKernel memory of the grant table, from the map's own accounting (`memlock` in \
         its fdinfo):\n"
    );
    let _ = writeln!(out, "| grants | capacity | bytes | bytes per grant |");
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    for (grants, capacity, bytes) in memory {
        let _ = writeln!(
            out,
            "| {grants} | {capacity} | {bytes} | {:.1} |",
            *bytes as f64 / f64::from(*capacity)
        );
    }
    out
}

/// Replaces the dataplane section of `path` (between the markers), appending it if absent.
fn write_section(path: &PathBuf, report: &str) -> anyhow::Result<()> {
    let existing = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from("# Benchmarks\n"),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    let section = format!("{SECTION_BEGIN}\n{report}{SECTION_END}");
    let updated = match (existing.find(SECTION_BEGIN), existing.find(SECTION_END)) {
        (Some(begin), Some(end)) if end > begin => format!(
            "{}{section}{}",
            &existing[..begin],
            &existing[end + SECTION_END.len()..]
        ),
        _ => format!("{}\n{section}\n", existing.trim_end()),
    };
    fs::write(path, updated).with_context(|| format!("failed to write {}", path.display()))
}
