//! Sonde's probe catalogue: the CO-RE eBPF programs (`*.bpf.c`, compiled into the `*.bpf.o`
//! objects committed beside them), the Rust mirrors of their records, and the loader that
//! attaches them with aya.
//!
//! Adding a probe: write `<probe>.bpf.c` and `<probe>.h`, mirror the header in `<probe>.rs`
//! (with size and offset assertions), and list its [`ProbeSpec`] once in [`CATALOGUE`].

pub mod batch;
pub mod btf;
pub mod clsact;
pub mod dns;
pub mod flow;
pub mod io_latency;
pub mod kprobe;
pub mod netdev_latency;
pub mod netlink;
pub mod packet_drop;
pub mod probe;
pub mod record;
pub mod socket_latency;
pub mod softirq;
pub mod stack_latency;
pub mod tc;
pub mod tcp_connect;
pub mod tcp_reset;
pub mod tcp_retrans;
pub mod tcp_rtt;
pub mod tcp_state;
pub mod virtio_net;

pub use probe::{Checked, LoadedProbe, ProbeError, ProbeLoader, ProbeSettings};
pub use record::{Netns, Stats, Tuple};
pub use tc::{TcAttach, TcLinks, TcMode, TcTarget};

/// One kernel hook a probe's program attaches to: the one description `sonde probes`, the API
/// and the loader all read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Program (function) name in the object.
    pub program: &'static str,
    pub point: HookPoint,
    /// Tracepoint arguments `program` reads (0: not checked).
    pub args: usize,
    /// Programs for kernels whose tracepoint passes fewer arguments than `program` reads,
    /// newest first (a tp_btf program may not read an argument its kernel does not pass).
    pub older: &'static [OlderProgram],
    /// For a hook the probe can do without: what it lacks on a kernel that does not have the
    /// tracepoint (or passes too few arguments for any of its programs), as `sonde probes`
    /// says. A hook without it is required.
    pub optional: Option<&'static str>,
    /// On which kernels the hook is used.
    pub used: Used,
}

/// A program of a hook for older kernels, whose tracepoint passes fewer arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OlderProgram {
    /// Arguments it reads: taken when the kernel passes at least these.
    pub args: usize,
    pub program: &'static str,
    /// What the probe lacks with it, as `sonde probes` says; `None` when nothing is lost.
    pub degraded: Option<&'static str>,
}

/// On which kernels a hook is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// Every kernel: the probe cannot load without it.
    Always,
    /// Only kernels where `when` holds, to see what the probe's other hooks miss there. Where
    /// it is needed but cannot be attached (a kprobe on a kernel without kprobes), the probe
    /// loads without it, degraded: `lacks` says what it lacks, as `sonde probes` does.
    Where {
        when: Condition,
        lacks: &'static str,
    },
    /// Only when the probe's kernel-function hooks are attached as `FnMode` (see
    /// [`FnAttach`]): a probe that hooks kernel functions has a program for each in both
    /// forms, fentry/fexit (a BPF trampoline, the cheaper) and kprobe/kretprobe.
    Attach(FnMode),
}

/// How a probe's kernel-function hooks are attached (`attach` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FnAttach {
    /// fentry/fexit where the kernel attaches BPF trampolines, kprobes otherwise.
    #[default]
    Auto,
    Fentry,
    Kprobe,
}

/// How a probe's kernel-function hooks are attached on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FnMode {
    /// fentry and fexit programs: a BPF trampoline called from the function's ftrace site,
    /// with BTF-typed arguments (needs the kernel's own BTF and ftrace direct calls).
    Fentry,
    /// kprobe and kretprobe programs: a breakpoint (or ftrace) handler, arguments from the
    /// registers.
    Kprobe,
}

impl FnAttach {
    pub const NAMES: &'static str = "auto, fentry or kprobe";

    pub fn parse(s: &str) -> Option<FnAttach> {
        match s {
            "auto" => Some(FnAttach::Auto),
            "fentry" => Some(FnAttach::Fentry),
            "kprobe" => Some(FnAttach::Kprobe),
            _ => None,
        }
    }

