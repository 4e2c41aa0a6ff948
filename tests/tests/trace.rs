//! `sonde trace`: rhai one-liners against live probes. Drops into an iptables rule are counted
//! exactly by pod and reason, histograms bucket known values exactly, `exit()` and Ctrl-C end
//! a trace with its maps printed, and bad scripts (syntax errors, unknown handlers, endless
//! loops) are refused or stopped with a one-line reason and a non-zero exit.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use serde_json::{json, Value};
use sonde_tests::{run_sonde, send_udp, Agent, IpFamily, PodPair, Trace, READY_TIMEOUT};

const PORT: u16 = 9999;
/// How long a finished trace may take beyond its own duration.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Pods A and B with UDP to B's `PORT` dropped by iptables.
fn drop_pods() -> PodPair {
    let pods = PodPair::new();
    pods.b.iptables(
        IpFamily::V4,
        &format!("-A INPUT -p udp --dport {PORT} -j DROP"),
    );
    pods
}

fn send_drops(pods: &PodPair, count: usize) -> u16 {
    let dst = SocketAddr::new(pods.b_end.ip(IpFamily::V4), PORT);
    send_udp(&pods.a, pods.a_end.ip(IpFamily::V4), dst, count)
}

/// The entries of map `name` in a `--output json` document.
fn entries<'a>(doc: &'a Value, name: &str) -> &'a Vec<Value> {
    doc["maps"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no map {name:?} in {doc}"))
}

/// The value of `key` in map `name`.
fn value_of<'a>(doc: &'a Value, name: &str, key: &Value) -> Option<&'a Value> {
    entries(doc, name)
        .iter()
        .find(|e| &e["key"] == key)
        .map(|e| &e["value"])
}

fn parse_json(stdout: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}"))
}

#[test]
fn drops_counted_by_pod_and_reason() {
    let pods = drop_pods();
    let mut trace = Trace::start(&[
        "-e",
        r#"fn on_packet_drop(e) { count("drops", [e.pod, e.reason]); }"#,
        "--duration",
        "5s",
        "--output",
        "json",
    ]);
    trace.wait_attached(READY_TIMEOUT);
    send_drops(&pods, 300);
    let done = trace.finish(FINISH_TIMEOUT);
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    let doc = parse_json(&done.stdout);
    assert_eq!(
        value_of(&doc, "drops", &json!([pods.b.name(), "NETFILTER_DROP"])),
        Some(&json!(300)),
        "{doc}"
    );
    assert!(
        !done.stderr.contains("lost"),
        "events were lost: {}",
        done.stderr
    );
}

#[test]
fn hist_and_lhist_buckets_are_exact() {
    let script = r#"
        fn on_interval() {
            for v in [0, 1, 2, 3, 4, 7, 8, 1000, -5] {
                hist("h", "k", v);
                lhist("l", v, 0, 10, 5);
            }
            exit();
        }"#;
    let done = run_sonde(
        &[
            "trace",
            "-e",
            script,
            "--interval",
            "100ms",
            "--output",
            "json",
        ],
        FINISH_TIMEOUT,
    );
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    let doc = parse_json(&done.stdout);
    let b = |min: Option<i64>, max: Option<i64>, count: u64| json!({"min": min, "max": max, "count": count});
    let mut log2 = vec![
        b(None, Some(0), 1),
        b(Some(0), Some(1), 1),
        b(Some(1), Some(2), 1),
        b(Some(2), Some(4), 2),
        b(Some(4), Some(8), 2),
        b(Some(8), Some(16), 1),
    ];
    for p in 4..9 {
        log2.push(b(Some(1 << p), Some(1 << (p + 1)), 0));
    }
    log2.push(b(Some(512), Some(1024), 1));
    assert_eq!(
        value_of(&doc, "h", &json!(["k"])),
        Some(&json!({"buckets": log2, "count": 9, "sum": 1020})),
        "{doc}"
    );
    assert_eq!(
        value_of(&doc, "l", &json!([])),
        Some(&json!({"buckets": [
            b(None, Some(0), 1),
            b(Some(0), Some(5), 5),
            b(Some(5), Some(10), 2),
            b(Some(10), None, 1),
        ], "count": 9, "sum": 1020})),
        "{doc}"
    );

    // The same maps as text, drawn as bpftrace draws them.
    let done = run_sonde(
        &["trace", "-e", script, "--interval", "100ms"],
        FINISH_TIMEOUT,
    );
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    let bar = |n: usize| format!("|{:<52}|", "@".repeat(n));
    let expected = [
        "@h[k]:".to_string(),
        format!("{:<16}{:>8} {}", "(..., 0)", 1, bar(26)),
        format!("{:<16}{:>8} {}", "[0]", 1, bar(26)),
        format!("{:<16}{:>8} {}", "[1]", 1, bar(26)),
        format!("{:<16}{:>8} {}", "[2, 4)", 2, bar(52)),
        format!("{:<16}{:>8} {}", "[4, 8)", 2, bar(52)),
        format!("{:<16}{:>8} {}", "[8, 16)", 1, bar(26)),
    ];
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(&lines[..expected.len()], &expected[..], "{}", done.stdout);
    assert!(
        done.stdout
            .contains(&format!("{:<16}{:>8} {}\n", "[512, 1K)", 1, bar(26))),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains(&format!("@l:\n{:<16}{:>8} {}\n", "(..., 0)", 1, bar(10))),
        "{}",
        done.stdout
    );
}

