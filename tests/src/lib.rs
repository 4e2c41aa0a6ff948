//! Harness for Sonde's integration tests: network namespaces stand in for pods, veth links join
//! them, iptables rules inside them make the kernel drop or lose packets, and the agent runs as a
//! child process whose metrics and events the tests read. Every helper panics with context instead
//! of returning errors, so a failure keeps its trace (aya's integration-test style).
//!
//! The tests need root and a built agent: `cargo build --release -p sonde` then
//! `cargo test --release -p sonde-tests` (or point `SONDE_BIN` at the binary).

mod agent;
/// The bench binaries' shared helpers.
pub mod bench;
mod bundle;
/// The Helm chart and the manifests in deploy/, for the deploy tests.
pub mod chart;
/// The Grafana dashboards and the PromQL they and the alerts query.
pub mod dashboards;
mod dns_server;
mod http;
pub mod kube_api;
mod loop_device;
mod netns;
mod node_pods;
pub mod pki;
mod prometheus;
mod slow_link;
mod tc_filters;
mod trace;
mod traffic;

pub use agent::{
    free_local_addr, only_probes_yaml, probe_unavailable, run_sonde, run_sonde_env, sonde_bin,
    start_agent, Agent, AgentConfig, Finished, TempDir,
};
pub use bundle::{
    built_bundle, copy_bundle, core_module_with_memory, core_module_with_table, first_party_bundle,
    wasm_module, with_core_instances, write_bundle, write_script_bundle,
};
pub use dns_server::{dns_query, tcp_query, udp_query, DnsAnswers, DnsServer};
pub use http::{http_get, http_get_with, Response};
pub use loop_device::LoopDevice;
pub use netns::{in_netns, Endpoint, IpFamily, Netns, PodPair, Resident};
pub use node_pods::{NodePod, NodePods};
pub use prometheus::{all_series, assert_promtool_clean, metric_series, metric_value};
pub use slow_link::SlowPodPair;
pub use tc_filters::{
    auto_attach_mode, qdisc_kinds, sonde_filters, tc_filters, ForeignFilters, TcFilter,
};
pub use trace::Trace;
pub use traffic::{
    bulk_transfer, connect_and_close, refused_connects, send_udp, timed_out_connect,
};

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long the agent may take to load and attach its probes.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a count or an event may take to show up after the traffic that causes it.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every 50 ms until it returns `Some`, and panics naming `what` once `timeout` passes.
#[track_caller]
pub fn poll_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match try_poll_until(timeout, f) {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Like [`poll_until`], but returns `None` on timeout so the caller can say what it saw last.
pub fn try_poll_until<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    try_poll_every(POLL_INTERVAL, timeout, f)
}

/// Like [`try_poll_until`], but every `interval`: for checks too costly to repeat every 50 ms,
/// such as scraping and parsing the /metrics of hundreds of pods.
pub fn try_poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(interval);
    }
}

/// How Sonde names drops for `reason` on the running kernel: the reason itself where the
/// kernel has it (kfree_skb passes reasons from Linux 5.17), else `NOT_SPECIFIED`.
pub fn drop_reason(reason: &'static str) -> &'static str {
    let known = ebpf_core::btf::drop_reasons()
        .map(|names| names.values().any(|n| n == reason))
        .unwrap_or(false);
    if known {
        reason
    } else {
        "NOT_SPECIFIED"
    }
}

/// A suffix no other test of this run (nor, very likely, of an earlier crashed run) uses:
/// pid, a per-process counter and a few bits of the clock.
pub fn unique_suffix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{n}{:03x}", std::process::id(), nanos & 0xfff)
}

/// Runs `command` (split on whitespace; no quoting) to completion and returns its stdout;
/// panics with the command, its status and its stderr if it fails.
pub fn run_command(command: &str) -> String {
    let mut words = command.split_whitespace();
    let program = words.next().expect("an empty command");
    let out = Command::new(program)
        .args(words)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    assert!(
        out.status.success(),
        "`{command}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True if every key of `pattern` (a JSON object) is in `event` with an equal value.
pub fn json_contains(event: &Value, pattern: &Value) -> bool {
    let (Some(event), Some(pattern)) = (event.as_object(), pattern.as_object()) else {
        return false;
    };
    pattern.iter().all(|(k, v)| event.get(k) == Some(v))
}

/// A string field of an event.
pub fn field_str<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    event.get(key)?.as_str()
}

/// An unsigned number field of an event.
pub fn field_u64(event: &Value, key: &str) -> Option<u64> {
    event.get(key)?.as_u64()
}

/// An address field of an event, parsed so that comparisons do not depend on how it is spelt.
pub fn field_ip(event: &Value, key: &str) -> Option<IpAddr> {
    field_str(event, key)?.parse().ok()
}

/// True if `s` is an RFC 3339 date-time (`2026-01-02T03:04:05.678Z`, `...+02:00`).
pub fn is_rfc3339(s: &str) -> bool {
    fn digits(s: &[u8]) -> bool {
        !s.is_empty() && s.iter().all(u8::is_ascii_digit)
    }
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let date_time_ok = digits(&b[0..4])
        && b[4] == b'-'
        && digits(&b[5..7])
        && b[7] == b'-'
        && digits(&b[8..10])
        && matches!(b[10], b'T' | b't')
        && digits(&b[11..13])
        && b[13] == b':'
        && digits(&b[14..16])
        && b[16] == b':'
        && digits(&b[17..19]);
    if !date_time_ok {
        return false;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let frac = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return false;
        }
        rest = &rest[1 + frac..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h @ .., b':', m1, m2] => h.len() == 2 && digits(h) && digits(&[*m1, *m2]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert!(is_rfc3339("2026-01-02T03:04:05Z"));
        assert!(is_rfc3339("2026-01-02T03:04:05.123456789Z"));
        assert!(is_rfc3339("2026-01-02T03:04:05+02:00"));
        assert!(!is_rfc3339("2026-01-02 03:04:05"));
        assert!(!is_rfc3339("2026-01-02T03:04:05."));
        assert!(!is_rfc3339("1735787045"));
    }
}