    /// The modes to try, in order: `auto` falls back to kprobes where fentry cannot attach.
    pub fn modes(self) -> &'static [FnMode] {
        match self {
            FnAttach::Auto => &[FnMode::Fentry, FnMode::Kprobe],
            FnAttach::Fentry => &[FnMode::Fentry],
            FnAttach::Kprobe => &[FnMode::Kprobe],
        }
    }
}

impl FnMode {
    /// As `sonde probes` and the API say it (`attach`).
    pub fn as_str(self) -> &'static str {
        match self {
            FnMode::Fentry => "fentry",
            FnMode::Kprobe => "kprobe",
        }
    }
}

/// Something of the running kernel that decides whether a hook is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Tracepoint `tracepoint` passes fewer than `args` arguments: an older signature, which
    /// also fired in fewer places (`tcp_send_reset` before Linux 6.10).
    TracepointArgsBelow {
        tracepoint: &'static str,
        args: usize,
    },
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::TracepointArgsBelow { tracepoint, args } => {
                write!(
                    f,
                    "tracepoint {tracepoint} passes fewer than {args} arguments"
                )
            }
        }
    }
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
    /// A TC program (a TCX link, or a filter on a clsact qdisc), attached by the agent to each
    /// interface it watches for the probe rather than when the probe loads.
    Tc(TcDirection),
    /// A kprobe on the entry (or with `ret`, a kretprobe on the return) of a kernel function,
    /// attached when the probe loads: the first of `functions` the kernel has (a function
    /// renamed or split between kernels has each of its names, newest first). Its program
    /// reads its arguments with `BPF_CORE_READ` (they are not BTF-typed); the kernel needs
    /// kprobes, and the function must not be inlined away.
    Kprobe {
        functions: &'static [&'static str],
        ret: bool,
    },
    /// An fentry (or with `ret`, fexit) program on kernel function `function`, attached when
    /// the probe loads through a BPF trampoline: the kernel resolves the function in its own
    /// BTF and needs ftrace direct calls.
    Fentry { function: &'static str, ret: bool },
}