#[test]
fn exit_ends_the_trace_early() {
    let pods = drop_pods();
    let script = format!(
        r#"fn on_packet_drop(e) {{ if e.pod == "{}" && count("seen") == 10 {{ exit(); }} }}"#,
        pods.b.name()
    );
    let mut trace = Trace::start(&["-e", &script, "--output", "json"]);
    trace.wait_attached(READY_TIMEOUT);
    send_drops(&pods, 50);
    let done = trace.finish(FINISH_TIMEOUT);
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    let doc = parse_json(&done.stdout);
    assert_eq!(
        value_of(&doc, "seen", &json!([])),
        Some(&json!(10)),
        "{doc}"
    );
}

#[test]
fn interrupt_prints_the_maps() {
    let pods = drop_pods();
    let script = format!(
        r#"fn on_packet_drop(e) {{ if e.pod == "{}" && e.protocol == "udp" {{ count("drops", e.dport); }} }}
           fn on_exit() {{ printf("%s: %d drops\n", "total", lookup("drops", {PORT})); }}"#,
        pods.b.name()
    );
    let mut trace = Trace::start(&["-e", &script]);
    trace.wait_attached(READY_TIMEOUT);
    send_drops(&pods, 25);
    // The last drop is in the maps once a second drop count reaches the script; wait a little
    // for the collector's 25 ms poll.
    std::thread::sleep(Duration::from_millis(500));
    trace.interrupt();
    let done = trace.finish(FINISH_TIMEOUT);
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    assert_eq!(
        done.stdout,
        format!("total: 25 drops\n@drops[{PORT}]: 25\n\n"),
        "stderr: {}",
        done.stderr
    );
}

#[test]
fn stacks_are_collected_when_the_script_reads_them() {
    let pods = drop_pods();
    let script = format!(
        r#"fn on_packet_drop(e) {{ if e.pod == "{}" && e.reason == "NETFILTER_DROP" {{ count("stacks", [e.location, e.stack.len() > 1, type_of(e.stack)]); }} }}"#,
        pods.b.name()
    );
    let mut trace = Trace::start(&["-e", &script, "--duration", "3s", "--output", "json"]);
    trace.wait_attached(READY_TIMEOUT);
    send_drops(&pods, 20);
    let done = trace.finish(FINISH_TIMEOUT);
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    let doc = parse_json(&done.stdout);
    let stacks = entries(&doc, "stacks");
    assert_eq!(stacks.len(), 1, "{doc}");
    assert_eq!(stacks[0]["value"], json!(20), "{doc}");
    assert_eq!(stacks[0]["key"][1], json!(true), "{doc}");
    assert_eq!(stacks[0]["key"][2], json!("array"), "{doc}");
}

#[test]
fn endless_loop_in_a_handler_is_stopped() {
    let pods = drop_pods();
    let script = format!(
        r#"fn on_packet_drop(e) {{ if e.pod == "{}" {{ let n = 0; loop {{ n += 1; }} }} }}"#,
        pods.b.name()
    );
    let mut trace = Trace::start(&["-e", &script]);
    trace.wait_attached(READY_TIMEOUT);
    send_drops(&pods, 1);
    let done = trace.finish(FINISH_TIMEOUT);
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    assert!(
        done.stderr.contains(
            "sonde trace: -e: in on_packet_drop(): stopped: the handler ran more than 1000000 \
             operations, the limit per call (an endless loop?)"
        ),
        "{}",
        done.stderr
    );
}

#[test]
fn syntax_error_names_line_and_column() {
    let done = run_sonde(
        &[
            "trace",
            "-e",
            "fn on_packet_drop(e) {\n    count(\"x\", e.pod);\n    let = 3;\n}",
        ],
        FINISH_TIMEOUT,
    );
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    assert_eq!(
        done.stderr.trim_end(),
        "sonde trace: -e:3:9: Expecting name of a variable"
    );
    assert!(done.stdout.is_empty(), "{}", done.stdout);

    let dir = sonde_tests::TempDir::new();
    let file = dir.write("bad.rhai", "fn on_exit() {\n  print(\"unclosed);\n}\n");
    let path = file.display().to_string();
    let done = run_sonde(&["trace", "-f", &path], FINISH_TIMEOUT);
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    assert!(
        done.stderr
            .starts_with(&format!("sonde trace: {path}:2:9: ")),
        "{}",
        done.stderr
    );
}

