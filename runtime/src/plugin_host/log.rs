//! Host side of `sonde:plugin/log`: plugin messages into the agent's log, tagged with the
//! plugin, at most `LINES_PER_SECOND` a second (the rest are counted and reported once).

use std::time::Instant;

use super::sonde::plugin::log::{Host, Level};
use super::HostState;

const LINES_PER_SECOND: u32 = 50;
/// Longest message kept; the rest is cut.
const MAX_MESSAGE: usize = 4096;

pub struct LogBudget {
    window: Instant,
    lines: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }
}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let plugin = self.plugin.name.as_str();
        let b = &mut self.log;
        if b.window.elapsed().as_secs() >= 1 {
            if b.suppressed > 0 {
                tracing::warn!(
                    plugin,
                    suppressed = b.suppressed,
                    "plugin log lines suppressed (over {LINES_PER_SECOND}/s)"
                );
            }
            *b = LogBudget::default();
        }
        if b.lines >= LINES_PER_SECOND {
            b.suppressed += 1;
            return Ok(());
        }
        b.lines += 1;
        let mut message = message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}
