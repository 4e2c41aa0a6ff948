//! Event delivery: a full ring buffer counts what it loses, stacks come when asked, and the
//! file sink receives the events. (The rate limit has its own file: see rate_limit.rs.)

use std::net::SocketAddr;

use serde_json::Value;
use sonde_tests::{
    field_str, poll_until, send_udp, Agent, IpFamily, PodPair, TempDir, READY_TIMEOUT,
    SETTLE_TIMEOUT,
};

const PORT: u16 = 9999;
const DROPS: &str = "sonde_packet_drops_total";

fn drop_pods() -> (PodPair, SocketAddr) {
    let pods = PodPair::dropping_udp(PORT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    (pods, dst)
}

fn config(packet_drop: &str, sinks: &str) -> String {
    format!(
        "node: sonde-test-node\nprobes:\n  packet_drop:\n{packet_drop}  tcp_retrans: {{enabled: false}}\n  \
         tcp_reset: {{enabled: false}}\nsinks:\n{sinks}"
    )
}

fn drop_events_for(events: &[Value], pod: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| field_str(e, "type") == Some("packet_drop") && field_str(e, "pod") == Some(pod))
        .filter(|e| field_str(e, "reason") == Some("NETFILTER_DROP"))
        .cloned()
        .collect()
}

#[test]
fn full_ring_buffer_counts_lost_events() {
    let (pods, dst) = drop_pods();
    let agent = Agent::spawn_yaml(&config(
        "    events: {enabled: true, ratePerCpu: 0, ringBufferSize: 64Ki}\n",
        "  stdout: {enabled: true}\n",
    ));
    agent.wait_ready(READY_TIMEOUT);
    let lost = [("probe", "packet_drop")];
    let before = agent
        .metric("sonde_events_lost_total", &lost)
        .unwrap_or(0.0);

    // With the agent stopped nothing drains the 64 KiB ring buffer: it holds 819 drop records
    // (72 bytes and an 8-byte header each), so most of these drops cannot be delivered.
    const SENT: usize = 5000;
    const CAPACITY: f64 = (64 * 1024 / (72 + 8)) as f64;
    agent.signal(libc::SIGSTOP);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, SENT);
    agent.signal(libc::SIGCONT);

    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];
    agent.wait_metric(DROPS, &labels, SENT as f64, SETTLE_TIMEOUT);
    assert_eq!(agent.metric(DROPS, &labels), Some(SENT as f64));
    // Every drop is either printed or counted as lost.
    let (emitted, lost_now) = poll_until(
        SETTLE_TIMEOUT,
        "events printed + events lost to account for every drop",
        || {
            let emitted = drop_events_for(&agent.events(), pods.b.name()).len() as f64;
            let lost_now = agent
                .metric("sonde_events_lost_total", &lost)
                .unwrap_or(0.0)
                - before;
            (emitted + lost_now >= SENT as f64).then_some((emitted, lost_now))
        },
    );
    assert!(
        emitted > 0.0 && emitted <= CAPACITY,
        "{emitted} events printed; the ring buffer holds {CAPACITY}"
    );
    assert!(
        lost_now >= SENT as f64 - CAPACITY,
        "{lost_now} lost of {SENT} drops into a ring buffer of {CAPACITY}"
    );
}

/// Entries of the stack map the agent `pid` holds (its only BPF_MAP_TYPE_STACK_TRACE map,
/// found through its descriptors' fdinfo), as bpftool dumps them.
fn stack_map_entries(pid: u32) -> Option<usize> {
    let id = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .find(|info| {
            info.lines()
                .any(|l| l.split_whitespace().eq(["map_type:", "7"]))
        })?
        .lines()
        .find_map(|l| l.strip_prefix("map_id:"))?
        .trim()
        .to_string();
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id])
        .output()
        .ok()?;
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(dump.as_array()?.len())
}

