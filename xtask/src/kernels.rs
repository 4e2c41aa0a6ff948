//! `cargo xtask kernels [--check] [--only NAME]...`: the kernel matrix. Boots the Debian
//! kernels that Kubernetes nodes run (5.10, 6.1, 6.12) under qemu, runs `sonde probes` and a
//! chosen set of the integration tests inside each, runs the same on this host's kernel, and
//! writes what loads and what passed into `docs/kernels.md`. `--check` fails when the
//! committed file says otherwise; any failed test fails the command.
//!
//! Each kernel boots with a busybox initramfs that holds the agent, the test executables, the
//! `ip` and `iptables` they drive (with the shared libraries they link) and the kernel's own
//! modules they need (veth, bridge, nf_tables...). Why not virtme-ng over the live filesystem:
//! it needs 9p or virtio-fs in the guest, and Debian's cloud kernels, the ones cloud nodes run,
//! have no 9p and virtio-fs only as a module; an initramfs works with those kernels as they are
//! and needs nothing from the host at run time. The generic `-amd64` kernels would do for
//! virtme-ng, but they are not what the nodes run.
//!
//! The kernels come from the Debian archive with apt, in a private apt state under
//! `target/kernels/` (the host's apt sources are left alone) and are cached there. A kernel
//! the archive cannot give is left out with a loud message, and `--check` then fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A Debian kernel of the matrix: pinned so that the report only changes when Sonde does.
pub struct Kernel {
    /// How the report names it.
    pub name: &'static str,
    pub distro: &'static str,
    /// Debian suite whose archive has it.
    pub suite: &'static str,
    pub package: &'static str,
    pub version: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        distro: "Debian 11",
        suite: "bullseye",
        package: "linux-image-5.10.0-32-cloud-amd64",
        version: "5.10.223-1",
    },
    Kernel {
        name: "6.1",
        distro: "Debian 12",
        suite: "bookworm",
        package: "linux-image-6.1.0-50-cloud-amd64",
        version: "6.1.176-1",
    },
    Kernel {
        name: "6.12",
        distro: "Debian 13",
        suite: "trixie",
        package: "linux-image-6.12.117+deb13-cloud-amd64",
        version: "6.12.117-1",
    },
];

/// An integration test run on every kernel: test target (a file of `tests/tests/`), test
/// name, and the probe it checks (the test is not run where that probe cannot load).
pub struct MatrixTest {
    pub target: &'static str,
    pub name: &'static str,
    pub probe: Option<&'static str>,
    /// The first Linux release (major, minor) the test applies to, and what it needs of it:
    /// older kernels skip it.
    pub since: Option<((u32, u32), &'static str)>,
}

const fn test(target: &'static str, name: &'static str, probe: &'static str) -> MatrixTest {
    MatrixTest {
        target,
        name,
        probe: Some(probe),
        since: None,
    }
}

/// Exact-count scenarios: few, because every one boots the agent under an emulated CPU.
pub const TESTS: &[MatrixTest] = &[
    MatrixTest {
        target: "exporter",
        name: "default_config_is_ready",
        probe: None,
        since: None,
    },
    test("packet_drop", "udp_into_drop_rule_ipv4", "packet_drop"),
    test("tcp_reset", "connects_to_closed_port", "tcp_reset"),
    test("tcp_reset", "connects_to_closed_port_ipv6", "tcp_reset"),
    test(
        "tcp_reset",
        "a_reset_from_a_socket_is_counted_once",
        "tcp_reset",
    ),
    test(
        "tcp_reset",
        "a_reset_answering_no_socket_is_not_answered",
        "tcp_reset",
    ),
    test("tcp_retrans", "bulk_transfer_through_loss", "tcp_retrans"),
    test(
        "tcp_connect",
        "refused_connects_are_counted_by_cause",
        "tcp_connect",
    ),
    test(
        "io_latency",
        "direct_io_is_timed_per_request_on_its_device",
        "io_latency",
    ),
    test(
        "flow",
        "ipv4_transfer_is_counted_once_with_pod_labels",
        "flow",
    ),
    test("dns", "rcodes_are_counted_per_pod", "dns"),
    test(
        "tcp_state",
        "connections_are_counted_by_state_and_each_end_is_one_event",
        "tcp_state",
    ),
    test(
        "stack_latency",
        "udp_through_a_router_is_timed_in_every_stage",
        "stack_latency",
    ),
    test(
        "stack_latency",
        "udp_through_a_router_is_timed_with_kprobes",
        "stack_latency",
    ),
    test(
        "virtio_net",
        "mac_address_changes_are_timed_once_each",
        "virtio_net",
    ),
    // Before 5.14 the agent cannot read namespace cookies and names pods by inode: the
    // documented caveat this test would find.
    MatrixTest {
        target: "churn",
        name: "short_lived_pods_keep_their_own_counts",
        probe: Some("tcp_reset"),
        since: Some(((5, 14), "namespace cookies (SO_NETNS_COOKIE)")),
    },
];

/// Why a test is not run on kernel `release`, when it needs a newer one.
fn too_old(t: &MatrixTest, release: &str) -> Option<String> {
    let ((major, minor), what) = t.since?;
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let have: (u32, u32) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    (have < (major, minor)).then(|| format!("needs Linux {major}.{minor}: {what}"))
}

/// Modules the tests need when the kernel has them as modules (their dependencies come
/// along): pods (veth, bridge), drop and loss rules (iptables-nft), TC (clsact, cls_bpf), the
/// guest's virtio-net interface (virtio_pci, its transport, where it is not built in;
/// virtio_net, with virtio, virtio_ring, net_failover and failover).
const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "loop",
    "nf_tables",
    "nft_compat",
    "nft_counter",
    "xt_statistic",
    "xt_tcpudp",
    "nf_reject_ipv4",
    "nf_reject_ipv6",
    "virtio_pci",
    "virtio_net",
];

