//! A component built against `sonde:plugin@0.1.0` (frozen in `wit/deps/sonde-plugin-0.1.0/`),
//! as plugins built before 0.2 were: every handler exported, `init` taking the config. It
//! counts the packet drops it is handed per pod and reason into `sonde_test_v01_drops_total`,
//! and the resets per direction into `sonde_test_v01_resets_total`, so a test can check the
//! host still delivers to it exactly.

// The generated host functions take many arguments (the metric's register functions).
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "sonde:plugin/plugin@0.1.0",
    path: "../../../wit/deps/sonde-plugin-0.1.0",
});

use std::cell::RefCell;

use sonde::plugin::metrics;
use sonde::plugin::types::*;

thread_local! {
    /// The two counters, once `init` registered them.
    static COUNTERS: RefCell<Option<(u32, u32)>> = const { RefCell::new(None) };
}

fn text(symbols: &Symbols, t: u32) -> &str {
    symbols.strings.get(t as usize).map_or("", |s| s.as_str())
}

fn add(metric: u32, labels: &[&str]) {
    let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    if let Ok(series) = metrics::with_labels(metric, &labels) {
        let _ = metrics::add(series, 1.0);
    }
}

struct V01;

impl Guest for V01 {
    fn init(_config: String) -> Result<(), String> {
        let drops = metrics::register_counter(
            "sonde_test_v01_drops_total",
            "Drops a 0.1.0 plugin was handed.",
            &["pod".to_string(), "reason".to_string()],
        )
        .map_err(|e| format!("{e:?}"))?;
        let resets = metrics::register_counter(
            "sonde_test_v01_resets_total",
            "Resets a 0.1.0 plugin was handed.",
            &["direction".to_string()],
        )
        .map_err(|e| format!("{e:?}"))?;
        COUNTERS.with(|c| *c.borrow_mut() = Some((drops, resets)));
        Ok(())
    }

    fn on_packet_drop(batch: PacketDropBatch) {
        let Some((drops, _)) = COUNTERS.with(|c| *c.borrow()) else {
            return;
        };
        for e in &batch.events {
            let pod = e
                .envelope
                .workload
                .map_or("", |w| text(&batch.symbols, w.pod));
            add(drops, &[pod, text(&batch.symbols, e.reason)]);
        }
    }

    fn on_tcp_reset(batch: TcpResetBatch) {
        let Some((_, resets)) = COUNTERS.with(|c| *c.borrow()) else {
            return;
        };
        for e in &batch.events {
            add(resets, &[text(&batch.symbols, e.direction)]);
        }
    }

    fn on_tcp_retrans(_batch: TcpRetransBatch) {}
    fn on_tcp_connect(_batch: TcpConnectBatch) {}
    fn on_softirq(_batch: SoftirqBatch) {}
    fn on_netdev_latency(_batch: NetdevLatencyBatch) {}
    fn on_io_latency(_batch: IoLatencyBatch) {}
    fn on_dns(_batch: DnsBatch) {}
    fn on_packed(_batch: PackedBatch) {}
    fn tick(_now_ns: u64) {}
    fn workload_labels(_workload: Workload) -> Vec<(String, String)> {
        Vec::new()
    }
}

export!(V01);
