//! The agent's image: deploy/Dockerfile copies into an empty (`scratch`) image the root
//! filesystem `deploy/rootfs.sh` builds, the binary and the shared libraries it loads. Here the
//! same script builds that tree from the agent under test, and the agent runs in it under
//! chroot, with the host paths the DaemonSet mounts (`/proc`, `/sys`, `/run/netns`) mounted at
//! the same places in a private mount namespace: it starts, reports ready and counts a pod's
//! drops exactly, so nothing it needs is missing from the image.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sonde_tests::chart::root;
use sonde_tests::{
    drop_reason, free_local_addr, send_udp, sonde_bin, Agent, IpFamily, PodPair, TempDir,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 5331;
const DATAGRAMS: usize = 300;
const DROPS: &str = "sonde_packet_drops_total";

/// `deploy/rootfs.sh` run on the agent under test, into `dir`.
fn build_rootfs(dir: &Path) {
    let script = root().join("deploy/rootfs.sh");
    let out = Command::new(&script)
        .arg(sonde_bin())
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_image_holds_the_agent_and_its_libraries_and_the_agent_runs_in_it() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("deploy/rootfs.sh target/dist/sonde /rootfs")
            && dockerfile.contains("FROM scratch")
            && dockerfile.contains("COPY --from=build /rootfs /"),
        "deploy/Dockerfile no longer ships the tree deploy/rootfs.sh builds:\n{dockerfile}"
    );

    let dir = TempDir::new();
    let rootfs = dir.path().join("rootfs");
    build_rootfs(&rootfs);
    let contents = files(&rootfs);
    assert!(
        contents.contains(&PathBuf::from("usr/local/bin/sonde")),
        "{contents:?}"
    );
    for file in &contents {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            file == Path::new("usr/local/bin/sonde") || name.contains(".so"),
            "the image holds {} besides the agent and its libraries",
            file.display()
        );
    }

    let version = Command::new("chroot")
        .arg(&rootfs)
        .args(["/usr/local/bin/sonde", "--version"])
        .output()
        .expect("cannot run chroot");
    assert!(
        version.status.success() && String::from_utf8_lossy(&version.stdout).starts_with("sonde "),
        "the agent does not run in its image: {}",
        String::from_utf8_lossy(&version.stderr)
    );

    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {PORT} -j DROP"),
    );
    let addr = free_local_addr();
    let config = rootfs.join("etc/sonde/sonde.yaml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "probes:\n  packet_drop:\n    events: {enabled: true, ratePerCpu: 0}\n",
    )
    .unwrap();
    // The mounts are made in a private mount namespace of the agent's own, so they go with
    // it: nothing to undo when the test fails. Pods made before it are in its /run/netns.
    let mut script = String::from("set -e; ");
    for host in ["/proc", "/sys", "/run/netns"] {
        let target = rootfs.join(host.trim_start_matches('/'));
        std::fs::create_dir_all(&target).unwrap();
        script += &format!("mount --rbind {host} {}; ", target.display());
    }
    script += &format!(
        "exec chroot {} /usr/local/bin/sonde run --config /etc/sonde/sonde.yaml --listen {addr}",
        rootfs.display()
    );
    let argv: Vec<String> = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        .map(String::from)
        .into_iter()
        .chain([script])
        .collect();
    let agent = Agent::spawn_argv(&argv, addr, config);
    agent.wait_ready(READY_TIMEOUT);

    let labels = [
        ("pod", pods.b.name()),
        ("reason", drop_reason("NETFILTER_DROP")),
    ];
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, DATAGRAMS);
    agent.wait_metric(DROPS, &labels, DATAGRAMS as f64, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(DROPS, &labels), Some(DATAGRAMS as f64));
    drop(agent);
}