/// Tools the tests run, copied into the guest with the libraries they link (promtool: the
/// tests check the exposition they read).
const TOOLS: &[(&str, &[&str])] = &[
    ("/usr/sbin/ip", &["ip"]),
    (
        "/usr/sbin/xtables-nft-multi",
        &["iptables", "ip6tables", "xtables-nft-multi"],
    ),
    ("/usr/bin/promtool", &["promtool"]),
    // Loop devices with a sector size, and direct I/O, as the io_latency tests make them.
    ("/usr/sbin/losetup", &["losetup"]),
    ("/usr/bin/dd", &["dd"]),
];
const XTABLES_PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

const USAGE: &str = "usage: cargo xtask kernels [--check] [--only NAME]...";
const DOC: &str = "docs/kernels.md";
/// Where the host's section starts: what follows is this machine's and `--check` ignores it.
const HOST_MARK: &str = "<!-- this host: not compared by --check -->";
/// How long one kernel may take to boot, run everything and power off.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One probe's line of `sonde probes --output json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeState {
    pub name: String,
    pub loadable: bool,
    pub reason: Option<String>,
    pub degraded: Option<String>,
    /// How its TC programs are attached (`tcx`, `clsact`), for TC probes.
    pub attach: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Not run: the probe it checks cannot load there.
    Skipped(String),
}

/// What one kernel gave.
#[derive(Debug, Clone)]
pub struct Report {
    pub release: String,
    pub probes: Vec<ProbeState>,
    pub tests: BTreeMap<String, Outcome>,
    /// Seconds from start to power off.
    pub seconds: u64,
}

pub fn run(root: &Path, target: &Path, args: Vec<String>) -> Result<(), String> {
    let mut check = false;
    let mut only = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--only" => only.push(args.next().ok_or(USAGE)?),
            _ => return Err(format!("unknown argument {arg:?}; {USAGE}")),
        }
    }
    for name in &only {
        if name != "host" && !KERNELS.iter().any(|k| k.name == name) {
            return Err(format!("no kernel {name:?} in the matrix; {USAGE}"));
        }
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let work = target.join("kernels");
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;

    let bins = build(root)?;
    let mut reports: Vec<(Option<&Kernel>, Option<Report>)> = Vec::new();
    let mut missing = Vec::new();
    let debs = if KERNELS.iter().any(|k| wanted(k.name)) {
        fetch(
            &work,
            &KERNELS
                .iter()
                .filter(|k| wanted(k.name))
                .collect::<Vec<_>>(),
        )
    } else {
        BTreeMap::new()
    };
    for kernel in KERNELS {
        if !wanted(kernel.name) {
            continue;
        }
        let Some(deb) = debs.get(kernel.name) else {
            eprintln!(
                "\n!!!! kernel {} ({}) could not be fetched from the Debian archive: \
                 the matrix runs WITHOUT it\n",
                kernel.name, kernel.package
            );
            missing.push(kernel.name);
            reports.push((Some(kernel), None));
            continue;
        };
        eprintln!(
            "== kernel {} ({} {})",
            kernel.name, kernel.package, kernel.version
        );
        let report = boot(&work.join(kernel.name), deb, &bins)?;
        summarize(kernel.name, &report);
        reports.push((Some(kernel), Some(report)));
    }
    if wanted("host") {
        eprintln!("== this host's kernel");
        let report = on_host(&bins)?;
        summarize("host", &report);
        reports.push((None, Some(report)));
    }

    let failed: Vec<String> = reports
        .iter()
        .filter_map(|(k, r)| Some((k.map_or("host", |k| k.name), r.as_ref()?)))
        .flat_map(|(k, r)| {
            r.tests
                .iter()
                .filter(|(_, o)| **o == Outcome::Failed)
                .map(move |(t, _)| format!("{t} on {k}"))
        })
        .collect();

    if only.is_empty() {
        let doc = render(&reports);
        let path = root.join(DOC);
        if check {
            let committed = fs::read_to_string(&path).unwrap_or_default();
            if compared(&committed) != compared(&doc) {
                fs::write(work.join("kernels.md"), &doc).ok();
                return Err(format!(
                    "{DOC} is not what the kernels say (the new table is in {}): run \
                     `cargo xtask kernels` and commit it",
                    work.join("kernels.md").display()
                ));
            }
        } else {
            fs::write(&path, doc).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("wrote {DOC}");
        }
    } else if check {
        return Err("--check needs the whole matrix (no --only)".into());
    }
    if !failed.is_empty() {
        return Err(format!("failed: {}", failed.join(", ")));
    }
    if check && !missing.is_empty() {
        return Err(format!("kernels not fetched: {}", missing.join(", ")));
    }
    Ok(())
}