#[test]
fn stacks_when_asked_and_reconfigured_live() {
    let (pods, dst) = drop_pods();
    let with_stack = |stack: bool| {
        config(
            &format!("    stack: {stack}\n    events: {{enabled: true, ratePerCpu: 0}}\n"),
            "  stdout: {enabled: true}\n",
        )
    };
    let agent = Agent::spawn_yaml(&with_stack(true));
    agent.wait_ready(READY_TIMEOUT);
    let labels = [("pod", pods.b.name()), ("reason", "NETFILTER_DROP")];

    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 20);
    agent.wait_metric(DROPS, &labels, 20.0, SETTLE_TIMEOUT);
    let event = poll_until(SETTLE_TIMEOUT, "a drop event with a stack", || {
        drop_events_for(&agent.events(), pods.b.name())
            .into_iter()
            .next()
    });
    let stack: Vec<&str> = event["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack in {event}"))
        .iter()
        .map(|f| f.as_str().expect("frames are strings"))
        .collect();
    // The netfilter rule dropped it: its hook is on the stack, symbolised as function+offset.
    assert!(
        stack.iter().any(|f| f.starts_with("nf_hook_slow+0x")),
        "{stack:?}"
    );
    assert!(
        stack.iter().any(|f| f.starts_with("ip_local_deliver")),
        "{stack:?}"
    );
    // Every drop came with its stack, those recorded before the first was read too (they
    // share its id, freed once read).
    let all = poll_until(SETTLE_TIMEOUT, "20 drop events of pod B", || {
        let events = drop_events_for(&agent.events(), pods.b.name());
        (events.len() >= 20).then_some(events)
    });
    let without: Vec<_> = all.iter().filter(|e| e.get("stack").is_none()).collect();
    assert!(
        without.is_empty(),
        "{} of {} without a stack",
        without.len(),
        all.len()
    );
    // Each stack is freed from the kernel's map once read: the map (4096 stacks) cannot fill.
    poll_until(
        SETTLE_TIMEOUT,
        "the agent's stack map empty once read",
        || (stack_map_entries(agent.pid())? == 0).then_some(()),
    );
    assert_eq!(
        agent.metric("sonde_events_stack_lost_total", &[("probe", "packet_drop")]),
        Some(0.0)
    );

    // Switching stacks off applies live, without a reload that would reset the counts.
    agent.rewrite_config(&with_stack(false));
    let seen = agent.events().len();
    poll_until(SETTLE_TIMEOUT, "drop events without a stack", || {
        send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 1);
        let events = agent.events();
        drop_events_for(&events[seen..], pods.b.name())
            .iter()
            .any(|e| e.get("stack").is_none())
            .then_some(())
    });
    let total = agent.metric(DROPS, &labels).expect("drops still counted");
    assert!(total > 20.0, "counts kept across the change: {total}");
}

#[test]
fn file_sink_receives_events() {
    let (pods, dst) = drop_pods();
    let dir = TempDir::new();
    let path = dir.path().join("events.json");
    let agent = Agent::spawn_yaml(&config(
        "    events: {enabled: true, ratePerCpu: 0}\n",
        &format!(
            "  stdout: {{enabled: false}}\n  file: {{path: {}, maxSize: 1Mi}}\n",
            path.display()
        ),
    ));
    agent.wait_ready(READY_TIMEOUT);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, 30);
    // Concurrent tests make drops too, so the file may have rotated: read the rotated ones.
    let in_file = poll_until(SETTLE_TIMEOUT, "30 drop events in the file sink", || {
        // Oldest first: a rotation while we read moves lines into a file already read (missed
        // this round, seen by the next poll), never into one still to read (counted twice).
        let mut texts: Vec<String> = (1..=5)
            .rev()
            .map(|n| std::fs::read_to_string(format!("{}.{n}", path.display())).unwrap_or_default())
            .collect();
        texts.push(std::fs::read_to_string(&path).ok()?);
        // Only whole lines of each file: the sink may be halfway through writing the last one.
        let events: Vec<Value> = texts
            .iter()
            .flat_map(|text| text.split_inclusive('\n'))
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let ours = drop_events_for(&events, pods.b.name());
        (ours.len() >= 30).then_some(ours.len())
    });
    assert_eq!(in_file, 30);
    assert!(agent.stdout_lines().is_empty(), "stdout sink is off");
}
