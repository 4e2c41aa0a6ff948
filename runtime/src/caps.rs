//! The Linux capabilities the agent uses, what each is for, and which the running process
//! holds (`CapEff` of /proc/self/status): `sonde probes` says per probe what is missing, so
//! that a DaemonSet can add only what its enabled probes need.

use ebpf_core::{HookPoint, ProbeSpec};

/// One capability and what needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    bit: u32,
    /// What it is used for, as `sonde probes` says it.
    pub used_for: &'static str,
}

pub const BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    used_for: "loading every eBPF probe's programs and maps",
};
pub const PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    used_for: "attaching tp_btf, kprobe and fentry programs, and kernel stacks",
};
pub const NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    used_for: "attaching TC programs to interfaces (flow, dns)",
};
pub const SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    used_for: "entering pods' network namespaces: netstat's qdisc series of pods, and \
               namespaces without a process (standalone /run/netns); it also stands in for \
               CAP_BPF and CAP_PERFMON",
};
pub const SYS_PTRACE: Capability = Capability {
    name: "CAP_SYS_PTRACE",
    bit: 19,
    used_for: "the Kubernetes topology: the network namespaces of pods that run as other users",
};
pub const SYSLOG: Capability = Capability {
    name: "CAP_SYSLOG",
    bit: 34,
    used_for: "kernel addresses in /proc/kallsyms: packet_drop's location and stacks",
};

/// Every capability the agent uses, in the order `sonde probes` lists them.
pub const ALL: &[Capability] = &[BPF, PERFMON, NET_ADMIN, SYS_ADMIN, SYS_PTRACE, SYSLOG];

/// The capabilities this process holds, from `CapEff:` in /proc/self/status.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective(&status)
}

fn parse_effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether `held` (a `CapEff` mask) has `cap`; CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON (kernels before 5.8 know neither).
pub fn holds(held: u64, cap: Capability) -> bool {
    let has = |c: Capability| held & (1 << c.bit) != 0;
    has(cap) || ((cap == BPF || cap == PERFMON) && has(SYS_ADMIN))
}

/// What a probe of the catalogue needs to run.
pub fn needed_by(spec: &ProbeSpec) -> Vec<Capability> {
    let mut caps = vec![BPF];
    let tracing = spec
        .hooks
        .iter()
        .any(|h| !matches!(h.point, HookPoint::Tc(_)));
    if tracing {
        caps.push(PERFMON);
    }
    if spec
        .hooks
        .iter()
        .any(|h| matches!(h.point, HookPoint::Tc(_)))
    {
        caps.push(NET_ADMIN);
    }
    caps
}

/// The names of what `spec` needs and `held` lacks.
pub fn missing_for(spec: &ProbeSpec, held: u64) -> Vec<&'static str> {
    needed_by(spec)
        .into_iter()
        .filter(|c| !holds(held, *c))
        .map(|c| c.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read_from_status() {
        let status = "Name:\tsonde\nCapInh:\t0000000000000000\nCapEff:\t000001c000201000\n";
        let held = parse_effective(status).unwrap();
        // BPF, PERFMON, SYS_ADMIN, NET_ADMIN (bit 12) but not SYS_PTRACE.
        assert!(holds(held, BPF) && holds(held, PERFMON) && holds(held, SYS_ADMIN));
        assert!(holds(held, NET_ADMIN) && !holds(held, SYS_PTRACE));
    }

    #[test]
    fn what_each_probe_needs() {
        let only_bpf_perfmon = (1 << 39) | (1 << 38);
        assert_eq!(
            missing_for(&ebpf_core::flow::SPEC, only_bpf_perfmon),
            ["CAP_NET_ADMIN"]
        );
        assert!(missing_for(&ebpf_core::packet_drop::SPEC, only_bpf_perfmon).is_empty());
        // SYS_ADMIN stands in for BPF and PERFMON.
        assert!(missing_for(&ebpf_core::packet_drop::SPEC, 1 << 21).is_empty());
        assert_eq!(
            missing_for(&ebpf_core::tcp_reset::SPEC, 0),
            ["CAP_BPF", "CAP_PERFMON"]
        );
    }
}