impl HookPoint {
    /// Whether the kernel resolves the hook's attach point in its own BTF, so that the
    /// program cannot load on a kernel without one even when `btf.path` gives the kernel's
    /// types (tp_btf: yes, the program names its tracepoint by a type id of the kernel's BTF;
    /// TC: no, CO-RE relocations from a BTF file are all its programs need).
    pub fn needs_kernel_btf(&self) -> bool {
        match self {
            HookPoint::TpBtf { .. } | HookPoint::Fentry { .. } => true,
            HookPoint::Tc(_) | HookPoint::Kprobe { .. } => false,
        }
    }
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
            args: 0,
            older: &[],
            optional: None,
            used: Used::Always,
        }
    }

    /// The same hook, which the probe can do without on kernels that lack it, lacking
    /// `lacks` there.
    pub const fn optional(self, lacks: &'static str) -> Hook {
        Hook {
            optional: Some(lacks),
            ..self
        }
    }

    /// A tp_btf hook whose program reads `args` arguments, with programs for kernels whose
    /// tracepoint passes fewer.
    pub const fn tp_btf_by_args(
        program: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        args: usize,
        older: &'static [OlderProgram],
    ) -> Hook {
        Hook {
            args,
            older,
            ..Hook::tp_btf(program, category, tracepoint)
        }
    }

    /// The program to load on a kernel whose tracepoint passes `kernel_args` arguments (when
    /// the kernel's BTF says), and what the probe lacks with it; `None` when none fits.
    pub fn program_for(
        &self,
        kernel_args: Option<usize>,
    ) -> Option<(&'static str, Option<&'static str>)> {
        let Some(n) = kernel_args.filter(|_| self.args > 0) else {
            return Some((self.program, None));
        };
        if n >= self.args {
            return Some((self.program, None));
        }
        self.older
            .iter()
            .find(|o| n >= o.args)
            .map(|o| (o.program, o.degraded))
    }

    /// A TC hook: program `program` on each watched interface, in `direction`.
    pub const fn tc(program: &'static str, direction: TcDirection) -> Hook {
        Hook {
            program,
            point: HookPoint::Tc(direction),
            args: 0,
            older: &[],
            optional: None,
            used: Used::Always,
        }
    }

    /// A kprobe hook used only where `when` holds: program `program` on the entry of the first
    /// of kernel functions `functions` the kernel has; `lacks` is what the probe lacks where it is needed but cannot be
    /// attached.
    pub const fn kprobe_where(
        program: &'static str,
        functions: &'static [&'static str],
        when: Condition,
        lacks: &'static str,
    ) -> Hook {
        Hook {
            program,
            point: HookPoint::Kprobe {
                functions,
                ret: false,
            },
            args: 0,
            older: &[],
            optional: None,
            used: Used::Where { when, lacks },
        }
    }

    /// A kprobe (or with `ret`, kretprobe) hook every kernel needs: program `program` on the
    /// first of `functions` the kernel has.
    pub const fn kprobe(
        program: &'static str,
        functions: &'static [&'static str],
        ret: bool,
    ) -> Hook {
        Hook {
            program,
            point: HookPoint::Kprobe { functions, ret },
            args: 0,
            older: &[],
            optional: None,
            used: Used::Always,
        }
    }

    /// An fentry (or with `ret`, fexit) hook on kernel function `function`, used where the
    /// probe's function hooks attach through BPF trampolines; each has a
    /// [`Hook::kprobe_instead`] twin for the kernels where they do not.
    pub const fn fentry(program: &'static str, function: &'static str, ret: bool) -> Hook {
        Hook {
            program,
            point: HookPoint::Fentry { function, ret },
            args: 0,
            older: &[],
            optional: None,
            used: Used::Attach(FnMode::Fentry),
        }
    }

    /// The kprobe (or with `ret`, kretprobe) twin of an fentry hook, used where the probe's
    /// function hooks attach as kprobes.
    pub const fn kprobe_instead(
        program: &'static str,
        functions: &'static [&'static str],
        ret: bool,
    ) -> Hook {
        Hook {
            used: Used::Attach(FnMode::Kprobe),
            ..Hook::kprobe(program, functions, ret)
        }
    }

    /// The TC direction of a TC hook.
    pub fn tc_direction(&self) -> Option<TcDirection> {
        match self.point {
            HookPoint::Tc(d) => Some(d),
            HookPoint::TpBtf { .. } | HookPoint::Kprobe { .. } | HookPoint::Fentry { .. } => None,
        }
    }

    /// The hook as `sonde probes` names it, with `function` for a kprobe hook of several
    /// names when it is known which one the kernel has.
    pub fn name_with(&self, function: Option<&str>) -> String {
        match (self.point, function) {
            (HookPoint::Kprobe { ret, .. }, Some(f)) => {
                format!("{}/{f}", if ret { "kretprobe" } else { "kprobe" })
            }
            _ => self.to_string(),
        }
    }
}

impl std::fmt::Display for Hook {
    /// `tp_btf/<category>/<tracepoint>`, `tc/ingress`, `tc/egress`, `kprobe/<function>`
    /// (`kprobe/<name>|<older name>` for a function of several names), `kretprobe/..`,
    /// `fentry/<function>` or `fexit/<function>`, as `sonde probes` and the API show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.point {
            HookPoint::TpBtf {
                category,
                tracepoint,
            } => write!(f, "tp_btf/{category}/{tracepoint}"),
            HookPoint::Tc(TcDirection::Ingress) => write!(f, "tc/ingress"),
            HookPoint::Tc(TcDirection::Egress) => write!(f, "tc/egress"),
            HookPoint::Kprobe { functions, ret } => {
                let kind = if ret { "kretprobe" } else { "kprobe" };
                write!(f, "{kind}/{}", functions.join("|"))
            }
            HookPoint::Fentry { function, ret } => {
                let kind = if ret { "fexit" } else { "fentry" };
                write!(f, "{kind}/{function}")
            }
        }
    }
}