#[test]
fn runtime_error_names_line_and_column() {
    let done = run_sonde(
        &[
            "trace",
            "-e",
            "fn on_interval() {\n  count(\"m\", 1);\n  sum(\"m\", 1, 2);\n}",
            "--interval",
            "100ms",
        ],
        FINISH_TIMEOUT,
    );
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    assert!(
        done.stderr.ends_with(
            "sonde trace: -e:3:3: in on_interval(): map @m holds count values; it cannot also take sum()\n"
        ),
        "{}",
        done.stderr
    );
}

#[test]
fn a_handler_for_a_probe_without_events_is_refused_with_the_reason() {
    let done = run_sonde(&["trace", "-e", "fn on_tcp_rtt(e) { }"], FINISH_TIMEOUT);
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    assert_eq!(
        done.stderr.trim_end(),
        "sonde trace: -e: on_tcp_rtt: the tcp_rtt probe has no events (it keeps metrics and a table)"
    );
}

#[test]
fn unknown_handler_is_named() {
    let done = run_sonde(&["trace", "-e", "fn on_foo(e) { }"], FINISH_TIMEOUT);
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    // One line that names the handler and lists every probe's (the catalogue grows).
    let text = done.stderr.trim_end();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.starts_with(
            "sonde trace: -e: unknown handler on_foo: there is no probe named \"foo\"; the \
             handlers are on_packet_drop(e), on_tcp_retrans(e), on_tcp_reset(e), "
        ),
        "{text}"
    );
    assert!(text.ends_with(", on_interval(), on_exit()"), "{text}");
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for (args, reason) in [
        (&["trace"][..], "required arguments were not provided"),
        (&["trace", "-e", "x", "--duration", "5"], "needs a unit"),
        (
            &["trace", "-e", "x", "--output", "yaml"],
            "invalid value 'yaml'",
        ),
        (&["trace", "-e", "x", "-f", "y"], "cannot be used with"),
    ] {
        let done = run_sonde(args, FINISH_TIMEOUT);
        assert_eq!(done.status.code(), Some(2), "{args:?}: {}", done.stderr);
        assert_eq!(done.stderr.lines().count(), 1, "{args:?}: {}", done.stderr);
        assert!(done.stderr.contains(reason), "{args:?}: {}", done.stderr);
    }
}

#[test]
fn through_a_running_agent() {
    let pods = drop_pods();
    // Events to the sinks limited to one per second per CPU: a stream asked to be unlimited
    // lifts that, so the script still sees every drop. tcp_reset is off.
    let agent = Agent::spawn_yaml(
        "probes:\n  packet_drop: { events: { ratePerCpu: 1, burst: 1 } }\n  \
         tcp_reset: { enabled: false }\nsinks:\n  stdout: { enabled: false }\n",
    );
    agent.wait_ready(READY_TIMEOUT);
    let url = format!("http://{}", agent.addr());
    let mut trace = Trace::start(&[
        "--agent",
        &url,
        "--unlimited",
        "1m",
        "-e",
        r#"fn on_packet_drop(e) { count("drops", [e.pod, e.reason]); }"#,
        "--duration",
        "4s",
        "--output",
        "json",
    ]);
    trace.wait_attached(READY_TIMEOUT);
    send_drops(&pods, 300);
    let done = trace.finish(FINISH_TIMEOUT);
    assert!(done.status.success(), "trace failed: {}", done.stderr);
    assert!(
        done.stderr.contains(&format!(
            "attached packet_drop (through the agent at {url})"
        )),
        "{}",
        done.stderr
    );
    let doc = parse_json(&done.stdout);
    assert_eq!(
        value_of(&doc, "drops", &json!([pods.b.name(), "NETFILTER_DROP"])),
        Some(&json!(300)),
        "{doc}"
    );

    let done = run_sonde(
        &["trace", "--agent", &url, "-e", "fn on_tcp_reset(e) { }"],
        FINISH_TIMEOUT,
    );
    assert_eq!(done.status.code(), Some(1), "stderr: {}", done.stderr);
    assert_eq!(
        done.stderr.trim_end(),
        format!(
            "sonde trace: the agent at {url} refused the event stream (HTTP/1.0 409 Conflict): \
             probe tcp_reset is not running"
        )
    );
}

#[test]
fn without_privileges_one_line_says_why() {
    // A copy that user `nobody` may execute, wherever the checkout lives.
    let dir = sonde_tests::TempDir::new();
    let bin = dir.path().join("sonde");
    std::fs::copy(sonde_tests::sonde_bin(), &bin).expect("copy the agent binary");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .args(["trace", "-e", "fn on_packet_drop(e) { count(\"x\"); }"])
        .args(["--duration", "1s"])
        .env_remove("SONDE_LOG")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run sonde trace as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sonde trace: cannot attach packet_drop: "),
        "{stderr}"
    );
}