/// The part of the document `--check` compares: everything before the host's section.
fn compared(doc: &str) -> &str {
    doc.split(HOST_MARK).next().unwrap_or(doc)
}

fn summarize(kernel: &str, report: &Report) {
    let passed = report
        .tests
        .values()
        .filter(|o| **o == Outcome::Passed)
        .count();
    let failed = report
        .tests
        .values()
        .filter(|o| **o == Outcome::Failed)
        .count();
    eprintln!(
        "== kernel {kernel} ({}): {} of {} probes load, tests {passed} passed, {failed} failed, \
         {} skipped, {} s",
        report.release,
        report.probes.iter().filter(|p| p.loadable).count(),
        report.probes.len(),
        report.tests.len() - passed - failed,
        report.seconds
    );
}

/// The agent and the test executables the matrix runs.
struct Binaries {
    sonde: PathBuf,
    /// Test target name -> executable.
    tests: BTreeMap<String, PathBuf>,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn build(root: &Path) -> Result<Binaries, String> {
    // The same builds as `tests/run` (whole workspace, release), so that they share one cache.
    let status = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "--workspace", "--bins"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the agent failed ({status})"));
    }
    let targets: Vec<&str> = TESTS.iter().map(|t| t.target).collect();
    let out = Command::new(cargo())
        .current_dir(root)
        .args([
            "test",
            "--release",
            "--workspace",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("building the tests failed ({})", out.status));
    }
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            if targets.contains(&name) {
                tests.insert(name.to_string(), PathBuf::from(exe));
            }
        }
    }
    let sonde = root.join("target/release/sonde");
    let sonde = if sonde.exists() {
        sonde
    } else {
        // A CARGO_TARGET_DIR elsewhere: beside the test executables' deps/ folder.
        let exe = tests
            .values()
            .next()
            .ok_or("cargo built no test executable")?;
        exe.parent()
            .and_then(Path::parent)
            .map(|p| p.join("sonde"))
            .ok_or("cannot find the agent binary")?
    };
    Ok(Binaries { sonde, tests })
}

fn apt_options(work: &Path) -> Vec<String> {
    let apt = work.join("apt");
    vec![
        format!(
            "-oDir::Etc::SourceList={}",
            apt.join("sources.list").display()
        ),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={}", apt.join("lists").display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        "-oDir::State::status=/dev/null".into(),
        "-oAPT::Architecture=amd64".into(),
        "-oAPT::Sandbox::User=root".into(),
        "-qq".into(),
    ]
}

/// The kernel packages, downloaded into `target/kernels/debs` unless already there.
fn fetch(work: &Path, kernels: &[&Kernel]) -> BTreeMap<String, PathBuf> {
    let debs = work.join("debs");
    let _ = fs::create_dir_all(&debs);
    let cached = |package: &str| -> Option<PathBuf> {
        fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    let mut found = BTreeMap::new();
    let mut updated = false;
    for kernel in kernels {
        if let Some(deb) = cached(kernel.package) {
            found.insert(kernel.name.to_string(), deb);
            continue;
        }
        if !updated {
            updated = true;
            if let Err(e) = apt_update(work) {
                eprintln!("!!!! the Debian archive cannot be reached: {e}");
            }
        }
        let opts = apt_options(work);
        let download = |spec: &str| {
            Command::new("apt-get")
                .current_dir(&debs)
                .args(&opts)
                .args(["download", spec])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if download(&format!("{}={}", kernel.package, kernel.version)) {
            if let Some(deb) = cached(kernel.package) {
                found.insert(kernel.name.to_string(), deb);
            }
            continue;
        }
        // The pinned build has left the archive: take the suite's current one, loudly.
        let meta = Command::new("apt-cache")
            .args(&opts)
            .args([
                "depends",
                &format!("linux-image-cloud-amd64/{}", kernel.suite),
            ])
            .output();
        let current = meta.ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .find(|p| p.starts_with("linux-image-"))
                .map(str::to_string)
        });
        if let Some(package) = current {
            eprintln!(
                "\n!!!! {}={} is no longer in the archive: using {package} instead; \
                 update KERNELS in xtask/src/kernels.rs\n",
                kernel.package, kernel.version
            );
            if download(&package) {
                if let Some(deb) = cached(&package) {
                    found.insert(kernel.name.to_string(), deb);
                }
            }
        }
    }
    found
}

