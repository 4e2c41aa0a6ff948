//! Pods attached to the node the way a CNI attaches them: each pod namespace has a veth whose
//! other end is in the host namespace, enslaved to a Linux bridge there. Packets between two
//! pods cross two host-side interfaces (in through the sender's, out through the receiver's),
//! which is what the `flow` probe watches.
//!
//! Every name is unique per test and process: host-side veths are `<prefix>v<i>` (the prefix
//! is `sf<pid><n>` in hex, so an agent told to watch `<prefix>v*` sees only these), the bridge
//! `<prefix>b`. Addresses come from 100.64.0.0/10 and fd00:5e::/32, used by no other helper,
//! so the agent's address-to-pod map is never ambiguous. With br_netfilter loaded, bridged
//! packets traverse iptables' FORWARD chain (whose policy Docker may set to DROP): an ACCEPT
//! rule for the bridge is added, as is one that drops the bridge's own IGMP reports, and
//! everything is removed when dropped, even on a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{run_command, IpFamily, Netns};

/// One pod: its namespace, its host-side interface and addresses.
pub struct NodePod {
    pub netns: Netns,
    /// The veth end in the host namespace.
    pub host_if: String,
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl NodePod {
    pub fn ip(&self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::V4 => self.ipv4.into(),
            IpFamily::V6 => self.ipv6.into(),
        }
    }

    pub fn name(&self) -> &str {
        self.netns.name()
    }
}

/// A bridge in the host namespace and pods attached to it.
pub struct NodePods {
    prefix: String,
    bridge: String,
    subnet: u32,
    next_host: u8,
    pub pods: Vec<NodePod>,
    rules: Vec<(&'static str, String)>,
}

impl NodePods {
    /// A bridge and `n` pods on it.
    pub fn new(n: usize) -> NodePods {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("sf{pid:x}{k:x}");
        let subnet = (pid.wrapping_mul(31).wrapping_add(k)) % 16384;
        let bridge = format!("{prefix}b");
        let mut node = NodePods {
            prefix,
            bridge: bridge.clone(),
            subnet,
            next_host: 1,
            pods: Vec::new(),
            rules: Vec::new(),
        };
        run_command(&format!("ip link add {bridge} type bridge"));
        disable_ipv6(&bridge);
        // The bridge sends IGMP reports of its own (from 0.0.0.0, when it comes up and when a
        // host daemon such as an mDNS or LLMNR responder joins a group on every new interface),
        // flooded to every pod's veth: a pair of external addresses in the flow counts.
        // Turning multicast off on the bridge does not stop them; dropping them does.
        let mut rules = vec![("iptables", format!("OUTPUT -o {bridge} -p igmp -j DROP"))];
        for program in ["iptables", "ip6tables"] {
            rules.push((
                program,
                format!("FORWARD -i {bridge} -o {bridge} -j ACCEPT"),
            ));
        }
        for (program, rule) in rules {
            run_command(&format!("{program} -w -I {rule}"));
            node.rules.push((program, rule));
        }
        run_command(&format!("ip link set {bridge} up"));
        for _ in 0..n {
            node.add_pod();
        }
        node
    }

    /// The pattern that matches this node's host-side veths and nothing else.
    pub fn interface_pattern(&self) -> String {
        format!("{}v*", self.prefix)
    }

    /// A host-side interface name of this node's that its pattern does not match (`<prefix>`
    /// then `role`), for other links a test makes.
    pub fn other_interface(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// Adds a pod (namespace, veth into the bridge, addresses, permanent neighbour entries
    /// both ways so no ARP or NDP disturbs counts) and returns its index.
    pub fn add_pod(&mut self) -> usize {
        let host = self.next_host;
        self.next_host += 1;
        self.add_pod_at(host)
    }

    /// Adds a pod with host number `host` (its addresses and MAC), as [`NodePods::add_pod`]
    /// does: a pod that takes the addresses of one deleted before it, as a CNI's address
    /// pool hands them out again. No pod of the node may have `host` now.
    pub fn add_pod_at(&mut self, host: u8) -> usize {
        self.add_pod_indexed(host, None)
    }

    /// Adds a pod as [`NodePods::add_pod`] does, its host-side veth at interface index
    /// `ifindex` (as on a node that has made that many interfaces since it booted).
    pub fn add_pod_with_ifindex(&mut self, ifindex: u32) -> usize {
        let host = self.next_host;
        self.next_host += 1;
        self.add_pod_indexed(host, Some(ifindex))
    }

    fn add_pod_indexed(&mut self, host: u8, ifindex: Option<u32>) -> usize {
        let i = self.pods.len();
        let netns = Netns::new(&format!("p{host}"));
        let host_if = format!("{}v{host}", self.prefix);
        assert!(
            self.pods.iter().all(|p| p.host_if != host_if),
            "host {host} is taken"
        );
        let (hi, lo) = (self.subnet >> 8, self.subnet & 0xff);
        let mac = format!("02:5e:00:{hi:02x}:{lo:02x}:{host:02x}");
        let pod = NodePod {
            host_if: host_if.clone(),
            mac: mac.clone(),
            ipv4: Ipv4Addr::new(100, 64 + hi as u8, lo as u8, host),
            ipv6: Ipv6Addr::new(0xfd00, 0x5e, 0, self.subnet as u16, 0, 0, 0, host.into()),
            netns,
        };
        let index = ifindex.map(|i| format!(" index {i}")).unwrap_or_default();
        run_command(&format!(
            "ip link add {host_if}{index} type veth peer name eth0 netns {} address {mac}",
            pod.name()
        ));
        disable_ipv6(&host_if);
        run_command(&format!("ip link set {host_if} master {}", self.bridge));
        run_command(&format!("ip link set {host_if} up"));
        pod.netns.ip(&format!("addr add {}/24 dev eth0", pod.ipv4));
        pod.netns
            .ip(&format!("addr add {}/64 dev eth0 nodad", pod.ipv6));
        pod.netns.ip("link set eth0 up");
        for other in &self.pods {
            neighbour(&pod, other);
            neighbour(other, &pod);
        }
        self.pods.push(pod);
        i
    }

    /// Deletes pod `i`'s namespace (and with it both ends of its veth).
    pub fn remove_pod(&mut self, i: usize) -> String {
        let pod = self.pods.remove(i);
        let name = pod.host_if.clone();
        drop(pod);
        name
    }
}

/// Tells `pod` the MAC of each address of `peer`, permanently.
fn neighbour(pod: &NodePod, peer: &NodePod) {
    for ip in [peer.ipv4.to_string(), peer.ipv6.to_string()] {
        pod.netns.ip(&format!(
            "neigh replace {ip} lladdr {} dev eth0 nud permanent",
            peer.mac
        ));
    }
}

/// No IPv6 on a host-side interface: it would send its own router solicitations and MLD.
fn disable_ipv6(ifname: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    std::fs::write(&path, "1").unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
}

impl Drop for NodePods {
    fn drop(&mut self) {
        self.pods.clear();
        let quiet = |program: &str, args: &[&str]| match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "`{program} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cannot run {program}: {e}"),
        };
        for (program, rule) in &self.rules {
            let mut args = vec!["-w", "-D"];
            args.extend(rule.split_whitespace());
            quiet(program, &args);
        }
        quiet("ip", &["link", "del", &self.bridge]);
    }
}
