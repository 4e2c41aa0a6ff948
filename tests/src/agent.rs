//! The agent under test as a child process (its config in a temp dir, its stdout events and
//! stderr logs captured, its HTTP endpoints read), and one-shot `sonde` commands.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use crate::{http_get, json_contains, metric_value, try_poll_until};

/// How much of the agent's stderr a failing test prints.
const STDERR_TAIL_LINES: usize = 200;

/// A directory `$TMPDIR/sonde-test-<pid>-<n>/`, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sonde-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to file `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The agent binary: `$SONDE_BIN`, else `sonde` next to the test executable's `deps/` folder
/// (`target/<profile>/sonde`).
pub fn sonde_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SONDE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("cannot find the test executable");
    let profile_dir = exe.parent().and_then(Path::parent).unwrap_or_else(|| {
        panic!(
            "test executable {} is not in target/<profile>/deps/",
            exe.display()
        )
    });
    let bin = profile_dir.join("sonde");
    assert!(
        bin.exists(),
        "{} does not exist: build the agent first (`cargo build --release -p sonde`) \
         or set SONDE_BIN",
        bin.display()
    );
    bin
}

/// The probe switches a test starts the agent with. Events are never rate-limited
/// (`ratePerCpu: 0`) so that tests can look for specific ones.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub packet_drop: bool,
    pub tcp_retrans: bool,
    pub tcp_reset: bool,
    pub tcp_connect: bool,
    /// `probes.tcp_connect.slowThreshold`.
    pub tcp_connect_slow_threshold: String,
    /// tcp_rtt (off by default, as in the agent), sampling every 100 ms when on.
    pub tcp_rtt: bool,
    /// socket_latency (off by default, as in the agent), timing every packet when on.
    pub socket_latency: bool,
    /// softirq: on here (the agent has it off by default), so that traffic fills its
    /// histograms.
    pub softirq: bool,
    /// io_latency (on by default, as in the agent).
    pub io_latency: bool,
    /// `metrics.podHistogramBuckets`: `coarse` (as in the agent) or `fine`, for tests that
    /// check a pod's latencies against a log2 bound.
    pub pod_histogram_buckets: &'static str,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node: "sonde-test-node".into(),
            packet_drop: true,
            tcp_retrans: true,
            tcp_reset: true,
            tcp_connect: true,
            tcp_connect_slow_threshold: "200ms".into(),
            tcp_rtt: false,
            socket_latency: false,
            softirq: true,
            io_latency: true,
            pod_histogram_buckets: "coarse",
        }
    }
}

impl AgentConfig {
    pub fn to_yaml(&self) -> String {
        let probe = |name: &str, enabled: bool| {
            format!(
                "  {name}:\n    enabled: {enabled}\n    \
                 events: {{ enabled: true, ratePerCpu: 0, burst: 1000 }}\n"
            )
        };
        format!(
            "node: {}\nprobes:\n{}{}{}{}    slowThreshold: {}\n\
             \x20 tcp_rtt:\n    enabled: {}\n    sampleInterval: 100ms\n\
             \x20 socket_latency:\n    enabled: {}\n    samplePackets: 1\n\
             \x20 softirq:\n    enabled: {}\n\
             \x20 io_latency:\n    enabled: {}\n\
             sinks:\n  stdout: {{ enabled: true }}\n\
             topology:\n  netnsDir: /run/netns\n\
             metrics:\n  podHistogramBuckets: {}\n",
            self.node,
            probe("packet_drop", self.packet_drop),
            probe("tcp_retrans", self.tcp_retrans),
            probe("tcp_reset", self.tcp_reset),
            probe("tcp_connect", self.tcp_connect),
            self.tcp_connect_slow_threshold,
            self.tcp_rtt,
            self.socket_latency,
            self.softirq,
            self.io_latency,
            self.pod_histogram_buckets,
        )
    }
}

/// A config with every probe that is on by default turned off, then `probes` (YAML lines
/// indented under `probes:`, such as `"  flow:\n    enabled: true\n"`) and `rest` (top-level
/// YAML); events go to stdout.
pub fn only_probes_yaml(probes: &str, rest: &str) -> String {
    format!(
        "node: sonde-test-node\nprobes:\n\
         \x20 packet_drop: {{enabled: false}}\n\
         \x20 tcp_retrans: {{enabled: false}}\n\
         \x20 tcp_reset: {{enabled: false}}\n\
         \x20 tcp_connect: {{enabled: false}}\n\
         \x20 softirq: {{enabled: false}}\n\
         \x20 io_latency: {{enabled: false}}\n\
         \x20 netstat: {{enabled: false}}\n\
         {probes}sinks:\n  stdout: {{enabled: true}}\n{rest}"
    )
}

/// `sonde run --config FILE --listen 127.0.0.1:PORT` as a child process, stopped when dropped.
/// Stdout (events, one JSON object per line) and stderr (logs) are collected by reader threads;
/// if the test is panicking, the tail of stderr is printed on drop.
pub struct Agent {
    child: Mutex<Child>,
    addr: SocketAddr,
    config_path: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    _dir: TempDir,
}

