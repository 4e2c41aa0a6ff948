//! Host side of `sonde:plugin/maps`: read-only snapshots of the probes' in-kernel counters.
//! Capability `maps`.

use super::manifest::Capability;
use super::sonde::plugin::maps::{Counter, Host};
use super::sonde::plugin::types::Error;
use super::topology::to_wit;
use super::HostState;

impl Host for HostState {
    fn counters(&mut self, probe: String) -> Result<Vec<Counter>, Error> {
        self.require(Capability::Maps)?;
        let rows = self
            .host
            .probe_set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot(&probe)
            .map_err(Error::Invalid)?;
        let topology = &self.host.probes.topology;
        Ok(rows
            .into_iter()
            .map(|(netns, key, value)| Counter {
                netns,
                workload: topology.workload_of_netns(netns).map(to_wit),
                key,
                value,
            })
            .collect())
    }
}