/// Something a probe's programs need from the running kernel besides their hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A field of a struct (or union) the programs read: `path` is the members read in turn,
    /// through pointers (`q.disk` for `rq->q->disk`).
    Field {
        ty: &'static str,
        path: &'static str,
    },
    /// A constant of an enum the programs name (`bpf_core_enum_value`).
    EnumValue {
        ty: &'static str,
        constant: &'static str,
    },
    /// A tracepoint whose programs read at least `args` arguments (signatures grew between
    /// kernels: `kfree_skb` got its reason in 5.17).
    TracepointArgs {
        tracepoint: &'static str,
        args: usize,
    },
}

impl Requirement {
    pub const fn field(ty: &'static str, path: &'static str) -> Requirement {
        Requirement::Field { ty, path }
    }
}

impl std::fmt::Display for Requirement {
    /// As `sonde probes` names what is missing: `field sk_buff.dev`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Field { ty, path } => write!(f, "field {ty}.{path}"),
            Requirement::EnumValue { ty, constant } => write!(f, "enum {ty} constant {constant}"),
            Requirement::TracepointArgs { tracepoint, args } => {
                write!(f, "tracepoint {tracepoint} with at least {args} arguments")
            }
        }
    }
}

/// Requirement groups of the helpers in `sonde.bpf.h`, for the probes that call them.
pub mod requires {
    use super::Requirement as R;

    /// `sonde_sk_netns`: a socket's network namespace.
    pub const SOCK_NETNS: &[R] = &[
        R::field("sock", "__sk_common.skc_net.net"),
        R::field("net", "ns.inum"),
    ];
    /// `sonde_skb_netns`: a packet's network namespace (with [`SOCK_NETNS`]).
    pub const SKB_NETNS: &[R] = &[
        R::field("sk_buff", "dev"),
        R::field("sk_buff", "sk"),
        R::field("net_device", "nd_net.net"),
    ];
    /// `sonde_skb_tuple`: a packet's 5-tuple from its headers.
    pub const SKB_TUPLE: &[R] = &[
        R::field("sk_buff", "head"),
        R::field("sk_buff", "network_header"),
        R::field("sk_buff", "protocol"),
    ];
    /// `sonde_sk_tuple`: a socket's 5-tuple.
    pub const SOCK_TUPLE: &[R] = &[
        R::field("sock", "sk_protocol"),
        R::field("sock_common", "skc_family"),
        R::field("sock_common", "skc_num"),
        R::field("sock_common", "skc_dport"),
        R::field("sock_common", "skc_rcv_saddr"),
        R::field("sock_common", "skc_daddr"),
        R::field("sock_common", "skc_v6_rcv_saddr"),
        R::field("sock_common", "skc_v6_daddr"),
    ];
}

/// A probe of the catalogue: its contract name, what it hooks, and its compiled object.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub hooks: &'static [Hook],
    /// What the programs read from the kernel beyond their hooks, in groups (shared groups
    /// such as [`requires::SOCK_TUPLE`] first): checked against the running kernel's BTF
    /// before loading, so that a kernel without one gets a reason naming it instead of a
    /// verifier log. Fields that moved between kernels are read under CO-RE existence checks
    /// in the programs and are not listed.
    pub requires: &'static [&'static [Requirement]],
    /// Name of the in-kernel per-CPU counter map.
    pub counter_map: &'static str,
    pub object: &'static [u8],
}

impl ProbeSpec {
    /// The hooks the probe uses on every kernel (for a probe not loaded: which of the others
    /// it would use depends on the kernel, see [`probe::choose_programs`]); of a probe whose
    /// kernel-function hooks come in two forms, the fentry ones.
    pub fn hooks_everywhere(&self) -> impl Iterator<Item = &'static Hook> {
        self.hooks
            .iter()
            .filter(|h| matches!(h.used, Used::Always | Used::Attach(FnMode::Fentry)))
    }

    /// Whether the probe's kernel-function hooks come in two forms, fentry and kprobe.
    pub fn has_fn_modes(&self) -> bool {
        self.hooks.iter().any(|h| matches!(h.used, Used::Attach(_)))
    }
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
    stack_latency::SPEC,
    virtio_net::SPEC,
    flow::SPEC,
    dns::SPEC,
    tcp_state::SPEC,
];

/// Finds a probe of the catalogue by name.
pub fn spec(name: &str) -> Option<&'static ProbeSpec> {
    CATALOGUE.iter().find(|s| s.name == name)
}
