//! Sonde's probe catalogue: the CO-RE eBPF programs (`*.bpf.c`, compiled into the `*.bpf.o`
//! objects committed beside them), the Rust mirrors of their records, and the loader that
//! attaches them with aya.
//!
//! Adding a probe: write `<probe>.bpf.c` and `<probe>.h`, mirror the header in `<probe>.rs`
//! (with size and offset assertions), and list its [`ProbeSpec`] once in [`CATALOGUE`].

pub mod btf;
pub mod io_latency;
pub mod netdev_latency;
pub mod packet_drop;
pub mod probe;
pub mod record;
pub mod socket_latency;
pub mod softirq;
pub mod tcp_connect;
pub mod tcp_reset;
pub mod tcp_retrans;
pub mod tcp_rtt;

pub use probe::{LoadedProbe, ProbeError, ProbeLoader, ProbeSettings};
pub use record::{Stats, Tuple};

/// One kernel hook a probe's program attaches to.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Program (function) name in the object.
    pub program: &'static str,
    /// Tracepoint name as the kernel's BTF knows it (`btf_trace_<name>`), attached as tp_btf.
    pub tracepoint: &'static str,
    /// The tracepoint's category, for people (`skb/kfree_skb`).
    pub category: &'static str,
}

impl std::fmt::Display for Hook {
    /// `tp_btf/<category>/<tracepoint>`, as `sonde probes` and the API show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tp_btf/{}/{}", self.category, self.tracepoint)
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
    socket_latency::SPEC,
    io_latency::SPEC,
];

/// Finds a probe of the catalogue by name.
pub fn spec(name: &str) -> Option<&'static ProbeSpec> {
    CATALOGUE.iter().find(|s| s.name == name)
}