fn apt_update(work: &Path) -> Result<(), String> {
    let apt = work.join("apt");
    for dir in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(dir)).map_err(|e| e.to_string())?;
    }
    let mut sources = String::new();
    for suite in ["bullseye", "bookworm", "trixie"] {
        for (archive, s) in [
            ("debian", suite.to_string()),
            ("debian-security", format!("{suite}-security")),
        ] {
            let _ = writeln!(
                sources,
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://deb.debian.org/{archive} {s} main"
            );
        }
    }
    fs::write(apt.join("sources.list"), sources).map_err(|e| e.to_string())?;
    let status = Command::new("apt-get")
        .args(apt_options(work))
        .arg("update")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get update failed ({status})"))
    }
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel image and its modules, unpacked from the package once.
struct Unpacked {
    vmlinuz: PathBuf,
    /// The directory holding `lib/modules/<release>`.
    modules_base: PathBuf,
    release: String,
}

fn unpack(dir: &Path, deb: &Path) -> Result<Unpacked, String> {
    let root = dir.join("package");
    let stamp = dir.join("package.from");
    let from = deb.display().to_string();
    if fs::read_to_string(&stamp).ok().as_deref() != Some(from.as_str()) {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        sh(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        fs::write(&stamp, &from).map_err(|e| e.to_string())?;
    }
    let vmlinuz = fs::read_dir(root.join("boot"))
        .map_err(|e| format!("{}: {e}", root.join("boot").display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("{} has no vmlinuz", deb.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    // Debian 13 keeps modules under /usr (merged /usr); depmod looks under <base>/lib.
    let modules_base = if root.join("usr/lib/modules").exists() {
        root.join("usr")
    } else {
        root.clone()
    };
    if !modules_base
        .join("lib/modules")
        .join(&release)
        .join("modules.dep")
        .exists()
    {
        sh(Command::new("depmod")
            .arg("-b")
            .arg(&modules_base)
            .arg(&release))?;
    }
    Ok(Unpacked {
        vmlinuz,
        modules_base,
        release,
    })
}

/// The modules to load in the guest, dependencies first, from `modprobe --show-depends`.
fn module_closure(unpacked: &Unpacked) -> Result<Vec<PathBuf>, String> {
    let mut order: Vec<PathBuf> = Vec::new();
    for module in MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&unpacked.modules_base)
            .args(["-S", &unpacked.release, "--show-depends", module])
            .output()
            .map_err(|e| format!("cannot run modprobe: {e}"))?;
        if !out.status.success() {
            // Built in, or folded into another module on this kernel (nft_counter in 6.12).
            eprintln!(
                "   kernel {} has no module {module} (built in?)",
                unpacked.release
            );
            continue;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `insmod /path/x.ko[.xz] [params]`; `builtin x` needs nothing.
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    Ok(order)
}

/// Copies `file` into the initramfs tree at the same path.
fn copy_into(tree: &Path, file: &Path) -> Result<(), String> {
    let dest = tree.join(file.strip_prefix("/").unwrap_or(file));
    if dest.exists() {
        return Ok(());
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    fs::copy(file, &dest).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(())
}

/// The shared libraries an executable links, as `ldd` resolves them on this host.
fn libraries(exe: &Path) -> Result<Vec<PathBuf>, String> {
    let out = sh(Command::new("ldd").arg(exe)).unwrap_or_default();
    Ok(out
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn busybox() -> Result<PathBuf, String> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    Err("busybox is not installed (apt-get install busybox-static)".into())
}

/// The guest's /init: mounts, modules, then `sonde probes` and each test, reported on the
/// second serial port (the first is the console, where the tests' output goes).
///
/// The virtio-net interface is renamed `ens3` (as udev names it on a qemu node) and brought
/// up: not left as `eth0`, because the tests' pods are made with `ip link add eth0 netns A
/// type veth peer name eth0 netns B`, which 6.12 and older refuse ("File exists") when the
/// caller's namespace has an `eth0` (rtnl_newlink looks the name up there first).
fn init_script(tests: &[(String, &MatrixTest)]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin SONDE_BIN=/bin/sonde HOME=/root TMPDIR=/tmp \
         RUST_BACKTRACE=1\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         mount -t tmpfs run /run\nmount -t tmpfs tmp /tmp\n\
         mount -t tracefs tracefs /sys/kernel/tracing\nmount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /dev/pts && mount -t devpts devpts /dev/pts\n\
         r=/dev/ttyS1\n\
         for m in $(cat /modules/order); do insmod /modules/$m || echo \"insmod $m failed\"; done\n\
         ip link set lo up\n\
         for d in /sys/class/net/*; do\n\
         \x20 case $(readlink $d/device/driver) in\n\
         \x20   */virtio_net) ip link set ${d##*/} name ens3 && ip link set ens3 up;;\n\
         \x20 esac\n\
         done\n\
         echo \"@@ release $(uname -r)\" > $r\n\
         echo '@@ probes' > $r\n\
         sonde probes --output json > $r 2>/dev/console\n\
         echo '@@ end' > $r\n\
         down=$(sonde probes | awk '$2 == \"no\" { print $1 }')\n",
    );
    for (exe, t) in tests {
        let id = format!("{}::{}", t.target, t.name);
        let mut conditions = 0;
        if let Some(((major, minor), what)) = t.since {
            let _ = writeln!(
                s,
                "if [ $(uname -r | awk -F. '{{ print $1 * 1000 + $2 }}') -lt {} ]; then \
                 echo '@@ test {id} skip needs Linux {major}.{minor}: {what}' > $r; else",
                major * 1000 + minor
            );
            conditions += 1;
        }
        if let Some(probe) = t.probe {
            let _ = writeln!(
                s,
                "if echo \"$down\" | grep -qx {probe}; then echo '@@ test {id} skip {probe} cannot load' > $r; else"
            );
            conditions += 1;
        }
        let _ = writeln!(
            s,
            "echo '== {id}'\n/tests/{exe} --exact {name} --test-threads=1 > /tmp/log 2>&1\n\
             rc=$?\ncat /tmp/log\necho \"@@ test {id} $rc\" > $r",
            name = t.name
        );
        for _ in 0..conditions {
            s += "fi\n";
        }
    }
    s += "echo '@@ done' > $r\npoweroff -f\n";
    s
}

/// Builds the initramfs for one kernel, boots it, and reads what it reported.
fn boot(dir: &Path, deb: &Path, bins: &Binaries) -> Result<Report, String> {
    let started = Instant::now();
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let unpacked = unpack(dir, deb)?;
    let tree = dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "root",
        "modules", "tests", "etc",
    ] {
        fs::create_dir_all(tree.join(d)).map_err(|e| e.to_string())?;
    }
    // busybox and its applets (`ip` and `iptables` come from the host instead).
    let busybox = busybox()?;
    fs::copy(&busybox, tree.join("bin/busybox")).map_err(|e| e.to_string())?;
    let applets = sh(Command::new(tree.join("bin/busybox")).arg("--list"))?;
    for applet in applets.lines() {
        if !matches!(applet, "busybox" | "ip" | "iptables" | "ip6tables") {
            let _ = std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet));
        }
    }
    let mut executables = vec![bins.sonde.clone(), busybox];
    fs::copy(&bins.sonde, tree.join("bin/sonde")).map_err(|e| e.to_string())?;
    let mut tests = Vec::new();
    for t in TESTS {
        let exe = bins
            .tests
            .get(t.target)
            .ok_or_else(|| format!("no test executable for {}", t.target))?;
        let name = t.target.to_string();
        if !tree.join("tests").join(&name).exists() {
            fs::copy(exe, tree.join("tests").join(&name)).map_err(|e| e.to_string())?;
            executables.push(exe.clone());
        }
        tests.push((name, t));
    }
    for (tool, names) in TOOLS {
        let real = fs::canonicalize(tool)
            .map_err(|e| format!("{tool}: {e} (install iproute2, iptables and prometheus)"))?;
        copy_into(&tree, &real)?;
        for name in *names {
            let link = tree.join("usr/sbin").join(name);
            let _ = std::os::unix::fs::symlink(&real, link);
        }
        executables.push(real);
    }
    for plugin in fs::read_dir(XTABLES_PLUGINS).map_err(|e| format!("{XTABLES_PLUGINS}: {e}"))? {
        let path = plugin.map_err(|e| e.to_string())?.path();
        copy_into(&tree, &path)?;
        executables.push(path);
    }
    for exe in &executables {
        for lib in libraries(exe)? {
            copy_into(&tree, &lib)?;
        }
    }
    // iptables-nft reads its protocol names from /etc/protocols... and wants a lock file.
    for f in ["/etc/protocols", "/etc/services", "/etc/ethertypes"] {
        if Path::new(f).exists() {
            copy_into(&tree, Path::new(f))?;
        }
    }
    fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .map_err(|e| e.to_string())?;
    fs::write(tree.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .map_err(|e| e.to_string())?;
    let mut order = String::new();
    for (i, module) in module_closure(&unpacked)?.iter().enumerate() {
        let name = format!("{i:02}-{}.ko", module_name(module));
        let dest = tree.join("modules").join(&name);
        let ext = module.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "xz" => sh(Command::new("sh").arg("-c").arg(format!(
                "xz -dc '{}' > '{}'",
                module.display(),
                dest.display()
            )))
            .map(|_| ())?,
            "zst" => sh(Command::new("sh").arg("-c").arg(format!(
                "zstd -qdc '{}' > '{}'",
                module.display(),
                dest.display()
            )))
            .map(|_| ())?,
            _ => {
                fs::copy(module, &dest).map_err(|e| format!("{}: {e}", module.display()))?;
            }
        }
        order += &name;
        order.push('\n');
    }
    fs::write(tree.join("modules/order"), order).map_err(|e| e.to_string())?;
    let init = tree.join("init");
    fs::write(&init, init_script(&tests)).map_err(|e| e.to_string())?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;

    // An uncompressed archive: the emulated CPU would take longer to inflate it than the
    // host takes to read it.
    let initrd = dir.join("initrd.cpio");
    sh(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        tree.display(),
        initrd.display()
    )))?;

    let console = dir.join("console.log");
    let report = dir.join("report.txt");
    let _ = fs::remove_file(&report);
    let mut child = Command::new("qemu-system-x86_64")
        // One host thread runs both vCPUs: with a thread per vCPU, 6.12 took an int3 Oops in
        // handle_softirqs when tracepoints were switched on while the other vCPU ran the code
        // being patched (cross-modifying code under multi-threaded TCG).
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "3072",
        ])
        .args(["-nographic", "-no-reboot", "-nodefaults"])
        // A virtio-net interface for the virtio_net probe's test (its control commands), on
        // qemu's user network with `restrict=on`: the guest reaches neither the host nor
        // anything beyond it.
        .args([
            "-netdev",
            "user,id=n0,restrict=on",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .arg("-kernel")
        .arg(&unpacked.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", report.display()))
        .args(["-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot run qemu-system-x86_64 (apt-get install qemu-system-x86): {e}")
        })?;
    let deadline = Instant::now() + VM_TIMEOUT;
    let mut shown = 0;
    loop {
        // Show progress as the guest reports it.
        if let Ok(text) = fs::read_to_string(&report) {
            for line in text.lines().skip(shown) {
                if line.starts_with("@@ test") || line.starts_with("@@ release") {
                    eprintln!("   {line}");
                }
                shown += 1;
            }
        }
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "kernel {} did not finish within {VM_TIMEOUT:?}; console in {}",
                    unpacked.release,
                    console.display()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => return Err(format!("qemu: {e}")),
        }
    }
    let text = fs::read_to_string(&report).unwrap_or_default();
    let mut report = parse_report(&text, TESTS).map_err(|e| {
        format!(
            "kernel {}: {e}; console in {}",
            unpacked.release,
            console.display()
        )
    })?;
    report.seconds = started.elapsed().as_secs();
    if report.tests.values().any(|o| *o == Outcome::Failed) {
        eprintln!("   (the failing tests' output is in {})", console.display());
    }
    Ok(report)
}

