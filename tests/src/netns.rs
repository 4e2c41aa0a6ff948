//! Network namespaces as pods: creating and deleting them, joining two with a veth link, running
//! code inside one, and iptables rules that live (and die) with the namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use crate::{run_command, unique_suffix};

/// Address family of a test: which addresses to use and whether rules go to iptables or ip6tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// A named network namespace (`ip netns add`), deleted when dropped, even while a test panics.
/// Sonde reports it as `pod="<name>"` with an empty namespace label.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `sonde-t-<unique suffix>-<role>` with its loopback up.
    pub fn new(role: &str) -> Netns {
        Netns::create(format!("sonde-t-{}-{role}", unique_suffix()))
    }

    fn create(name: String) -> Netns {
        run_command(&format!("ip netns add {name}"));
        let netns = Netns { name };
        netns.ip("link set lo up");
        // Quiet IPv6: no duplicate address detection or router solicitations on new links, so
        // the only packets on a link are the ones the test sends (and MLD reports).
        in_netns(&netns.name, || {
            for (key, value) in [
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/default/router_solicitations", "0"),
            ] {
                let path = format!("/proc/sys/{key}");
                std::fs::write(&path, value).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
            }
        });
        netns
    }

    /// The name, which is also the `pod` label Sonde gives it.
    /// A process that lives in the namespace (`sleep`), as a pod's container does; killed
    /// when dropped.
    pub fn resident(&self) -> Resident {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "3600"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("ip netns exec sleep");
        Resident(child)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's inode number, which Sonde reports as an event's `netns`.
    pub fn inode(&self) -> u64 {
        let path = format!("/run/netns/{}", self.name);
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("cannot stat {path}: {e}"))
            .ino()
    }

    /// Runs `ip -n <name> ARGS` (split on whitespace).
    pub fn ip(&self, args: &str) -> String {
        run_command(&format!("ip -n {} {args}", self.name))
    }

    /// Runs `iptables -w RULE` (or `ip6tables`) inside the namespace, so the rule goes away with
    /// it. `rule` is split on whitespace: `"-A INPUT -p udp --dport 9999 -j DROP"`.
    pub fn iptables(&self, family: IpFamily, rule: &str) {
        let program = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        run_command(&format!("ip netns exec {} {program} -w {rule}", self.name));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cannot delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cannot delete netns {}: {e}", self.name),
        }
    }
}

/// One end of a veth link: interface `eth0` in its namespace, with fixed addresses.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Endpoint {
    pub fn ip(&self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::V4 => self.ipv4.into(),
            IpFamily::V6 => self.ipv6.into(),
        }
    }
}

/// Two pods, `a` and `b`, joined by a veth link with static addresses and permanent neighbour
/// entries both ways, so no ARP or NDP traffic, drop or queueing disturbs exact counts.
pub struct PodPair {
    pub a: Netns,
    pub b: Netns,
    pub a_end: Endpoint,
    pub b_end: Endpoint,
}

impl PodPair {
    /// A pair whose pod B drops IPv4 UDP to `port` (an iptables DROP rule in B): the test
    /// suite's known source of drops.
    pub fn dropping_udp(port: u16) -> PodPair {
        let pods = PodPair::new();
        pods.b.iptables(
            IpFamily::V4,
            &format!("-A INPUT -p udp --dport {port} -j DROP"),
        );
        pods
    }

    /// Pods `sonde-t-<suffix>-a` and `-b` on subnet 198.18.N.0/24 and fd00:5d:0:N::/64, with N
    /// different for every pair this process makes (the benchmark range 198.18.0.0/15 and a ULA
    /// prefix: nothing outside our namespaces uses them).
    pub fn new() -> PodPair {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let subnet =
            (std::process::id().wrapping_mul(13) + NEXT.fetch_add(1, Ordering::Relaxed)) % 512;
        let endpoint = |host: u8| Endpoint {
            mac: format!(
                "02:5d:00:{:02x}:{:02x}:{host:02x}",
                subnet >> 8,
                subnet & 0xff
            ),
            ipv4: Ipv4Addr::new(198, 18 + (subnet >> 8) as u8, (subnet & 0xff) as u8, host),
            ipv6: Ipv6Addr::new(0xfd00, 0x5d, 0, subnet as u16, 0, 0, 0, host.into()),
        };
        let suffix = unique_suffix();
        let pods = PodPair {
            a: Netns::create(format!("sonde-t-{suffix}-a")),
            b: Netns::create(format!("sonde-t-{suffix}-b")),
            a_end: endpoint(1),
            b_end: endpoint(2),
        };
        let (a, b) = (&pods.a, &pods.b);
        run_command(&format!(
            "ip link add eth0 netns {} address {} type veth peer name eth0 netns {} address {}",
            a.name, pods.a_end.mac, b.name, pods.b_end.mac
        ));
        for (netns, me, peer) in [(a, &pods.a_end, &pods.b_end), (b, &pods.b_end, &pods.a_end)] {
            netns.ip(&format!("addr add {}/24 dev eth0", me.ipv4));
            netns.ip(&format!("addr add {}/64 dev eth0 nodad", me.ipv6));
            netns.ip("link set eth0 up");
            // After `up`: taking a link down flushes even permanent entries.
            for peer_ip in [peer.ipv4.to_string(), peer.ipv6.to_string()] {
                netns.ip(&format!(
                    "neigh replace {peer_ip} lladdr {} dev eth0 nud permanent",
                    peer.mac
                ));
            }
        }
        pods
    }
}

impl Default for PodPair {
    fn default() -> Self {
        PodPair::new()
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `netns` (`setns` on
/// /run/netns/NAME), and returns its result. Sockets created in `f` belong to that namespace
/// for their whole life, whichever thread uses them afterwards.
pub fn in_netns<R: Send>(netns: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/run/netns/{netns}");
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(format!("netns {netns}"))
            .spawn_scoped(scope, || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                // SAFETY: plain syscall on a valid fd; it changes only this thread's namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!("setns({path}) failed: {}", std::io::Error::last_os_error());
                }
                f()
            })
            .unwrap_or_else(|e| panic!("cannot spawn a thread for netns {netns}: {e}"));
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A process in a test's namespace ([`Netns::resident`]).
pub struct Resident(std::process::Child);

impl Resident {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
