//! Host side of `sonde:plugin/maps`: read-only snapshots of the probes' in-kernel counters
//! and of the flow table. Capability `maps`.

use super::manifest::Capability;
use super::sonde::plugin::maps::{Counter, FlowRow, Host};
use super::sonde::plugin::types::Workload;
use super::topology::to_wit;
use super::HostState;
use super::Refusal as Error;

impl HostState {
    /// Reads the running probes, once the capability is checked.
    fn read_probes<T>(
        &self,
        read: impl FnOnce(&crate::probes::Probes) -> Result<T, crate::probes::ControlError>,
    ) -> Result<T, Error> {
        self.require(Capability::Maps)?;
        read(
            &self
                .host
                .probe_set
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
        .map_err(|e| Error::Invalid(e.to_string()))
    }
}

impl Host for HostState {
    fn counters(&mut self, probe: String) -> Result<Vec<Counter>, Error> {
        let rows = self.read_probes(|p| p.snapshot(&probe))?;
        let topology = &self.host.probes.topology;
        Ok(rows
            .into_iter()
            .map(|(netns, key, value)| Counter {
                netns: netns.inode,
                workload: topology.workload_of_netns(netns).map(to_wit),
                key,
                value,
            })
            .collect())
    }

    fn flows(&mut self) -> Result<Vec<FlowRow>, Error> {
        let rows = self.read_probes(crate::probes::flow::flows)?;
        let workload = |kind: &str, namespace: String, pod: String| {
            (kind == "pod").then_some(Workload { namespace, pod })
        };
        Ok(rows
            .into_iter()
            .map(|f| FlowRow {
                src: workload(f.src_type, f.src_namespace, f.src_pod),
                dst: workload(f.dst_type, f.dst_namespace, f.dst_pod),
                src_type: f.src_type.into(),
                dst_type: f.dst_type.into(),
                protocol: f.protocol,
                saddr: f.saddr.map(super::delivery::ip_address),
                sport: f.sport,
                daddr: f.daddr.map(super::delivery::ip_address),
                dport: f.dport,
                packets: f.packets,
                bytes: f.bytes,
                last_ns: f.last_unix_ns,
                srtt_ns: f.srtt_ns,
            })
            .collect())
    }
}