fn module_name(path: &Path) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("module");
    name.split(".ko").next().unwrap_or(name).to_string()
}

/// Reads the guest's report: `@@ release R`, `@@ probes` JSON `@@ end`, `@@ test ID RC` or
/// `@@ test ID skip PROBE`, `@@ done`.
pub fn parse_report(text: &str, tests: &[MatrixTest]) -> Result<Report, String> {
    let text = text.replace('\r', "");
    let mut release = None;
    let mut json = None;
    let mut outcomes = BTreeMap::new();
    let mut done = false;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("@@ ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            ["release", r] => release = Some(r.to_string()),
            ["probes"] => {
                let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "@@ end").collect();
                json = Some(body.join("\n"));
            }
            ["test", id, "skip", why @ ..] => {
                outcomes.insert(id.to_string(), Outcome::Skipped(why.join(" ")));
            }
            ["test", id, rc] => {
                let outcome = if *rc == "0" {
                    Outcome::Passed
                } else {
                    Outcome::Failed
                };
                outcomes.insert(id.to_string(), outcome);
            }
            ["done"] => done = true,
            _ => {}
        }
    }
    let release = release.ok_or("the guest never started (no release line)")?;
    let probes = parse_probes(&json.ok_or("the guest gave no `sonde probes` output")?)?;
    for t in tests {
        let id = format!("{}::{}", t.target, t.name);
        outcomes.entry(id).or_insert(Outcome::Failed);
    }
    if !done {
        return Err("the guest stopped before it finished (a test crashed the kernel?)".into());
    }
    Ok(Report {
        release,
        probes,
        tests: outcomes,
        seconds: 0,
    })
}

