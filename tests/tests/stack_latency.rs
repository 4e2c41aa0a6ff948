//! stack_latency: UDP from a client pod through a router pod to a server pod. The router's
//! stack times each datagram from ip_rcv to ip_forward (`receive_forward`) and from
//! ip_forward to ip_output (`forward`); the server's from ip_rcv to ip_local_deliver
//! (`receive_local`). With a threshold of 0 every packet in every stage is an event, counted
//! exactly per pod, stage and flow; the histogram has them per stage. Run once with the
//! function hooks attached as the kernel allows (`auto`: fentry where it attaches BPF
//! trampolines) and once as kprobes.
//!
//! The probe needs BPF trampolines or kprobes: on a kernel with neither (this repository's
//! development host) the tests say so and return; the kernel matrix runs them on Debian's
//! kernels, which have both.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::{json, Value};
use sonde_tests::{
    in_netns, json_contains, only_probes_yaml, poll_until, probe_unavailable, send_udp, Agent,
    Netns, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const DATAGRAMS: usize = 200;
const PORT: u16 = 9470;
const COUNT: &str = "sonde_stack_latency_seconds_count";

/// Pods `client` and `server` on two subnets, joined by pod `router`, which forwards between
/// them. Permanent neighbour entries: no ARP, so nothing but the test's datagrams crosses.
struct Routed {
    client: Netns,
    router: Netns,
    server: Netns,
    client_ip: Ipv4Addr,
    server_ip: Ipv4Addr,
}

impl Routed {
    fn new() -> Routed {
        let (client, router, server) = (
            Netns::new("client"),
            Netns::new("router"),
            Netns::new("server"),
        );
        // 198.18.0.0/15 is the benchmark range: nothing outside the test's namespaces uses it.
        let net = 100 + (std::process::id() % 50) as u8 * 2;
        let client_ip = Ipv4Addr::new(198, 19, net, 2);
        let server_ip = Ipv4Addr::new(198, 19, net + 1, 2);
        let link = |pod: &Netns, side: &str, pod_mac: &str, router_mac: &str, subnet: u8| {
            sonde_tests::run_command(&format!(
                "ip link add eth0 netns {} address {pod_mac} type veth peer name {side} netns {} \
                 address {router_mac}",
                pod.name(),
                router.name()
            ));
            pod.ip(&format!("addr add 198.19.{subnet}.2/24 dev eth0"));
            pod.ip("link set eth0 up");
            pod.ip(&format!("route add default via 198.19.{subnet}.1"));
            pod.ip(&format!(
                "neigh replace 198.19.{subnet}.1 lladdr {router_mac} dev eth0 nud permanent"
            ));
            router.ip(&format!("addr add 198.19.{subnet}.1/24 dev {side}"));
            router.ip(&format!("link set {side} up"));
            router.ip(&format!(
                "neigh replace 198.19.{subnet}.2 lladdr {pod_mac} dev {side} nud permanent"
            ));
        };
        link(
            &client,
            "toclient",
            "02:5e:00:00:00:02",
            "02:5e:00:00:00:01",
            net,
        );
        link(
            &server,
            "toserver",
            "02:5e:00:00:01:02",
            "02:5e:00:00:01:01",
            net + 1,
        );
        in_netns(router.name(), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable forwarding")
        });
        Routed {
            client,
            router,
            server,
            client_ip,
            server_ip,
        }
    }
}

fn config(attach: &str) -> String {
    only_probes_yaml(
        &format!(
            "  stack_latency:\n    enabled: true\n    slowThreshold: 0ms\n    attach: {attach}\n\
             \x20   events: {{enabled: true, ratePerCpu: 0, burst: 1000, ringBufferSize: 16Mi}}\n"
        ),
        "topology:\n  netnsDir: /run/netns\n",
    )
}

/// The probe's row of `/api/v1/probes`.
fn status(agent: &Agent) -> Value {
    let (code, body) = agent.get("/api/v1/probes");
    assert_eq!(code, 200, "{body}");
    let probes: Value = serde_json::from_str(&body).expect("JSON");
    let rows = probes.as_array().cloned().unwrap_or_default();
    rows.into_iter()
        .find(|p| p["name"] == "stack_latency")
        .unwrap_or_else(|| panic!("stack_latency not in {probes}"))
}

