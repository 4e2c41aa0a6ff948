//! The smallest useful `sonde:plugin@0.2` plugin in Rust, with plain wit-bindgen and no SDK:
//! it counts packet drops per pod and reason into `sonde_example_drops_total`. Its world
//! (`wit/world.wit`) exports only `packet-drop-handler`, which the host checks against the
//! manifest's `subscribe: [packet_drop]`. This file is shown whole in wit/README.md.

// `generate_all`: the host's interfaces come from another package (wit/deps/).
wit_bindgen::generate!({ world: "only-drops", path: "wit", generate_all });

use exports::sonde::plugin::packet_drop_handler::Guest;
use sonde::plugin::{metrics, types::PacketDropBatch};

thread_local! {
    static COUNTER: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

struct OnlyDrops;

impl Guest for OnlyDrops {
    fn handle(batch: PacketDropBatch) {
        let counter = COUNTER.get().or_else(|| {
            let c = metrics::register_counter(
                "sonde_example_drops_total",
                "Drops by pod and reason.",
                &["pod".to_string(), "reason".to_string()],
            )
            .ok();
            COUNTER.set(c);
            c
        });
        let Some(counter) = counter else { return };
        let text = |t: u32| batch.symbols.strings[t as usize].clone();
        for e in &batch.events {
            let pod = e.envelope.workload.map_or(String::new(), |w| text(w.pod));
            if let Ok(series) = metrics::with_labels(counter, &[pod, text(e.reason)]) {
                let _ = metrics::add(series, 1.0);
            }
        }
    }
}

export!(OnlyDrops);