impl Agent {
    pub fn spawn(config: &AgentConfig) -> Agent {
        Agent::spawn_yaml(&config.to_yaml())
    }

    /// Starts the agent with `yaml` as its config file.
    pub fn spawn_yaml(yaml: &str) -> Agent {
        let dir = TempDir::new();
        let config_path = dir.write("sonde.yaml", yaml);
        let addr = free_local_addr();
        let child = start_agent(&config_path, addr);
        Agent::watch(child, addr, config_path, dir)
    }

    /// Starts the agent from a whole command line (`argv[0]` the agent, or a wrapper such as
    /// `setpriv` in front of it) that reads `config_path` and serves HTTP on `addr`.
    pub fn spawn_argv(argv: &[String], addr: SocketAddr, config_path: PathBuf) -> Agent {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", argv.join(" ")));
        Agent::watch(child, addr, config_path, TempDir::new())
    }

    fn watch(mut child: Child, addr: SocketAddr, config_path: PathBuf, dir: TempDir) -> Agent {
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect_lines("agent stdout", child.stdout.take().unwrap(), stdout.clone()),
            collect_lines("agent stderr", child.stderr.take().unwrap(), stderr.clone()),
        ];
        Agent {
            child: Mutex::new(child),
            addr,
            config_path,
            stdout,
            stderr,
            readers,
            _dir: dir,
        }
    }

    /// The address the agent serves HTTP on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Overwrites the config file in place (one write) for the agent to reload.
    pub fn rewrite_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml)
            .unwrap_or_else(|e| panic!("cannot rewrite {}: {e}", self.config_path.display()));
    }

    /// Polls `GET /readyz` until it answers 200; on timeout, panics with the last answer.
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) {
        let mut last = None;
        let ready = try_poll_until(timeout, || {
            self.assert_running();
            let answer = http_get(self.addr, "/readyz");
            let ok = matches!(answer, Ok((200, _)));
            last = Some(answer);
            ok.then_some(())
        });
        if ready.is_none() {
            panic!(
                "timed out after {timeout:?} waiting for /readyz to answer 200; \
                 last answer {last:?}"
            );
        }
    }

    /// `GET path`; panics if the agent cannot be reached (saying so if it has exited).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).unwrap_or_else(|e| {
            self.assert_running();
            panic!("GET http://{}{path} failed: {e}", self.addr)
        })
    }

    /// The `/metrics` exposition.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }

    /// The current value of a metric; see [`metric_value`] for how labels match.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// Polls until the metric is at least `target` and returns the value seen; on timeout,
    /// panics with the last value.
    #[track_caller]
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        target: f64,
        timeout: Duration,
    ) -> f64 {
        let mut last = None;
        let reached = try_poll_until(timeout, || {
            last = self.metric(name, labels);
            last.filter(|v| *v >= target)
        });
        match reached {
            Some(value) => value,
            None => panic!(
                "timed out after {timeout:?} waiting for {name}{labels:?} to reach {target}; \
                 last value {last:?}"
            ),
        }
    }

    /// Polls until the metric equals `target` exactly (for gauges such as `sonde_probe_up`).
    #[track_caller]
    pub fn wait_metric_eq(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        target: f64,
        timeout: Duration,
    ) {
        let mut last = None;
        let reached = try_poll_until(timeout, || {
            last = self.metric(name, labels);
            (last == Some(target)).then_some(())
        });
        if reached.is_none() {
            panic!(
                "timed out after {timeout:?} waiting for {name}{labels:?} to be {target}; \
                 last value {last:?}"
            );
        }
    }

    /// Stdout so far, one entry per line.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Stderr (the agent's logs) so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Every event printed so far; panics naming the first line that is not JSON.
    /// Polls until pod `pod`'s `drops` packet drops (of `reason`, when given) are each either
    /// an event in the sinks or counted in its `sonde_events_suppressed_total` series, and at
    /// least one reached the sinks (its namespace's bucket starts full); returns (emitted,
    /// suppressed). Events reach the sinks a little after the suppressed counts reach the
    /// metrics, hence both in the condition.
    #[track_caller]
    pub fn wait_drops_emitted_or_suppressed(
        &self,
        pod: &str,
        reason: Option<&str>,
        drops: f64,
    ) -> (f64, f64) {
        let suppressed = [("probe", "packet_drop"), ("pod", pod)];
        let last = std::cell::Cell::new((0.0, 0.0));
        let found = crate::try_poll_until(crate::SETTLE_TIMEOUT, || {
            let emitted = self
                .events()
                .iter()
                .filter(|e| {
                    crate::field_str(e, "type") == Some("packet_drop")
                        && crate::field_str(e, "pod") == Some(pod)
                        && reason.is_none_or(|r| crate::field_str(e, "reason") == Some(r))
                })
                .count() as f64;
            let s = self
                .metric("sonde_events_suppressed_total", &suppressed)
                .unwrap_or(0.0);
            last.set((emitted, s));
            (emitted >= 1.0 && emitted + s >= drops).then_some((emitted, s))
        });
        found.unwrap_or_else(|| {
            let (emitted, s) = last.get();
            panic!(
                "timed out after {:?} waiting for the {drops} drops of pod {pod} to be emitted or \
                 suppressed: {emitted} emitted, {s} suppressed",
                crate::SETTLE_TIMEOUT
            )
        })
    }

    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("agent stdout line {} is not JSON ({e}): {line}", i + 1)
                })
            })
            .collect()
    }

    /// Polls until an event contains every field of `related` (a JSON object) and passes `check`.
    /// On timeout, panics with `what` and the events that matched `related` only.
    #[track_caller]
    pub fn wait_for_event(
        &self,
        timeout: Duration,
        what: &str,
        related: &Value,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = try_poll_until(timeout, || {
            self.assert_running();
            self.events()
                .into_iter()
                .find(|e| json_contains(e, related) && check(e))
        });
        if let Some(event) = found {
            return event;
        }
        let events = self.events();
        let near: Vec<String> = events
            .iter()
            .filter(|e| json_contains(e, related))
            .take(10)
            .map(Value::to_string)
            .collect();
        panic!(
            "timed out after {timeout:?} waiting for {what}; events matching {related} \
             (first 10):\n{}",
            if near.is_empty() {
                "(none)".to_string()
            } else {
                near.join("\n")
            }
        )
    }

    /// Panics, with the agent's stderr, if it has exited.
    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Sends a signal to the agent; after SIGSTOP, returns once the process is stopped, so
    /// that nothing the test does next is seen by a still-running agent.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        // SAFETY: plain syscall on our own child's pid.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            panic!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        if signal == libc::SIGSTOP {
            crate::poll_until(Duration::from_secs(10), "the agent to stop", || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // Field 3, after the parenthesised command name.
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                (state == "T").then_some(())
            });
        }
    }

    fn assert_running(&self) {
        let status = self
            .child
            .lock()
            .unwrap()
            .try_wait()
            .expect("cannot poll the agent process");
        if let Some(status) = status {
            panic!("the agent exited ({status}); its stderr is printed below");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stop(child, Duration::from_secs(5));
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if thread::panicking() {
            let lines = self
                .stderr
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
            eprintln!(
                "--- agent stderr (last {} of {} lines) ---",
                tail.len(),
                lines.len()
            );
            for line in tail {
                eprintln!("{line}");
            }
            eprintln!("--- end of agent stderr ---");
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: signalling our own child, whose pid is not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if try_poll_until(grace, || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts `sonde run --config CONFIG --listen ADDR` with stdout and stderr piped.
pub fn start_agent(config: &Path, addr: SocketAddr) -> Child {
    let bin = sonde_bin();
    Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// A 127.0.0.1 address whose port was free a moment ago.
pub fn free_local_addr() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("cannot read the bound address")
}

fn collect_lines(
    name: &str,
    stream: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                into.lock()
                    .unwrap()
                    .push(text.trim_end_matches(['\n', '\r']).to_string());
                line.clear();
            }
        })
        .unwrap_or_else(|e| panic!("cannot spawn the {name} reader: {e}"))
}

/// What a finished `sonde` command printed and how it exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sonde ARGS...` to completion; kills it and panics if it is still running after `timeout`.
pub fn run_sonde(args: &[&str], timeout: Duration) -> Finished {
    run_sonde_env(args, &[], timeout)
}

/// [`run_sonde`] with environment variables set for it.
pub fn run_sonde_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Finished {
    let bin = sonde_bin();
    let line = format!("{} {}", bin.display(), args.join(" "));
    let mut child = Command::new(&bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    let read_all = |mut stream: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let status = try_poll_until(timeout, || {
        child.try_wait().expect("cannot poll the sonde process")
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`{line}` was still running after {timeout:?}; its stderr:\n{}",
            stderr.join().unwrap_or_default()
        );
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Why probe `name` cannot load on this kernel, as `sonde probes` says; `None` when it can.
/// Tests of probes that need what some kernels lack (kprobes, BPF trampolines) skip with it,
/// and the kernel matrix runs them on the kernels that have it.
pub fn probe_unavailable(name: &str) -> Option<String> {
    let out = run_sonde(&["probes", "--output", "json"], Duration::from_secs(120));
    assert!(out.status.success(), "sonde probes: {}", out.stderr);
    let probes: Value = serde_json::from_str(&out.stdout).expect("sonde probes JSON");
    let row = probes
        .as_array()
        .and_then(|rows| rows.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{name} is not listed by sonde probes: {probes}"));
    (row["loadable"] != true).then(|| row["reason"].as_str().unwrap_or("").to_string())
}