/// Sends the datagrams through the router and checks every stage of every one, exactly;
/// returns how the probe attached.
fn datagrams_are_timed_in_every_stage(attach: &str) -> Option<String> {
    if let Some(why) = probe_unavailable("stack_latency") {
        eprintln!("skipped: stack_latency cannot load on this kernel: {why}");
        return None;
    }
    let pods = Routed::new();
    let agent = Agent::spawn_yaml(&config(attach));
    agent.wait_ready(READY_TIMEOUT);
    let server = SocketAddr::from((pods.server_ip, PORT));
    let receiver = in_netns(pods.server.name(), || {
        UdpSocket::bind(server).expect("bind the server's socket")
    });
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let sport = send_udp(&pods.client, pods.client_ip.into(), server, DATAGRAMS);
    let mut buf = [0u8; 64];
    for i in 0..DATAGRAMS {
        receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} did not arrive: {e}"));
    }

    let flow = json!({"type": "stack_latency", "source": "kernel", "protocol": "udp",
                      "saddr": pods.client_ip.to_string(), "sport": sport,
                      "daddr": pods.server_ip.to_string(), "dport": PORT});
    let stages = [
        (&pods.router, "receive_forward"),
        (&pods.router, "forward"),
        (&pods.server, "receive_local"),
    ];
    let count = |events: &[Value], pod: &Netns, stage: &str| {
        events
            .iter()
            .filter(|e| {
                json_contains(e, &flow)
                    && e["pod"] == pod.name()
                    && e["stage"] == stage
                    && e["duration_seconds"].as_f64().is_some_and(|d| d >= 0.0)
            })
            .count()
    };
    poll_until(SETTLE_TIMEOUT, "an event per datagram and stage", || {
        let events = agent.events();
        stages
            .iter()
            .all(|(pod, stage)| count(&events, pod, stage) >= DATAGRAMS)
            .then_some(())
    });
    // Settled: no datagram is timed twice in a stage, and none in a stage it did not pass
    // (the client sent them, it did not receive them).
    std::thread::sleep(Duration::from_millis(500));
    let events = agent.events();
    for (pod, stage) in stages {
        assert_eq!(
            count(&events, pod, stage),
            DATAGRAMS,
            "{stage} in {}",
            pod.name()
        );
    }
    for stage in ["receive_local", "receive_forward", "forward"] {
        assert_eq!(
            count(&events, &pods.client, stage),
            0,
            "{stage} in the client"
        );
    }
    assert_eq!(count(&events, &pods.server, "forward"), 0);
    assert_eq!(count(&events, &pods.router, "receive_local"), 0);
    // The histogram has at least these (the node's other packets too: it is per stage).
    for stage in ["receive_forward", "forward", "receive_local"] {
        agent.wait_metric(COUNT, &[("stage", stage)], DATAGRAMS as f64, SETTLE_TIMEOUT);
    }
    // The API says how the function hooks attached, and lists the hooks of that form.
    let row = status(&agent);
    let mode = row["attach"].as_str().expect("attach").to_string();
    let hooks: Vec<&str> = row["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: &[&str] = match mode.as_str() {
        "fentry" => &[
            "fexit/ip_rcv_core",
            "fentry/ip_local_deliver",
            "fentry/ip_forward",
            "fentry/ip_output",
        ],
        "kprobe" => &[
            "kretprobe/ip_rcv_core",
            "kprobe/ip_local_deliver",
            "kprobe/ip_forward",
            "kprobe/ip_output",
        ],
        other => panic!("attach {other:?}: {row}"),
    };
    assert_eq!(hooks[..4], expected[..], "{row}");
    assert_eq!(hooks[4], "tp_btf/skb/kfree_skb", "{row}");
    Some(mode)
}

#[test]
fn udp_through_a_router_is_timed_in_every_stage() {
    datagrams_are_timed_in_every_stage("auto");
}

#[test]
fn udp_through_a_router_is_timed_with_kprobes() {
    if let Some(mode) = datagrams_are_timed_in_every_stage("kprobe") {
        assert_eq!(mode, "kprobe");
    }
}
