//! Read-only snapshots of the probes' in-kernel counters and of the flow table (capability
//! `maps`).

use crate::bindings::sonde::plugin::maps as wit;
use crate::Result;

/// One counter of a probe: its network namespace, workload, key and total.
pub use wit::Counter;

/// Totals since `probe` was loaded: `packet_drop` by reason, `tcp_retrans` (key ""),
/// `tcp_reset` by direction. Empty when the probe is not running.
pub fn counters(probe: &str) -> Result<Vec<Counter>> {
    Ok(wit::counters(probe)?)
}

/// A row of the `flow` probe's table: one direction of one flow, with its pods.
pub use wit::FlowRow;

/// The `flow` probe's table (packets and bytes per 5-tuple through the node's host-side
/// interfaces, with the RTT of TCP flows `tcp_rtt` tracks); empty when `flow` is not running.
pub fn flows() -> Result<Vec<FlowRow>> {
    Ok(wit::flows()?)
}
