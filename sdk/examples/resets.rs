use sonde_plugin::{metrics::Counter, Config, Plugin, TcpReset};

struct Resets {
    total: Counter,
}

impl Plugin for Resets {
    fn init(_config: Config) -> Result<Self, String> {
        let total = Counter::register("sonde_example_resets_total", "TCP resets.", &["direction"])?;
        Ok(Resets { total })
    }
    fn on_tcp_reset(&mut self, batch: &[TcpReset<'_>]) {
        for reset in batch {
            let _ = self
                .total
                .series(&[reset.direction])
                .and_then(|s| s.add(1.0));
        }
    }
}

sonde_plugin::export!(Resets);
