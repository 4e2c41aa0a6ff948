//! Host side of `sonde:plugin/topology`: the agent's topology, read-only. Capability
//! `topology`.

use super::manifest::Capability;
use super::sonde::plugin::topology::Host;
use super::sonde::plugin::types::Workload;
use super::HostState;
use super::Refusal as Error;

pub fn to_wit(w: crate::topology::Workload) -> Workload {
    Workload {
        namespace: w.namespace.to_string(),
        pod: w.pod.to_string(),
    }
}

impl Host for HostState {
    fn workload_of_netns(&mut self, netns: u32) -> Result<Option<Workload>, Error> {
        self.require(Capability::Topology)?;
        Ok(self
            .host
            .probes
            .topology
            .workload_of_netns(crate::topology::Netns::inode(netns))
            .map(to_wit))
    }

    fn workload_of_ip(&mut self, ip: String) -> Result<Option<Workload>, Error> {
        self.require(Capability::Topology)?;
        let ip = ip
            .parse()
            .map_err(|_| Error::Invalid(format!("{ip:?} is not an IP address")))?;
        Ok(self.host.probes.topology.workload_of_ip(ip).map(to_wit))
    }
}
