//! Sonde's probe catalogue: the CO-RE eBPF programs (`*.bpf.c`, compiled into the `*.bpf.o`
//! objects committed beside them), the Rust mirrors of their records, and the loader that
//! attaches them with aya.
//!
//! Adding a probe: write `<probe>.bpf.c` and `<probe>.h`, mirror the header in `<probe>.rs`
//! (with size and offset assertions), and list its [`ProbeSpec`] once in [`CATALOGUE`].

pub mod btf;
pub mod dns;
pub mod flow;
pub mod io_latency;
pub mod netdev_latency;
pub mod packet_drop;
pub mod probe;
pub mod record;
pub mod softirq;
pub mod tc;
pub mod tcp_connect;
pub mod tcp_reset;
pub mod tcp_retrans;
pub mod tcp_rtt;

pub use probe::{LoadedProbe, ProbeError, ProbeLoader, ProbeSettings};
pub use record::{Stats, Tuple};
pub use tc::{TcLinks, TcTarget};

/// One kernel hook a probe's program attaches to: the one description `sonde probes`, the API
/// and the load checks all read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Program (function) name in the object.
    pub program: &'static str,
    pub point: HookPoint,
}

/// Where a hook's program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// A tracepoint as the kernel's BTF knows it (`btf_trace_<tracepoint>`), attached as
    /// tp_btf when the probe loads; `category` is for people (`skb/kfree_skb`).
    TpBtf {
        category: &'static str,
        tracepoint: &'static str,
    },
    /// A TC program (a TCX link), attached by the agent to each interface it watches for the
    /// probe rather than when the probe loads.
    Tc(TcDirection),
}

/// Which way a TC program sees packets, from the interface's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcDirection {
    /// Received by the interface (for a pod's host-side veth: sent by the pod).
    Ingress,
    /// Sent through the interface (for a pod's host-side veth: to the pod).
    Egress,
}

impl Hook {
    /// A tp_btf hook: program `program` on tracepoint `category/tracepoint`.
    pub const fn tp_btf(
        program: &'static str,
        category: &'static str,
        tracepoint: &'static str,
    ) -> Hook {
        Hook {
            program,
            point: HookPoint::TpBtf {
                category,
                tracepoint,
            },
        }
    }

    /// A TC hook: program `program` on each watched interface, in `direction`.
    pub const fn tc(program: &'static str, direction: TcDirection) -> Hook {
        Hook {
            program,
            point: HookPoint::Tc(direction),
        }
    }

    /// The TC direction of a TC hook.
    pub fn tc_direction(&self) -> Option<TcDirection> {
        match self.point {
            HookPoint::Tc(d) => Some(d),
            HookPoint::TpBtf { .. } => None,
        }
    }
}

impl std::fmt::Display for Hook {
    /// `tp_btf/<category>/<tracepoint>` or `tc/ingress`, `tc/egress`, as `sonde probes` and
    /// the API show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.point {
            HookPoint::TpBtf {
                category,
                tracepoint,
            } => write!(f, "tp_btf/{category}/{tracepoint}"),
            HookPoint::Tc(TcDirection::Ingress) => write!(f, "tc/ingress"),
            HookPoint::Tc(TcDirection::Egress) => write!(f, "tc/egress"),
        }
    }
}

/// A probe of the catalogue: its contract name, what it hooks, and its compiled object.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub hooks: &'static [Hook],
    /// Name of the in-kernel per-CPU counter map.
    pub counter_map: &'static str,
    pub object: &'static [u8],
}

/// Every probe Sonde knows, in the order `sonde probes` lists them.
pub const CATALOGUE: &[ProbeSpec] = &[
    packet_drop::SPEC,
    tcp_retrans::SPEC,
    tcp_reset::SPEC,
    tcp_connect::SPEC,
    tcp_rtt::SPEC,
    softirq::SPEC,
    netdev_latency::SPEC,
    io_latency::SPEC,
    flow::SPEC,
    dns::SPEC,
];

/// Finds a probe of the catalogue by name.
pub fn spec(name: &str) -> Option<&'static ProbeSpec> {
    CATALOGUE.iter().find(|s| s.name == name)
}
