//! One event for every consumer: the agent enriches each event once, before the fan-out, so
//! the JSON sink, a resident script and a plugin see the same fields for the same drops,
//! including the pod at the flow's other end (`peer`), which only plugins used to get.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use sonde_tests::{
    metric_series, poll_until, send_udp, wasm_module, write_bundle, write_script_bundle, Agent,
    IpFamily, PodPair, TempDir, READY_TIMEOUT, SETTLE_TIMEOUT,
};

const PORT: u16 = 9989;
const SENT: usize = 100;

/// `{pod, peer, reason, location, dport}` → count, from whichever consumer.
type Seen = BTreeMap<[String; 5], usize>;

#[test]
fn sinks_scripts_and_plugins_see_the_same_event() {
    let pods = PodPair::dropping_udp(PORT);
    let dir = TempDir::new();
    let bundles = dir.path().join("bundles");
    write_bundle(
        &bundles.join("fields"),
        "fields",
        &wasm_module("hostile-plugin"),
        "  subscribe: [packet_drop]\n  config: {mode: fields}\n  capabilities: [metrics]\n",
    );
    write_script_bundle(
        &bundles.join("script"),
        "script",
        "fn on_packet_drop(e) {\n  \
           let peer = if e.peer_pod == () { \"none\" } else { e.peer_pod };\n  \
           metric_inc(\"sonde_test_script_drops_total\", #{pod: e.pod, peer: peer, reason: e.reason, location: e.location, dport: `${e.dport}`});\n\
         }\n",
        "  subscribe: [packet_drop]\n  capabilities: [metrics]\n",
    );
    let events = dir.path().join("events.json");
    let agent = Agent::spawn_yaml(&format!(
        "probes:\n  packet_drop:\n    events: {{enabled: true, ratePerCpu: 0}}\n  tcp_retrans: {{enabled: false}}\n  \
         tcp_reset: {{enabled: false}}\nsinks:\n  stdout: {{enabled: false}}\n  file: {{path: {}, maxSize: 16Mi}}\n\
         plugins:\n  dirs: [{}]\n",
        events.display(),
        bundles.display()
    ));
    agent.wait_ready(READY_TIMEOUT);
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, SENT);

    let ours = |k: &[String; 5]| k[0] == pods.b.name() && k[4] == PORT.to_string();
    let total =
        |seen: &Seen| -> usize { seen.iter().filter(|(k, _)| ours(k)).map(|(_, n)| n).sum() };
    let from_sink = || -> Seen {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let mut seen = Seen::new();
        for line in text
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
        {
            let e: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
            if e["type"] != "packet_drop" {
                continue;
            }
            let s = |k: &str| match &e[k] {
                Value::String(s) => s.clone(),
                Value::Null => "none".to_string(),
                v => v.to_string(),
            };
            *seen
                .entry([
                    s("pod"),
                    s("peer_pod"),
                    s("reason"),
                    s("location"),
                    s("dport"),
                ])
                .or_default() += 1;
        }
        seen
    };
    let from_metric = |name: &str, keys: [&str; 5]| -> Seen {
        let mut seen = Seen::new();
        for (labels, value) in metric_series(&agent.metrics(), name) {
            let get = |k: &str| {
                labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or_else(String::new, |(_, v)| v.clone())
            };
            *seen.entry(keys.map(get)).or_default() += value as usize;
        }
        seen
    };
    let sink = poll_until(SETTLE_TIMEOUT, "the drops in the JSON sink", || {
        let seen = from_sink();
        (total(&seen) == SENT).then_some(seen)
    });
    let script = poll_until(SETTLE_TIMEOUT, "the drops in the script's counter", || {
        let seen = from_metric(
            "sonde_test_script_drops_total",
            ["pod", "peer", "reason", "location", "dport"],
        );
        (total(&seen) == SENT).then_some(seen)
    });
    let plugin = poll_until(SETTLE_TIMEOUT, "the drops in the plugin's counter", || {
        let seen = from_metric(
            "sonde_test_fields_total",
            ["pod", "peer", "key", "detail", "dport"],
        );
        (total(&seen) == SENT).then_some(seen)
    });
    let only_ours = |seen: Seen| -> Seen { seen.into_iter().filter(|(k, _)| ours(k)).collect() };
    let (sink, script, plugin) = (only_ours(sink), only_ours(script), only_ours(plugin));
    // The drops happened in b and were sent from a: every consumer names a as the peer.
    assert!(
        sink.keys()
            .all(|k| k[1] == pods.a.name() && k[2] == "NETFILTER_DROP"),
        "{sink:?}"
    );
    assert_eq!(sink, script, "the JSON sink and the script");
    assert_eq!(sink, plugin, "the JSON sink and the plugin");
}
