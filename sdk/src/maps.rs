//! Read-only snapshots of the probes' in-kernel counters (capability `maps`).

use crate::bindings::sonde::plugin::maps as wit;
use crate::Result;

/// One counter of a probe: its network namespace, workload, key and total.
pub use wit::Counter;

/// Totals since `probe` was loaded: `packet_drop` by reason, `tcp_retrans` (key ""),
/// `tcp_reset` by direction. Empty when the probe is not running.
pub fn counters(probe: &str) -> Result<Vec<Counter>> {
    Ok(wit::counters(probe)?)
}
