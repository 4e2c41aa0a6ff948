//! Host side of `sonde:plugin/control`: a probe's event rate changed for a bounded time.
//! Capability `control`.

use std::time::Duration;

use super::manifest::Capability;
use super::sonde::plugin::control::Host;
use super::HostState;
use super::Refusal as Error;

/// The longest a plugin may hold a probe's rate.
const MAX_DURATION: Duration = Duration::from_secs(600);

impl Host for HostState {
    fn set_event_rate(
        &mut self,
        probe: String,
        rate_per_cpu: u64,
        duration_ms: u64,
    ) -> Result<(), Error> {
        self.require(Capability::Control)?;
        let duration = Duration::from_millis(duration_ms);
        if duration.is_zero() || duration > MAX_DURATION {
            return Err(Error::Invalid(format!(
                "duration must be between 1 ms and {MAX_DURATION:?}"
            )));
        }
        tracing::info!(plugin = %self.plugin.name, probe, rate_per_cpu, duration_ms, "plugin sets a probe's event rate");
        self.host
            .probe_set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .override_event_rate(&probe, rate_per_cpu, duration)
            .map_err(|e| Error::Invalid(e.to_string()))
    }
}