fn parse_probes(json: &str) -> Result<Vec<ProbeState>, String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("`sonde probes --output json` gave no JSON ({e}): {json}"))?;
    let rows = v
        .as_array()
        .ok_or("`sonde probes --output json` is not a list")?;
    Ok(rows
        .iter()
        .map(|r| ProbeState {
            name: r["name"].as_str().unwrap_or_default().to_string(),
            loadable: r["loadable"].as_bool().unwrap_or(false),
            reason: r["reason"].as_str().map(str::to_string),
            degraded: r["degraded"].as_str().map(str::to_string),
            attach: r["attach"].as_str().map(str::to_string),
        })
        .collect())
}

/// The same run on this machine's own kernel.
fn on_host(bins: &Binaries) -> Result<Report, String> {
    let started = Instant::now();
    let release = sh(Command::new("uname").arg("-r"))?.trim().to_string();
    let probes = parse_probes(&sh(
        Command::new(&bins.sonde).args(["probes", "--output", "json"])
    )?)?;
    let mut tests = BTreeMap::new();
    for t in TESTS {
        let id = format!("{}::{}", t.target, t.name);
        if let Some(why) = too_old(t, &release) {
            tests.insert(id, Outcome::Skipped(why));
            continue;
        }
        if let Some(p) = t.probe {
            if probes.iter().any(|s| s.name == p && !s.loadable) {
                tests.insert(id, Outcome::Skipped(format!("{p} cannot load")));
                continue;
            }
        }
        let exe = &bins.tests[t.target];
        let out = Command::new(exe)
            .args(["--exact", t.name, "--test-threads=1"])
            .env("SONDE_BIN", &bins.sonde)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let outcome = if out.status.success() {
            Outcome::Passed
        } else {
            let _ = std::io::stderr().write_all(&out.stdout);
            let _ = std::io::stderr().write_all(&out.stderr);
            Outcome::Failed
        };
        eprintln!("   @@ test {id} {outcome:?}");
        tests.insert(id, outcome);
    }
    Ok(Report {
        release,
        probes,
        tests,
        seconds: started.elapsed().as_secs(),
    })
}

