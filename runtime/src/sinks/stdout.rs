//! The stdout sink: one JSON event per line.

use serde::Deserialize;

/// `sinks.stdout` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { enabled: true }
    }
}
