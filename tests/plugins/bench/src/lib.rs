//! The plugin `plugin-bench` (`tests/src/bin/plugin-bench.rs`) measures. `config.mode`:
//!
//! - `idle`: the `packet_drop` handler does nothing, so what is measured is delivery alone;
//! - `count`: drops per (pod, reason) into `sonde_bench_drops_total`, each label set resolved
//!   to a series handle once and kept, then one `add` host call per event: the same work as
//!   the bench's native analysis;
//! - `count-batch`: the same counts summed per (pod, reason) over the batch first (in a map
//!   keyed by the batch's borrowed strings, with a multiplicative hash), then one `add` per
//!   distinct label set in the batch.
//!
//! Every mode sets `sonde_bench_linear_memory_bytes` to the size of its linear memory, at
//! `init` and on every tick, so the bench can report it. `config.metricPrefix` (default
//! `sonde_bench`) replaces `sonde_bench` in both names, so that copies of the plugin can run
//! side by side (a metric name belongs to one plugin).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Deserialize;
use sonde_plugin::metrics::{Counter, Gauge, Series};
use sonde_plugin::{Config, PacketDrop, Plugin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    mode: String,
    #[serde(default = "default_prefix")]
    metric_prefix: String,
}

fn default_prefix() -> String {
    "sonde_bench".into()
}

#[derive(PartialEq)]
enum Mode {
    Idle,
    Count,
    CountBatch,
}

struct Bench {
    mode: Mode,
    drops: Counter,
    /// Series handle by pod, then reason (two levels, so that a lookup borrows).
    series: HashMap<String, HashMap<String, Option<Series<Counter>>>>,
    memory: Option<Series<Gauge>>,
}

/// A multiplicative hash of the bytes, word at a time (FxHash's recipe): the keys are short
/// strings of one batch, hashed once per event.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        for b in chunks.remainder() {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

/// Bytes of linear memory the instance has grown to.
fn linear_memory() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) * 65536) as f64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0.0
    }
}

impl Bench {
    fn series(&mut self, pod: &str, reason: &str) -> Option<Series<Counter>> {
        // Keys are allocated only for a label set not seen before.
        if let Some(s) = self.series.get(pod).and_then(|r| r.get(reason)) {
            return *s;
        }
        let s = self.drops.series(&[pod, reason]).ok();
        self.series
            .entry(pod.to_string())
            .or_default()
            .insert(reason.to_string(), s);
        s
    }

    fn report_memory(&self) {
        if let Some(m) = &self.memory {
            let _ = m.set(linear_memory());
        }
    }
}

fn pod<'a>(e: &PacketDrop<'a>) -> &'a str {
    e.envelope.workload.map_or("", |w| w.pod)
}

impl Plugin for Bench {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let mode = match settings.mode.as_str() {
            "idle" => Mode::Idle,
            "count" => Mode::Count,
            "count-batch" => Mode::CountBatch,
            other => return Err(format!("config.mode: unknown mode {other:?}")),
        };
        let drops = Counter::register(
            &format!("{}_drops_total", settings.metric_prefix),
            "Packet drops the bench plugin was handed, by pod and reason.",
            &["pod", "reason"],
        )
        .map_err(|e| e.to_string())?;
        let memory = Gauge::register(
            &format!("{}_linear_memory_bytes", settings.metric_prefix),
            "Linear memory of the bench plugin's instance.",
            &[],
        )
        .and_then(|g| g.series(&[]))
        .ok();
        let bench = Bench {
            mode,
            drops,
            series: HashMap::new(),
            memory,
        };
        bench.report_memory();
        Ok(bench)
    }

    fn on_packet_drop(&mut self, batch: &[PacketDrop<'_>]) {
        match self.mode {
            Mode::Idle => {}
            Mode::Count => {
                for e in batch {
                    if let Some(s) = self.series(pod(e), e.reason) {
                        let _ = s.inc();
                    }
                }
            }
            Mode::CountBatch => {
                let mut sums: HashMap<(&str, &str), u64, BuildHasherDefault<FastHasher>> =
                    HashMap::default();
                for e in batch {
                    *sums.entry((pod(e), e.reason)).or_default() += 1;
                }
                for ((pod, reason), n) in sums {
                    if let Some(s) = self.series(pod, reason) {
                        let _ = s.add(n as f64);
                    }
                }
            }
        }
    }

    fn tick(&mut self, _now_ns: u64) {
        self.report_memory();
    }
}

sonde_plugin::export!(Bench);