fn probe_cell(p: Option<&ProbeState>) -> String {
    let Some(p) = p else {
        return "—".into();
    };
    if !p.loadable {
        return format!("no: {}", p.reason.as_deref().unwrap_or("?"));
    }
    let state = match &p.degraded {
        Some(d) => format!("degraded: {d}"),
        None => "yes".into(),
    };
    match &p.attach {
        Some(mode) => format!("{state} ({mode})"),
        None => state,
    }
}

fn test_cell(o: Option<&Outcome>) -> String {
    match o {
        None => "—".into(),
        Some(Outcome::Passed) => "passed".into(),
        Some(Outcome::Failed) => "**FAILED**".into(),
        Some(Outcome::Skipped(why)) => format!("not run: {why}"),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `docs/kernels.md`: the Debian kernels' table (compared by `--check`), then this host's.
pub fn render(reports: &[(Option<&Kernel>, Option<Report>)]) -> String {
    let mut s = String::from(
        "<!-- Generated by `cargo xtask kernels`: do not edit. -->\n# Kernels\n\n\
         What each probe does on the kernels Kubernetes nodes run, and the exact-count tests \
         that passed there. `cargo xtask kernels` boots each Debian cloud kernel under qemu \
         with an initramfs holding the agent, `sonde probes` and the test executables, runs \
         them, and writes this file; CI runs it with `--check`. `sonde probes` on a node says \
         the same as its column.\n\n\
         **yes**: loads and works fully; **degraded**: loads, with what is missing said; \
         **no**: cannot load, and why.\n\n",
    );
    let debian: Vec<(&Kernel, Option<&Report>)> = reports
        .iter()
        .filter_map(|(k, r)| Some(((*k)?, r.as_ref())))
        .collect();
    let header = |s: &mut String, cols: &[String]| {
        let _ = writeln!(s, "| | {} |", cols.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(cols.len()));
    };
    let columns: Vec<String> = debian
        .iter()
        .map(|(k, r)| match r {
            Some(r) => format!("{} ({}, `{}`)", k.name, k.distro, r.release),
            None => format!("{} ({}, not fetched)", k.name, k.distro),
        })
        .collect();
    s += "## Probes\n\n";
    header(&mut s, &columns);
    let names = probe_names(reports);
    for name in &names {
        let cells: Vec<String> = debian
            .iter()
            .map(|(_, r)| {
                cell(&probe_cell(
                    r.and_then(|r| r.probes.iter().find(|p| &p.name == name)),
                ))
            })
            .collect();
        let _ = writeln!(s, "| `{name}` | {} |", cells.join(" | "));
    }
    s += "\n## Tests\n\nIntegration tests (`tests/tests/<file>.rs`, test name) run inside each kernel.\n\n";
    header(&mut s, &columns);
    for t in TESTS {
        let id = format!("{}::{}", t.target, t.name);
        let cells: Vec<String> = debian
            .iter()
            .map(|(_, r)| cell(&test_cell(r.and_then(|r| r.tests.get(&id)))))
            .collect();
        let _ = writeln!(s, "| `{id}` | {} |", cells.join(" | "));
    }
    s += "\n";
    s += HOST_MARK;
    s += "\n## This host\n\n";
    if let Some((_, Some(host))) = reports.iter().find(|(k, _)| k.is_none()) {
        let _ = writeln!(
            s,
            "Kernel `{}`, where `cargo xtask kernels` last ran.\n",
            host.release
        );
        s += "| | |\n|---|---|\n";
        for name in &names {
            let p = host.probes.iter().find(|p| &p.name == name);
            let _ = writeln!(s, "| `{name}` | {} |", cell(&probe_cell(p)));
        }
        for t in TESTS {
            let id = format!("{}::{}", t.target, t.name);
            let _ = writeln!(s, "| `{id}` | {} |", cell(&test_cell(host.tests.get(&id))));
        }
    } else {
        s += "Not run.\n";
    }
    s
}

fn probe_names(reports: &[(Option<&Kernel>, Option<Report>)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in reports.iter().filter_map(|(_, r)| r.as_ref()) {
        for p in &r.probes {
            if !names.contains(&p.name) {
                names.push(p.name.clone());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "junk\r\n@@ release 6.1.0-50-cloud-amd64\r\n@@ probes\r\n\
        [{\"name\": \"packet_drop\", \"loadable\": false, \"reason\": \"why | not\"},\r\n\
        {\"name\": \"flow\", \"loadable\": true, \"reason\": null, \"degraded\": \"x\", \"attach\": \"clsact\"}]\r\n\
        @@ end\r\n@@ test a::one 0\r\n@@ test b::two skip flow cannot load\r\n@@ done\r\n";

    #[test]
    fn a_report_is_read_and_missing_tests_fail() {
        let tests = [
            MatrixTest {
                target: "a",
                name: "one",
                probe: None,
                since: None,
            },
            test("b", "two", "flow"),
            test("c", "three", "packet_drop"),
        ];
        let r = parse_report(REPORT, &tests).unwrap();
        assert_eq!(r.release, "6.1.0-50-cloud-amd64");
        assert_eq!(r.probes.len(), 2);
        assert_eq!(r.probes[1].degraded.as_deref(), Some("x"));
        assert_eq!(r.probes[1].attach.as_deref(), Some("clsact"));
        assert_eq!(r.tests["a::one"], Outcome::Passed);
        assert_eq!(
            r.tests["b::two"],
            Outcome::Skipped("flow cannot load".into())
        );
        assert_eq!(r.tests["c::three"], Outcome::Failed);
        let new = MatrixTest {
            since: Some(((5, 14), "cookies")),
            ..test("d", "four", "flow")
        };
        assert_eq!(
            too_old(&new, "5.10.0-32-cloud-amd64").as_deref(),
            Some("needs Linux 5.14: cookies")
        );
        assert_eq!(too_old(&new, "6.1.0-50-cloud-amd64"), None);
        assert_eq!(too_old(&new, "5.14.0"), None);
        let unfinished = REPORT.replace("@@ done", "");
        assert!(parse_report(&unfinished, &tests).is_err());
    }

    #[test]
    fn the_host_section_is_not_compared() {
        let r = parse_report(REPORT, &[]).unwrap();
        let doc = render(&[(Some(&KERNELS[1]), Some(r.clone())), (None, Some(r))]);
        assert!(doc.contains("| `packet_drop` | no: why \\| not |"));
        assert!(doc.contains("| `flow` | degraded: x (clsact) |"));
        let other_host = doc.replace("Kernel `6.1.0-50-cloud-amd64`", "Kernel `6.18`");
        assert_ne!(doc, other_host);
        assert_eq!(compared(&doc), compared(&other_host));
    }
}
