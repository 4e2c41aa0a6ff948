//! Sinks whose outputs fail: a file sink on a full filesystem (a small tmpfs) loses the
//! batches it cannot write, counts them, keeps whole lines in its file and writes again when
//! space returns; a Loki that accepts connections and never answers costs only its bounded
//! buffer. Throughout, `/healthz` and `/metrics` answer within a second.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::{
    free_local_addr, http_get, poll_until, send_udp, Agent, IpFamily, PodPair, TempDir,
    READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9995;
const DROPPED: &str = "sonde_sink_events_dropped_total";

/// A tmpfs of `size` mounted on a directory of its own; unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
    _parent: TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let parent = TempDir::new();
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        mount(&dir, &format!("size={size}"));
        SmallDisk {
            dir,
            _parent: parent,
        }
    }

    fn resize(&self, size: &str) {
        mount(&self.dir, &format!("remount,size={size}"));
    }
}

fn mount(dir: &Path, options: &str) {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount")
        .success();
    assert!(ok, "mount -o {options} {}", dir.display());
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Every line of the file must be a whole JSON event; returns those of pod `pod` to `port`.
fn lines_of(path: &Path, pod: &str, port: u16) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not a whole line ({e}): {l:?}"))
        })
        .filter(|e| e["pod"] == pod && e["dport"] == port)
        .count()
}

/// `/healthz` and `/metrics` each answer 200 within a second.
fn answers_quickly(agent: &Agent) {
    for path in ["/healthz", "/metrics"] {
        let started = Instant::now();
        let (status, _) = http_get(agent.addr(), path).expect("the agent answers");
        let took = started.elapsed();
        assert_eq!(status, 200, "{path}");
        assert!(took < Duration::from_secs(1), "{path} took {took:?}");
    }
}

#[test]
fn a_full_disk_and_a_hanging_loki_lose_counted_events_and_the_agent_keeps_answering() {
    let disk = SmallDisk::new("64k");
    let events = disk.dir.join("events.json");
    // A Loki that takes connections and never answers.
    let hanging = TcpListener::bind(free_local_addr()).unwrap();
    let loki: SocketAddr = hanging.local_addr().unwrap();
    let pods = PodPair::dropping_udp(PORT);
    let agent = Agent::spawn_yaml(&format!(
        "probes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0}}\n  \
         tcp_retrans: {{enabled: false}}\n  tcp_reset: {{enabled: false}}\n  tcp_connect: {{enabled: false}}\n\
         sinks:\n  stdout: {{enabled: false}}\n  file:\n    path: {}\n    maxSize: 16Mi\n    maxFiles: 1\n  \
         loki:\n    url: http://{loki}\n    timeout: 30s\n    maxBuffer: 200\n    batchSize: 100\n",
        events.display()
    ));
    agent.wait_ready(READY_TIMEOUT);
    let (src, dst) = (
        pods.a_end.ip(IpFamily::V4),
        SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT),
    );
    // About 400 bytes an event: 2000 of them do not fit in 64 KiB.
    let mut sent = 0;
    poll_until(
        SETTLE_TIMEOUT,
        "the file sink to count what it could not write",
        || {
            send_udp(&pods.a, src, dst, 500);
            sent += 500;
            answers_quickly(&agent);
            agent
                .metric(DROPPED, &[("sink", "file"), ("reason", "write_error")])
                .filter(|n| *n > 0.0)
        },
    );
    assert!(
        agent.stderr_text().contains("event sink cannot write"),
        "{}",
        agent.stderr_text()
    );
    // The hanging Loki costs at most its buffer: the rest is counted.
    poll_until(
        SETTLE_TIMEOUT,
        "the Loki sink to count its full buffer",
        || {
            answers_quickly(&agent);
            agent
                .metric(DROPPED, &[("sink", "loki"), ("reason", "buffer_full")])
                .filter(|n| *n > 0.0)
        },
    );
    // What reached the file is whole lines.
    let before = lines_of(&events, pods.b.name(), PORT);
    assert!(before < sent, "{before} of {sent} written on a full disk");

    // Space returns: the next events are written, every one of them.
    disk.resize("16m");
    const AFTER: u16 = PORT + 1;
    let again = PodPair::dropping_udp(AFTER);
    let dst = SocketAddr::new(again.b_end.ip(IpFamily::V4), AFTER);
    send_udp(&again.a, again.a_end.ip(IpFamily::V4), dst, 100);
    poll_until(SETTLE_TIMEOUT, "100 new events in the file", || {
        answers_quickly(&agent);
        (lines_of(&events, again.b.name(), AFTER) == 100).then_some(())
    });
    assert!(
        agent.stderr_text().contains("event sink writes again"),
        "{}",
        agent.stderr_text()
    );
    drop(hanging);
}
