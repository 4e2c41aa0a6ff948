//! Who a network namespace or an address belongs to (capability `topology`). Events already
//! carry their workload and their peer's; these lookups are for anything else.

use crate::bindings::sonde::plugin::topology as wit;
use crate::{Result, Workload};

/// The workload of a network namespace (by inode); `None` for the host or an unknown one.
pub fn workload_of_netns(netns: u32) -> Result<Option<Workload>> {
    Ok(wit::workload_of_netns(netns)?)
}

/// The workload that owns `ip` (IPv4 or IPv6, as text); `None` when unknown.
pub fn workload_of_ip(ip: &str) -> Result<Option<Workload>> {
    Ok(wit::workload_of_ip(ip)?)
}
