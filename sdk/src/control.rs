//! Probe control for a bounded time (capability `control`).

use std::time::Duration;

use crate::bindings::sonde::plugin::control as wit;
use crate::Result;

/// Sets the event rate limit of `probe` (events per second per CPU; 0 = unlimited) for
/// `duration` (at most 10 minutes, whole milliseconds), after which the configured rate comes
/// back.
pub fn set_event_rate(probe: &str, rate_per_cpu: u64, duration: Duration) -> Result<()> {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    Ok(wit::set_event_rate(probe, rate_per_cpu, ms)?)
}
